//! Players and their clients: the HTTP side of the player protocol. A player (a user within a
//! stage) creates a client on the stage's current deployment, then holds it through the
//! WebSocket ([`socket`]) or the long-poll fallback ([`poll`]). Profiles, written by the game
//! logic, are readable here by the player and by the stage's viewers.

mod poll;
pub mod socket;

use crate::auth::{Allowed, Caller};
use crate::dispatcher::{Dispatcher, NewClient};
use crate::error::{ApiError, Json, Path};
use crate::leases::StageHolder;
use crate::permissions::{StagePath, StageScope};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, Database};
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use rally_sdk::player::{ClientInfo, CreatedClient, Player, PlayerCommand};
use rally_sdk::runtime::Payload;
use rally_sdk::wire::{ErrorBody, Role};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_client))
        .routes(routes!(get_client, delete_client))
        .routes(routes!(socket::player_socket))
        .routes(routes!(poll::poll_events))
        .routes(routes!(poll::send_commands))
        .routes(routes!(my_player))
        .routes(routes!(get_player))
}

/// Player tokens only.
#[derive(Debug)]
pub struct Players;
impl Allowed for Players {
    const ROLES: &'static [Role] = &[Role::Player];
}

#[derive(Debug, Deserialize)]
struct StageSegments {
    tenant: String,
    project: String,
    stage: String,
}

/// A stage by ids or aliases, for players: every stage is reachable, only existence matters.
pub(crate) async fn find_stage(
    database: &Database,
    tenant: &str,
    project: &str,
    stage: &str,
) -> Result<String, ApiError> {
    let tenant = crate::catalog::find_tenant(database, tenant)
        .await?
        .ok_or(ApiError::NotFound { what: "tenant" })?;
    let project = crate::catalog::find_project(database, &tenant.id, project)
        .await?
        .ok_or(ApiError::NotFound { what: "project" })?;
    let stage = crate::catalog::find_stage(database, &project.id, stage)
        .await?
        .ok_or(ApiError::NotFound { what: "stage" })?;
    Ok(stage.id)
}

/// Creates a client of the calling player on the stage's current deployment (and the player,
/// on its first visit to the stage). The client then has the reconnect grace period to open
/// its socket or start polling.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/clients",
    tag = "players", params(StagePath), security(("bearer" = [])),
    responses((status = 201, body = CreatedClient), (status = "4XX", body = ErrorBody)))]
async fn create_client(
    caller: Caller<Players>,
    State(state): State<AppState>,
    Path(path): Path<StageSegments>,
) -> Result<(StatusCode, Json<CreatedClient>), ApiError> {
    let stage_id = find_stage(&state.database, &path.tenant, &path.project, &path.stage).await?;
    let deployment = sqlx::query(
        "SELECT d.id, v.number FROM deployments d JOIN versions v ON v.id = d.version_id \
         WHERE d.stage_id = $1 AND d.status = 'active'",
    )
    .bind(&stage_id)
    .fetch_optional(state.database.reader())
    .await?
    .ok_or_else(|| {
        ApiError::conflict(
            "stage_offline",
            "the stage has no deployment; nothing to play yet",
        )
    })?;
    let deployment_id: String = deployment.get(0);
    let version: i64 = deployment.get(1);
    // Several nodes: the client is recorded on the node serving the stage, which takes it on
    // when it connects there.
    let (node_id, node_url) = match serve_stage(&state, &stage_id).await? {
        StageHolder::Here => (state.runtimes.node_id.clone(), None),
        StageHolder::Node { id, url } => (id, Some(url)),
        StageHolder::Moving => return Err(stage_moving()),
    };

    let now = now_millis();
    let user_id = caller.subject;
    let mut transaction = state.database.writer().begin().await?;
    let disabled: Option<Option<i64>> =
        sqlx::query_scalar("SELECT disabled_at FROM users WHERE id = $1")
            .bind(&user_id)
            .fetch_optional(&mut *transaction)
            .await?;
    if !matches!(disabled, Some(None)) {
        return Err(ApiError::unauthorized(
            "user_disabled",
            "this user cannot play any more",
        ));
    }
    sqlx::query(
        "INSERT INTO players (id, user_id, stage_id, profile, created_at, updated_at) \
         VALUES ($1, $2, $3, '{}', $4, $4) ON CONFLICT (user_id, stage_id) DO NOTHING",
    )
    .bind(new_id())
    .bind(&user_id)
    .bind(&stage_id)
    .bind(now)
    .execute(&mut *transaction)
    .await?;
    let player =
        sqlx::query("SELECT id, profile FROM players WHERE user_id = $1 AND stage_id = $2")
            .bind(&user_id)
            .bind(&stage_id)
            .fetch_one(&mut *transaction)
            .await?;
    let player_id: String = player.get(0);
    let profile: serde_json::Value =
        serde_json::from_str(&player.get::<String, _>(1)).unwrap_or_default();
    let client_id = new_id();
    sqlx::query(
        "INSERT INTO clients (id, player_id, user_id, deployment_id, node_id, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6)",
    )
    .bind(&client_id)
    .bind(&player_id)
    .bind(&user_id)
    .bind(&deployment_id)
    .bind(&node_id)
    .bind(now)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;

    if node_url.is_none() {
        state.dispatcher.add_client(NewClient {
            client_id: client_id.clone(),
            user_id: user_id.clone(),
            player_id: player_id.clone(),
            deployment_id: deployment_id.clone(),
            runtime_id: None,
            group: None,
            profile,
            restored: false,
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedClient {
            socket_path: rally_sdk::player::socket_path(&client_id),
            client_id,
            user_id,
            player_id,
            deployment_id,
            version,
            node_url,
        }),
    ))
}

