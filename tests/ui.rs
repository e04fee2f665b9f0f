//! The operator UI (`/ui`) in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`) with fantoccini.
//!
//! Everything the page shows is checked through its DOM against what the
//! API says; every wait is a bounded poll on DOM or API state. Without
//! `chromedriver` on PATH the tests print why and pass, unless
//! `STREAMCAR_REQUIRE_BROWSER=1` (set by `.ci/run`), where they fail.

mod support;

use std::path::PathBuf;

use fantoccini::Locator;
use fantoccini::key::Key;
use serde_json::{Value, json};
use support::TestApp;
use support::browser::{
    WAIT, answer_confirm, browser_or_skip, click, open_ui, page_errors, severe_console_entries,
    wait_api, wait_contains, wait_for, wait_gone, wait_text,
};

/// Dead-letters the next message of `group` with `error` (fetch + reject),
/// returning its message id.
async fn dead_letter(app: &TestApp, group: &str, error: &str) -> String {
    let got = app.fetch("orders", group, "worker-1", 1, 0).await;
    let m = got.first().expect("a message to dead-letter");
    let reply = app
        .post(
            &format!("/topics/orders/groups/{group}/reject"),
            &json!({"receipts": [m["receipt"]], "error": error}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    m["id"].as_str().expect("id").to_owned()
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("ui-screenshot.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sees_and_fixes_a_group_in_the_browser() {
    let browser = browser_or_skip!();
    let page = browser.page();
    let mut app = TestApp::start().await;
    // The app has a Redis of its own: a readable tenant name for the
    // README's screenshot collides with no other test.
    app.tenant = "acme".to_owned();
    let t = app.tenant.clone();
    for i in 1..=6 {
        app.publish(
            "orders",
            &json!({"payload": {"order": i, "sku": format!("widget-{i}")}, "key": format!("user-{}", i % 3)}),
        )
        .await;
    }
    app.group("orders", "audit", &json!({})).await;
    app.group("orders", "billing", &json!({"max_deliveries": 3}))
        .await;
    let first = dead_letter(&app, "billing", "model timeout after 30 s").await;
    let second = dead_letter(&app, "billing", "invalid prompt <b>not html</b>").await;
    let group_path = "/topics/orders/groups/billing";
    let before = app.get(group_path).await.body;
    assert_eq!(before["dead_lettered"], 2, "{before}");
    let lag_before = before["lag"].as_u64().expect("lag");

    // Tenants → tenant → topic → group, by clicking links.
    open_ui(page, &app, "").await;
    click(page, &format!("li[data-key='tenant:{t}'] a")).await;
    let topic_row = wait_for(page, "tr[data-key='topic:orders']").await;
    assert!(topic_row.starts_with("orders"), "{topic_row}");
    wait_text(page, "tr[data-key='topic:orders'] [data-field=length]", "6").await;
    click(page, "tr[data-key='topic:orders'] a").await;
    wait_text(
        page,
        "tr[data-key='group:billing'] [data-field=lag]",
        &lag_before.to_string(),
    )
    .await;
    wait_text(
        page,
        "tr[data-key='group:billing'] [data-field=dead_lettered]",
        "2",
    )
    .await;
    wait_text(page, "tr[data-key='group:audit'] [data-field=lag]", "6").await;
    click(page, "tr[data-key='group:billing'] a").await;
    wait_text(page, "[data-stat=lag]", &lag_before.to_string()).await;
    wait_text(page, "[data-stat=dead_lettered]", "2").await;
    let row = format!("tr[data-id='{first}']");
    wait_text(page, &format!("{row} [data-field=reason]"), "rejected").await;
    wait_text(
        page,
        &format!("{row} [data-field=last_error]"),
        "model timeout after 30 s",
    )
    .await;
    // An error text is shown as text, never parsed as markup.
    wait_text(
        page,
        &format!("tr[data-id='{second}'] [data-field=last_error]"),
        "invalid prompt <b>not html</b>",
    )
    .await;

    // Live refresh: new messages show up without a reload, and the chart
    // gets its samples.
    for i in 7..=9 {
        app.publish("orders", &json!({"payload": {"order": i}}))
            .await;
        let lag = app.get(group_path).await.body["lag"].as_u64().expect("lag");
        wait_text(page, "[data-stat=lag]", &lag.to_string()).await;
    }
    wait_for(page, "svg.chart path.line").await;
    // The README's screenshot: a taller window, so the dead letters show.
    page.set_window_size(1280, 1100).await.expect("resize");
    wait_text(page, "[data-stat=dead_lettered]", "2").await;
    let png = page.screenshot().await.expect("screenshot");
    page.set_window_size(1280, 800).await.expect("resize");
    let shot = screenshot_path();
    std::fs::create_dir_all(shot.parent().expect("dir")).expect("target dir");
    std::fs::write(&shot, png).expect("write the screenshot");
    eprintln!("screenshot: {}", shot.display());

    // Cancelling a delete changes nothing.
    click(page, &format!("{row} button[data-action=delete]")).await;
    answer_confirm(page, false).await;
    assert_eq!(app.get(group_path).await.body["dead_lettered"], 2);
    wait_for(page, &row).await;

    // The same by keyboard: Enter on the focused button opens the dialog,
    // whose focus starts on Cancel; Escape closes it and changes nothing.
    let delete = page
        .find(Locator::Css(&format!("{row} button[data-action=delete]")))
        .await
        .expect("delete button");
    page.execute(
        "arguments[0].focus();",
        vec![serde_json::to_value(&delete).expect("element")],
    )
    .await
    .expect("focus");
    delete
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("Enter");
    wait_for(page, "dialog#confirm[open]").await;
    let focused = page
        .execute("return document.activeElement.id;", vec![])
        .await
        .expect("active element");
    assert_eq!(focused, json!("confirm-cancel"));
    page.active_element()
        .await
        .expect("focus")
        .send_keys(&Key::Escape.to_string())
        .await
        .expect("Escape");
    wait_gone(page, "dialog#confirm[open]").await;
    assert_eq!(app.get(group_path).await.body["dead_lettered"], 2);
    wait_for(page, &row).await;

    // Replay: the dead letter leaves the list and the work the group owes
    // rises. (A replayed message was delivered before, so the API counts it
    // as `delayed`, a retry due now, not as `lag`, which counts entries
    // never delivered.)
    let owed = |g: &Value| {
        ["lag", "parked", "pending", "delayed"]
            .iter()
            .map(|f| g[f].as_u64().expect("count"))
            .sum::<u64>()
    };
    let now = app.get(group_path).await.body;
    click(page, &format!("{row} button[data-action=replay]")).await;
    answer_confirm(page, true).await;
    wait_gone(page, &row).await;
    let after = wait_api(&app, group_path, "one dead letter", WAIT, |g| {
        g["dead_lettered"] == 1
    })
    .await;
    assert_eq!(
        after["delayed"],
        now["delayed"].as_u64().expect("delayed") + 1,
        "{after}"
    );
    assert_eq!(owed(&after), owed(&now) + 1, "{now} → {after}");
    wait_text(page, "[data-stat=delayed]", &after["delayed"].to_string()).await;
    wait_text(page, "[data-stat=owed]", &owed(&after).to_string()).await;
    wait_text(page, "[data-stat=lag]", &after["lag"].to_string()).await;
    wait_text(page, "[data-stat=dead_lettered]", "1").await;
    let dlq = app.get(&format!("{group_path}/dlq")).await.body;
    let left: Vec<&str> = dlq["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(left, [second.as_str()]);

    // Delete, confirmed: the other dead letter goes for good.
    click(
        page,
        &format!("tr[data-id='{second}'] button[data-action=delete]"),
    )
    .await;
    answer_confirm(page, true).await;
    wait_gone(page, &format!("tr[data-id='{second}']")).await;
    wait_api(&app, group_path, "no dead letters", WAIT, |g| {
        g["dead_lettered"] == 0
    })
    .await;
    wait_for(page, "[data-key='empty:dlq']").await;

    // Pause and resume from the page; the API agrees.
    click(page, "button[data-action=pause]").await;
    wait_api(&app, group_path, "paused", WAIT, |g| g["paused"] == true).await;
    wait_text(page, "[data-stat=paused]", "paused").await;
    click(page, "button[data-action=resume]").await;
    wait_api(&app, group_path, "resumed", WAIT, |g| g["paused"] == false).await;
    wait_text(page, "[data-stat=paused]", "running").await;

    // Nothing went wrong in the page, and the console has no error.
    assert_eq!(page_errors(page).await, Vec::<Value>::new());
    assert_eq!(severe_console_entries(page).await, Vec::<Value>::new());

    // Phone width: the page fits (wide tables scroll inside their box).
    page.set_window_size(390, 844).await.expect("resize");
    let overflow = page
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .expect("measure");
    assert_eq!(overflow, json!(0), "the page scrolls sideways at 390 px");
    page.set_window_size(1280, 800).await.expect("resize");

    // Redis goes away: the page keeps the last data and says why (the 503
    // detail); when Redis is back it recovers by itself.
    app.redis.kill();
    let problem = app.get(group_path).await;
    assert_eq!(problem.status, 503, "{}", problem.body);
    let detail = problem.body["detail"].as_str().expect("detail").to_owned();
    wait_contains(page, "[data-key=stale]", &detail).await;
    wait_text(page, "#health", "Redis unavailable").await;
    app.redis.restart();
    wait_text(page, "#health", "ready").await;
    // This Redis keeps no data across a restart: the group is gone, and the
    // page says so while still showing what it last saw.
    wait_contains(page, "[data-key=stale]", "billing").await;
    app.group("orders", "billing", &json!({})).await;
    wait_gone(page, "[data-key=stale]").await;
    wait_text(page, "#health", "ready").await;
    assert_eq!(page_errors(page).await, Vec::<Value>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_api_token_once_and_keeps_it_for_the_tab() {
    let browser = browser_or_skip!();
    let page = browser.page();
    let mut app = TestApp::start_with(|c| c.api_token = Some("s3cret-token".into())).await;
    let t = app.tenant.clone();
    let auth = app
        .client
        .post(app.url("/topics/orders/messages"))
        .bearer_auth("s3cret-token")
        .json(&json!({"payload": 1}))
        .send()
        .await
        .expect("publish");
    assert_eq!(auth.status(), 201);

    // The page and its assets need no token; its security headers are set.
    let index = app
        .client
        .get(format!("{}/ui", app.base))
        .send()
        .await
        .expect("GET /ui");
    assert_eq!(index.status(), 200);
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");

    open_ui(page, &app, "").await;
    wait_for(page, "dialog#token[open]").await;
    // A wrong token is refused and the dialog says so.
    page.find(Locator::Css("#token-input"))
        .await
        .expect("input")
        .send_keys("wrong")
        .await
        .expect("type");
    click(page, "#token-save").await;
    let error = wait_for(page, "dialog#token[open] #token-error").await;
    assert!(error.contains("refused"), "{error}");
    page.find(Locator::Css("#token-input"))
        .await
        .expect("input")
        .send_keys("s3cret-token")
        .await
        .expect("type");
    click(page, "#token-save").await;
    wait_for(page, &format!("li[data-key='tenant:{t}']")).await;
    // Kept for the tab: a reload asks no more.
    page.refresh().await.expect("reload");
    wait_for(page, &format!("li[data-key='tenant:{t}']")).await;
    assert!(
        page.find_all(Locator::Css("dialog#token[open]"))
            .await
            .expect("query")
            .is_empty()
    );
    let stored = page
        .execute("return sessionStorage.getItem('streamcar.token');", vec![])
        .await
        .expect("storage");
    assert_eq!(stored, json!("s3cret-token"));
    // The 401s before the token was given are expected console entries;
    // nothing else went wrong in the page.
    assert_eq!(page_errors(page).await, Vec::<Value>::new());
    app.stop().await;
}

/// What needs no browser: `/ui` and its files are served without the
/// token, with strict security headers, from a fixed list (no file system
/// path is ever formed from the URL), and are not part of the API document.
#[tokio::test]
async fn the_page_is_served_without_the_token_with_strict_headers_and_outside_the_api() {
    let app = TestApp::start_with(|c| c.api_token = Some("s3cret-token".into())).await;
    for (path, content_type) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/errors.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let resp = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect(path);
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        let csp = h["content-security-policy"].to_str().expect("csp");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(!resp.text().await.expect("body").is_empty(), "{path}");
    }
    // The page loads no inline script: every <script> names a file.
    let index = support::get_text(&app.client, format!("{}/ui", app.base)).await;
    for tag in index.split("<script").skip(1) {
        let (attrs, rest) = tag.split_once('>').expect("a closed tag");
        assert!(attrs.contains(" src=\"/ui/"), "script without src: {attrs}");
        assert!(rest.starts_with("</script>"), "inline script: {rest}");
    }
    // HEAD answers like GET, without a body.
    let head = app
        .client
        .head(format!("{}/ui/app.js", app.base))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    // /ui/ leads to /ui.
    let slash = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{}/ui/", app.base))
        .send()
        .await
        .expect("/ui/");
    assert_eq!(slash.status(), 308);
    assert_eq!(slash.headers()["location"], "/ui");
    // Unknown or path-like names are a 404 problem, never a file read.
    for path in [
        "/ui/nope.js",
        "/ui/..%2FCargo.toml",
        "/ui/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/ui/index.html%00.js",
        "/ui/app.js/more",
    ] {
        let reply = app
            .send(reqwest::Method::GET, &format!("{}{path}", app.base), None)
            .await;
        reply.assert_problem(404, "route_not_found");
    }
    // The API itself still wants the token.
    let reply = app
        .send(
            reqwest::Method::GET,
            &format!("{}/v1/tenants", app.base),
            None,
        )
        .await;
    reply.assert_problem(401, "unauthorized");
    // Not API: the OpenAPI document does not mention /ui.
    let doc = std::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .arg("openapi")
        .output()
        .expect("streamcar openapi");
    let doc: Value = serde_json::from_slice(&doc.stdout).expect("JSON");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/v1/tenants"));
    assert!(
        paths.keys().all(|p| !p.starts_with("/ui")),
        "{:?}",
        paths.keys()
    );
}
