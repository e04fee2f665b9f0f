//! Adversarial probe of the client edge (`--edge-listen`): tokens crafted
//! byte by byte (duplicate claims, odd numeric dates, header tricks, huge
//! ones), grant prefixes that look alike, connection limits under a race
//! and their release on every way a connection ends, a refresh to fewer
//! grants, and what a wildcard grant may write to Redis. Black-box, over
//! loopback, against a real redis-server; cases `tests/edge.rs` already
//! covers are not repeated.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::TestApp;
use support::edge::{self, SECRET, claims, edge_app, now};
use support::ws::{self, Ws};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn hs(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token made of exactly these header and claims texts, HS256-signed
/// with the test secret (what a careless or hostile issuer could mint).
fn raw_token(header: &str, claims: &str) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

fn events_url(app: &TestApp, channel: &str, token: &str) -> String {
    format!(
        "{}/v1/edge/events?channel={channel}&token={token}",
        app.edge_base().unwrap()
    )
}

async fn ws_with(app: &TestApp, token: &str) -> Ws {
    ws::open(&edge::ws_url(app), &[ws::bearer(token)])
        .await
        .expect("token accepted")
}

/// The 401 code of `token` on the WebSocket and on SSE (the same on both).
async fn refusal(app: &TestApp, token: &str) -> String {
    let (status, body) = ws::open(&edge::ws_url(app), &[ws::bearer(token)])
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted: {token}"));
    assert_eq!(status, 401, "{body}");
    // SSE with ?token= (a URI has a length limit: big ones go in the header).
    let resp = if token.len() < 16_000 {
        reqwest::get(events_url(app, "c", token)).await.unwrap()
    } else {
        let url = format!("{}/v1/edge/events?channel=c", app.edge_base().unwrap());
        let auth = format!("Bearer {token}");
        reqwest::Client::new()
            .get(url)
            .header("authorization", auth)
            .send()
            .await
            .unwrap()
    };
    let reply = TestApp::reply(resp).await;
    reply.assert_problem(401, body["code"].as_str().unwrap());
    body["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn crafted_tokens_are_refused_with_their_code() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let exp = now() + 300;
    let hdr = r#"{"alg":"HS256","typ":"JWT"}"#;
    // Baseline: the hand-made token is accepted.
    let ok = raw_token(
        hdr,
        &format!(r#"{{"sub":"u1","tenant":"{t}","exp":{exp},"channels":["c"]}}"#),
    );
    drop(ws_with(&app, &ok).await);
    // `name|accepted codes|claims` with T the tenant and E a valid exp.
    let cases = r#"duplicate tenant|token_malformed|{"sub":"u1","tenant":"T","tenant":"other","exp":E}
duplicate via escape|token_malformed|{"sub":"u1","tenant":"T","ten\u0061nt":"other","exp":E}
duplicate exp|token_malformed|{"sub":"u1","tenant":"T","exp":1,"exp":E}
duplicate channels|token_malformed|{"sub":"u1","tenant":"T","exp":E,"channels":[],"channels":["*"]}
exp 0|token_expired|{"sub":"u1","tenant":"T","exp":0}
exp float|token_malformed,invalid_claim|{"sub":"u1","tenant":"T","exp":E.5}
exp string|token_malformed,invalid_claim,missing_claim|{"sub":"u1","tenant":"T","exp":"E"}
exp null|missing_claim|{"sub":"u1","tenant":"T","exp":null}
nbf u64::MAX|token_not_yet_valid|{"sub":"u1","tenant":"T","exp":E,"nbf":18446744073709551615}
nbf 2^53|token_not_yet_valid|{"sub":"u1","tenant":"T","exp":E,"nbf":9007199254740992}
nbf string|invalid_claim|{"sub":"u1","tenant":"T","exp":E,"nbf":"E"}
nbf negative|invalid_claim|{"sub":"u1","tenant":"T","exp":E,"nbf":-1}
nbf beyond u64|invalid_claim|{"sub":"u1","tenant":"T","exp":E,"nbf":1e300}
claims an array|token_malformed|[1,2]
sub a number|token_malformed,invalid_claim|{"sub":7,"tenant":"T","exp":E}
channels null|token_malformed|{"sub":"u1","tenant":"T","exp":E,"channels":null}
tenant look-alike|invalid_claim|{"sub":"u1","tenant":"T\u0430","exp":E}
grant look-alike|invalid_claim|{"sub":"u1","tenant":"T","exp":E,"channels":["news\u2024*"]}
grant ..*|invalid_claim|{"sub":"u1","tenant":"T","exp":E,"channels":["..*"]}
grant **|invalid_claim|{"sub":"u1","tenant":"T","exp":E,"channels":["**"]}
grant too long|invalid_claim|{"sub":"u1","tenant":"T","exp":E,"channels":["LONG*"]}
sub with NUL|invalid_claim|{"sub":"u\u0000","tenant":"T","exp":E}"#;
    // Duplicates are never last-wins; a malformed nbf is never skipped
    // (that would accept a token before its time).
    for case in cases.lines() {
        let mut parts = case.splitn(3, '|');
        let (what, codes) = (parts.next().unwrap(), parts.next().unwrap());
        let body = parts.next().unwrap().replace("LONG", &"a".repeat(128));
        let body = body.replace('T', &t).replace('E', &exp.to_string());
        let code = refusal(&app, &raw_token(hdr, &body)).await;
        assert!(codes.split(',').any(|c| c == code), "{what}: {code}");
    }
    // Header tricks: the algorithm named in any other way, duplicated, or
    // pointing elsewhere for the key, with a signature of the wrong key.
    let claims_json = format!(r#"{{"sub":"u1","tenant":"{t}","exp":{exp}}}"#);
    for (what, header, code) in [
        // An unknown name is malformed, like `none` (tests/edge.rs).
        ("lower-case alg", r#"{"alg":"hs256"}"#, "token_malformed"),
        ("HS512", r#"{"alg":"HS512"}"#, "invalid_algorithm"),
        (
            "alg none then HS256",
            r#"{"alg":"none","alg":"HS256"}"#,
            "token_malformed",
        ),
        ("no alg", r#"{"typ":"JWT"}"#, "token_malformed"),
        ("alg array", r#"{"alg":["HS256"]}"#, "token_malformed"),
    ] {
        assert_eq!(
            refusal(&app, &raw_token(header, &claims_json)).await,
            code,
            "{what}"
        );
    }
    // A kid or jku does not choose the key: the configured key still
    // verifies (accepted here), and another key's signature still fails.
    let tricky = r#"{"alg":"HS256","kid":"../../../../dev/null","jku":"http://127.0.0.1:1/keys"}"#;
    drop(ws_with(&app, &raw_token(tricky, &claims_json)).await);
    let forged = jsonwebtoken::encode(
        &Header {
            kid: Some("../../../../dev/null".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(&t, "u1", &["c"], 300),
        &EncodingKey::from_secret(b""),
    )
    .unwrap();
    assert_eq!(refusal(&app, &forged).await, "invalid_signature");
    // Big tokens: 100 KB in the header or the query is a 401, never a 5xx;
    // 1 MB of header is refused by the HTTP layer, and the edge lives on.
    let big = format!("{}.{}.{}", "a".repeat(50_000), "b".repeat(50_000), "c");
    assert_eq!(refusal(&app, &big).await, "token_malformed");
    let huge = "h".repeat(1 << 20);
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1/edge/events?channel=c",
            app.edge_base().unwrap()
        ))
        .header("authorization", format!("Bearer {huge}"))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    drop(ws_with(&app, &ok).await);
    // The header wins over the query: a bad header is not rescued by a good ?token=.
    let url = format!("{}?token={ok}", edge::ws_url(&app));
    let (status, body) = ws::open(&url, &[ws::bearer("x.y.z")])
        .await
        .expect_err("header wins");
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_malformed"))
    );
}

#[tokio::test]
async fn grant_prefixes_cover_what_they_say_and_nothing_else() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let token = hs(&claims(&t, "u1", &["news.*", "a.b.", "x*"], 300));
    let mut ws = ws_with(&app, &token).await;
    for granted in [
        "news.",
        "news..",
        "news.a.b",
        "a.b.",
        "x",
        "x-y",
        &format!("news.{}", "n".repeat(123)),
    ] {
        let frame = ws::subscribe(&mut ws, granted).await;
        assert_eq!(frame["type"], "subscribed", "{granted}: {frame}");
    }
    for denied in ["news", "NEWS.a", "newsx", "a.b", "a.b.c", "X", "a.b.."] {
        let frame = ws::subscribe(&mut ws, denied).await;
        assert_eq!(
            (frame["code"].as_str(), frame["channel"].as_str()),
            (Some("forbidden"), Some(denied)),
            "{denied}"
        );
    }
    // Names that are not names: refused as such, nothing granted by accident.
    for bad in [
        "news.\u{2024}x",
        "news.a:b",
        "news.a/..",
        "news.*",
        "",
        &format!("news.{}", "n".repeat(124)),
    ] {
        let frame = ws::subscribe(&mut ws, bad).await;
        assert_eq!(frame["code"], "invalid_name", "{bad:?}: {frame}");
    }
    // SSE: the same grant, percent-encoded tricks decode to refused names.
    for (channel, status) in [
        ("news%2Ex", 200),
        ("news", 403),
        ("news%E2%80%A4x", 400),
        ("news.%00", 400),
    ] {
        let resp = reqwest::get(events_url(&app, channel, &token))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{channel}");
        if status != 200 {
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
    }
}

#[tokio::test]
async fn connection_limits_hold_under_a_race_and_every_end_frees_the_slot() {
    let (app, _key) = edge_app(|edge| {
        edge.max_connections_per_user = 3;
        edge.max_connections = 6;
    })
    .await;
    let t = app.tenant.clone();
    let url = edge::ws_url(&app);
    let u1 = hs(&claims(&t, "u1", &["c"], 300));
    // 20 connections of one user at once: exactly 3 get in, the rest 429.
    let opens = (0..20).map(|_| {
        let (url, header) = (url.clone(), ws::bearer(&u1));
        async move { ws::open(&url, &[header]).await }
    });
    let results = futures_util::future::join_all(opens).await;
    let mut open: Vec<Ws> = Vec::new();
    for result in results {
        match result {
            Ok(ws) => open.push(ws),
            Err((status, body)) => assert_eq!(
                (status, body["code"].as_str()),
                (429, Some("too_many_connections"))
            ),
        }
    }
    assert_eq!(open.len(), 3);
    // Other users race for the 3 sidecar slots left.
    let others: Vec<String> = (0..10)
        .map(|i| hs(&claims(&t, &format!("v{i}"), &["c"], 300)))
        .collect();
    let results = futures_util::future::join_all(others.iter().map(|tok| {
        let (url, header) = (url.clone(), ws::bearer(tok));
        async move { ws::open(&url, &[header]).await }
    }))
    .await;
    let (ok, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!((ok.len(), refused.len()), (3, 7));
    drop(ok);
    // Every way a u1 connection ends gives its slots back:
    // an abort without a close frame,
    let mut open = open.into_iter();
    drop(open.next());
    // a close by the client,
    let mut closing = open.next().unwrap();
    closing.close(None).await.unwrap();
    // and a kick by the server (the token expires).
    let mut kicked = open.next().unwrap();
    ws::send(
        &mut kicked,
        json!({ "op": "refresh", "token": hs(&claims(&t, "u1", &["c"], 0)) }),
    )
    .await;
    assert_eq!(ws::next(&mut kicked).await["type"], "refreshed");
    assert_eq!(ws::close(&mut kicked).await.0, 4001);
    // An SSE stream dropped by its client, and a first-frame socket refused with 4029.
    let mut back = Vec::new();
    for _ in 0..200 {
        if back.len() == 3 {
            break;
        }
        match ws::open(&url, &[ws::bearer(&u1)]).await {
            Ok(ws) => back.push(ws),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(back.len(), 3, "the user's slots came back");
    let mut pending = ws::open(&url, &[]).await.expect("first-frame socket");
    ws::send(&mut pending, json!({ "op": "auth", "token": u1 })).await;
    assert_eq!(ws::next(&mut pending).await["code"], "too_many_connections");
    assert_eq!(ws::close(&mut pending).await.0, 4029);
    let resp = reqwest::get(events_url(&app, "c", &u1)).await.unwrap();
    TestApp::reply(resp)
        .await
        .assert_problem(429, "too_many_connections");
    drop(back);
    let mut sse_ok = None;
    for _ in 0..200 {
        let resp = reqwest::get(events_url(&app, "c", &u1)).await.unwrap();
        if resp.status() == 200 {
            sse_ok = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sse_ok.expect("an SSE stream after the sockets left"));
    // All gone: the whole edge is free again (6 users at once).
    let mut all = Vec::new();
    for _ in 0..200 {
        if all.len() == 6 {
            break;
        }
        let sub = format!("w{}", all.len());
        match ws::open(&url, &[ws::bearer(&hs(&claims(&t, &sub, &["c"], 300)))]).await {
            Ok(ws) => all.push(ws),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(all.len(), 6, "every slot came back");
}

#[tokio::test]
async fn a_first_frame_that_is_not_text_is_told_and_closed_4003() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let token = hs(&claims(&t, "u1", &["c"], 300));
    let mut ws = ws::open(&edge::ws_url(&app), &[]).await.unwrap();
    let frame = json!({ "op": "auth", "token": token }).to_string();
    ws.send(WsMessage::Binary(frame.into_bytes().into()))
        .await
        .unwrap();
    let error = ws::next(&mut ws).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(ws::close(&mut ws).await.0, 4003);
}

#[tokio::test]
async fn a_refresh_to_narrower_grants_ends_what_it_no_longer_grants() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let wide = hs(&json!({ "sub": "u1", "tenant": t, "exp": now() + 300,
        "channels": ["news.*"], "publish": ["chat.*"] }));
    let mut ws = ws_with(&app, &wide).await;
    for c in ["news.a", "news.sport", "news.sport.x"] {
        assert_eq!(ws::subscribe(&mut ws, c).await["type"], "subscribed");
    }
    let narrow = hs(&json!({ "sub": "u1", "tenant": t, "exp": now() + 300,
        "channels": ["news.sport*"], "publish": [] }));
    ws::send(&mut ws, json!({ "op": "refresh", "token": narrow })).await;
    assert_eq!(ws::next(&mut ws).await["type"], "refreshed");
    let revoked = ws::next(&mut ws).await;
    assert_eq!(
        (revoked["code"].as_str(), revoked["channel"].as_str()),
        (Some("forbidden"), Some("news.a"))
    );
    // Publishes the old token allowed are refused now; the refused channel
    // delivers nothing; the kept ones go on.
    ws::send(
        &mut ws,
        json!({ "op": "publish", "topic": "chat.x", "payload": 1 }),
    )
    .await;
    assert_eq!(ws::next(&mut ws).await["code"], "forbidden");
    assert_eq!(ws::subscribe(&mut ws, "news.a").await["code"], "forbidden");
    for (c, p) in [("news.a", "lost"), ("news.sport.x", "kept")] {
        let url = format!("{}/v1/tenants/{t}/channels/{c}/messages", app.base);
        let reply = app
            .send(reqwest::Method::POST, &url, Some(&json!({ "payload": p })))
            .await;
        assert_eq!(reply.status, 201);
    }
    let frame = ws::next(&mut ws).await;
    assert_eq!(
        (frame["channel"].as_str(), frame["payload"].as_str()),
        (Some("news.sport.x"), Some("kept"))
    );
    // An expired or another tenant's refresh changes nothing.
    for bad in [
        hs(&claims(&t, "u1", &["*"], 0)
            .as_object()
            .map(|c| {
                let mut c = c.clone();
                c["exp"] = json!(1);
                Value::Object(c)
            })
            .unwrap()),
        hs(&claims(&format!("{t}x"), "u1", &["*"], 300)),
    ] {
        ws::send(&mut ws, json!({ "op": "refresh", "token": bad })).await;
        assert_eq!(ws::next(&mut ws).await["type"], "error");
    }
    assert_eq!(ws::subscribe(&mut ws, "news.b").await["code"], "forbidden");
}

/// Channel meta keys in the app's Redis (each test has its own Redis).
fn meta_keys(app: &TestApp) -> usize {
    let mut conn = app.redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("sc:ch:*:meta")
        .query(&mut conn)
        .unwrap();
    keys.len()
}

#[tokio::test]
async fn a_wildcard_grant_cannot_write_channel_keys_without_bound() {
    let (app, _key) = edge_app(|edge| edge.max_connections_per_user = 10_000).await;
    let t = app.tenant.clone();
    let token = hs(&claims(&t, "u1", &["*"], 300));
    let mut ws = ws_with(&app, &token).await;
    // Subscribe and unsubscribe made-up names as fast as the socket takes
    // them: each subscription to an unknown channel writes its meta (an
    // epoch, kept for the history TTL), so the edge must slow the user down.
    let mut limited = None;
    for i in 0..3000 {
        let channel = format!("junk.{i}");
        let frame = ws::subscribe(&mut ws, &channel).await;
        if frame["type"] == "subscribed" {
            ws::send(&mut ws, json!({ "op": "unsubscribe", "channel": channel })).await;
            continue;
        }
        limited = Some(frame);
        break;
    }
    let limited = limited.expect("subscriptions are rate limited");
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["retry_after_ms"].as_u64().unwrap() >= 1);
    let keys = meta_keys(&app);
    assert!(keys < 3000, "{keys} meta keys");
    // Event streams of the same user draw on the same allowance: a 429.
    let mut refused = None;
    for i in 0..3000 {
        let resp = reqwest::get(events_url(&app, &format!("sse.{i}"), &token))
            .await
            .unwrap();
        if resp.status() != 200 {
            refused = Some(TestApp::reply(resp).await);
            break;
        }
    }
    let refused = refused.expect("event streams are rate limited");
    refused.assert_problem(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(meta_keys(&app) < 3000 + keys);
    // Another user is not slowed down by this one.
    let mut other = ws_with(&app, &hs(&claims(&t, "u2", &["*"], 300))).await;
    assert_eq!(
        ws::subscribe(&mut other, "junk.0").await["type"],
        "subscribed"
    );
}

#[tokio::test]
async fn one_users_idempotency_key_does_not_swallow_anothers_message() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let token = |sub: &str| {
        hs(&json!({ "sub": sub, "tenant": t, "publish": ["chat.*"], "exp": now() + 300 }))
    };
    let (mut alice, mut mallory) = (
        ws_with(&app, &token("alice")).await,
        ws_with(&app, &token("mallory")).await,
    );
    let publish = |text: &str| json!({ "op": "publish", "topic": "chat.room", "payload": text, "idempotency_key": "msg-1" });
    // Mallory claims the key Alice's client will use next.
    ws::send(&mut mallory, publish("first!")).await;
    assert_eq!(ws::next(&mut mallory).await["duplicate"], false);
    ws::send(&mut alice, publish("hello")).await;
    let ack = ws::next(&mut alice).await;
    assert_eq!(
        (ack["type"].as_str(), ack["duplicate"].as_bool()),
        (Some("published"), Some(false)),
        "{ack}"
    );
    // Alice's own retry is still a duplicate of hers.
    ws::send(&mut alice, publish("hello")).await;
    let retry = ws::next(&mut alice).await;
    assert_eq!(
        (retry["duplicate"].as_bool(), retry["id"].as_str()),
        (Some(true), ack["id"].as_str())
    );
    let history = app.history("chat.room").await;
    let keys: Vec<&str> = history.iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["mallory", "alice"], "{history:?}");
}

#[tokio::test]
async fn an_unreadable_origin_is_not_taken_for_no_origin() {
    let (app, _key) =
        edge_app(|edge| edge.allowed_origins = vec!["https://app.example".into()]).await;
    let token = hs(&claims(&app.tenant, "u1", &["c"], 300));
    let origin = reqwest::header::HeaderValue::from_bytes(b"https://app.example\xff").unwrap();
    let resp = reqwest::Client::new()
        .get(events_url(&app, "c", &token))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    // Status first: an accepted stream would never end.
    assert_eq!(resp.status(), 403);
    TestApp::reply(resp)
        .await
        .assert_problem(403, "origin_not_allowed");
}
