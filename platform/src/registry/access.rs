//! What a registry token grants. Repositories are `<tenant>/<project>` (aliases). A developer
//! may push where they may upload versions (manager of the project) and pull where they may
//! read them; admins may do both everywhere and list the catalog, support may pull. A Docker
//! server may pull the repositories of projects with a stage on its pool. Nothing else is
//! granted: the registry refuses whatever a token does not name.

pub use super::signing::Granted;
use crate::catalog;
use crate::permissions::{Access, Level, Principal};
use crate::storage::{Database, StorageError};
use rally_sdk::wire::{Project, Role, Tenant};

/// Who asked for a token.
#[derive(Debug, Clone)]
pub enum Asker {
    Account {
        principal: Principal,
        username: String,
    },
    Server {
        name: String,
        pool: String,
    },
}

impl Asker {
    /// The token's `sub`, and the actor the registry's notifications name: a username, or
    /// `server:<name>` (no username holds a `:`).
    pub fn subject(&self) -> String {
        match self {
            Asker::Account { username, .. } => username.clone(),
            Asker::Server { name, .. } => format!("server:{name}"),
        }
    }
}

/// One `scope` of a token request: `repository:studio/hello:push,pull`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Requested {
    /// Reads `type:name:actions`; the name may itself hold a `:`.
    pub fn parse(scope: &str) -> Option<Requested> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Requested {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|action| !action.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// The tenant and project a repository name stands for.
pub async fn project_of_repository(
    database: &Database,
    repository: &str,
) -> Result<Option<(Tenant, Project)>, StorageError> {
    let Some((tenant, project)) = repository.split_once('/') else {
        return Ok(None);
    };
    let named = |segment: &str| catalog::is_slug(segment) || catalog::is_id(segment);
    if !named(tenant) || !named(project) {
        return Ok(None);
    }
    let Some(tenant) = catalog::find_tenant(database, tenant).await? else {
        return Ok(None);
    };
    let project = catalog::find_project(database, &tenant.id, project).await?;
    Ok(project.map(|project| (tenant, project)))
}

/// The part of `requested` that `asker` may have: `None` when nothing of it.
pub async fn grant(
    database: &Database,
    asker: &Asker,
    requested: &Requested,
) -> Result<Option<Granted>, StorageError> {
    let allowed: Vec<&str> = match requested.kind.as_str() {
        "registry" if requested.name == "catalog" => match asker {
            Asker::Account { principal, .. } if principal.role == Role::Admin => vec!["*"],
            _ => Vec::new(),
        },
        "repository" => {
            let Some((tenant, project)) = project_of_repository(database, &requested.name).await?
            else {
                return Ok(None);
            };
            match asker {
                Asker::Account { principal, .. } => {
                    let access = Access::load(database, principal.clone(), &tenant.id).await?;
                    let mut allowed = Vec::new();
                    if access.project_level(&project.id) >= Level::Manager {
                        allowed.push("push");
                    }
                    if access.project_visible(&project.id) {
                        allowed.push("pull");
                    }
                    allowed
                }
                Asker::Server { pool, .. } => {
                    let serves: Option<i64> = sqlx::query_scalar(
                        "SELECT 1 FROM stages WHERE project_id = $1 AND pool = $2 LIMIT 1",
                    )
                    .bind(&project.id)
                    .bind(pool)
                    .fetch_optional(database.reader())
                    .await?;
                    if serves.is_some() {
                        vec!["pull"]
                    } else {
                        Vec::new()
                    }
                }
            }
        }
        _ => Vec::new(),
    };
    let actions: Vec<String> = requested
        .actions
        .iter()
        .filter(|action| allowed.contains(&action.as_str()))
        .cloned()
        .collect();
    Ok((!actions.is_empty()).then(|| Granted {
        kind: requested.kind.clone(),
        name: requested.name.clone(),
        actions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_read_with_names_that_hold_colons() {
        assert_eq!(
            Requested::parse("repository:studio/hello:push,pull"),
            Some(Requested {
                kind: "repository".to_owned(),
                name: "studio/hello".to_owned(),
                actions: vec!["push".to_owned(), "pull".to_owned()],
            })
        );
        assert_eq!(
            Requested::parse("registry:catalog:*").map(|scope| scope.actions),
            Some(vec!["*".to_owned()])
        );
        assert_eq!(
            Requested::parse("repository:host:5000/a:pull").map(|scope| scope.name),
            Some("host:5000/a".to_owned())
        );
        assert_eq!(Requested::parse("repository"), None);
        assert_eq!(Requested::parse(":studio/hello:pull"), None);
    }
}
