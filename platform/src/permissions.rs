//! Who may see and change what. Developers get `viewer` or `manager` grants on a tenant, a
//! project or a stage; a grant covers everything below its scope (a tenant manager manages
//! every project in it). Admins manage everything; support sees everything and changes only
//! accounts, tenants and grants.
//!
//! The scope extractors resolve the `{tenant}`, `{project}` and `{stage}` path segments (id or
//! alias), load the caller's grants in that tenant in one query, and answer 404 for anything the
//! caller may not even see, so that ids of other tenants reveal nothing.

use crate::auth::{Allowed, Caller};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::{Database, StorageError};
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use rally_sdk::wire::{GrantRole, Project, Role, Stage, Tenant};
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// Human accounts: admin, support, developer.
#[derive(Debug)]
pub struct Humans;
impl Allowed for Humans {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Support, Role::Developer];
}

/// What the caller may do at one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Viewer,
    Manager,
}

impl From<GrantRole> for Level {
    fn from(role: GrantRole) -> Self {
        match role {
            GrantRole::Viewer => Level::Viewer,
            GrantRole::Manager => Level::Manager,
        }
    }
}

/// A human caller whose account is enabled.
#[derive(Debug, Clone)]
pub struct Principal {
    pub account_id: String,
    pub role: Role,
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::<Humans>::from_request_parts(parts, state).await?;
        // Tokens outlive a disabled account by minutes; management routes check at once.
        let disabled_at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT disabled_at FROM accounts WHERE id = $1")
                .bind(&caller.subject)
                .fetch_optional(state.database.reader())
                .await?;
        match disabled_at {
            Some(None) => Ok(Principal {
                account_id: caller.subject,
                role: caller.role,
            }),
            Some(Some(_)) => Err(ApiError::unauthorized(
                "account_disabled",
                "this account is disabled",
            )),
            None => Err(ApiError::unauthorized(
                "invalid_token",
                "the account of this token no longer exists",
            )),
        }
    }
}

impl Principal {
    pub fn is_staff(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Support)
    }

    /// What the role alone allows everywhere: admins manage, support views, developers
    /// depend on their grants (`None`).
    pub fn staff_level(&self) -> Option<Level> {
        match self.role {
            Role::Admin => Some(Level::Manager),
            Role::Support => Some(Level::Viewer),
            _ => None,
        }
    }

    pub fn require_staff(&self) -> Result<(), ApiError> {
        if self.is_staff() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// A caller's grants inside one tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantGrants {
    tenant: Option<GrantRole>,
    projects: HashMap<String, GrantRole>,
    stages: HashMap<String, GrantRole>,
    /// Projects that hold a stage the caller has a grant on.
    projects_with_stage_grants: HashSet<String>,
}

impl TenantGrants {
    pub async fn load(
        database: &Database,
        account_id: &str,
        tenant_id: &str,
    ) -> Result<Self, StorageError> {
        let rows = sqlx::query(
            "SELECT g.scope_kind, g.scope_id, g.role, s.project_id FROM grants g \
             LEFT JOIN stages s ON g.scope_kind = 'stage' AND s.id = g.scope_id \
             WHERE g.account_id = $1 AND g.tenant_id = $2",
        )
        .bind(account_id)
        .bind(tenant_id)
        .fetch_all(database.reader())
        .await?;
        let mut grants = TenantGrants::default();
        for row in rows {
            let kind: String = row.get(0);
            let scope_id: String = row.get(1);
            let role = if row.get::<String, _>(2) == "manager" {
                GrantRole::Manager
            } else {
                GrantRole::Viewer
            };
            let keep_highest = |slot: &mut GrantRole| *slot = (*slot).max(role);
            match kind.as_str() {
                "tenant" => {
                    grants.tenant = Some(grants.tenant.map_or(role, |held| held.max(role)));
                }
                "project" => keep_highest(grants.projects.entry(scope_id).or_insert(role)),
                _ => {
                    if let Some(project_id) = row.get::<Option<String>, _>(3) {
                        grants.projects_with_stage_grants.insert(project_id);
                    }
                    keep_highest(grants.stages.entry(scope_id).or_insert(role));
                }
            }
        }
        Ok(grants)
    }

