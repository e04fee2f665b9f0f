//! The operator UI (`/ui`) under attack, in headless Chromium (see
//! tests/ui.rs): markup and odd characters in everything a client or a
//! push app controls, names at the edge of their rules, and a tenant or a
//! group bigger than one page of the view.
//!
//! Without `chromedriver` on PATH the tests print why and pass, unless
//! `STREAMCAR_REQUIRE_BROWSER=1` (set by `.ci/run`), where they fail.

mod support;

use std::net::SocketAddr;

use fantoccini::{Client, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;
use support::browser::{
    WAIT, answer_confirm, browser_or_skip, click, open_ui, page_errors, poll, text_of, wait_api,
    wait_contains, wait_for, wait_text,
};

/// Markup that would run or load something if it ever became HTML.
const IMG: &str = "<img src=x onerror=\"window.pwned='img'\">";
const SCRIPT: &str = "</script><script>window.pwned='script'</script>";
const JS_URL: &str = "javascript:window.pwned='url'";
/// Right-to-left override and zero-width characters.
const RTL: &str = "\u{202e}gnp.exe\u{200b}\u{200d}\u{feff}";

/// Asserts the page turned nothing it showed into markup: no element that
/// loads or runs anything in the views, nothing ran, nothing was blocked
/// by the Content-Security-Policy (ui/errors.js records such refusals).
async fn assert_no_markup_ran(page: &Client, where_: &str) {
    let found = page
        .execute(
            "return [document.querySelectorAll('main img, main script, main iframe, main object, \
             main embed, #crumbs img, #flash img, a[href^=\"javascript\"]').length, \
             window.pwned || null];",
            vec![],
        )
        .await
        .expect("inspect the page");
    assert_eq!(found, json!([0, null]), "{where_}: markup came alive");
    assert_eq!(page_errors(page).await, Vec::<Value>::new(), "{where_}");
}

/// A push endpoint that refuses every message with 400 and a body of
/// markup: the sidecar dead-letters it with `last_error` = `HTTP 400:
/// <the body>` and shows that as the subscription's last error.
async fn hostile_push_app() -> SocketAddr {
    let body = format!("{IMG}{SCRIPT}{RTL}");
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { (axum::http::StatusCode::BAD_REQUEST, body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The exact `textContent` of the first element matching `css` (WebDriver's
/// element text is the rendered text: it drops zero-width characters).
async fn content_of(page: &Client, css: &str) -> Option<String> {
    let got = page
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .await
        .expect("read textContent");
    got.as_str().map(str::to_owned)
}

/// Waits until the element `css` has exactly the text `want`.
async fn wait_content(page: &Client, css: &str, want: &str) {
    if let Err(seen) = poll(
        WAIT,
        async || content_of(page, css).await,
        |seen| seen.as_deref() == Some(want),
    )
    .await
    {
        panic!("{css}: waited for {want:?}, last saw {:?}", seen.flatten());
    }
}

/// Bound of the API waits: three times the page waits, as a retention pass
/// over 10,000 entries on a busy machine is slow.
const API_WAIT: std::time::Duration = WAIT.saturating_mul(3);

/// Every text a client or a push app controls, with markup, `javascript:`
/// and bidi/zero-width characters in it, shows as that text; names of 128
/// characters with `.`, `-` and `_` round-trip through the page's links.
/// (Held: the views build text nodes only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_everywhere_is_shown_as_text() {
    let browser = browser_or_skip!();
    let page = browser.page();
    let name = |prefix: &str| format!("{prefix}.a-b_c{}", "z".repeat(128 - prefix.len() - 6));
    let (tenant, topic, group) = (name("T"), name("p"), name("g"));
    assert_eq!(tenant.len(), 128);
    let push_addr = hostile_push_app().await;
    let subscriptions = json!({"subscriptions": [{
        "name": "hostile", "tenant": tenant, "topic": "pushed", "group": "push",
        "url": format!("http://{push_addr}/"), "group_config": {"max_deliveries": 1},
    }]});
    let subscriptions =
        streamcar::push::spec::parse(&subscriptions.to_string(), true).expect("subscriptions");
    let mut app = TestApp::start_with(|c| c.subscriptions = subscriptions).await;
    app.tenant.clone_from(&tenant);
    let hostile = format!("{IMG}{SCRIPT}{JS_URL}{RTL}");
    app.group(&topic, &group, &json!({})).await;
    app.publish(
        &topic,
        &json!({
            "payload": {"html": IMG, "script": SCRIPT, "url": JS_URL, "rtl": RTL, IMG: SCRIPT},
            "key": hostile,
            "headers": {"x": IMG},
            "correlation_id": "c1",
        }),
    )
    .await;
    let got = app.fetch(&topic, &group, "w", 1, 0).await;
    let id = got[0]["id"].as_str().expect("id").to_owned();
    let reply = app
        .post(
            &format!("/topics/{topic}/groups/{group}/reject"),
            &json!({"receipts": [got[0]["receipt"]], "error": hostile}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    app.publish("pushed", &json!({"payload": {"html": IMG}}))
        .await;
    let push_dlq = wait_api(
        &app,
        "/topics/pushed/groups/push/dlq",
        "a pushed dead letter",
        API_WAIT,
        |b| b["messages"].as_array().is_some_and(|m| !m.is_empty()),
    )
    .await;
    let push_error = push_dlq["messages"][0]["last_error"]
        .as_str()
        .expect("last_error")
        .to_owned();
    assert!(push_error.starts_with("HTTP 400: <img"), "{push_error}");

    // Tenants → tenant → topic → group by the page's own links.
    open_ui(page, &app, "").await;
    click(page, &format!("li[data-key='tenant:{tenant}'] a")).await;
    click(page, &format!("tr[data-key='topic:{topic}'] a")).await;
    click(page, &format!("tr[data-key='group:{group}'] a")).await;
    let row = format!("tr[data-id='{id}']");
    wait_content(page, &format!("{row} [data-field=last_error]"), &hostile).await;
    let crumbs = wait_for(page, "#crumbs").await;
    assert!(crumbs.contains(&group), "{crumbs}");
    // The key and the payload (preview and opened) are the text sent.
    let key = content_of(page, &format!("{row} th div"))
        .await
        .expect("key");
    assert!(key.contains(&hostile), "{key:?}");
    click(page, &format!("{row} summary")).await;
    wait_for(page, &format!("{row} details pre")).await;
    let shown = content_of(page, &format!("{row} details pre"))
        .await
        .expect("payload");
    let shown: Value = serde_json::from_str(&shown).expect("the payload as JSON text");
    assert_eq!(shown["html"], IMG);
    assert_eq!(shown["rtl"], RTL);
    assert_eq!(shown[IMG], SCRIPT);
    assert_no_markup_ran(page, "group view").await;

    // The push app's answer, as the dead letter's and the subscription's
    // last error.
    open_ui(
        page,
        &app,
        &format!("#/t/{tenant}/topics/pushed/groups/push"),
    )
    .await;
    wait_contains(page, "[data-field=last_error]", "HTTP 400: <img src=x").await;
    assert_no_markup_ran(page, "pushed group").await;
    click(page, "a[data-nav=subscriptions]").await;
    wait_contains(
        page,
        "tr[data-key='sub:hostile'] td.wrap",
        "HTTP 400: <img src=x",
    )
    .await;
    assert_no_markup_ran(page, "subscriptions").await;

    // A hash naming no valid page (markup in the "name") is a not-found
    // page that shows it as text.
    open_ui(page, &app, "#/t/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E").await;
    wait_contains(page, "main", "Not found").await;
    assert_no_markup_ran(page, "not found").await;
    app.stop().await;
}

/// "Replay all" with more than 10,000 dead letters whose topic entries
/// are gone (trimmed by retention) ahead of one that can be replayed: one
/// replay request scans at most 10,000 and answers `more` with
/// `next_after`. The page sent every request without `after`, so each
/// click scanned the same 10,000 that stay and the dead letter behind them
/// was never replayed, however often the operator clicked "replay all
/// again" as the page told them to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_reaches_dead_letters_behind_ten_thousand_that_stay() {
    let browser = browser_or_skip!();
    let page = browser.page();
    let mut app =
        TestApp::start_with(|c| c.retention_interval = std::time::Duration::from_millis(100)).await;
    let t = app.tenant.clone();
    let group_path = "/topics/big/groups/g";
    app.group("big", "g", &json!({})).await;
    let batch: Vec<Value> = (0..1000).map(|i| json!({"payload": i})).collect();
    for round in 0..10 {
        app.publish_batch("big", &batch).await;
        let got = app.fetch("big", "g", "w", 1000, 0).await;
        assert_eq!(got.len(), 1000, "round {round}");
        let receipts: Vec<&Value> = got.iter().map(|m| &m["receipt"]).collect();
        let reply = app
            .post(
                &format!("{group_path}/reject"),
                &json!({"receipts": receipts, "error": "bad"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    // Retention trims every entry (all dead-lettered, none owed), so these
    // 10,000 dead letters stay when replayed.
    let reply = app.put("/topics/big", &json!({"retention_ms": 1})).await;
    assert!(reply.status.is_success(), "{}", reply.body);
    wait_api(&app, "/topics/big", "an empty topic", API_WAIT, |b| {
        b["length"] == 0
    })
    .await;
    let reply = app.put("/topics/big", &json!({"retention_ms": 0})).await;
    assert!(reply.status.is_success(), "{}", reply.body);
    // The one dead letter behind them can be replayed.
    app.publish("big", &json!({"payload": "survivor"})).await;
    let got = app.fetch("big", "g", "w", 1, 0).await;
    let reply = app
        .post(
            &format!("{group_path}/reject"),
            &json!({"receipts": [got[0]["receipt"]], "error": "bad"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.get(group_path).await.body["dead_lettered"], 10_001);

    open_ui(page, &app, &format!("#/t/{t}/topics/big/groups/g")).await;
    wait_text(page, "[data-stat=dead_lettered]", "10,001").await;
    // Click "Replay all" as often as the page says more are left (bounded).
    for _ in 0..3 {
        // (Disabled while the last click's requests run.)
        click(page, "button[data-action=replay-all]:not([disabled])").await;
        answer_confirm(page, true).await;
        wait_contains(page, "#flash", "Replayed").await;
        let flash = text_of(page, "#flash").await.unwrap_or_default();
        if !flash.contains("more are left") {
            break;
        }
    }
    let after = wait_api(&app, group_path, "the survivor replayed", API_WAIT, |g| {
        g["dead_lettered"] == 10_000
    })
    .await;
    assert_eq!(after["delayed"], 1, "{after}");
    assert_eq!(page_errors(page).await, Vec::<Value>::new());
    app.stop().await;
}

/// Rows of a table on the page.
async fn rows(page: &Client, css: &str) -> usize {
    page.find_all(Locator::Css(css)).await.expect("query").len()
}

/// A tenant with more topics, and a topic with more groups, than one page
/// of the view (50): every one is reachable by paging, and a page shows
/// (and describes) at most 50. The page showed the first 50 by name and
/// nothing else: topic 51 on (and group 51 on, without even a note) could
/// not be reached from the UI at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_and_group_is_reachable_past_the_first_page() {
    let browser = browser_or_skip!();
    let page = browser.page();
    let mut app = TestApp::start_quiet().await;
    let t = app.tenant.clone();
    for i in 0..120 {
        let reply = app.put(&format!("/topics/p{i:03}"), &json!({})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    for i in 0..60 {
        app.group("p000", &format!("g{i:02}"), &json!({})).await;
    }
    open_ui(page, &app, &format!("#/t/{t}")).await;
    wait_for(page, "tr[data-key='topic:p049']").await;
    assert_eq!(rows(page, "tr[data-key^='topic:']").await, 50);
    click(page, "button[data-action=names-next]").await;
    wait_for(page, "tr[data-key='topic:p099']").await;
    assert_eq!(rows(page, "tr[data-key^='topic:']").await, 50);
    click(page, "button[data-action=names-next]").await;
    wait_for(page, "tr[data-key='topic:p119']").await;
    assert_eq!(rows(page, "tr[data-key^='topic:']").await, 20);
    wait_contains(page, "[data-key='pager:topics']", "101–120 of 120").await;
    click(page, "button[data-action=names-first]").await;
    wait_for(page, "tr[data-key='topic:p000']").await;

    click(page, "tr[data-key='topic:p000'] a").await;
    wait_for(page, "tr[data-key='group:g49']").await;
    assert_eq!(rows(page, "tr[data-key^='group:']").await, 50);
    click(page, "button[data-action=names-next]").await;
    wait_for(page, "tr[data-key='group:g59']").await;
    assert_eq!(rows(page, "tr[data-key^='group:']").await, 10);
    click(page, "tr[data-key='group:g59'] a").await;
    wait_text(page, "[data-stat=lag]", "0").await;
    assert_eq!(page_errors(page).await, Vec::<Value>::new());
    app.stop().await;
}

/// One message id can have several dead letters (ids are the client's to
/// choose, and need not be unique). Their rows shared one key, so every
/// refresh threw one of them away and built it anew: a payload the operator
/// had opened closed again within three seconds. Rows are keyed by the dead
/// letter now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_one_message_id_keep_their_rows_across_refreshes() {
    let browser = browser_or_skip!();
    let page = browser.page();
    let app = TestApp::start().await;
    app.group("twice", "g", &json!({})).await;
    let id = "order-7";
    for n in 0..2 {
        app.publish("twice", &json!({"id": id, "payload": {"n": n}}))
            .await;
    }
    let got = app.fetch("twice", "g", "w", 2, 5000).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let receipts: Vec<&str> = got.iter().filter_map(|m| m["receipt"].as_str()).collect();
    let rejected = app
        .post(
            "/topics/twice/groups/g/reject",
            &json!({"receipts": receipts, "error": "no"}),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.body);
    let dlq = app.get("/topics/twice/groups/g/dlq").await.body;
    assert_eq!(dlq["messages"].as_array().map(Vec::len), Some(2), "{dlq}");

    open_ui(
        page,
        &app,
        &format!("#/t/{}/topics/twice/groups/g", app.tenant),
    )
    .await;
    let rows_of_id = format!("tr[data-id='{id}']");
    let _ = poll(WAIT, async || rows(page, &rows_of_id).await, |n| *n == 2).await;
    assert_eq!(rows(page, &rows_of_id).await, 2);
    // Tag the two row elements, make the page refresh (a new message moves
    // the lag), and check the same elements are still there.
    page.execute(
        "document.querySelectorAll(arguments[0]).forEach((row, i) => { row.streamcarTag = i + 1; });",
        vec![json!(rows_of_id)],
    )
    .await
    .expect("tag the rows");
    app.publish("twice", &json!({"payload": {"n": 2}})).await;
    wait_text(page, "[data-stat=lag]", "1").await;
    let tags = page
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map((row) => row.streamcarTag || 0).sort();",
            vec![json!(rows_of_id)],
        )
        .await
        .expect("read the tags");
    assert_eq!(tags, json!([1, 2]), "a refresh rebuilt a dead letter's row");
}
