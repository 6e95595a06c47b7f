//! `/health` (the process is up) and `/ready` (it can serve: the database answers).

use crate::error::{ApiError, Json};
use crate::server::AppState;
use axum::extract::State;
use rally_sdk::wire::Health;

fn status(status: &str) -> Json<Health> {
    Json(Health {
        status: status.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

pub async fn health() -> Json<Health> {
    status("ok")
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.database.ping().await {
        Ok(()) => Ok(status("ready")),
        Err(error) => {
            tracing::warn!(%error, "database not reachable");
            Err(ApiError::Unavailable)
        }
    }
}
