//! The platform server: state, router and serving with graceful shutdown. Tests start it on
//! port 0 through [`Platform::start`] and [`serve`], exactly as `rally server` does.

use crate::accounts::{self, AdminBootstrap};
use crate::auth::{self, TokenService};
use crate::config::Config;
use crate::dispatcher::{Dispatcher, PlayerLimits};
use crate::error::{self, ApiError};
use crate::metrics::{self, Metrics};
use crate::pools::RuntimePool;
use crate::registry::signing::TokenSigner;
use crate::runtimes::{self, Runtimes};
pub use crate::state::AppState;
use crate::storage::{redact_url, Database};
use crate::{
    audit, deployments, grants, health, idempotency, openapi, players, projects, stages, tenants,
    users, versions,
};
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use axum::{middleware, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

/// A platform ready to serve: database migrated, signing key loaded, admin in place.
#[derive(Debug)]
pub struct Platform {
    pub state: AppState,
    pub admin: AdminBootstrap,
}

impl Platform {
    /// The embedded default: runtimes run as local processes.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, None).await
    }

    /// Runtimes placed by `pool` (made from this node's id) instead of local processes.
    pub async fn start_with_pool(
        config: Config,
        pool: impl FnOnce(&str) -> Arc<dyn RuntimePool>,
    ) -> anyhow::Result<Self> {
        Self::start_with(config, Some(Box::new(pool))).await
    }

    #[allow(clippy::type_complexity)]
    async fn start_with(
        config: Config,
        pool: Option<Box<dyn FnOnce(&str) -> Arc<dyn RuntimePool> + '_>>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let url = config.effective_database_url();
        let database = Database::open(&url, config.database_max_connections)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(&url)))?;
        tracing::info!(backend = database.backend().name(), "database ready");
        let tokens = TokenService::load(&config, &database)
            .await
            .context("cannot load the token signing key")?;
        let registry = Arc::new(
            TokenSigner::load(&database)
                .await
                .context("cannot load the registry token key")?,
        );
        let admin = accounts::ensure_admin(&database, config.admin_password.as_ref())
            .await
            .context("cannot create the admin account")?;
        let runtimes = match pool {
            None => Runtimes::new(&config, &database, registry.clone()),
            Some(pool) => Runtimes::with_pool(&config, &database, registry.clone(), pool),
        }
        .context("cannot prepare the runtime pool")?;
        // The advertised URL is written again once the listener is bound.
        crate::nodes::join(
            &database,
            &runtimes.node_id,
            config.advertise_url.as_deref().unwrap_or(""),
            &config,
        )
        .await
        .context("cannot join the platform's nodes")?;
        let dispatcher = Dispatcher::new(
            PlayerLimits::from_config(&config),
            database.clone(),
            runtimes.node_id.clone(),
        );
        let restored = dispatcher
            .restore(&database, &runtimes.node_id)
            .await
            .context("cannot load the clients of a previous run")?;
        if restored > 0 {
            tracing::info!(
                clients = restored,
                "clients of the previous run may reconnect"
            );
        }
        let state = AppState {
            uploads: Arc::new(tokio::sync::Semaphore::new(
                config.bundle_uploads_at_once as usize,
            )),
            config: Arc::new(config),
            database,
            tokens: Arc::new(tokens),
            registry,
            builds: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::new(Metrics::new()),
            runtimes: Arc::new(runtimes),
            dispatcher: Arc::new(dispatcher),
        };
        Ok(Self { state, admin })
    }
}

/// Every route, with the OpenAPI description of each. Request bodies are limited to
/// `body_limit_bytes`, except bundle uploads, which have their own limit.
pub fn api_router(config: &Config) -> OpenApiRouter<AppState> {
    let json_routes = OpenApiRouter::new()
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
        .merge(auth::routes::routes())
        .merge(accounts::routes())
        .merge(users::routes())
        .merge(tenants::routes())
        .merge(projects::routes())
        .merge(stages::routes())
        .merge(grants::routes())
        .merge(versions::routes())
        .merge(deployments::routes())
        .merge(audit::routes())
        .merge(runtimes::routes())
        .merge(crate::pools::api::routes())
        .merge(players::routes())
        .merge(crate::registry::routes())
        .merge(crate::builds::routes())
        .merge(crate::nodes::routes())
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes));
    let upload_routes = versions::upload_routes()
        .layer(RequestBodyLimitLayer::new(config.bundle_max_bytes as usize));
    OpenApiRouter::with_openapi(openapi::base())
        .merge(json_routes)
        .merge(upload_routes)
}

