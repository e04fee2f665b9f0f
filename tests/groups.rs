//! Consumer group lifecycle through HTTP: declare, update, describe, delete,
//! start positions, pause and resume.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::TestApp;

#[tokio::test]
async fn declare_describe_update_and_delete() {
    let app = TestApp::start().await;
    let created = app
        .put(
            "/topics/jobs/groups/workers",
            &json!({"lease_ms": 5000, "max_deliveries": 3, "backoff": {"initial_ms": 200}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let g = &created.body;
    assert_eq!(g["name"], "workers");
    assert_eq!(g["start"], "earliest", "default start");
    assert_eq!(g["lease_ms"], 5000);
    assert_eq!(g["max_deliveries"], 3);
    assert_eq!(
        g["backoff"],
        json!({"initial_ms": 200, "max_ms": 60000, "multiplier": 2.0, "jitter": 0.2})
    );
    assert_eq!(g["paused"], false);
    assert_eq!(g["pending"], 0);
    assert_eq!(g["delayed"], 0);
    assert_eq!(g["dead_lettered"], 0);
    assert_eq!(g["consumers"], json!([]));

    // The topic was declared along with the group.
    let topic = app.get("/topics/jobs").await;
    assert_eq!(topic.status, StatusCode::OK);
    assert_eq!(topic.body["groups"][0]["name"], "workers");

    let updated = app
        .put("/topics/jobs/groups/workers", &json!({"lease_ms": 7000}))
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["lease_ms"], 7000);
    assert_eq!(updated.body["max_deliveries"], 3, "other fields kept");
    assert_eq!(updated.body["backoff"]["initial_ms"], 200);

    for i in 0..3 {
        app.publish("jobs", &json!({"payload": i})).await;
    }
    let got = app.fetch("jobs", "workers", "w1", 2, 0).await;
    assert_eq!(got.len(), 2);
    let info = app.get("/topics/jobs/groups/workers").await.body;
    assert_eq!(info["pending"], 2);
    assert_eq!(info["lag"], 1);
    assert_eq!(info["last_delivered_id"], got[1]["stream_id"]);
    assert_eq!(info["consumers"][0]["name"], "w1");
    assert_eq!(info["consumers"][0]["pending"], 2);

    let del = app.delete("/topics/jobs/groups/workers").await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    app.get("/topics/jobs/groups/workers")
        .await
        .assert_problem(404, "group_not_found");
    app.delete("/topics/jobs/groups/workers")
        .await
        .assert_problem(404, "group_not_found");
    assert_eq!(app.get("/topics/jobs").await.body["groups"], json!([]));
    assert_eq!(app.history("jobs").await.len(), 3, "messages stay");
}

#[tokio::test]
async fn start_positions() {
    let app = TestApp::start().await;
    let first = app.publish("s", &json!({"payload": "old"})).await;
    app.group("s", "from-start", &json!({})).await;
    app.group("s", "from-now", &json!({"start": "latest"}))
        .await;
    let from_id = app
        .group("s", "from-id", &json!({"start": first["stream_id"]}))
        .await;
    assert_eq!(from_id["start"], first["stream_id"]);
    app.publish("s", &json!({"payload": "new"})).await;

    let payloads = |msgs: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        msgs.iter().map(|m| m["payload"].clone()).collect()
    };
    assert_eq!(
        payloads(app.fetch("s", "from-start", "w", 10, 0).await),
        [json!("old"), json!("new")]
    );
    assert_eq!(
        payloads(app.fetch("s", "from-now", "w", 10, 0).await),
        [json!("new")]
    );
    assert_eq!(
        payloads(app.fetch("s", "from-id", "w", 10, 0).await),
        [json!("new")]
    );

    // Re-declaring never moves a live group.
    app.group("s", "from-now", &json!({"start": "earliest"}))
        .await;
    assert!(app.fetch("s", "from-now", "w", 10, 0).await.is_empty());
}

#[tokio::test]
async fn paused_group_delivers_nothing_until_resumed() {
    let app = TestApp::start().await;
    app.group("p", "g", &json!({})).await;
    let pause = app.post("/topics/p/groups/g/pause", &json!({})).await;
    assert_eq!(pause.status, StatusCode::OK);
    let published = app.post("/topics/p/messages", &json!({"payload": 1})).await;
    assert_eq!(
        published.status,
        StatusCode::CREATED,
        "publishing still works"
    );
    assert!(app.fetch("p", "g", "w", 10, 0).await.is_empty());
    assert_eq!(app.get("/topics/p/groups/g").await.body["paused"], true);

    let resume = app.post("/topics/p/groups/g/resume", &json!({})).await;
    assert_eq!(resume.status, StatusCode::OK);
    assert_eq!(app.fetch("p", "g", "w", 10, 0).await.len(), 1);
    app.post("/topics/p/groups/nope/pause", &json!({}))
        .await
        .assert_problem(404, "group_not_found");
}

#[tokio::test]
async fn group_config_is_validated() {
    let app = TestApp::start().await;
    for (body, field) in [
        (json!({"lease_ms": 0}), "lease_ms"),
        (json!({"lease_ms": 99}), "lease_ms"),
        (json!({"max_deliveries": 0}), "max_deliveries"),
        (json!({"max_deliveries": -1}), "max_deliveries"),
        (
            json!({"backoff": {"multiplier": 0.5}}),
            "backoff.multiplier",
        ),
        (json!({"backoff": {"jitter": 1.5}}), "backoff.jitter"),
        (json!({"backoff": {"initial_ms": 0}}), "backoff.initial_ms"),
        (json!({"backoff": [1000, 2000]}), "backoff"),
        (json!({"backoff": {"initial": 5}}), "backoff.initial"),
        (json!({"start": "yesterday"}), "start"),
        (json!({"paused": "no"}), "paused"),
    ] {
        let reply = app.put("/topics/v/groups/g", &body).await;
        assert_eq!(
            reply.assert_problem(400, "invalid_field")["field"],
            field,
            "{body}"
        );
    }
    app.get("/topics/v/groups/g")
        .await
        .assert_problem(404, "group_not_found");
    let bad = format!("{}/v1/tenants/{}/topics/v/groups/a:b", app.base, app.tenant);
    app.send(reqwest::Method::PUT, &bad, Some(&json!({})))
        .await
        .assert_problem(400, "invalid_name");
}
