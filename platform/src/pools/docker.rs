//! Docker servers through bollard. Debian's engine 20.10 speaks Engine API 1.41 at most, so
//! every client negotiates its version with the daemon before its first call.

use bollard::Docker;
use rally_sdk::wire::DockerEndpoint;
use std::path::Path;
use std::time::Duration;

/// Seconds a call to a daemon may take before it counts as not answering.
const CALL_TIMEOUT_SECS: u64 = 10;

/// How long registering a server waits for its daemon.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for the daemon at `endpoint`, speaking the daemon's API version.
pub async fn connect(endpoint: &DockerEndpoint) -> Result<Docker, bollard::errors::Error> {
    let docker = if endpoint.url.starts_with("unix://") {
        Docker::connect_with_unix(
            &endpoint.url,
            CALL_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )?
    } else {
        let tls =
            endpoint
                .tls
                .as_ref()
                .ok_or(bollard::errors::Error::DockerResponseServerError {
                    status_code: 0,
                    message: "a TCP daemon needs TLS client certificates".to_owned(),
                })?;
        Docker::connect_with_ssl(
            &endpoint.url,
            Path::new(&tls.key),
            Path::new(&tls.cert),
            Path::new(&tls.ca),
            CALL_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )?
    };
    docker.negotiate_version().await
}

/// Whether the daemon at `endpoint` answers; the problem in words when it does not.
pub async fn check_daemon(endpoint: &DockerEndpoint) -> Result<(), String> {
    let check = async {
        let docker = connect(endpoint).await.map_err(|error| error.to_string())?;
        docker.ping().await.map_err(|error| error.to_string())?;
        Ok(())
    };
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}