    fn is_empty(&self) -> bool {
        self.tenant.is_none() && self.projects.is_empty() && self.stages.is_empty()
    }
}

/// The caller and its grants in one tenant: answers "what may I do here?".
#[derive(Debug, Clone)]
pub struct Access {
    pub principal: Principal,
    grants: TenantGrants,
}

impl Access {
    pub async fn load(
        database: &Database,
        principal: Principal,
        tenant_id: &str,
    ) -> Result<Self, StorageError> {
        let grants = if principal.is_staff() {
            TenantGrants::default()
        } else {
            TenantGrants::load(database, &principal.account_id, tenant_id).await?
        };
        Ok(Self { principal, grants })
    }

    fn staff_level(&self) -> Option<Level> {
        self.principal.staff_level()
    }

    pub fn tenant_level(&self) -> Level {
        self.staff_level()
            .unwrap_or_else(|| self.grants.tenant.map_or(Level::None, Level::from))
    }

    /// Any grant in the tenant lets a developer see the tenant itself.
    pub fn tenant_visible(&self) -> bool {
        self.staff_level().is_some() || !self.grants.is_empty()
    }

    pub fn project_level(&self, project_id: &str) -> Level {
        let own = self
            .grants
            .projects
            .get(project_id)
            .copied()
            .map(Level::from);
        self.tenant_level().max(own.unwrap_or(Level::None))
    }

    /// A developer with a grant on one stage sees that stage's project (and its versions).
    pub fn project_visible(&self, project_id: &str) -> bool {
        self.project_level(project_id) >= Level::Viewer
            || self.grants.projects_with_stage_grants.contains(project_id)
    }

    pub fn stage_level(&self, project_id: &str, stage_id: &str) -> Level {
        let own = self.grants.stages.get(stage_id).copied().map(Level::from);
        self.project_level(project_id)
            .max(own.unwrap_or(Level::None))
    }
}

/// Refuses with 403 unless `level` reaches `needed`.
pub fn require(level: Level, needed: Level) -> Result<(), ApiError> {
    if level >= needed {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// What a scope extractor resolved, for the authorization wrappers below.
pub trait Scope {
    fn principal(&self) -> &Principal;
    /// The caller's level at the place the scope names.
    fn level(&self) -> Level;
}

impl Scope for Principal {
    fn principal(&self) -> &Principal {
        self
    }

    fn level(&self) -> Level {
        self.staff_level().unwrap_or(Level::None)
    }
}

impl Scope for TenantScope {
    fn principal(&self) -> &Principal {
        &self.access.principal
    }

    fn level(&self) -> Level {
        self.access.tenant_level()
    }
}

impl Scope for ProjectScope {
    fn principal(&self) -> &Principal {
        &self.access.principal
    }

    fn level(&self) -> Level {
        self.access.project_level(&self.project.id)
    }
}

impl Scope for StageScope {
    fn principal(&self) -> &Principal {
        &self.access.principal
    }

    fn level(&self) -> Level {
        self.access.stage_level(&self.project.id, &self.stage.id)
    }
}

/// `S` (a scope or the principal), and the caller manages it; else 403. As an extractor it
/// decides before the body is read, so a refused caller learns nothing about its body.
#[derive(Debug)]
pub struct Managing<S>(pub S);

impl<S> FromRequestParts<AppState> for Managing<S>
where
    S: Scope + FromRequestParts<AppState, Rejection = ApiError> + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let scope = S::from_request_parts(parts, state).await?;
        require(scope.level(), Level::Manager)?;
        Ok(Managing(scope))
    }
}

/// `S` (a scope or the principal), and the caller is admin or support; else 403. Decided
/// before the body is read, like [`Managing`].
#[derive(Debug)]
pub struct AsStaff<S>(pub S);

