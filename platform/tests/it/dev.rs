//! `rally dev` as a game developer runs it: the real `rally` binary as a child process on a copy
//! of the hello example, real players over WebSockets, edits saved into the directory, SIGTERM
//! at the end, and a second run on the same data directory.

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rally_sdk::player::{PlayerCommand, PlayerEvent, SUBPROTOCOL};
use rally_sdk::RallyClient;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const RALLY: &str = env!("CARGO_BIN_EXE_rally");
const ECHO: &str = "ctx.respond(client_id, payload, kind)";
const PREFIXED_ECHO: &str = "ctx.respond(client_id, \"echo: \" .. payload, kind)";

/// A running `rally dev`, its stderr read line by line.
pub(crate) struct Dev {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Everything printed so far, for the failure message.
    printed: Vec<String>,
    url: String,
}

impl Dev {
    pub(crate) async fn start(bundle: &Path, data_dir: &Path) -> Dev {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = tokio::process::Command::new(RALLY);
        command
            .arg("dev")
            .arg(bundle)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The platform's settings come from RALLY_* variables: none from the test's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RALLY_") {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child,
            lines,
            printed: Vec::new(),
            url: format!("http://{listen}"),
        }
    }

    /// Waits for a line containing `needle` and returns it.
    pub(crate) async fn wait_for(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.printed.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                outcome => panic!(
                    "no line with {needle:?} ({}); rally dev printed:\n{}",
                    if outcome.is_ok() {
                        "it exited"
                    } else {
                        "timed out"
                    },
                    self.printed.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, as Ctrl-C would: exits 0 and leaves none of its runtimes behind.
    pub(crate) async fn stop(mut self) {
        let pid = self.child.id().expect("still running") as i32;
        let processes = runtimes_of(&self.url);
        let launchers: Vec<i32> = processes
            .iter()
            .filter(|&&(_, parent)| parent == pid)
            .map(|&(launcher, _)| launcher)
            .collect();
        assert!(
            launchers.len() == 1
                && processes.len() > 1
                && processes
                    .iter()
                    .all(|(_, parent)| *parent == pid || launchers.contains(parent)),
            "rally dev runs its lobby runtimes under its own launcher: {processes:?}"
        );
        kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("rally dev stops within 15 s of SIGTERM")
            .unwrap();
        while let Ok(line) = self.lines.try_recv() {
            self.printed.push(line);
        }
        assert!(
            status.success(),
            "exit status {status}; rally dev printed:\n{}",
            self.printed.join("\n")
        );
        // The launcher notices on its own that rally dev is gone; runtimes were stopped.
        let mut left = runtimes_of(&self.url);
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = runtimes_of(&self.url);
        }
        assert!(left.is_empty(), "runtimes outlived rally dev: {left:?}");
    }
}

impl Drop for Dev {
    /// A failed test still stops `rally dev` the graceful way, so that it stops its runtimes.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

/// `(pid, parent pid)` of every `rally-runtime` process started for the platform at `url`
/// (its launcher and the runtimes forked from it), wherever it ended up (an orphan has another
/// parent).
fn runtimes_of(url: &str) -> Vec<(i32, i32)> {
    let platform = format!("RALLY_PLATFORM_URL={url}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (name) state ppid ...`; the name may hold spaces and parentheses.
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let parent = rest.split(' ').nth(1)?.parse().ok()?;
            let environment = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let ours = environment
                .split(|&byte| byte == 0)
                .any(|variable| variable == platform.as_bytes());
            (name == "rally-runtime" && ours).then_some((pid, parent))
        })
        .collect()
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A new player with a new client on `dev/<project>/default`, connected and greeted by the lobby.
struct Player {
    socket: Stream,
    version: i64,
    greeting: String,
}

impl Player {
    async fn join(url: &str, project: &str) -> Player {
        let anonymous = RallyClient::new(url).unwrap();
        let user = anonymous.create_user().await.unwrap();
        let tokens = anonymous
            .sign_in_user(&user.user_id, &user.secret)
            .await
            .unwrap();
        let client = anonymous
            .authenticated(&tokens.access_token)
            .create_client("dev", project, "default")
            .await
            .unwrap();
        let mut request = format!(
            "{}{}",
            url.replacen("http://", "ws://", 1),
            client.socket_path
        )
        .into_client_request()
        .unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", tokens.access_token)).unwrap(),
        );
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut player = Player {
            socket,
            version: client.version,
            greeting: String::new(),
        };
        player.greeting = player.next_text().await;
        player
    }

