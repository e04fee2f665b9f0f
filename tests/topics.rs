//! Topic lifecycle through HTTP: declare, update, describe, list, delete.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::TestApp;

#[tokio::test]
async fn declare_update_describe_and_list() {
    let app = TestApp::start().await;
    let created = app
        .put(
            "/topics/orders",
            &json!({"retention_ms": 3600000, "max_backlog": 500}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["name"], "orders");
    assert_eq!(created.body["retention_ms"], 3600000);
    assert_eq!(created.body["max_backlog"], 500);
    assert_eq!(created.body["dedup_window_ms"], 86_400_000, "default 24h");
    assert_eq!(created.body["length"], 0);
    assert_eq!(created.body["last_seq"], 0);

    let updated = app
        .put("/topics/orders", &json!({"dedup_window_ms": 1000}))
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["dedup_window_ms"], 1000);
    assert_eq!(
        updated.body["max_backlog"], 500,
        "untouched fields are kept"
    );

    let m1 = app.publish("orders", &json!({"payload": 1})).await;
    let m2 = app.publish("orders", &json!({"payload": 2})).await;
    let info = app.get("/topics/orders").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.body["length"], 2);
    assert_eq!(info.body["last_seq"], 2);
    assert_eq!(info.body["first_id"], m1["stream_id"]);
    assert_eq!(info.body["last_id"], m2["stream_id"]);
    assert_eq!(info.body["groups"], json!([]));

    // Publishing declares a topic with defaults.
    app.publish("auto", &json!({"payload": 1})).await;
    let auto = app.get("/topics/auto").await;
    assert_eq!(auto.body["retention_ms"], 0);
    assert_eq!(auto.body["dedup_window_ms"], 86_400_000);

    // An empty PUT declares with defaults.
    let bare = app
        .send(reqwest::Method::PUT, &app.url("/topics/bare"), None)
        .await;
    assert_eq!(bare.status, StatusCode::CREATED, "{}", bare.body);

    let list = app.get("/topics").await;
    assert_eq!(list.body["topics"], json!(["auto", "bare", "orders"]));
}

#[tokio::test]
async fn tenants_are_isolated() {
    let app = TestApp::start().await;
    app.publish("shared-name", &json!({"payload": "mine"}))
        .await;
    let other = format!("{}/v1/tenants/other-{}/topics", app.base, app.tenant);
    let reply = app.send(reqwest::Method::GET, &other, None).await;
    assert_eq!(reply.body["topics"], json!([]));
    let reply = app
        .send(
            reqwest::Method::GET,
            &format!("{other}/shared-name/messages"),
            None,
        )
        .await;
    reply.assert_problem(404, "topic_not_found");
}

#[tokio::test]
async fn delete_removes_messages_sequence_and_idempotency() {
    let app = TestApp::start().await;
    app.publish("gone", &json!({"payload": 1, "idempotency_key": "k"}))
        .await;
    app.publish("gone", &json!({"payload": 2})).await;
    let del = app.delete("/topics/gone").await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    app.get("/topics/gone")
        .await
        .assert_problem(404, "topic_not_found");
    app.get("/topics/gone/messages")
        .await
        .assert_problem(404, "topic_not_found");
    app.delete("/topics/gone")
        .await
        .assert_problem(404, "topic_not_found");
    assert_eq!(app.get("/topics").await.body["topics"], json!([]));

    // A new topic of the same name starts over: seq 1, and the old
    // idempotency record does not make the new publish a duplicate.
    let again = app
        .post(
            "/topics/gone/messages",
            &json!({"payload": 3, "idempotency_key": "k"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body["seq"], 1);
    let history = app.history("gone").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["payload"], 3);
}

/// `GET /v1/tenants` lists the tenants that have topics, sorted; a tenant
/// with only a pool or a quota is not listed, and one whose last topic was
/// deleted leaves the list (with the background prune).
#[tokio::test]
async fn tenants_with_topics_are_listed() {
    let mut app =
        TestApp::start_with(|c| c.retention_interval = std::time::Duration::from_millis(100)).await;
    let tenants = format!("{}/v1/tenants", app.base);
    let list = app.send(reqwest::Method::GET, &tenants, None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body, json!({"tenants": []}));
    let base = app.tenant.clone();
    for t in ["zeta", "alpha", "mid.dle"] {
        app.tenant = format!("{base}-{t}");
        app.publish("orders", &json!({"payload": 1})).await;
    }
    app.tenant = format!("{base}-pool-only");
    let pool = app
        .put("/pools/gpu", &json!({"capacity": 1, "lease_ms": 1000}))
        .await;
    assert!(pool.status.is_success(), "{}", pool.body);
    let limits = app
        .put("/limits", &json!({"publish_per_sec": 5, "burst": 5}))
        .await;
    assert!(limits.status.is_success(), "{}", limits.body);
    let list = app.send(reqwest::Method::GET, &tenants, None).await;
    assert_eq!(
        list.body,
        json!({"tenants": [format!("{base}-alpha"), format!("{base}-mid.dle"), format!("{base}-zeta")]})
    );
    app.tenant = format!("{base}-zeta");
    assert_eq!(
        app.delete("/topics/orders").await.status,
        StatusCode::NO_CONTENT
    );
    let mut names = serde_json::Value::Null;
    for _ in 0..100 {
        names = app.send(reqwest::Method::GET, &tenants, None).await.body["tenants"].clone();
        if names.as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        names,
        json!([format!("{base}-alpha"), format!("{base}-mid.dle")])
    );
}

/// A group declaration refused before it wrote anything (a start id in the
/// future) on a topic that does not exist creates no topic, so it must not
/// list one either: the listing is written before the script that may
/// create the topic, and a refusal left a topic in `GET /topics` that
/// `GET /topics/{p}` answers 404 for, one more per refused name until a
/// retention pass (never, with retention off).
#[tokio::test]
async fn a_refused_group_declaration_lists_no_topic() {
    let app = TestApp::start_quiet().await;
    for topic in ["never-a", "never-b"] {
        let refused = app
            .put(
                &format!("/topics/{topic}/groups/g"),
                &json!({"start": "99999999999999-0"}),
            )
            .await;
        refused.assert_problem(400, "invalid_field");
        assert_eq!(
            app.get(&format!("/topics/{topic}")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    // (Its tenant may stay on the tenant list until the next prune, as
    // after the deletion of a tenant's last topic.)
    let list = app.get("/topics").await;
    assert_eq!(list.body["topics"], json!([]), "{}", list.body);

    // A topic that exists stays listed when a declaration of it is refused.
    app.publish("kept", &json!({"payload": 1})).await;
    app.put(
        "/topics/kept/groups/g",
        &json!({"start": "99999999999999-0"}),
    )
    .await
    .assert_problem(400, "invalid_field");
    assert_eq!(app.get("/topics").await.body["topics"], json!(["kept"]));
    let tenants = app
        .send(
            reqwest::Method::GET,
            &format!("{}/v1/tenants", app.base),
            None,
        )
        .await;
    assert_eq!(tenants.body, json!({"tenants": [app.tenant.clone()]}));
}
