//! Client edge (issue 18): browsers and devices connect with short-lived
//! JWTs to `--edge-listen`, served only `/v1/edge/ws` and
//! `/v1/edge/events`. Tokens are verified with the configured algorithm
//! (HS256, RS256, ES256) and refused before upgrade; grants decide which
//! channels a client sees and which topics it publishes to; tokens expire
//! and refresh on live connections; limits and origins are enforced before
//! upgrade; presence spans sidecars and forgets a killed one within its
//! TTL; a reconnect storm onto the surviving sidecar loses nothing.
//! Everything goes through the public HTTP API against a real redis-server.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use streamcar::config::{EdgeConfig, JwtAlg};
use support::browser::Browser;
use support::edge::{self, SECRET, claims, edge_app, now, secret_file};
use support::sse::Sse;
use support::ws::{self, Ws};
use support::{StreamcarProcess, TestApp, free_port};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Longest any single wait in these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(15);
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

fn events_url(app: &TestApp, channel: &str, token: Option<&str>) -> String {
    let base = app.edge_base().expect("edge on");
    match token {
        Some(token) => format!("{base}/v1/edge/events?channel={channel}&token={token}"),
        None => format!("{base}/v1/edge/events?channel={channel}"),
    }
}

async fn ws_with_token(app: &TestApp, token: &str) -> Ws {
    ws::open(&edge::ws_url(app), &[ws::bearer(token)])
        .await
        .expect("token accepted")
}

/// Publishes to a channel of the app's tenant through the loopback API.
async fn publish(app: &TestApp, tenant: &str, channel: &str, payload: Value) -> Value {
    let url = format!(
        "{}/v1/tenants/{tenant}/channels/{channel}/messages",
        app.base
    );
    let reply = app
        .send(
            reqwest::Method::POST,
            &url,
            Some(&json!({ "payload": payload })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

#[tokio::test]
async fn valid_tokens_subscribe_and_receive_on_websocket_and_sse() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let token = hs(&claims(&t, "u1", &["user.u1"], 300));

    // Bearer header.
    let mut ws = ws_with_token(&app, &token).await;
    let subscribed = ws::subscribe(&mut ws, "user.u1").await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    // ?token= on the URL.
    let mut by_query = ws::open(&format!("{}?token={token}", edge::ws_url(&app)), &[])
        .await
        .expect("query token accepted");
    assert_eq!(
        ws::subscribe(&mut by_query, "user.u1").await["type"],
        "subscribed"
    );
    // First frame.
    let mut by_frame = ws::open(&edge::ws_url(&app), &[]).await.expect("upgrade");
    ws::send(&mut by_frame, json!({ "op": "auth", "token": token })).await;
    assert_eq!(
        ws::subscribe(&mut by_frame, "user.u1").await["type"],
        "subscribed"
    );
    // SSE.
    let resp = reqwest::get(events_url(&app, "user.u1", Some(&token)))
        .await
        .unwrap();
    let mut sse = Sse::of(resp);

    let published = publish(&app, &t, "user.u1", json!({ "hello": 1 })).await;
    for ws in [&mut ws, &mut by_query, &mut by_frame] {
        let frame = ws::next(ws).await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["channel"], "user.u1");
        assert_eq!(frame["payload"], json!({ "hello": 1 }));
        assert_eq!(frame["offset"], published["offset"]);
    }
    let event = sse.expect().await;
    assert_eq!(event.event, "message");
    assert_eq!(event.data["payload"], json!({ "hello": 1 }));

    // Resume on the edge by position, like on the API.
    let position = event.id.expect("event id");
    publish(&app, &t, "user.u1", json!({ "hello": 2 })).await;
    let client = reqwest::Client::new();
    let resp = client
        .get(events_url(&app, "user.u1", None))
        .header("authorization", format!("Bearer {token}"))
        .header("last-event-id", &position)
        .send()
        .await
        .unwrap();
    let mut resumed = Sse::of(resp);
    assert_eq!(
        resumed.expect().await.data["payload"],
        json!({ "hello": 2 })
    );

    // Counted per tenant.
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "streamcar_edge_connections{{tenant=\"{t}\",transport=\"ws\"}} 3"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("streamcar_edge_connections_opened_total"));
}