    /// The next text message from the runtime, skipping the other events.
    async fn next_text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), self.socket.next())
                .await
                .expect("a message within 15 s");
            let Some(Ok(Message::Text(text))) = frame else {
                match frame {
                    Some(Ok(_)) => continue,
                    other => panic!("the socket ended: {other:?}"),
                }
            };
            if let PlayerEvent::Message {
                text: Some(text), ..
            } = serde_json::from_str(text.as_str()).unwrap()
            {
                return text;
            }
        }
    }

    async fn say(&mut self, text: &str) -> String {
        let command = PlayerCommand::Message {
            text: Some(text.to_owned()),
            binary: None,
        };
        self.socket
            .send(Message::Text(
                serde_json::to_string(&command).unwrap().into(),
            ))
            .await
            .unwrap();
        self.next_text().await
    }
}

fn copy_hello_example(into: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let bundle = into.join("hello");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    bundle
}

fn edit(file: &Path, change: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, change(text)).unwrap();
}

#[tokio::test]
async fn rally_dev_redeploys_every_valid_change_and_a_rerun_finds_everything_again() {
    let workspace = tempfile::tempdir().unwrap();
    let bundle = copy_hello_example(workspace.path());
    let data_dir = workspace.path().join("data");
    let lobby = bundle.join("lobby.lua");

    let mut dev = Dev::start(&bundle, &data_dir).await;
    dev.wait_for("v1 deployed").await;
    dev.wait_for(&format!(
        "rally loadtest players --url {} --tenant dev --project hello --players 2 --rate 1",
        dev.url
    ))
    .await;
    let mut first = Player::join(&dev.url, "hello").await;
    assert_eq!(first.version, 1);
    assert!(
        first.greeting.starts_with("Hello from Rally!"),
        "{}",
        first.greeting
    );
    assert_eq!(first.say("ping").await, "ping");

    // A valid change becomes version 2 for new clients; the connected one stays on version 1.
    edit(&lobby, |text| text.replace(ECHO, PREFIXED_ECHO));
    let deployed = dev.wait_for("v2 deployed").await;
    assert!(deployed.contains("lobby.lua changed"), "{deployed}");
    let mut second = Player::join(&dev.url, "hello").await;
    assert_eq!(second.version, 2);
    assert_eq!(second.say("ping").await, "echo: ping");
    assert_eq!(first.say("still v1?").await, "still v1?");

    // A syntax error is refused with its file and line, and version 2 keeps serving.
    let valid_v2 = std::fs::read_to_string(&lobby).unwrap();
    edit(&lobby, |text| text + "\nthis is not lua (\n");
    let problem = dev.wait_for("does not load").await;
    assert!(problem.contains("lobby.lua:"), "{problem}");
    dev.wait_for("not deployed (lobby.lua changed); v2 keeps serving")
        .await;
    let mut third = Player::join(&dev.url, "hello").await;
    assert_eq!(third.version, 2);
    assert_eq!(third.say("ping").await, "echo: ping");

    // Undoing the mistake gives version 2's bundle again: nothing new is uploaded.
    std::fs::write(&lobby, &valid_v2).unwrap();
    dev.wait_for("the bundle is v2's again").await;
    let credentials_file = data_dir.join("dev-credentials.json");
    let credentials = std::fs::read_to_string(&credentials_file).unwrap();
    dev.stop().await;

    // A second run on the same data directory finds the accounts, tenant, project and version.
    let mut dev = Dev::start(&bundle, &data_dir).await;
    dev.wait_for("v2 is deployed and matches").await;
    dev.wait_for("watching").await;
    assert_eq!(
        std::fs::read_to_string(&credentials_file).unwrap(),
        credentials
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&credentials_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let credentials: serde_json::Value = serde_json::from_str(&credentials).unwrap();
    let api = RallyClient::new(&dev.url).unwrap();
    let admin = api
        .login("admin", credentials["admin"]["password"].as_str().unwrap())
        .await
        .unwrap();
    let admin = api.authenticated(&admin.access_token);
    let tenants = admin.list_tenants().await.unwrap();
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0].alias.as_deref(), Some("dev"));
    let developers = admin.list_developers().await.unwrap();
    assert_eq!(developers.len(), 1);
    assert_eq!(developers[0].username, "dev");
    let versions = admin.list_versions("dev", "hello").await.unwrap();
    assert_eq!(versions.len(), 2, "a rerun uploads nothing unchanged");
    // The developer account works with the kept password, for the rally CLI.
    api.login(
        "dev",
        credentials["developer"]["password"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let mut player = Player::join(&dev.url, "hello").await;
    assert_eq!(player.version, 2);
    assert_eq!(player.say("ping").await, "echo: ping");
    dev.stop().await;
}
