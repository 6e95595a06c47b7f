//! The playground (`docs/playground.md`): who may load a game's view, and the page itself as a
//! developer uses it: `rally dev examples/tictactoe`, the printed URL opened in two tabs of a
//! real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`),
//! two players playing a game to the end by clicking the page.

use crate::dev::Dev;
use crate::helpers::{code, raw, Backend, TestApp};
use crate::on_both_backends;
use crate::permissions::{developer, hello_bundle, manager_of};
use crate::players::{app, deploy};
use crate::tictactoe::tictactoe_bundle;
use fantoccini::{Client, ClientBuilder, Locator};
use rally_sdk::RallyClient;
use reqwest::Method;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const VIEW: &str = "/play/stages/studio/game/default/view.js";

async fn a_games_view_is_served_to_developers_who_may_see_its_stage(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (admin, _) = deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;

    let (status, page) = get(&app, "/play/", None).await;
    assert_eq!(status, 200);
    assert!(
        page.as_str().unwrap().contains("Rally playground"),
        "{page}"
    );
    let (_, config) = get(&app, "/play/config.json", None).await;
    assert_eq!(
        config["stage"],
        serde_json::Value::Null,
        "rally server asks for a sign-in"
    );

    // Nobody signed in, and a developer of another tenant, learn nothing.
    let (status, body) = get(&app, VIEW, None).await;
    assert_eq!((status, code(&body)), (401, "missing_token"), "{body}");
    admin.create_tenant("Other", Some("other")).await.unwrap();
    let stranger = manager(&app, &admin, "other", "stranger").await;
    let (status, body) = get(&app, VIEW, Some(&stranger)).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");

    // A developer of the game gets the bundle's web/view.js, as deployed.
    let member = manager(&app, &admin, "studio", "member").await;
    let (status, view) = get(&app, VIEW, Some(&member)).await;
    assert_eq!(status, 200, "{view}");
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tictactoe/web/view.js"
    ))
    .unwrap();
    assert_eq!(view.as_str().unwrap(), shipped);

    // A version without a view: the console alone.
    let version = admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    crate::players::deploy_version(&admin, "studio", version.number, serde_json::json!({})).await;
    let (status, body) = get(&app, VIEW, Some(&member)).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    app.stop().await;
}

async fn rally_devs_own_stage_needs_no_sign_in_and_no_other_does(backend: Backend) {
    let app = app(backend, |config| {
        config.playground_stage = Some("studio/game/default".to_owned());
    })
    .await;
    let (admin, _) = deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;
    let (_, config) = get(&app, "/play/config.json", None).await;
    assert_eq!(config["stage"], "studio/game/default");
    let (status, _) = get(&app, VIEW, None).await;
    assert_eq!(status, 200);

    admin
        .create_stage("studio", "game", "Live", Some("live"))
        .await
        .unwrap();
    let path = "/play/stages/studio/game/live/view.js";
    let (status, body) = get(&app, path, None).await;
    assert_eq!((status, code(&body)), (401, "missing_token"), "{body}");
    app.stop().await;
}

/// A developer managing `tenant`: their access token.
async fn manager(app: &TestApp, admin: &RallyClient, tenant: &str, name: &str) -> String {
    let account = developer(app, admin, name).await;
    let (tenant, grant) = manager_of(tenant, name);
    admin.grant(&tenant, &grant).await.unwrap();
    account.token
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    raw(app, Method::GET, path, None, Vec::new(), token).await
}

on_both_backends!(
    a_games_view_is_served_to_developers_who_may_see_its_stage,
    rally_devs_own_stage_needs_no_sign_in_and_no_other_does,
);

