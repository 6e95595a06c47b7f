//! The playground: a page in the browser where a developer plays their game as players, one per
//! tab (`docs/playground.md`). The page is plain HTML and JavaScript kept in the binary; it
//! speaks the public player API like any game client, so it needs no route of its own for
//! that. What it does need from the platform is served here:
//!
//! - `/play/` and its script and style;
//! - `/play/config.json`: the stage `rally dev` serves, so that its page opens on the game at
//!   once; on `rally server` none, and the page asks a developer to sign in first;
//! - `/play/stages/{tenant}/{project}/{stage}/view.js`: the game's own view, `web/view.js` in
//!   the bundle of the stage's active deployment. It is the game's client code, so only
//!   developers who may see the stage get it, except for `rally dev`'s own stage.

use crate::error::ApiError;
use crate::permissions::StageScope;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// Where a game keeps its view in its bundle.
pub const VIEW_PATH: &str = "web/view.js";

const INDEX: &str = include_str!("../playground/index.html");
const SCRIPT: &str = include_str!("../playground/playground.js");
const STYLE: &str = include_str!("../playground/playground.css");

/// The playground's routes, or none when `playground = false`.
pub fn routes(enabled: bool) -> Router<AppState> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/play", get(|| async { Redirect::permanent("/play/") }))
        .route(
            "/play/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/play/playground.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/play/playground.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/play/config.json", get(config))
        .route("/play/stages/{tenant}/{project}/{stage}/view.js", get(view))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    // The page changes with the binary; `no-cache` revalidates rather than serving an old one.
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// What the page learns on load.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlaygroundConfig {
    /// `tenant/project/stage` of the game `rally dev` serves; `None` on `rally server`.
    pub stage: Option<String>,
}

async fn config(State(state): State<AppState>) -> Json<PlaygroundConfig> {
    Json(PlaygroundConfig {
        stage: state.config.playground_stage.clone(),
    })
}

#[derive(Debug, Deserialize)]
struct ViewPath {
    tenant: String,
    project: String,
    stage: String,
}

/// The game's view from the active deployment's bundle.
async fn view(
    State(state): State<AppState>,
    Path(path): Path<ViewPath>,
    mut parts: Parts,
) -> Result<Response, ApiError> {
    let open = match &state.config.playground_stage {
        Some(open) => open_stage(&state, open, &path).await?,
        None => None,
    };
    let stage_id = match open {
        Some(stage_id) => stage_id,
        // Anyone else's stage, or one that does not exist: a developer who may see it, and
        // the same 404 for both to everybody else.
        None => {
            StageScope::from_request_parts(&mut parts, &state)
                .await?
                .stage
                .id
        }
    };
    let archive: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT b.content FROM deployments d \
         JOIN versions v ON v.id = d.version_id \
         JOIN bundles b ON b.sha256 = v.bundle_sha256 \
         WHERE d.stage_id = $1 AND d.status = 'active'",
    )
    .bind(&stage_id)
    .fetch_optional(state.database.reader())
    .await?;
    let archive = archive.ok_or(ApiError::NotFound { what: "game view" })?;
    let limits = state.config.bundle_limits();
    let view = tokio::task::spawn_blocking(move || {
        rally_sdk::bundle::unpack(&archive, &limits).map(|(_, mut files)| files.remove(VIEW_PATH))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?
    .ok_or(ApiError::NotFound { what: "game view" })?;
    Ok((
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        view,
    )
        .into_response())
}

/// The id of the stage `path` asks for when it is `rally dev`'s own, named `tenant/project/stage`
/// in `open`.
async fn open_stage(
    state: &AppState,
    open: &str,
    path: &ViewPath,
) -> Result<Option<String>, ApiError> {
    let mut segments = open.splitn(3, '/');
    let (Some(tenant), Some(project), Some(stage)) =
        (segments.next(), segments.next(), segments.next())
    else {
        return Ok(None);
    };
    let find = |tenant, project, stage| {
        crate::players::find_stage(&state.database, tenant, project, stage)
    };
    let found = match (
        find(tenant, project, stage).await,
        find(&path.tenant, &path.project, &path.stage).await,
    ) {
        (Ok(open), Ok(asked)) => (open == asked).then_some(asked),
        (Err(ApiError::NotFound { .. }), _) | (_, Err(ApiError::NotFound { .. })) => None,
        (Err(error), _) | (_, Err(error)) => return Err(error),
    };
    Ok(found)
}
