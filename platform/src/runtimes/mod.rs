//! Runtimes: running instances of a deployment's lobby or match logic.
//!
//! - `node`: this node's runtime state (identity, pool, start turns), shared by the rest.
//! - `routes`: the token exchange, the runtime list and logs.
//! - `connection`: each runtime's WebSocket.
//! - `supervisor`: the loop that keeps runtimes as the deployments want them; it decides with
//!   the pure rules of `scaling` and acts through `lifecycle` (records and pool calls).

mod connection;
mod lifecycle;
pub mod node;
mod routes;
pub mod scaling;
mod supervisor;

pub use node::Runtimes;
pub use routes::on_server;
pub use supervisor::supervise;

use crate::state::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::runtime_token))
        .routes(routes!(connection::runtime_socket))
        .routes(routes!(routes::list_runtimes))
        .routes(routes!(routes::runtime_logs))
}