/// The node serving a stage's players (`docs/nodes.md`).
async fn serve_stage(state: &AppState, stage_id: &str) -> Result<StageHolder, ApiError> {
    Ok(crate::leases::serve_stage(
        &state.database,
        &state.runtimes.node_id,
        stage_id,
        crate::leases::ttl(&state.config),
    )
    .await?)
}

#[derive(Debug, Deserialize)]
struct ClientPath {
    client: String,
}

/// A client the caller owns: live ones from the dispatcher, deleted ones (kept a day) from
/// the database with why they ended. Another player's client is not found.
async fn owned_client(
    state: &AppState,
    user_id: &str,
    client_id: &str,
) -> Result<ClientInfo, ApiError> {
    if let Some(info) = state.dispatcher.client_info(client_id, user_id) {
        return Ok(info);
    }
    let row = sqlx::query(
        "SELECT deployment_id, reason, status FROM clients WHERE id = $1 AND user_id = $2",
    )
    .bind(client_id)
    .bind(user_id)
    .fetch_optional(state.database.reader())
    .await?
    .ok_or(ApiError::NotFound { what: "client" })?;
    if row.get::<String, _>(2) == "active" {
        // Recorded on another node: served there, or taken on here.
        live_client(state, user_id, client_id).await?;
        return state
            .dispatcher
            .client_info(client_id, user_id)
            .ok_or(ApiError::NotFound { what: "client" });
    }
    Ok(ClientInfo {
        client_id: client_id.to_owned(),
        user_id: user_id.to_owned(),
        deployment_id: row.get(0),
        status: "deleted".to_owned(),
        connected: false,
        runtime: None,
        reason: row.get(1),
    })
}

/// For connections to a client: live and served here (taken on from the database when it was
/// created on, or left by, another node), or 421 `wrong_node` naming the node that serves it,
/// or 410 `client_deleted` saying why, or 404.
async fn live_client(state: &AppState, user_id: &str, client_id: &str) -> Result<(), ApiError> {
    if state.dispatcher.client_owner(client_id).as_deref() == Some(user_id) {
        return Ok(());
    }
    if let Some(info) = state.dispatcher.client_info(client_id, user_id) {
        return Err(deleted(info.reason));
    }
    let row = sqlx::query(
        "SELECT c.status, c.reason, d.stage_id FROM clients c \
         JOIN deployments d ON d.id = c.deployment_id WHERE c.id = $1 AND c.user_id = $2",
    )
    .bind(client_id)
    .bind(user_id)
    .fetch_optional(state.database.reader())
    .await?
    .ok_or(ApiError::NotFound { what: "client" })?;
    if row.get::<String, _>(0) == "deleted" {
        return Err(deleted(row.get(1)));
    }
    match serve_stage(state, &row.get::<String, _>(2)).await? {
        StageHolder::Node { url, .. } => Err(ApiError::WrongNode { node_url: url }),
        StageHolder::Moving => Err(stage_moving()),
        StageHolder::Here => {
            let node_id = &state.runtimes.node_id;
            if state
                .dispatcher
                .adopt(&state.database, node_id, client_id)
                .await?
            {
                tracing::info!(%client_id, "took on a client recorded on another node");
                Ok(())
            } else {
                Err(deleted(Some("deleted meanwhile".to_owned())))
            }
        }
    }
}

fn stage_moving() -> ApiError {
    ApiError::Rejected {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "stage_moving",
        message: "this stage is moving to another node (a move, or its node stopped \
                  answering); retry in a moment"
            .to_owned(),
    }
}

fn deleted(reason: Option<String>) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::GONE,
        code: "client_deleted",
        message: format!(
            "this client was deleted ({}); create a new one",
            reason.unwrap_or_default()
        ),
    }
}

/// One of the caller's clients.
#[utoipa::path(get, path = "/api/v1/clients/{client}", tag = "players",
    params(("client" = String, Path, description = "client id")), security(("bearer" = [])),
    responses((status = 200, body = ClientInfo), (status = "4XX", body = ErrorBody)))]
async fn get_client(
    caller: Caller<Players>,
    State(state): State<AppState>,
    Path(path): Path<ClientPath>,
) -> Result<Json<ClientInfo>, ApiError> {
    Ok(Json(
        owned_client(&state, &caller.subject, &path.client).await?,
    ))
}