#[tokio::test]
async fn refused_tokens_get_401_before_upgrade() {
    let (app, _key) = edge_app(|edge| {
        edge.audience = Some("streamcar-edge".into());
        edge.issuer = Some("https://auth.example".into());
    })
    .await;
    let t = app.tenant.clone();
    let good = |extra: Value| {
        let mut c = json!({ "sub": "u1", "tenant": t, "channels": ["user.u1"], "exp": now() + 300,
            "aud": "streamcar-edge", "iss": "https://auth.example" });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    // Accepted as a baseline, so each refusal below is about its one change.
    assert!(
        ws::open(&edge::ws_url(&app), &[ws::bearer(&hs(&good(json!({}))))])
            .await
            .is_ok()
    );

    let rsa_public = std::fs::read(fixture("edge-rsa-public.pem")).unwrap();
    // `alg: none`, unsigned (jsonwebtoken cannot make one, on purpose): a
    // valid token's claims under the header {"alg":"none","typ":"JWT"}.
    let none_token = {
        let valid = hs(&good(json!({})));
        let claims_part = valid.split('.').nth(1).unwrap().to_owned();
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims_part}.")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            hs(&good(json!({ "exp": now() - 60 }))),
            "token_expired",
        ),
        (
            "not yet valid",
            hs(&good(json!({ "nbf": now() + 120 }))),
            "token_not_yet_valid",
        ),
        (
            "wrong signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
                &good(json!({})),
            ),
            "invalid_signature",
        ),
        ("alg none", none_token, "token_malformed"),
        (
            "RS256 token on an HS256 edge",
            sign(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(
                    &std::fs::read(fixture("edge-rsa-private.pem")).unwrap(),
                )
                .unwrap(),
                &good(json!({})),
            ),
            "invalid_algorithm",
        ),
        (
            "wrong audience",
            hs(&good(json!({ "aud": "someone-else" }))),
            "invalid_audience",
        ),
        (
            "no audience",
            hs(&good(json!({ "aud": null }))),
            "missing_claim",
        ),
        (
            "wrong issuer",
            hs(&good(json!({ "iss": "https://evil.example" }))),
            "invalid_issuer",
        ),
        ("no sub", hs(&good(json!({ "sub": null }))), "missing_claim"),
        (
            "no tenant",
            hs(&good(json!({ "tenant": null }))),
            "missing_claim",
        ),
        ("no exp", hs(&good(json!({ "exp": null }))), "missing_claim"),
        (
            "bad tenant",
            hs(&good(json!({ "tenant": "a:b" }))),
            "invalid_claim",
        ),
        (
            "bad grant",
            hs(&good(json!({ "channels": ["a*b"] }))),
            "invalid_claim",
        ),
        (
            "grants of the wrong type",
            hs(&good(json!({ "channels": "user.u1" }))),
            "token_malformed",
        ),
        ("garbage", "not-a-jwt".to_owned(), "token_malformed"),
        ("huge", "a".repeat(9000), "token_malformed"),
        (
            "HS256 signed with the RSA public key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&rsa_public),
                &good(json!({})),
            ),
            "invalid_signature",
        ),
    ];
    for (what, token, code) in &cases {
        let (status, body) = ws::open(&edge::ws_url(&app), &[ws::bearer(token)])
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["code"], *code, "{what}: {body}");
        let resp = reqwest::get(events_url(&app, "user.u1", Some(token)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what} (sse)");
        assert!(resp.headers().contains_key("www-authenticate"));
        let reply = TestApp::reply(resp).await;
        reply.assert_problem(401, code);
    }
    // No token at all: SSE refuses; a WebSocket may still send it first.
    let resp = reqwest::get(events_url(&app, "user.u1", None))
        .await
        .unwrap();
    TestApp::reply(resp)
        .await
        .assert_problem(401, "token_missing");
    let metrics = app.metrics_text().await;
    for reason in [
        "token_expired",
        "invalid_signature",
        "invalid_algorithm",
        "missing_claim",
    ] {
        assert!(
            metrics.contains(&format!(
                "streamcar_edge_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn rs256_and_es256_edges_accept_their_keys_only() {
    for (alg, jwt_alg, public, private, other_private) in [
        (
            Algorithm::RS256,
            JwtAlg::Rs256,
            "edge-rsa-public.pem",
            "edge-rsa-private.pem",
            "edge-ec-private.pem",
        ),
        (
            Algorithm::ES256,
            JwtAlg::Es256,
            "edge-ec-public.pem",
            "edge-ec-private.pem",
            "edge-rsa-private.pem",
        ),
    ] {
        let app = TestApp::start_with(|config| {
            config.edge = Some(EdgeConfig::new(
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                fixture(public),
                jwt_alg,
            ));
        })
        .await;
        let c = claims(&app.tenant, "u1", &["user.u1"], 300);
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let mut ws = ws_with_token(&app, &sign(alg, &key, &c)).await;
        assert_eq!(
            ws::subscribe(&mut ws, "user.u1").await["type"],
            "subscribed"
        );
        // The other family's key, with its own algorithm: refused.
        let other = std::fs::read(fixture(other_private)).unwrap();
        let (other_alg, other_key) = match alg {
            Algorithm::RS256 => (Algorithm::ES256, EncodingKey::from_ec_pem(&other).unwrap()),
            _ => (Algorithm::RS256, EncodingKey::from_rsa_pem(&other).unwrap()),
        };
        let (status, body) = ws::open(
            &edge::ws_url(&app),
            &[ws::bearer(&sign(other_alg, &other_key, &c))],
        )
        .await
        .expect_err("refused");
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_algorithm"))
        );
        // Algorithm confusion: HS256 keyed with the edge's own public key.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), &c);
        let (status, body) = ws::open(&edge::ws_url(&app), &[ws::bearer(&forged)])
            .await
            .expect_err("refused");
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_algorithm")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn grants_decide_channels_and_prefixes_match() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let token = hs(&claims(&t, "u1", &["user.*", "news"], 300));
    let mut ws = ws_with_token(&app, &token).await;

    let denied = ws::subscribe(&mut ws, "admin").await;
    assert_eq!(denied["type"], "error", "{denied}");
    assert_eq!(denied["code"], "forbidden");
    assert_eq!(denied["channel"], "admin");
    for granted in ["user.1", "user.u1.inbox", "news"] {
        assert_eq!(
            ws::subscribe(&mut ws, granted).await["type"],
            "subscribed",
            "{granted}"
        );
    }
    // Prefixes are prefixes of the name, not of a word: `user` and `users`
    // are not `user.*`; `news2` is not `news`.
    for denied in ["user", "users", "news2"] {
        assert_eq!(
            ws::subscribe(&mut ws, denied).await["code"],
            "forbidden",
            "{denied}"
        );
    }
    // Nothing of a refused channel is delivered: the next frame is the
    // granted channel's message.
    publish(&app, &t, "admin", json!("secret")).await;
    publish(&app, &t, "user.1", json!("mine")).await;
    let frame = ws::next(&mut ws).await;
    assert_eq!(frame["channel"], "user.1", "{frame}");
    assert_eq!(frame["payload"], "mine");

    // SSE: 403 before streaming.
    let resp = reqwest::get(events_url(&app, "admin", Some(&token)))
        .await
        .unwrap();
    TestApp::reply(resp).await.assert_problem(403, "forbidden");
    // Clients do not publish into channels.
    ws::send(
        &mut ws,
        json!({ "op": "publish", "channel": "user.1", "payload": 1 }),
    )
    .await;
    assert_eq!(ws::next(&mut ws).await["code"], "forbidden");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!("streamcar_edge_forbidden_total{{tenant=\"{t}\"}}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn extreme_claims_and_subscription_bounds() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    // exp at the end of u64 time: accepted, and nothing overflows.
    let forever = hs(&json!({ "sub": "u1", "tenant": t, "channels": ["*"], "exp": u64::MAX }));
    let mut ws = ws_with_token(&app, &forever).await;
    assert_eq!(ws::subscribe(&mut ws, "c0").await["type"], "subscribed");
    // exp beyond u64 and negative: not a JWT numeric date this edge takes.
    for exp in [json!(1e30), json!(-1), json!("soon")] {
        let token = hs(&json!({ "sub": "u1", "tenant": t, "exp": exp }));
        let (status, _) = ws::open(&edge::ws_url(&app), &[ws::bearer(&token)])
            .await
            .expect_err("refused");
        assert_eq!(status, 401, "exp {exp}");
    }
    // The longest sub is a valid publish key; one byte more is refused.
    let long = "u".repeat(256);
    let token = hs(&json!({ "sub": long, "tenant": t, "publish": ["p"], "exp": now() + 60 }));
    let mut publisher = ws_with_token(&app, &token).await;
    ws::send(
        &mut publisher,
        json!({ "op": "publish", "topic": "p", "payload": 1 }),
    )
    .await;
    assert_eq!(ws::next(&mut publisher).await["type"], "published");
    let token = hs(&json!({ "sub": "u".repeat(257), "tenant": t, "exp": now() + 60 }));
    let (status, body) = ws::open(&edge::ws_url(&app), &[ws::bearer(&token)])
        .await
        .expect_err("refused");
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_claim"))
    );
    // A `*` grant does not let one connection hold unbounded subscriptions.
    for i in 1..256 {
        ws::send(
            &mut ws,
            json!({ "op": "subscribe", "channel": format!("c{i}") }),
        )
        .await;
    }
    let mut subscribed = 1;
    let refused = loop {
        let frame = ws::next(&mut ws).await;
        if frame["type"] == "subscribed" {
            subscribed += 1;
            if subscribed == 256 {
                ws::send(&mut ws, json!({ "op": "subscribe", "channel": "c256" })).await;
            }
            continue;
        }
        break frame;
    };
    assert_eq!(subscribed, 256);
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
}

#[tokio::test]
async fn tenants_are_sealed_off() {
    let (app, _key) = edge_app(|_| {}).await;
    let mine = app.tenant.clone();
    let other = format!("{mine}-other");
    let token = hs(&claims(&mine, "u1", &["*"], 300));
    let mut ws = ws_with_token(&app, &token).await;
    assert_eq!(ws::subscribe(&mut ws, "shared").await["type"], "subscribed");
    // The same channel name in another tenant is another channel.
    publish(&app, &other, "shared", json!("theirs")).await;
    publish(&app, &mine, "shared", json!("ours")).await;
    let frame = ws::next(&mut ws).await;
    assert_eq!(frame["payload"], "ours", "{frame}");
    // The edge has no tenant in its paths, and none of the API's routes.
    let base = app.edge_base().unwrap();
    for path in [
        format!("/v1/tenants/{other}/ws"),
        format!("/v1/tenants/{other}/channels/shared/events"),
        format!("/v1/tenants/{other}/channels/shared/messages"),
        "/v1/openapi.json".to_owned(),
        "/metrics".to_owned(),
    ] {
        let resp = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        TestApp::reply(resp)
            .await
            .assert_problem(404, "route_not_found");
    }
    // Unknown query parameters (e.g. a tenant) are refused, not ignored.
    let resp = reqwest::get(format!(
        "{}&tenant={other}",
        events_url(&app, "shared", Some(&token))
    ))
    .await
    .unwrap();
    TestApp::reply(resp)
        .await
        .assert_problem(400, "invalid_query");
}

#[tokio::test]
async fn refresh_extends_and_expiry_closes() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    // Refreshed before exp: still open after the first token's exp.
    let mut refreshed = ws_with_token(&app, &hs(&claims(&t, "u1", &["user.u1", "extra"], 2))).await;
    ws::subscribe(&mut refreshed, "user.u1").await;
    ws::subscribe(&mut refreshed, "extra").await;
    let mut expiring = ws_with_token(&app, &hs(&claims(&t, "u2", &["user.u1"], 2))).await;
    ws::subscribe(&mut expiring, "user.u1").await;
    let sse_resp = reqwest::get(events_url(
        &app,
        "user.u1",
        Some(&hs(&claims(&t, "u3", &["user.u1"], 2))),
    ))
    .await
    .unwrap();
    let mut sse = Sse::of(sse_resp);

    // A refresh must keep sub and tenant, and be valid.
    ws::send(
        &mut refreshed,
        json!({ "op": "refresh", "token": hs(&claims(&t, "u9", &["user.u1"], 60)) }),
    )
    .await;
    assert_eq!(ws::next(&mut refreshed).await["code"], "forbidden");
    ws::send(&mut refreshed, json!({ "op": "refresh", "token": hs(&claims(&t, "u1", &["user.u1"], 0)).replace('.', ".x") })).await;
    assert_eq!(ws::next(&mut refreshed).await["type"], "error");
    // The new token no longer grants `extra`: that subscription ends.
    let new_exp = now() + 60;
    ws::send(
        &mut refreshed,
        json!({ "op": "refresh", "token": hs(&json!({ "sub": "u1", "tenant": t, "channels": ["user.u1"], "exp": new_exp })) }),
    )
    .await;
    let ack = ws::next(&mut refreshed).await;
    assert_eq!(ack["type"], "refreshed", "{ack}");
    assert_eq!(ack["exp"], new_exp);
    let revoked = ws::next(&mut refreshed).await;
    assert_eq!(
        (revoked["code"].as_str(), revoked["channel"].as_str()),
        (Some("forbidden"), Some("extra"))
    );

    // Unrefreshed: closed 4001 token_expired at exp; SSE ends with token_expired.
    assert_eq!(
        ws::close(&mut expiring).await,
        (4001, "token_expired".to_owned())
    );
    let mut last = None;
    while let Some(event) = sse.next().await {
        last = Some(event);
    }
    assert_eq!(last.expect("an event").event, "token_expired");

    // The refreshed one lives on past the old exp.
    publish(&app, &t, "user.u1", json!("after")).await;
    publish(&app, &t, "extra", json!("revoked")).await;
    publish(&app, &t, "user.u1", json!("after2")).await;
    assert_eq!(ws::next(&mut refreshed).await["payload"], "after");
    assert_eq!(ws::next(&mut refreshed).await["payload"], "after2");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "streamcar_edge_token_expiries_total{{tenant=\"{t}\"}} 2"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn origins_and_connection_limits_are_enforced_before_upgrade() {
    let (app, _key) = edge_app(|edge| {
        edge.allowed_origins = vec!["https://app.example".into()];
        edge.max_connections_per_user = 2;
        edge.max_connections = 4;
    })
    .await;
    let t = app.tenant.clone();
    let token = hs(&claims(&t, "u1", &["user.u1"], 300));
    let url = edge::ws_url(&app);
    let origin = |o: &str| ("origin", o.to_owned());

    let (status, body) = ws::open(&url, &[ws::bearer(&token), origin("https://evil.example")])
        .await
        .expect_err("refused");
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let resp = reqwest::Client::new()
        .get(events_url(&app, "user.u1", Some(&token)))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    TestApp::reply(resp)
        .await
        .assert_problem(403, "origin_not_allowed");

    let _a = ws::open(&url, &[ws::bearer(&token), origin("https://app.example")])
        .await
        .expect("allowed origin");
    // No Origin: not a browser, allowed.
    let _b = ws::open(&url, &[ws::bearer(&token)])
        .await
        .expect("no origin");
    let (status, body) = ws::open(&url, &[ws::bearer(&token)])
        .await
        .expect_err("third of u1");
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_connections"))
    );
    let resp = reqwest::get(events_url(&app, "user.u1", Some(&token)))
        .await
        .unwrap();
    let reply = TestApp::reply(resp).await;
    reply.assert_problem(429, "too_many_connections");
    assert!(reply.headers.contains_key("retry-after"));
    // Other users still get in, up to the sidecar's limit.
    let other = |sub: &str| hs(&claims(&t, sub, &["user.u1"], 300));
    let _c = ws::open(&url, &[ws::bearer(&other("u2"))])
        .await
        .expect("u2");
    // An unauthenticated socket holds a slot too (first-frame auth pending).
    let _d = ws::open(&url, &[]).await.expect("pending auth");
    let (status, _) = ws::open(&url, &[ws::bearer(&other("u3"))])
        .await
        .expect_err("sidecar full");
    assert_eq!(status, 429);
    // A slot comes back when its connection ends.
    drop(_c);
    let mut freed = None;
    for _ in 0..100 {
        if let Ok(ws) = ws::open(&url, &[ws::bearer(&other("u3"))]).await {
            freed = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed.is_some(), "the slot was not freed");
}

#[tokio::test]
async fn first_frame_auth_and_its_failures() {
    let (app, _key) = edge_app(|edge| edge.max_frame = 4096).await;
    let t = app.tenant.clone();
    let url = edge::ws_url(&app);
    // Another frame first: error, close 4003.
    let mut ws = ws::open(&url, &[]).await.unwrap();
    ws::send(&mut ws, json!({ "op": "subscribe", "channel": "user.u1" })).await;
    assert_eq!(ws::next(&mut ws).await["code"], "token_missing");
    assert_eq!(ws::close(&mut ws).await.0, 4003);
    // A refused token in the first frame: its code, close 4003.
    let mut ws = ws::open(&url, &[]).await.unwrap();
    ws::send(
        &mut ws,
        json!({ "op": "auth", "token": hs(&claims(&t, "u1", &[], 0)).replace('.', "") }),
    )
    .await;
    assert_eq!(ws::next(&mut ws).await["code"], "token_malformed");
    assert_eq!(ws::close(&mut ws).await.0, 4003);
    // Auth twice: the second is refused, the connection stays.
    let token = hs(&claims(&t, "u1", &["user.u1"], 300));
    let mut ws = ws::open(&url, &[]).await.unwrap();
    ws::send(&mut ws, json!({ "op": "auth", "token": token })).await;
    ws::send(&mut ws, json!({ "op": "auth", "token": token })).await;
    assert_eq!(ws::next(&mut ws).await["code"], "invalid_frame");
    // A message over the frame limit ends the connection.
    ws::send(
        &mut ws,
        json!({ "op": "subscribe", "channel": "x".repeat(8000) }),
    )
    .await;
    let (code, _) = ws::close(&mut ws).await;
    assert!(code == 1009 || code == 0, "closed for size: {code}");
    // Silence: closed after 10 s without a token.
    let mut silent = ws::open(&url, &[]).await.unwrap();
    assert_eq!(
        ws::close(&mut silent).await,
        (4003, "auth_timeout".to_owned())
    );
}

#[tokio::test]
async fn clients_publish_to_granted_topics_with_their_sub_as_key() {
    let (app, _key) = edge_app(|edge| edge.publish_rate = 5).await;
    let t = app.tenant.clone();
    let token = hs(
        &json!({ "sub": "u1", "tenant": t, "channels": [], "publish": ["chat.*"],
        "exp": now() + 300 }),
    );
    let mut ws = ws_with_token(&app, &token).await;
    ws::send(
        &mut ws,
        json!({ "op": "publish", "topic": "chat.room1", "payload": { "text": "hi" },
        "idempotency_key": "m1" }),
    )
    .await;
    let ack = ws::next(&mut ws).await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(
        (
            ack["topic"].as_str(),
            ack["seq"].as_u64(),
            ack["duplicate"].as_bool()
        ),
        (Some("chat.room1"), Some(1), Some(false))
    );
    ws::send(
        &mut ws,
        json!({ "op": "publish", "topic": "chat.room1", "payload": 2, "idempotency_key": "m1" }),
    )
    .await;
    assert_eq!(ws::next(&mut ws).await["duplicate"], true);
    let history = app.history("chat.room1").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["key"], "u1", "{}", history[0]);
    assert_eq!(history[0]["payload"], json!({ "text": "hi" }));

    ws::send(
        &mut ws,
        json!({ "op": "publish", "topic": "orders", "payload": 1 }),
    )
    .await;
    let denied = ws::next(&mut ws).await;
    assert_eq!(
        (denied["code"].as_str(), denied["topic"].as_str()),
        (Some("forbidden"), Some("orders"))
    );

    // Per-connection rate: 5 per second, so a quick burst is cut (within
    // 50 even on a loaded machine).
    let mut limited = None;
    for i in 0..50 {
        ws::send(
            &mut ws,
            json!({ "op": "publish", "topic": "chat.room2", "payload": i }),
        )
        .await;
        let frame = ws::next(&mut ws).await;
        if frame["type"] == "error" {
            limited = Some(frame);
            break;
        }
    }
    let limited = limited.expect("the rate limit answered");
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["retry_after_ms"].as_u64().unwrap() >= 1);

    // A full backlog (the normal publish path's 429) is an error frame too.
    let full = app
        .put("/topics/chat.full", &json!({ "max_backlog": 1 }))
        .await;
    assert!(full.status.is_success(), "{}", full.body);
    app.group("chat.full", "g", &json!({ "start": "earliest" }))
        .await;
    let mut ws = ws_with_token(&app, &token).await;
    let mut answers = Vec::new();
    for i in 0..2 {
        ws::send(
            &mut ws,
            json!({ "op": "publish", "topic": "chat.full", "payload": i }),
        )
        .await;
        answers.push(ws::next(&mut ws).await);
    }
    assert_eq!(answers[0]["type"], "published", "{answers:?}");
    assert_eq!(answers[1]["code"], "backlog_full", "{answers:?}");
    assert!(answers[1]["retry_after_ms"].as_u64().unwrap() >= 1);
}

/// Subscribers of the presence reply, as sub → connections.
async fn presence(app: &TestApp, channel: &str) -> HashMap<String, u64> {
    let reply = app.get(&format!("/channels/{channel}/presence")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["sub"].as_str().unwrap().to_owned(),
                s["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Polls presence (bounded) until `done` holds; the last reading.
async fn presence_until(
    app: &TestApp,
    channel: &str,
    done: impl Fn(&HashMap<String, u64>) -> bool,
) -> HashMap<String, u64> {
    let mut seen = HashMap::new();
    for _ in 0..300 {
        seen = presence(app, channel).await;
        if done(&seen) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("presence never got there: {seen:?}");
}

#[tokio::test]
async fn presence_spans_sidecars_and_forgets_a_killed_one() {
    let key = secret_file();
    let (app, _key) = edge_app(|edge| edge.presence_ttl = Duration::from_secs(2)).await;
    let t = app.tenant.clone();
    let edge_port = free_port();
    let mut other = StreamcarProcess::start(
        &app.redis.url(),
        &[
            "--edge-listen",
            &format!("127.0.0.1:{edge_port}"),
            "--jwt-key-file",
            key.path().to_str().unwrap(),
            "--edge-presence-ttl",
            "2s",
        ],
    )
    .await;
    assert!(presence(&app, "room").await.is_empty());
    let u1 = hs(&claims(&t, "u1", &["room"], 300));
    let u2 = hs(&claims(&t, "u2", &["room"], 300));
    let mut here = ws_with_token(&app, &u1).await;
    ws::subscribe(&mut here, "room").await;
    let mut there = ws::open(
        &format!("ws://127.0.0.1:{edge_port}/v1/edge/ws"),
        &[ws::bearer(&u1)],
    )
    .await
    .expect("other sidecar's edge");
    ws::subscribe(&mut there, "room").await;
    let mut there2 = ws::open(
        &format!("ws://127.0.0.1:{edge_port}/v1/edge/ws"),
        &[ws::bearer(&u2)],
    )
    .await
    .unwrap();
    ws::subscribe(&mut there2, "room").await;
    let both = presence_until(&app, "room", |p| {
        p.get("u1") == Some(&2) && p.get("u2") == Some(&1)
    })
    .await;
    assert_eq!(both.len(), 2, "{both:?}");
    // Leaving is seen at once; a connection without the channel is not presence.
    drop(there2);
    presence_until(&app, "room", |p| !p.contains_key("u2")).await;
    let _elsewhere = ws_with_token(&app, &u2).await;

    // kill -9: nobody cleans up; the entries age out within the TTL.
    other.kill9();
    let after = presence_until(&app, "room", |p| p.get("u1") == Some(&1)).await;
    assert_eq!(after.len(), 1, "{after:?}");
    drop(here);
    presence_until(&app, "room", HashMap::is_empty).await;
}

#[tokio::test]
async fn key_rotation_on_sighup_and_the_token_command() {
    let redis = support::RedisServer::start();
    let key_dir = tempfile::tempdir().unwrap();
    let key_path = key_dir.path().join("edge.key");
    std::fs::write(&key_path, SECRET).unwrap();
    let edge_port = free_port();
    let process = StreamcarProcess::start(
        &redis.url(),
        &[
            "--edge-listen",
            &format!("127.0.0.1:{edge_port}"),
            "--jwt-key-file",
            key_path.to_str().unwrap(),
        ],
    )
    .await;
    let url = format!("ws://127.0.0.1:{edge_port}/v1/edge/ws");
    // `streamcar token` mints what the edge accepts.
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .args([
            "token",
            "--key-file",
            key_path.to_str().unwrap(),
            "--sub",
            "u1",
            "--tenant",
            "acme",
            "--channels",
            "user.u1,news.*",
            "--ttl",
            "5m",
        ])
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let old_token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let mut ws = ws::open(&url, &[ws::bearer(&old_token)])
        .await
        .expect("minted token");
    assert_eq!(
        ws::subscribe(&mut ws, "news.today").await["type"],
        "subscribed"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .args([
            "token",
            "--key-file",
            key_path.to_str().unwrap(),
            "--sub",
            "u1",
            "--tenant",
            "a:b",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let new_secret = b"rotated-secret-rotated-secret-0123456789";
    std::fs::write(&key_path, new_secret).unwrap();
    process.signal(libc::SIGHUP);
    let new_token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(new_secret),
        &claims("acme", "u1", &["user.u1"], 300),
    );
    let mut rotated = false;
    for _ in 0..200 {
        if ws::open(&url, &[ws::bearer(&new_token)]).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new key was not loaded");
    let (status, body) = ws::open(&url, &[ws::bearer(&old_token)])
        .await
        .expect_err("old key refused");
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    // A broken key file on SIGHUP keeps the current key.
    std::fs::write(&key_path, b"short").unwrap();
    process.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ws::open(&url, &[ws::bearer(&new_token)]).await.is_ok());
}

#[tokio::test]
async fn edge_flags_are_checked_at_start() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap()
    };
    let no_key = run(&["--edge-listen", "127.0.0.1:0"]);
    assert_eq!(no_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--jwt-key-file"));
    let bad_alg = run(&[
        "--edge-listen",
        "127.0.0.1:0",
        "--jwt-key-file",
        "/dev/null",
        "--jwt-alg",
        "none",
    ]);
    assert_eq!(bad_alg.status.code(), Some(2));
    // A public key where HS256 wants a secret: refused, not used as an HMAC key.
    let pem = fixture("edge-rsa-public.pem");
    let confused = run(&[
        "--edge-listen",
        "127.0.0.1:0",
        "--jwt-key-file",
        pem.to_str().unwrap(),
        "--redis-url",
        "redis://127.0.0.1:1",
    ]);
    assert_ne!(confused.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&confused.stderr).contains("PEM"),
        "{}",
        String::from_utf8_lossy(&confused.stderr)
    );
    let bad_origin = run(&[
        "--edge-listen",
        "127.0.0.1:0",
        "--jwt-key-file",
        "/dev/null",
        "--edge-allowed-origins",
        "evil",
    ]);
    assert_eq!(bad_origin.status.code(), Some(2));
}

/// What one storm client saw.
#[derive(Default)]
struct StormClient {
    /// Per channel: (epoch, last offset).
    positions: HashMap<String, (String, u64)>,
    /// Per channel: messages received.
    received: HashMap<String, u64>,
    resets: u64,
    /// Time from losing its sidecar to being subscribed again elsewhere.
    resume: Option<Duration>,
}

impl StormClient {
    fn done(&self, expected: &HashMap<String, u64>) -> bool {
        expected
            .iter()
            .all(|(channel, n)| self.received.get(channel).copied().unwrap_or(0) >= *n)
    }

    /// Takes one server frame; panics on a gap or a duplicate.
    fn take(&mut self, frame: &Value) {
        let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str() {
            Some("message") => {
                let epoch = frame["epoch"].as_str().unwrap().to_owned();
                let offset = frame["offset"].as_u64().unwrap();
                let (last_epoch, last) = self
                    .positions
                    .entry(channel.clone())
                    .or_insert_with(|| (epoch.clone(), 0));
                assert_eq!(
                    *last_epoch, epoch,
                    "{channel}: epoch changed without a reset"
                );
                assert_eq!(offset, *last + 1, "{channel}: gap or duplicate");
                *last = offset;
                *self.received.entry(channel).or_default() += 1;
            }
            Some("reset") => {
                self.resets += 1;
                let epoch = frame["epoch"].as_str().unwrap().to_owned();
                self.positions
                    .insert(channel, (epoch, frame["top_offset"].as_u64().unwrap()));
            }
            Some("subscribed") => {
                let epoch = frame["epoch"].as_str().unwrap().to_owned();
                if self.positions.contains_key(&channel) {
                    assert_eq!(frame["recovered"], true, "a resume recovers: {frame}");
                }
                // The first subscription starts from the channel's start.
                self.positions.entry(channel).or_insert((epoch, 0));
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
}

/// One client of the storm: subscribes on `urls[first]`, and whenever its
/// sidecar goes away reconnects to the other URL with its last positions.
async fn storm_client(
    urls: [String; 2],
    first: usize,
    token: String,
    channels: Vec<String>,
    expected: HashMap<String, u64>,
) -> StormClient {
    let mut client = StormClient::default();
    let mut at = first;
    let mut lost_at: Option<std::time::Instant> = None;
    for _attempt in 0..200 {
        let Ok(mut ws) = ws::open(&urls[at], &[ws::bearer(&token)]).await else {
            panic!("edge refused the client");
        };
        for channel in &channels {
            let since = client
                .positions
                .get(channel)
                .map(|(epoch, offset)| format!("{epoch}:{offset}"));
            ws::send(
                &mut ws,
                json!({ "op": "subscribe", "channel": channel, "since": since }),
            )
            .await;
        }
        let mut subscribed = 0;
        loop {
            if client.done(&expected) {
                return client;
            }
            let next = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("a frame in time");
            match next {
                Some(Ok(WsMessage::Text(text))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == "subscribed" {
                        subscribed += 1;
                        if subscribed == channels.len()
                            && let Some(lost) = lost_at.take()
                        {
                            client.resume = Some(lost.elapsed());
                        }
                    }
                    client.take(&frame);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        lost_at.get_or_insert_with(std::time::Instant::now);
        at = 1 - at;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the client never finished");
}

/// A bounded reconnect storm: clients on two sidecars, one killed with -9
/// while messages flow; each client resumes on the survivor and receives
/// every message exactly once, in order, with no reset. (The measured
/// version, 2,000 clients, is `streamcar-bench --bin storm`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_onto_the_surviving_sidecar_loses_nothing() {
    const CLIENTS: usize = 200;
    const BROADCASTS: u64 = 150;
    let key = secret_file();
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let edge_port = free_port();
    let mut doomed = StreamcarProcess::start(
        &app.redis.url(),
        &[
            "--edge-listen",
            &format!("127.0.0.1:{edge_port}"),
            "--jwt-key-file",
            key.path().to_str().unwrap(),
        ],
    )
    .await;
    let put = app
        .put("/channels/all", &json!({ "history_size": 10_000 }))
        .await;
    assert!(put.status.is_success(), "{}", put.body);
    let urls = [
        edge::ws_url(&app),
        format!("ws://127.0.0.1:{edge_port}/v1/edge/ws"),
    ];
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let user = format!("user.{i}");
        let expected = HashMap::from([("all".to_owned(), BROADCASTS), (user.clone(), 2)]);
        let token = hs(&claims(&t, &format!("u{i}"), &["all", &user], 600));
        // Two thirds on the sidecar that dies.
        let first = usize::from(i % 3 != 0);
        clients.spawn(storm_client(
            urls.clone(),
            first,
            token,
            // Its own channel first: a session takes frames in order, so
            // presence on `all` (awaited below) means both are subscribed.
            vec![user, "all".into()],
            expected,
        ));
    }
    // Everyone subscribed (both channels on both sidecars) before publishing.
    presence_until(&app, "all", |p| p.len() == CLIENTS).await;
    for i in 0..CLIENTS {
        publish(&app, &t, &format!("user.{i}"), json!({ "n": 1 })).await;
    }
    for n in 1..=BROADCASTS {
        if n == BROADCASTS / 3 {
            doomed.kill9();
        }
        publish(&app, &t, "all", json!({ "n": n })).await;
    }
    for i in 0..CLIENTS {
        publish(&app, &t, &format!("user.{i}"), json!({ "n": 2 })).await;
    }
    let mut resumed = 0;
    while let Some(client) = tokio::time::timeout(Duration::from_secs(60), clients.join_next())
        .await
        .expect("the storm settles")
    {
        let client = client.expect("client task");
        assert_eq!(client.resets, 0, "history covered the outage: no reset");
        assert_eq!(client.received["all"], BROADCASTS);
        resumed += usize::from(client.resume.is_some());
    }
    assert_eq!(
        resumed,
        CLIENTS - CLIENTS.div_ceil(3),
        "every client of the killed sidecar resumed"
    );
}

/// Opens `examples/edge.html` with `query` (the page connects at once).
async fn open_example(page: &fantoccini::Client, query: &str) {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/edge.html");
    page.goto(&format!("file://{}?{query}", file.display()))
        .await
        .expect("open the page");
}

/// Waits (bounded) until the page's log shows every one of `wanted`.
async fn log_until(page: &fantoccini::Client, wanted: &[&str]) -> String {
    let mut text = String::new();
    for _ in 0..300 {
        let value = page
            .execute("return document.getElementById('log').textContent", vec![])
            .await
            .expect("script runs");
        text = value.as_str().unwrap_or_default().to_owned();
        if wanted.iter().all(|w| text.contains(w)) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the page never showed {wanted:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_page_works_against_the_edge() {
    let (app, _key) = edge_app(|_| {}).await;
    let t = app.tenant.clone();
    let first = publish(&app, &t, "user.u1", json!({ "n": 1 })).await;
    publish(&app, &t, "user.u1", json!({ "n": 2 })).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    let token = hs(&claims(&t, "u1", &["user.u1"], 300));
    let edge = app.edge_base().unwrap();
    let Some(browser) = Browser::start().await else {
        return;
    };
    let page = browser.page();
    for mode in ["sse", "ws"] {
        let query =
            format!("edge={edge}&token={token}&channel=user.u1&since={epoch}:0&mode={mode}");
        open_example(page, &query).await;
        // History after the position, then live.
        log_until(
            page,
            &[
                "message user.u1 #1: {\"n\":1}",
                "message user.u1 #2: {\"n\":2}",
            ],
        )
        .await;
        publish(&app, &t, "user.u1", json!({ "mode": mode })).await;
        let live = format!("{{\"mode\":\"{mode}\"}}");
        log_until(page, &[live.as_str()]).await;
    }
    // A token for another user's channel: refused, and the page says so.
    let other = hs(&claims(&t, "u2", &["user.u2"], 300));
    open_example(
        page,
        &format!("edge={edge}&token={other}&channel=user.u1&mode=ws"),
    )
    .await;
    log_until(page, &["error forbidden"]).await;
}
