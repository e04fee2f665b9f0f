//! The OpenAPI document: served at /v1/openapi.json and printed by
//! `streamcar openapi`, version 3.1, and complete: every route of the API is
//! in it and every operation in it is routed.

mod support;

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use support::TestApp;

/// Every operation of the API (the README's API overview lists them).
const EXPECTED: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/tenants"),
    ("GET", "/v1/tenants/{tenant}/topics"),
    ("PUT", "/v1/tenants/{tenant}/topics/{topic}"),
    ("GET", "/v1/tenants/{tenant}/topics/{topic}"),
    ("DELETE", "/v1/tenants/{tenant}/topics/{topic}"),
    ("POST", "/v1/tenants/{tenant}/topics/{topic}/messages"),
    ("GET", "/v1/tenants/{tenant}/topics/{topic}/messages"),
    ("POST", "/v1/tenants/{tenant}/topics/{topic}/messages:batch"),
    ("PUT", "/v1/tenants/{tenant}/topics/{topic}/groups/{group}"),
    ("GET", "/v1/tenants/{tenant}/topics/{topic}/groups/{group}"),
    (
        "DELETE",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/pause",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/resume",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/fetch",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/ack",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/extend",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/nack",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/reject",
    ),
    ("PUT", "/v1/tenants/{tenant}/topics/{topic}/joins/{join}"),
    ("GET", "/v1/tenants/{tenant}/topics/{topic}/joins/{join}"),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/joins/{join}/parts/{part}",
    ),
    (
        "GET",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/dlq",
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/dlq/replay",
    ),
    (
        "DELETE",
        "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/dlq/{id}",
    ),
    ("POST", "/v1/tenants/{tenant}/idempotency/{key}/claim"),
    ("POST", "/v1/tenants/{tenant}/idempotency/{key}/complete"),
    ("POST", "/v1/tenants/{tenant}/idempotency/{key}/release"),
    ("GET", "/v1/tenants/{tenant}/idempotency/{key}"),
    ("POST", "/v1/tenants/{tenant}/checkpoints/{name}/advance"),
    ("GET", "/v1/tenants/{tenant}/checkpoints/{name}"),
    ("DELETE", "/v1/tenants/{tenant}/checkpoints/{name}"),
    ("PUT", "/v1/tenants/{tenant}/pools/{pool}"),
    ("GET", "/v1/tenants/{tenant}/pools/{pool}"),
    ("DELETE", "/v1/tenants/{tenant}/pools/{pool}"),
    ("POST", "/v1/tenants/{tenant}/pools/{pool}/acquire"),
    ("POST", "/v1/tenants/{tenant}/pools/{pool}/renew"),
    ("POST", "/v1/tenants/{tenant}/pools/{pool}/release"),
    ("PUT", "/v1/tenants/{tenant}/limits"),
    ("GET", "/v1/tenants/{tenant}/limits"),
    ("DELETE", "/v1/tenants/{tenant}/limits"),
    ("GET", "/v1/subscriptions"),
    ("PUT", "/v1/tenants/{tenant}/channels/{channel}"),
    ("GET", "/v1/tenants/{tenant}/channels/{channel}"),
    ("POST", "/v1/tenants/{tenant}/channels/{channel}/messages"),
    ("GET", "/v1/tenants/{tenant}/channels/{channel}/messages"),
    ("GET", "/v1/tenants/{tenant}/channels/{channel}/events"),
    ("GET", "/v1/tenants/{tenant}/channels/{channel}/presence"),
    ("GET", "/v1/tenants/{tenant}/ws"),
];

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

