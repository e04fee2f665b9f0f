//! Adversarial tests of operations cut off mid-call: a client that gives up
//! (reqwest's `timeout`, so hyper drops the handler future at whatever
//! `.await` it had reached) or Redis failing between two commands of one
//! operation. Each test fires many calls with give-up points spread from
//! before any call could start to after any would end, asserts that the
//! race was exercised (some clients gave up, some calls took effect), and
//! then checks an invariant a user relies on once the dust settles: state
//! left half-done must heal by itself, never stay inconsistent for good.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use support::TestApp;

/// Give-up point `i` of `n`: from 20 µs (before any call could end) to
/// 20 ms (after any would), evenly on a log scale.
fn patience(i: u64, n: u64) -> Duration {
    Duration::from_secs_f64(20e-6 * 1000f64.powf(i as f64 / n as f64))
}

/// The tenant's listed topics (`GET …/topics`).
async fn listed_topics(app: &TestApp) -> HashSet<String> {
    let reply = app.get("/topics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| t.as_str().expect("name").to_owned())
        .collect()
}

/// A topic deleted by a call whose client went away mid-call is not left in
/// the listing: `GET …/topics` never keeps naming a topic that is gone (a
/// DELETE of it again answers 404 and, before the fix, removed nothing, so
/// the ghost stayed listed for good and kept its tenant listed too).
#[tokio::test]
async fn a_topic_deleted_by_a_call_whose_client_left_is_not_listed() {
    const TOPICS: u64 = 400;
    let app = TestApp::start().await;
    for i in 0..TOPICS {
        let reply = app.put(&format!("/topics/gone-{i}"), &json!({})).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let client = reqwest::Client::new();
    let mut gave_up = 0;
    for i in 0..TOPICS {
        let sent = client
            .delete(app.url(&format!("/topics/gone-{i}")))
            .timeout(patience(i, TOPICS))
            .send()
            .await;
        gave_up += u32::from(sent.is_err());
    }
    let mut ghosts: Vec<String> = Vec::new();
    let mut deleted = 0;
    for _ in 0..50 {
        let listed = listed_topics(&app).await;
        ghosts.clear();
        deleted = 0;
        for i in 0..TOPICS {
            let name = format!("gone-{i}");
            if app.get(&format!("/topics/{name}")).await.status == 404 {
                deleted += 1;
                if listed.contains(&name) {
                    ghosts.push(name);
                }
            }
        }
        if ghosts.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gave_up > 0 && deleted > 0,
        "{gave_up} gave up, {deleted} deleted"
    );
    assert!(ghosts.is_empty(), "deleted but still listed: {ghosts:?}");
}
