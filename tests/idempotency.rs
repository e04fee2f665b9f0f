//! Consumer-side idempotency and checkpoints through HTTP: claim, complete,
//! replay, release, takeover after expiry, stale tokens, concurrent claims,
//! and high-water marks that can be deleted.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

async fn claim(app: &TestApp, key: &str, owner: &str, ttl_ms: u64) -> support::Reply {
    app.post(
        &format!("/idempotency/{key}/claim"),
        &json!({"ttl_ms": ttl_ms, "owner": owner}),
    )
    .await
}

#[tokio::test]
async fn claim_complete_and_replay() {
    let app = TestApp::start().await;
    let first = claim(&app, "job-1", "worker-a", 30000).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["state"], "claimed");
    let token = first.body["token"].as_str().unwrap().to_owned();
    assert!(first.body["expires_at"].as_u64().is_some());

    // While it runs, others see who has it.
    let busy = claim(&app, "job-1", "worker-b", 30000).await;
    let problem = busy.assert_problem(409, "in_progress");
    assert_eq!(problem["state"], "in_progress");
    assert_eq!(problem["owner"], "worker-a");
    assert_eq!(problem["expires_at"], first.body["expires_at"]);

    let result = json!({"answer": 42, "tokens": [1, 2]});
    let done = app
        .post(
            "/idempotency/job-1/complete",
            &json!({"token": token, "result": result, "ttl_ms": 60000}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["state"], "completed");

    let replay = claim(&app, "job-1", "worker-c", 30000).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["state"], "completed");
    assert_eq!(replay.body["result"], result);
    let record = app.get("/idempotency/job-1").await;
    assert_eq!(record.body["state"], "completed");
    assert_eq!(record.body["owner"], "worker-a");
    assert_eq!(record.body["result"], result);

    // The token is spent.
    app.post(
        "/idempotency/job-1/complete",
        &json!({"token": token, "result": 1, "ttl_ms": 60000}),
    )
    .await
    .assert_problem(409, "stale_token");
    app.get("/idempotency/never")
        .await
        .assert_problem(404, "idempotency_key_not_found");
}

#[tokio::test]
async fn release_allows_a_retry_and_forged_tokens_change_nothing() {
    let app = TestApp::start().await;
    let first = claim(&app, "job-2", "a", 30000).await;
    let token = first.body["token"].as_str().unwrap().to_owned();
    for forged in ["nope", "00000000000000000000000000000000"] {
        app.post("/idempotency/job-2/release", &json!({"token": forged}))
            .await
            .assert_problem(409, "stale_token");
        app.post(
            "/idempotency/job-2/complete",
            &json!({"token": forged, "result": 1, "ttl_ms": 1000}),
        )
        .await
        .assert_problem(409, "stale_token");
    }
    assert_eq!(
        app.get("/idempotency/job-2").await.body["state"],
        "in_progress"
    );
    let released = app
        .post("/idempotency/job-2/release", &json!({"token": token}))
        .await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
    let again = claim(&app, "job-2", "b", 30000).await;
    assert_eq!(
        again.status,
        StatusCode::CREATED,
        "released keys can be claimed"
    );
    assert_ne!(again.body["token"], token);
}

#[tokio::test]
async fn an_expired_claim_is_taken_over_and_the_old_token_refused() {
    let app = TestApp::start().await;
    let first = claim(&app, "job-3", "slow", 200).await;
    let old = first.body["token"].as_str().unwrap().to_owned();
    let mut taken = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reply = claim(&app, "job-3", "fast", 30000).await;
        if reply.status == StatusCode::CREATED {
            taken = Some(reply);
            break;
        }
        reply.assert_problem(409, "in_progress");
    }
    let taken = taken.expect("the expired claim was taken over");
    assert_ne!(taken.body["token"], old);
    app.post(
        "/idempotency/job-3/complete",
        &json!({"token": old, "result": "late", "ttl_ms": 1000}),
    )
    .await
    .assert_problem(409, "stale_token");
    let ok = app
        .post(
            "/idempotency/job-3/complete",
            &json!({"token": taken.body["token"], "result": "on time", "ttl_ms": 60000}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        app.get("/idempotency/job-3").await.body["result"],
        "on time"
    );
}

