//! Headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`) with fantoccini, for the tests of browser pages
//! (`tests/ui.rs`, `tests/edge.rs`). Without `chromedriver` on PATH
//! [`Browser::start`] says why and gives None, unless
//! `STREAMCAR_REQUIRE_BROWSER=1` (set by `.ci/run`), where it fails.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::{TestApp, free_port};

/// Starts a [`Browser`], or returns from the calling test (which then
/// passes) when [`Browser::start`] gives None.
#[allow(unused_macros)] // each test binary uses a different subset
macro_rules! browser_or_skip {
    () => {
        match $crate::support::browser::Browser::start().await {
            Some(browser) => browser,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use browser_or_skip;

/// A `chromedriver` child and the browser profile it uses; both go on drop.
pub struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session at 1280×800, or
    /// None (after saying why) when chromedriver is not installed and the
    /// browser is not required.
    pub async fn start() -> Option<Self> {
        let Some(chromedriver) = find_on_path("chromedriver") else {
            let why = "chromedriver is not on PATH (apt-get install chromium chromium-driver)";
            assert!(
                std::env::var("STREAMCAR_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "STREAMCAR_REQUIRE_BROWSER=1 but {why}"
            );
            eprintln!("skipping the browser test: {why}");
            return None;
        };
        let port = free_port();
        // Its own process group: the Chromium processes it starts are
        // killed with it on drop (SIGKILL to chromedriver alone orphans them).
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut browser = Self {
            driver,
            client: None,
            _profile: profile,
        };
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..200 {
            if let Ok(resp) = http.get(&status).send().await
                && resp.status().is_success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "chromedriver did not start");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,800",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        )])
        .collect::<Vec<_>>();
        let caps = json!({
            "goog:chromeOptions": { "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        browser.client = Some(client);
        Some(browser)
    }

    /// The WebDriver session.
    pub fn page(&self) -> &Client {
        self.client.as_ref().expect("session")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

// ---- waiting on the page (bounded polls) ---------------------------------

/// How long any one wait for the page may take.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(100);

/// chromedriver's browser console log (`POST /session/{id}/se/log`).
#[derive(Debug)]
pub struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_owned()),
        )
    }
}

/// Console entries at level SEVERE (errors, failed loads, CSP refusals).
pub async fn severe_console_entries(page: &Client) -> Vec<Value> {
    let log = page.issue_cmd(BrowserLog).await.expect("browser log");
    log.as_array()
        .expect("log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .cloned()
        .collect()
}

/// What the page itself caught (`window.streamcarErrors`, see ui/errors.js).
pub async fn page_errors(page: &Client) -> Vec<Value> {
    let errors = page
        .execute("return window.streamcarErrors || null;", vec![])
        .await
        .expect("read page errors");
    errors
        .as_array()
        .expect("ui/errors.js ran and installed window.streamcarErrors")
        .clone()
}

/// The text of the first element matching `css`, or None.
pub async fn text_of(page: &Client, css: &str) -> Option<String> {
    let el = page.find(Locator::Css(css)).await.ok()?;
    el.text().await.ok()
}

/// Calls `probe` every [`POLL`], at most `within / POLL` times, until
/// `done` holds of what it gives: Ok with that, or Err with the last.
pub async fn poll<T>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> Result<T, Option<T>> {
    let mut last = None;
    for _ in 0..(within.as_millis() / POLL.as_millis()) {
        let seen = probe().await;
        if done(&seen) {
            return Ok(seen);
        }
        last = Some(seen);
        tokio::time::sleep(POLL).await;
    }
    Err(last)
}

/// Waits until the element `css` shows `want`.
pub async fn wait_text(page: &Client, css: &str, want: &str) {
    if let Err(seen) = poll(
        WAIT,
        async || text_of(page, css).await,
        |seen| seen.as_deref() == Some(want),
    )
    .await
    {
        panic!("{css}: waited for {want:?}, last saw {:?}", seen.flatten());
    }
}

/// Waits until the element `css` exists and its text contains `needle`.
pub async fn wait_contains(page: &Client, css: &str, needle: &str) {
    if let Err(seen) = poll(
        WAIT,
        async || text_of(page, css).await,
        |seen| seen.as_deref().is_some_and(|s| s.contains(needle)),
    )
    .await
    {
        panic!(
            "{css}: waited for text with {needle:?}, last saw {:?}",
            seen.flatten()
        );
    }
}

/// Waits until an element matching `css` exists and returns its text.
pub async fn wait_for(page: &Client, css: &str) -> String {
    match poll(WAIT, async || text_of(page, css).await, Option::is_some).await {
        Ok(Some(text)) => text,
        _ => panic!("{css} never appeared"),
    }
}

/// Waits until no element matches `css`.
pub async fn wait_gone(page: &Client, css: &str) {
    let count = async || page.find_all(Locator::Css(css)).await.expect("query").len();
    if poll(WAIT, count, |n| *n == 0).await.is_err() {
        panic!("{css} is still there");
    }
}

/// Opens the operator UI of `app` at `route` (`""`, or a `#/…` hash).
pub async fn open_ui(page: &Client, app: &TestApp, route: &str) {
    let url = format!("{}/ui{route}", app.base);
    page.goto(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
}

/// Polls the API path `path` of `app` until `check` holds of its body
/// (bounded by `within`), and returns that body.
pub async fn wait_api(
    app: &TestApp,
    path: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    match poll(within, async || app.get(path).await.body, check).await {
        Ok(body) => body,
        Err(last) => panic!(
            "{path} never reached {what}: {}",
            last.unwrap_or(Value::Null)
        ),
    }
}

/// Clicks the element `css` once it is there.
pub async fn click(page: &Client, css: &str) {
    wait_for(page, css).await;
    page.find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Answers the open confirmation dialog with its confirm or cancel button.
pub async fn answer_confirm(page: &Client, confirm: bool) {
    wait_for(page, "dialog#confirm[open]").await;
    click(
        page,
        if confirm {
            "#confirm-ok"
        } else {
            "#confirm-cancel"
        },
    )
    .await;
    wait_gone(page, "dialog#confirm[open]").await;
}