impl<S> FromRequestParts<AppState> for AsStaff<S>
where
    S: Scope + FromRequestParts<AppState, Rejection = ApiError> + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let scope = S::from_request_parts(parts, state).await?;
        scope.principal().require_staff()?;
        Ok(AsStaff(scope))
    }
}

pub use crate::catalog::is_id;
use crate::catalog::is_slug;

/// Aliases are slugs: 1–63 of `a-z 0-9 -`, starting with a letter, not ending with `-`, and
/// never shaped like an id, so a path segment is always one or the other.
pub fn check_alias(alias: &str) -> Result<(), ApiError> {
    if is_slug(alias) && !is_id(alias) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_alias",
            format!(
                "alias {alias:?} must be 1 to 63 characters of a-z, 0-9 and '-', starting with a letter"
            ),
        ))
    }
}

/// True for characters that must not appear in text shown to operators: control characters,
/// and format characters (Unicode category Cf: bidirectional overrides such as U+202E, which
/// make `"evil\u{202e}gnp.exe"` read as `evilexe.png`, zero-width joiners, byte order marks),
/// which change how text looks without being seen.
pub fn is_hidden_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.is_control() || c.general_category() == GeneralCategory::Format
}

/// Names are free text for people: 1–100 characters, no control or format characters, not
/// only spaces.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let length = name.chars().count();
    if (1..=100).contains(&length) && !name.chars().any(is_hidden_char) && !name.trim().is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            "name must be 1 to 100 characters without control or invisible format characters",
        ))
    }
}

/// `{tenant}` in a route, for the OpenAPI document.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Tenant id or alias.
    pub tenant: String,
}

/// `{tenant}/projects/{project}` in a route, for the OpenAPI document.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectPath {
    /// Tenant id or alias.
    pub tenant: String,
    /// Project id or alias.
    pub project: String,
}

/// `{tenant}/projects/{project}/stages/{stage}` in a route, for the OpenAPI document.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct StagePath {
    /// Tenant id or alias.
    pub tenant: String,
    /// Project id or alias.
    pub project: String,
    /// Stage id or alias.
    pub stage: String,
}

/// The path segments of a request, by name.
async fn path_segments(
    parts: &mut Parts,
    state: &AppState,
) -> Result<HashMap<String, String>, ApiError> {
    let Path(segments) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map_err(ApiError::from)?;
    Ok(segments)
}

fn segment<'a>(segments: &'a HashMap<String, String>, name: &str) -> &'a str {
    segments.get(name).map(String::as_str).unwrap_or_default()
}

/// `{tenant}`: the tenant, if the caller may see it (else 404).
#[derive(Debug)]
pub struct TenantScope {
    pub access: Access,
    pub tenant: Tenant,
}

impl FromRequestParts<AppState> for TenantScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let segments = path_segments(parts, state).await?;
        tenant_scope(state, principal, segment(&segments, "tenant")).await
    }
}

async fn tenant_scope(
    state: &AppState,
    principal: Principal,
    tenant_segment: &str,
) -> Result<TenantScope, ApiError> {
    let not_found = || ApiError::NotFound { what: "tenant" };
    let tenant = crate::catalog::find_tenant(&state.database, tenant_segment)
        .await?
        .ok_or_else(not_found)?;
    let access = Access::load(&state.database, principal, &tenant.id).await?;
    if !access.tenant_visible() {
        return Err(not_found());
    }
    Ok(TenantScope { access, tenant })
}

/// `{tenant}/projects/{project}`: the project, if the caller may see it (else 404).
#[derive(Debug)]
pub struct ProjectScope {
    pub access: Access,
    pub tenant: Tenant,
    pub project: Project,
}

impl FromRequestParts<AppState> for ProjectScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let segments = path_segments(parts, state).await?;
        project_scope(
            state,
            principal,
            segment(&segments, "tenant"),
            segment(&segments, "project"),
        )
        .await
    }
}