#[tokio::test]
async fn twenty_concurrent_claims_one_winner() {
    let app = TestApp::start().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = app.client.clone();
        let url = app.url("/idempotency/hot/claim");
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({"ttl_ms": 30000, "owner": format!("w{i}")}))
                .send()
                .await
                .expect("claim");
            TestApp::reply(resp).await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status.as_u16() {
            201 => winners += 1,
            409 => assert_eq!(reply.body["code"], "in_progress"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn claim_input_is_validated() {
    let app = TestApp::start().await;
    for (body, field) in [
        (json!({"ttl_ms": 0, "owner": "a"}), "ttl_ms"),
        (json!({"ttl_ms": 86_400_001, "owner": "a"}), "ttl_ms"),
        (json!({"ttl_ms": 1000, "owner": ""}), "owner"),
        (json!({"ttl_ms": 1000}), "owner"),
        (json!({"ttl_ms": "1s", "owner": "a"}), "ttl_ms"),
    ] {
        let reply = app.post("/idempotency/k/claim", &body).await;
        assert_eq!(
            reply.assert_problem(400, "invalid_field")["field"],
            field,
            "{body}"
        );
    }
    let long = "k".repeat(257);
    claim(&app, &long, "a", 1000)
        .await
        .assert_problem(400, "invalid_field");
    // Keys may hold any printable text, percent-encoded in the path.
    let reply = claim(&app, "order%2F42%3Aretry", "a", 1000).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let record = app.get("/idempotency/order%2F42%3Aretry").await;
    assert_eq!(record.body["key"], "order/42:retry");
}

#[tokio::test]
async fn checkpoints_only_move_forward() {
    let app = TestApp::start().await;
    let advance = |seq: Value| {
        let app = &app;
        async move {
            let reply = app
                .post("/checkpoints/cause-7/advance", &json!({"seq": seq}))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            (reply.body["accepted"].clone(), reply.body["last"].clone())
        }
    };
    app.get("/checkpoints/cause-7")
        .await
        .assert_problem(404, "checkpoint_not_found");
    assert_eq!(advance(json!(5)).await, (json!(true), json!(5)));
    assert_eq!(
        advance(json!(5)).await,
        (json!(false), json!(5)),
        "duplicate"
    );
    assert_eq!(advance(json!(3)).await, (json!(false), json!(5)), "older");
    assert_eq!(advance(json!(9)).await, (json!(true), json!(9)));
    assert_eq!(app.get("/checkpoints/cause-7").await.body["last"], 9);
    let too_big = app
        .post(
            "/checkpoints/c/advance",
            &json!({"seq": 9_007_199_254_740_992_u64}),
        )
        .await;
    assert_eq!(too_big.assert_problem(400, "invalid_field")["field"], "seq");
    app.post("/checkpoints/c/advance", &json!({"seq": -1}))
        .await
        .assert_problem(400, "invalid_field");
}

#[tokio::test]
async fn checkpoints_can_be_deleted_and_then_start_from_nothing() {
    let app = TestApp::start().await;
    app.delete("/checkpoints/cause-8")
        .await
        .assert_problem(404, "checkpoint_not_found");
    let advanced = app
        .post("/checkpoints/cause-8/advance", &json!({"seq": 9}))
        .await;
    assert_eq!(advanced.body["accepted"], true, "{}", advanced.body);
    let deleted = app.delete("/checkpoints/cause-8").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    app.get("/checkpoints/cause-8")
        .await
        .assert_problem(404, "checkpoint_not_found");
    app.delete("/checkpoints/cause-8")
        .await
        .assert_problem(404, "checkpoint_not_found");
    // Below the old mark, accepted: the mark is gone.
    let again = app
        .post("/checkpoints/cause-8/advance", &json!({"seq": 3}))
        .await;
    assert_eq!(again.body["accepted"], true, "{}", again.body);
    assert_eq!(again.body["last"], 3);
    // Percent-encoded names address the same checkpoint.
    app.post("/checkpoints/a%2Fb/advance", &json!({"seq": 1}))
        .await;
    let deleted = app.delete("/checkpoints/a%2Fb").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
}