/// Debian's chromedriver on a free port, killed when dropped.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver; scripts/setup installs it)");
        Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless Chromium session, once the driver answers.
    async fn browser(&self) -> Client {
        let options = serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,820"],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let mut last_error = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => return client,
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no browser session from chromedriver: {last_error:?}");
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_tabs_play_tic_tac_toe_to_the_end_in_the_playground() {
    let data = tempfile::tempdir().unwrap();
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tictactoe");
    let mut dev = Dev::start(&bundle, data.path()).await;
    let line = dev.wait_for("playground ").await;
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("rally dev prints the playground's URL")
        .to_owned();
    let driver = Chromedriver::start();
    let browser = driver.browser().await;
    let outcome = play_a_game(&browser, &url).await;
    if let Err(error) = &outcome {
        let shown = what_the_tabs_show(&browser).await;
        let _ = browser.close().await;
        panic!("{error}; the tabs showed:\n{shown}");
    }
    let _ = browser.close().await;
    dev.stop().await;
}

/// `rally server`'s playground is for its developers: a sign-in first, then the stages that
/// account sees, the game's view from the deployed bundle, and a player in a lobby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rally_server_a_developer_signs_in_and_plays_a_stage_they_see() {
    let app = app(Backend::Sqlite, |_| {}).await;
    let (admin, _) = deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;
    manager(&app, &admin, "studio", "member").await;
    let driver = Chromedriver::start();
    let browser = driver.browser().await;
    let outcome = async {
        browser
            .goto(&format!("{}/play/#studio/game/default", app.url))
            .await?;
        wait_for(&browser, "#sign-in:not([hidden])").await?;
        assert!(
            browser.find(Locator::Css("#main[hidden]")).await.is_ok(),
            "nothing of the game shows before the sign-in"
        );
        browser
            .find(Locator::Id("username"))
            .await?
            .send_keys("member")
            .await?;
        let password = browser.find(Locator::Id("password")).await?;
        password.send_keys("developer-password").await?;
        browser
            .find(Locator::Css("#sign-in-form button"))
            .await?
            .click()
            .await?;
        // The stage asked for in the address opens, with the view from the deployed bundle.
        wait_for(&browser, "#sign-in[hidden]").await?;
        wait_for(&browser, ".ttt").await?;
        wait_for(&browser, "#stages option[value='studio/game/default']").await?;
        browser
            .find(Locator::Id("new-player"))
            .await?
            .click()
            .await?;
        wait_for(&browser, "#players option").await?;
        browser.find(Locator::Id("connect")).await?.click().await?;
        wait_for(&browser, "#events li[data-type=runtime_assigned]").await?;
        let welcome = wait_for(&browser, "#events li[data-type=message]").await?;
        assert!(welcome.text().await?.contains("welcome"));
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    if let Err(error) = outcome {
        let shown = what_the_tabs_show(&browser).await;
        let _ = browser.close().await;
        panic!("{error}; the page showed:\n{shown}");
    }
    let _ = browser.close().await;
    app.stop().await;
}

/// The text of every tab, for a failure message.
async fn what_the_tabs_show(browser: &Client) -> String {
    let mut shown = String::new();
    for tab in browser.windows().await.unwrap_or_default() {
        let _ = browser.switch_to_window(tab).await;
        if let Ok(body) = browser.find(Locator::Css("body")).await {
            shown += &body.text().await.unwrap_or_default();
            shown += "\n-----\n";
        }
    }
    shown
}

/// Waits this long at most for anything to show on the page.
const PATIENCE: Duration = Duration::from_secs(20);

async fn play_a_game(browser: &Client, url: &str) -> Result<(), fantoccini::error::CmdError> {
    let first = browser.window().await?;
    browser.goto(url).await?;
    join_and_ask_for_a_match(browser).await?;
    let second = browser.new_window(true).await?.handle;
    browser.switch_to_window(second.clone()).await?;
    browser.goto(url).await?;
    join_and_ask_for_a_match(browser).await?;

    // Both tabs show the board once the match starts; each knows its mark.
    let mut tabs = Vec::new();
    for tab in [first, second] {
        browser.switch_to_window(tab.clone()).await?;
        let board = wait_for(browser, ".ttt[data-phase=playing]").await?;
        let mark = board
            .attr("data-you")
            .await?
            .expect("the view shows the mark");
        tabs.push((mark, tab));
    }
    tabs.sort_by(|(one, _), (other, _)| one.cmp(other));
    let [(o_mark, o_tab), (x_mark, x_tab)] = <[_; 2]>::try_from(tabs).unwrap();
    assert_eq!((x_mark.as_str(), o_mark.as_str()), ("x", "o"));

    // x takes the top row; o plays 3 and 4 in between.
    let screenshot = std::env::var_os("RALLY_PLAYGROUND_SCREENSHOT");
    for (turn, cell) in [0, 3, 1, 4, 2].into_iter().enumerate() {
        let tab = if turn % 2 == 0 { &x_tab } else { &o_tab };
        browser.switch_to_window(tab.clone()).await?;
        let button = format!(".ttt-board button[data-cell='{cell}']:enabled");
        wait_for(browser, &button).await?.click().await?;
        if turn == 3 {
            if let Some(path) = &screenshot {
                // The README's picture: x's tab just before the winning move.
                browser.switch_to_window(x_tab.clone()).await?;
                wait_for(browser, ".ttt[data-board='xx-oo----']").await?;
                std::fs::write(path, browser.screenshot().await?).unwrap();
            }
        }
    }
    for (tab, outcome) in [(&x_tab, "You win!"), (&o_tab, "You lose.")] {
        browser.switch_to_window(tab.clone()).await?;
        wait_for(browser, ".ttt[data-result=win][data-winner=x]").await?;
        let status = browser
            .find(Locator::Css(".ttt-status"))
            .await?
            .text()
            .await?;
        assert!(status.contains(outcome), "{status:?}");
        // Back in a lobby, with the result in the player's record and every event logged.
        wait_for(browser, ".ttt[data-phase=lobby]").await?;
        wait_for(
            browser,
            "#events li[data-type=error][data-code=match_ended]",
        )
        .await?;
    }
    browser.switch_to_window(x_tab).await?;
    // The console: a raw frame the platform refuses, then a dropped socket resumed.
    browser
        .find(Locator::Id("kind"))
        .await?
        .select_by_value("frame")
        .await?;
    let composer = browser.find(Locator::Id("message")).await?;
    composer.send_keys(r#"{"type":"dance"}"#).await?;
    browser.find(Locator::Id("send")).await?.click().await?;
    wait_for(
        browser,
        "#events li[data-type=error][data-code=unknown_command]",
    )
    .await?;
    browser
        .find(Locator::Id("disconnect"))
        .await?
        .click()
        .await?;
    wait_for(browser, "#status[data-state=closed]").await?;
    browser.find(Locator::Id("resume")).await?.click().await?;
    wait_for(browser, "#status[data-state=open]").await?;
    let greetings = browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::XPath(
            "(//li[@data-type='greeted'])[2][contains(., '\"resumed\":true')]",
        ))
        .await?;
    assert!(
        greetings.text().await?.contains("\"runtime\":{"),
        "resumed in its lobby"
    );
    let record = wait_for(browser, ".ttt-record").await?;
    for _ in 0..100 {
        if record.text().await?.contains("1 won") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the winner's record shows no win: {:?}",
        record.text().await?
    );
}

/// A new player, a client, and "Find an opponent" once it is in a lobby.
async fn join_and_ask_for_a_match(browser: &Client) -> Result<(), fantoccini::error::CmdError> {
    wait_for(browser, ".ttt").await?;
    let players = browser.find(Locator::Css("#players")).await?;
    let before = players.find_all(Locator::Css("option")).await?.len();
    browser
        .find(Locator::Id("new-player"))
        .await?
        .click()
        .await?;
    wait_for(
        browser,
        &format!("#players option:nth-child({})", before + 1),
    )
    .await?;
    browser.find(Locator::Id("connect")).await?.click().await?;
    wait_for(browser, "#events li[data-type=runtime_assigned]").await?;
    wait_for(browser, "#events li[data-type=message]").await?;
    wait_for(browser, "[data-action=play]")
        .await?
        .click()
        .await?;
    wait_for(browser, ".ttt:not([data-phase=lobby])").await?;
    Ok(())
}

async fn wait_for(
    browser: &Client,
    css: &str,
) -> Result<fantoccini::elements::Element, fantoccini::error::CmdError> {
    browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
}