/// The platform's HTTP service.
pub fn app(state: AppState) -> Router {
    let (router, document) = api_router(&state.config).split_for_parts();
    openapi::publish(&document, &state.config);
    router
        .merge(crate::playground::routes(state.config.playground))
        .fallback(|| async { ApiError::NotFound { what: "route" } })
        // Limits are per route group (above); the extractors' own default limit is off.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(error::refuse_nul))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::keep_answers,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track_requests,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(error::shape_errors))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then drains requests in flight for at most the
/// configured grace period.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace();
    let address = listener.local_addr()?;
    let platform_url = state
        .config
        .runtime_platform_url
        .clone()
        .unwrap_or_else(|| {
            // Runtimes run on this host: a wildcard listen address is reached over loopback.
            let host = if address.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                address.ip().to_string()
            };
            format!("http://{host}:{}", address.port())
        });
    let advertised = state
        .config
        .advertise_url
        .clone()
        .unwrap_or_else(|| platform_url.clone());
    state.runtimes.set_platform_url(platform_url);
    // Written before serving, so that whoever reads the nodes finds this one where it listens.
    if let Err(error) =
        crate::nodes::advertise(&state.database, &state.runtimes.node_id, &advertised).await
    {
        tracing::warn!(%error, "cannot write this node's URL; the heartbeat will");
    }
    let heartbeat = tokio::spawn(crate::nodes::heartbeat(
        state.database.clone(),
        state.runtimes.node_id.clone(),
        advertised,
        Duration::from_secs(state.config.node_heartbeat_secs),
        shutdown.clone(),
    ));
    tokio::spawn(clean_expired_tokens(state.clone(), shutdown.clone()));
    let supervisor = tokio::spawn(runtimes::supervise(state.clone(), shutdown.clone()));
    if let Err(error) = crate::builds::requeue_interrupted(&state).await {
        tracing::warn!(%error, "cannot requeue interrupted builds");
    }
    let builder = tokio::spawn(crate::builds::run(state.clone(), shutdown.clone()));
    // Small request/response exchanges must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "shutdown deadline reached; dropping open requests");
            Ok(())
        }
    };
    // Player sockets close with "restarting" (clients stay, to reconnect to the next run), the
    // supervisor stops this node's runtimes, and the journal is written, before the database
    // goes.
    state.dispatcher.shutdown.cancel();
    if let Err(error) = builder.await {
        tracing::error!(%error, "builder failed");
    }
    if let Err(error) = supervisor.await {
        tracing::error!(%error, "runtime supervisor failed");
    }
    if let Err(error) = heartbeat.await {
        tracing::error!(%error, "node heartbeat failed");
    }
    // Its runtimes are stopped: other nodes may take its stages at once.
    if let Err(error) = crate::leases::give_back_all(&state.database, &state.runtimes.node_id).await
    {
        tracing::warn!(%error, "cannot give this node's leases back");
    }
    if let Err(error) = crate::nodes::leave(&state.database, &state.runtimes.node_id).await {
        tracing::warn!(%error, "cannot mark this node stopped");
    }
    // The journal retries what the database refuses; a database that stays away past the grace
    // period cannot stop the platform from stopping.
    if tokio::time::timeout(grace, state.dispatcher.flush())
        .await
        .is_err()
    {
        tracing::error!(
            grace_secs = grace.as_secs(),
            "the database did not take the last client changes before the shutdown deadline; they are lost"
        );
    }
    state.database.close().await;
    result
}

async fn clean_expired_tokens(state: AppState, shutdown: CancellationToken) {
    let mut every_hour = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = every_hour.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // Once for the whole platform: on the node holding the global lease.
        match crate::leases::take(
            &state.database,
            &state.runtimes.node_id,
            crate::leases::GLOBAL,
            crate::leases::ttl(&state.config),
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot check the global lease; the cleaning waits");
                continue;
            }
        }
        match auth::refresh::delete_expired(&state.database).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired refresh tokens deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete expired refresh tokens"),
        }
        if let Err(error) = idempotency::delete_expired(&state.database).await {
            tracing::warn!(%error, "cannot delete expired idempotency keys");
        }
        if let Err(error) = crate::registry::events::purge_old(&state.database).await {
            tracing::warn!(%error, "cannot forget old image pushes");
        }
        if let Err(error) = crate::dispatcher::journal::purge_deleted(&state.database).await {
            tracing::warn!(%error, "cannot purge deleted clients");
        }
    }
}
