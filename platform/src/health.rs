//! `/health` (the process is up) and `/ready` (it can serve: the database answers).

use crate::error::{ApiError, Json};
use crate::state::AppState;
use axum::extract::State;
use rally_sdk::wire::{ErrorBody, Health};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

fn status(status: &str) -> Json<Health> {
    Json(Health {
        status: status.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    status("ok")
}

/// The platform can serve: its database answers.
#[utoipa::path(get, path = "/ready", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.database.ping().await {
        Ok(()) => Ok(status("ready")),
        Err(error) => {
            tracing::warn!(%error, "database not reachable");
            Err(ApiError::Unavailable)
        }
    }
}