async fn project_scope(
    state: &AppState,
    principal: Principal,
    tenant_segment: &str,
    project_segment: &str,
) -> Result<ProjectScope, ApiError> {
    let TenantScope { access, tenant } = tenant_scope(state, principal, tenant_segment).await?;
    let not_found = || ApiError::NotFound { what: "project" };
    let project = crate::catalog::find_project(&state.database, &tenant.id, project_segment)
        .await?
        .ok_or_else(not_found)?;
    if !access.project_visible(&project.id) {
        return Err(not_found());
    }
    Ok(ProjectScope {
        access,
        tenant,
        project,
    })
}

/// `{tenant}/projects/{project}/stages/{stage}`: the stage, if the caller may see it (else 404).
#[derive(Debug)]
pub struct StageScope {
    pub access: Access,
    pub tenant: Tenant,
    pub project: Project,
    pub stage: Stage,
}

impl FromRequestParts<AppState> for StageScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let segments = path_segments(parts, state).await?;
        let ProjectScope {
            access,
            tenant,
            project,
        } = project_scope(
            state,
            principal,
            segment(&segments, "tenant"),
            segment(&segments, "project"),
        )
        .await?;
        let not_found = || ApiError::NotFound { what: "stage" };
        let stage =
            crate::catalog::find_stage(&state.database, &project.id, segment(&segments, "stage"))
                .await?
                .ok_or_else(not_found)?;
        if access.stage_level(&project.id, &stage.id) < Level::Viewer {
            return Err(not_found());
        }
        Ok(StageScope {
            access,
            tenant,
            project,
            stage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn developer_with(grants: TenantGrants) -> Access {
        Access {
            principal: Principal {
                account_id: "dev".into(),
                role: Role::Developer,
            },
            grants,
        }
    }

    #[test]
    fn grants_cover_everything_below_their_scope() {
        let tenant_viewer = developer_with(TenantGrants {
            tenant: Some(GrantRole::Viewer),
            ..TenantGrants::default()
        });
        assert_eq!(tenant_viewer.project_level("p"), Level::Viewer);
        assert_eq!(tenant_viewer.stage_level("p", "s"), Level::Viewer);

        let mut projects = HashMap::new();
        projects.insert("p".to_owned(), GrantRole::Manager);
        let project_manager = developer_with(TenantGrants {
            projects,
            ..TenantGrants::default()
        });
        assert_eq!(project_manager.tenant_level(), Level::None);
        assert!(project_manager.tenant_visible());
        assert_eq!(project_manager.stage_level("p", "s"), Level::Manager);
        assert_eq!(project_manager.project_level("q"), Level::None);
        assert!(!project_manager.project_visible("q"));
    }

    #[test]
    fn a_stage_grant_shows_its_project_but_manages_only_the_stage() {
        let mut stages = HashMap::new();
        stages.insert("s".to_owned(), GrantRole::Manager);
        let access = developer_with(TenantGrants {
            stages,
            projects_with_stage_grants: ["p".to_owned()].into(),
            ..TenantGrants::default()
        });
        assert!(access.project_visible("p"));
        assert_eq!(access.project_level("p"), Level::None);
        assert_eq!(access.stage_level("p", "s"), Level::Manager);
        assert_eq!(access.stage_level("p", "other"), Level::None);
    }

    #[test]
    fn names_refuse_invisible_and_bidirectional_characters() {
        for good in ["Studio", "Ünïcode Ltd", "東京 Games", "a b", "Emoji 🎮"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "   ",
            "evil\u{202e}gnp.exe",
            "\u{200d}",
            "\u{feff}Studio",
            "a\u{2066}b",
            "soft\u{ad}hyphen",
            "tab\there",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn aliases_are_slugs_that_never_look_like_ids() {
        for good in ["default", "prod-eu", "a", "game2"] {
            assert!(check_alias(good).is_ok(), "{good}");
        }
        let id = uuid::Uuid::now_v7().to_string();
        for bad in [
            "",
            "Prod",
            "with space",
            "ünïcode",
            "-x",
            "x-",
            "2fast",
            id.as_str(),
        ] {
            assert!(check_alias(bad).is_err(), "{bad:?}");
        }
    }
}
