//! The handles every request and background task shares. It sits below the route modules and
//! names only what the layers under them define, so that the platform's imports form no cycle.

use crate::auth::tokens::TokenService;
use crate::config::Config;
use crate::dispatcher::Dispatcher;
use crate::metrics::registry::Metrics;
use crate::registry::signing::TokenSigner;
use crate::runtimes::node::Runtimes;
use crate::storage::Database;
use std::sync::Arc;

/// Cheap handles shared by every request.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub database: Database,
    pub tokens: Arc<TokenService>,
    /// Signs the image registry's tokens.
    pub registry: Arc<TokenSigner>,
    pub metrics: Arc<Metrics>,
    pub runtimes: Arc<Runtimes>,
    pub dispatcher: Arc<Dispatcher>,
    /// Woken when a build is queued.
    pub builds: Arc<tokio::sync::Notify>,
    /// Turns for version uploads (`bundle_uploads_at_once`).
    pub uploads: Arc<tokio::sync::Semaphore>,
}