#[tokio::test]
async fn the_document_lists_exactly_the_routed_operations() {
    let app = TestApp::start().await;
    let served = app
        .send(Method::GET, &format!("{}/v1/openapi.json", app.base), None)
        .await;
    assert_eq!(served.status, 200);
    let doc = served.body;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let documented = operations(&doc);
    let expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    let unknown: Vec<_> = documented.difference(&expected).collect();
    assert!(
        unknown.is_empty(),
        "documented but not in the contract: {unknown:?}"
    );

    // Every documented operation is routed: it never answers
    // route_not_found or method_not_allowed.
    for (method, path) in &documented {
        let concrete = path
            .replace("{tenant}", &app.tenant)
            .replace("{topic}", "t")
            .replace("{group}", "g")
            .replace("{pool}", "p")
            .replace("{key}", "k")
            .replace("{name}", "n")
            .replace("{id}", "m")
            .replace("{channel}", "c");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = app
            .client
            .request(method.clone(), format!("{}{concrete}", app.base));
        if method == Method::POST || method == Method::PUT {
            request = request.json(&json!({}));
        }
        let response = request.send().await.expect("request");
        // An event stream never ends: its 200 is the answer.
        let streaming = response
            .headers()
            .get("content-type")
            .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"));
        let text = if streaming {
            String::new()
        } else {
            response.text().await.unwrap_or_default()
        };
        let code = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        assert!(
            code != "route_not_found" && code != "method_not_allowed",
            "{method} {path} is documented but not routed: {text}"
        );
        // Every /v1 operation documents its problem responses.
        if path.starts_with("/v1") {
            let op = &doc["paths"][path][method.as_str().to_lowercase()];
            assert!(
                op["responses"]["400"].is_object(),
                "{method} {path} documents 400"
            );
            assert!(
                op["responses"]["503"].is_object(),
                "{method} {path} documents 503"
            );
        }
    }
}

#[test]
fn the_cli_prints_the_same_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .arg("openapi")
        .output()
        .expect("streamcar openapi");
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(operations(&doc).len(), EXPECTED.len());
    assert!(doc["components"]["schemas"]["PublishRequest"].is_object());
    assert!(doc["components"]["schemas"]["Problem"]["example"].is_object());
}

/// Text limits are bytes of UTF-8; JSON Schema's maxLength counts
/// characters, so every limited field says "bytes" in its description.
#[test]
fn text_limits_are_documented_in_bytes() {
    let doc = serde_json::to_value(streamcar::http::openapi_document()).unwrap();
    let publish = &doc["components"]["schemas"]["PublishRequest"]["properties"];
    for (field, max) in [
        ("id", 128),
        ("idempotency_key", 256),
        ("schema_version", 64),
    ] {
        let description = publish[field]["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!("{max} bytes")),
            "{field}: {description}"
        );
        assert_eq!(publish[field]["maxLength"], max, "{field}");
    }
    let headers = &publish["headers"];
    assert!(
        headers["description"]
            .as_str()
            .unwrap_or_default()
            .contains("4096 bytes"),
        "{headers}"
    );
    let claim = &doc["paths"]["/v1/tenants/{tenant}/idempotency/{key}/claim"]["post"];
    let key = claim["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "key")
        .unwrap();
    assert!(
        key["description"]
            .as_str()
            .unwrap_or_default()
            .contains("256 bytes"),
        "{key}"
    );
    // Every string schema with a maxLength, anywhere in the components.
    fn walk(value: &Value, at: &str) {
        if let Some(max) = value.get("maxLength") {
            let description = value["description"].as_str().unwrap_or_default();
            assert!(
                description.contains(&format!("{max} bytes")),
                "{at}: maxLength {max} without a byte limit in {description:?}"
            );
        }
        match value {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(v, &format!("{at}.{k}"))),
            Value::Array(items) => items.iter().for_each(|v| walk(v, at)),
            _ => {}
        }
    }
    walk(&doc["components"], "components");
}

/// Every operation has its own operationId (OpenAPI requires it, and client
/// generators name their methods after it).
#[test]
fn operation_ids_are_unique() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamcar"))
        .arg("openapi")
        .output()
        .expect("streamcar openapi");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut seen = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                assert!(
                    seen.insert(id.to_owned()),
                    "{method} {path}: operationId {id} repeats"
                );
            }
        }
    }
}