/// Ends one of the caller's clients now (reason `left`): its runtime hears `client_removed`.
#[utoipa::path(delete, path = "/api/v1/clients/{client}", tag = "players",
    params(("client" = String, Path, description = "client id")), security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn delete_client(
    caller: Caller<Players>,
    State(state): State<AppState>,
    Path(path): Path<ClientPath>,
) -> Result<StatusCode, ApiError> {
    live_client(&state, &caller.subject, &path.client).await?;
    state.dispatcher.delete_client(&path.client, "left", None);
    Ok(StatusCode::NO_CONTENT)
}

fn player(row: &AnyRow) -> Player {
    Player {
        player_id: row.get("id"),
        user_id: row.get("user_id"),
        stage_id: row.get("stage_id"),
        profile: serde_json::from_str(&row.get::<String, _>("profile")).unwrap_or_default(),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

async fn find_player(
    database: &Database,
    stage_id: &str,
    user_id: &str,
) -> Result<Player, ApiError> {
    let row = sqlx::query(
        "SELECT id, user_id, stage_id, profile, created_at, updated_at FROM players \
         WHERE stage_id = $1 AND user_id = $2",
    )
    .bind(stage_id)
    .bind(user_id)
    .fetch_optional(database.reader())
    .await?
    .ok_or(ApiError::NotFound { what: "player" })?;
    Ok(player(&row))
}

/// The calling player on a stage, with the profile its game logic keeps.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/players/me",
    tag = "players", params(StagePath), security(("bearer" = [])),
    responses((status = 200, body = Player), (status = "4XX", body = ErrorBody)))]
async fn my_player(
    caller: Caller<Players>,
    State(state): State<AppState>,
    Path(path): Path<StageSegments>,
) -> Result<Json<Player>, ApiError> {
    let stage_id = find_stage(&state.database, &path.tenant, &path.project, &path.stage).await?;
    Ok(Json(
        find_player(&state.database, &stage_id, &caller.subject).await?,
    ))
}

/// A player of the stage by user id (viewers of the stage).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/players/{user}",
    tag = "players",
    params(StagePath, ("user" = String, Path, description = "user id")),
    security(("bearer" = [])),
    responses((status = 200, body = Player), (status = "4XX", body = ErrorBody)))]
async fn get_player(
    scope: StageScope,
    State(state): State<AppState>,
    Path(path): Path<UserPath>,
) -> Result<Json<Player>, ApiError> {
    Ok(Json(
        find_player(&state.database, &scope.stage.id, &path.user).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct UserPath {
    user: String,
}

/// Applies one command of a client, from its socket or a long-poll batch. Refusals reach the
/// client as `error` events, in order with everything else it receives.
pub fn handle_command(dispatcher: &Dispatcher, client_id: &str, command: PlayerCommand) {
    match command {
        PlayerCommand::Message {
            text: Some(text),
            binary: None,
        } => {
            if text.len() > dispatcher.limits().max_frame_bytes {
                frame_too_large(dispatcher, client_id);
            } else {
                dispatcher.client_message(client_id, Payload::Text(text));
            }
        }
        PlayerCommand::Message {
            text: None,
            binary: Some(base64),
        } => match base64::engine::general_purpose::STANDARD.decode(&base64) {
            Ok(bytes) if bytes.len() > dispatcher.limits().max_frame_bytes => {
                frame_too_large(dispatcher, client_id)
            }
            Ok(bytes) => dispatcher.client_message(client_id, Payload::Binary(bytes.into())),
            Err(_) => dispatcher.client_error(client_id, "invalid_command", "binary is base64"),
        },
        PlayerCommand::Message { .. } => dispatcher.client_error(
            client_id,
            "invalid_command",
            "a message has exactly one of text and binary",
        ),
        PlayerCommand::Leave => dispatcher.delete_client(client_id, "left", None),
    }
}

/// Reads a text frame as a command; an unreadable one becomes an `error` event.
pub fn parse_command(
    dispatcher: &Dispatcher,
    client_id: &str,
    text: &str,
) -> Option<PlayerCommand> {
    match serde_json::from_str::<PlayerCommand>(text) {
        Ok(command) => Some(command),
        Err(problem) => {
            let (code, message) = match serde_json::from_str::<serde_json::Value>(text) {
                Err(_) => (
                    "malformed_json",
                    format!("a command is a JSON object: {problem}"),
                ),
                Ok(value) if value.get("type").and_then(|kind| kind.as_str()).is_some() => {
                    let kind = value["type"].as_str().unwrap_or_default();
                    if matches!(kind, "message" | "leave") {
                        ("invalid_command", format!("{problem}"))
                    } else {
                        (
                            "unknown_command",
                            format!("unknown command type {kind:?}; expected message or leave"),
                        )
                    }
                }
                Ok(_) => (
                    "invalid_command",
                    "a command is an object with a \"type\"".to_owned(),
                ),
            };
            dispatcher.client_error(client_id, code, &message);
            None
        }
    }
}

pub fn frame_too_large(dispatcher: &Dispatcher, client_id: &str) {
    dispatcher.client_error(
        client_id,
        "frame_too_large",
        &format!(
            "frames are at most {} bytes; this one was dropped",
            dispatcher.limits().max_frame_bytes
        ),
    );
}
