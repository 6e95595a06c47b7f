//! `spawn_app` and friends: a real platform per test, on a fresh database of either backend.

use rally_platform::config::Config;
use rally_platform::server::{serve, AppState, Platform};
use rally_sdk::RallyClient;
use secrecy::SecretString;
use sqlx::Connection;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// Runs each named `async fn(Backend)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database: a SQLite file in a temporary directory, or a new database on the
/// test PostgreSQL server.
pub struct TestDatabase {
    pub url: String,
    pub directory: TempDir,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", directory.path().join("rally.db").display()),
            Backend::Postgres => create_postgres_database().await,
        };
        Self { url, directory }
    }
}

async fn create_postgres_database() -> String {
    let server = std::env::var("RALLY_TEST_POSTGRES_URL").expect(
        "RALLY_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts a \
         throwaway PostgreSQL, or point the variable at a server whose user may create databases",
    );
    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(&server)
        .await
        .expect("connect to the test PostgreSQL server");
    let name = format!("rally_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .expect("create a test database");
    connection.close().await.ok();
    let (base, _) = server.rsplit_once('/').expect("URL has a database path");
    format!("{base}/{name}")
}

/// A platform serving on a loopback port.
pub struct TestApp {
    pub url: String,
    pub state: AppState,
    pub config: Config,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    pub database: TestDatabase,
}

impl TestApp {
    /// An anonymous client.
    pub fn client(&self) -> RallyClient {
        RallyClient::new(&self.url).unwrap()
    }

    /// A client signed in as the admin.
    pub async fn admin(&self) -> RallyClient {
        let tokens = self.client().login("admin", ADMIN_PASSWORD).await.unwrap();
        self.client().authenticated(&tokens.access_token)
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(self) -> TestDatabase {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        self.database
    }

    /// Stops and starts again on the same database and data directory.
    pub async fn restart(self) -> TestApp {
        let config = self.config.clone();
        let database = self.stop().await;
        start(config, database).await
    }
}

pub fn test_config(database: &TestDatabase) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: database.directory.path().join("data"),
        database_url: Some(SecretString::from(database.url.clone())),
        admin_password: Some(SecretString::from(ADMIN_PASSWORD)),
        shutdown_grace_secs: 5,
        // Uploads are checked with it even where no runtime starts.
        runtime_binary: Some(crate::runtimes::runtime_binary()),
        ..Config::default()
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let database = TestDatabase::create(backend).await;
    start(test_config(&database), database).await
}

pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let database = TestDatabase::create(backend).await;
    let mut config = test_config(&database);
    adjust(&mut config);
    start(config, database).await
}

pub async fn start(config: Config, database: TestDatabase) -> TestApp {
    let platform = Platform::start(config.clone())
        .await
        .expect("platform starts");
    serve_platform(platform, config, database).await
}

/// A platform whose runtimes are placed by `pool` rather than run as local processes.
pub async fn spawn_app_with_pool(
    backend: Backend,
    pool: std::sync::Arc<dyn rally_platform::pools::RuntimePool>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let database = TestDatabase::create(backend).await;
    let mut config = Config {
        runtime_stop_grace_secs: 1,
        ..test_config(&database)
    };
    adjust(&mut config);
    let platform = Platform::start_with_pool(config.clone(), |_| pool)
        .await
        .expect("platform starts");
    serve_platform(platform, config, database).await
}

async fn serve_platform(platform: Platform, config: Config, database: TestDatabase) -> TestApp {
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let state = platform.state.clone();
    let server = tokio::spawn(serve(listener, platform.state, shutdown.clone()));
    TestApp {
        url: format!("http://{address}"),
        state,
        config,
        shutdown,
        server,
        database,
    }
}

/// Sends a raw request, for bodies the typed client cannot produce.
pub async fn raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{}", app.url, path))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

/// The `code` of an error body.
pub fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// Asserts that a client call failed with `status` and `code`.
pub fn assert_api_error<T: std::fmt::Debug>(
    result: Result<T, rally_sdk::ClientError>,
    status: u16,
    code: &str,
) {
    match result {
        Err(rally_sdk::ClientError::Api {
            status: got_status,
            code: got_code,
            ..
        }) => {
            assert_eq!((got_status, got_code.as_str()), (status, code));
        }
        other => panic!("expected HTTP {status} {code}, got {other:?}"),
    }
}

/// Sends the head of a request announcing a `length`-byte body plus its first kilobyte, then
/// reads the answer: it must come without the rest of the body. Returns the raw answer.
pub async fn announce_body(
    app: &TestApp,
    path: &str,
    content_type: &str,
    length: u64,
    token: Option<&str>,
) -> String {
    announce_body_with(app, path, content_type, Some(length), token, &[]).await
}

/// [`announce_body`] with more headers; with no `length`, a request with an empty body.
pub async fn announce_body_with(
    app: &TestApp,
    path: &str,
    content_type: &str,
    length: Option<u64>,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: rally\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\n",
        length.unwrap_or(0)
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    if length.is_some() {
        socket.write_all(&[b'x'; 1024]).await.unwrap();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("}}") {
            let count = socket.read(&mut buffer).await.unwrap();
            if count == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..count]);
        }
    })
    .await;
    assert!(read.is_ok(), "the platform waited for the body of {path}");
    String::from_utf8_lossy(&answer).into_owned()
}
