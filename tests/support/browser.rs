//! Headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`) with fantoccini, for the tests of browser pages
//! (`tests/ui.rs`, `tests/edge.rs`). Without `chromedriver` on PATH
//! [`Browser::start`] says why and gives None, unless
//! `STREAMCAR_REQUIRE_BROWSER=1` (set by `.ci/run`), where it fails.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use super::free_port;

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
