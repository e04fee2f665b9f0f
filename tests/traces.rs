//! Traces (`--otlp-endpoint`): an in-test OTLP/HTTP receiver decodes the
//! `ExportTraceServiceRequest`s the sidecar sends, and the spans of one
//! workflow (publish → deliver → nack → deliver again → ack with emit →
//! deliver the emitted message → ack) form one trace, each step the child of
//! the one before, carrying message id, topic, group and attempt.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::TestApp;
use support::otlp::{Received, receiver};

/// The publisher's trace and span (as an instrumented client sends them).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent_of(message: &Value) -> String {
    message["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent in {message}"))
        .to_owned()
}

/// `(trace id, span id)` of a traceparent.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

async fn fetch_one(app: &TestApp, topic: &str, group: &str) -> Value {
    let got = app.fetch(topic, group, "w", 1, 5000).await;
    assert_eq!(got.len(), 1, "{topic}/{group}: {got:?}");
    got[0].clone()
}

/// The push subscription's tenant (the pull flow uses the app's own).
const PUSH_TENANT: &str = "trace-push";
/// The push flow's trace.
const PUSH_TRACE: &str = "5af92f3577b34da6a3ce929d0e0e4799";

/// An app that answers every push with an emit, recording each request's
/// `traceparent`.
async fn push_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let record = record.clone();
        async move {
            let traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            record.lock().expect("seen").push(traceparent);
            axum::Json(json!({"emit": [{"topic": "pushed-next", "payload": 1}]}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Both flows share one sidecar and one receiver: the exporter is one per
/// process, so they cannot run as two parallel tests.
#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_and_push_workflows_are_each_one_linked_trace() {
    let (addr, spans) = receiver().await;
    let (push_addr, pushed) = push_app().await;
    let subscriptions = json!({"subscriptions": [{
        "name": "traced", "tenant": PUSH_TENANT, "topic": "pushed", "group": "push",
        "url": format!("http://{push_addr}/"),
    }]});
    let subscriptions = streamcar::push::spec::parse(&subscriptions.to_string(), true)
        .expect("valid subscriptions");
    let mut app = TestApp::start_with(|c| {
        c.otlp_endpoint = Some(format!("http://{addr}"));
        c.subscriptions = subscriptions;
    })
    .await;
    let pull = pull_flow(&app).await;
    push_flow(&app).await;
    // Shutdown flushes the batch processor.
    app.stop().await;
    let mut received = Vec::new();
    for _ in 0..100 {
        received = spans.lock().expect("spans").clone();
        let count = |name: &str| received.iter().filter(|s| s.name == name).count();
        if count("deliver") >= 4
            && count("ack") >= 3
            && count("emit") >= 2
            && count("push") >= 1
            && count("join") >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pull_spans, push_spans): (Vec<Received>, Vec<Received>) =
        received.into_iter().partition(|s| {
            s.attributes.get("streamcar.tenant").map(String::as_str) != Some(PUSH_TENANT)
        });
    check_pull(&app.tenant, &pull, &pull_spans);
    let pushed = pushed.lock().expect("seen").clone();
    check_push(&pushed, &push_spans);
}

/// What the pull flow saw through the API.
struct Pull {
    source_id: String,
    first: Value,
    worker_context: String,
    next: Value,
}

/// Publish → fetch → nack → fetch → ack with emit → fetch the emitted
/// message → ack (by a worker that sends no context).
async fn pull_flow(app: &TestApp) -> Pull {
    let no_backoff = json!({"backoff": {"initial_ms": 1, "max_ms": 1}});
    app.group("prompts", "model", &no_backoff).await;
    app.group("results", "post", &json!({})).await;

    // Publish with the client's traceparent on the request.
    let published = app
        .client
        .post(app.url("/topics/prompts/messages"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"payload": {"prompt": "hi"}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), StatusCode::CREATED);
    let source_id = TestApp::reply(published).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // First delivery fails (nack), the second is acked with an emit by a
    // worker that continues the delivery's trace on its ack request.
    let first = fetch_one(app, "prompts", "model").await;
    let nack = json!({"receipts": [first["receipt"]], "delay_ms": 0});
    let nacked = app
        .client
        .post(app.url("/topics/prompts/groups/model/nack"))
        .header("traceparent", traceparent_of(&first))
        .json(&nack)
        .send()
        .await
        .expect("nack");
    assert_eq!(nacked.status(), StatusCode::OK);
    let second = fetch_one(app, "prompts", "model").await;
    assert_eq!(second["attempt"], 2);
    let worker_context = traceparent_of(&second);
    let ack = json!({
        "receipts": [second["receipt"]],
        "emit": [{"topic": "results", "payload": {"answer": 42}}],
    });
    let acked = app
        .client
        .request(Method::POST, app.url("/topics/prompts/groups/model/ack"))
        .header("traceparent", &worker_context)
        .json(&ack)
        .send()
        .await
        .expect("ack");
    let acked = TestApp::reply(acked).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.body);

    // The next step: a worker that sends no traceparent of its own.
    let next = fetch_one(app, "results", "post").await;
    assert_eq!(next["causation_id"], source_id.as_str());
    let next_receipt = next["receipt"].as_str().expect("receipt");
    let done = app.ack("results", "post", &[next_receipt]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);

    // A fan-in declared in the worker's context: the aggregate carries that
    // context on, and a part posted without any context (a worker that
    // does not propagate traces) still lands in the join's trace.
    for (method, path, body, context) in [
        (
            Method::PUT,
            "/topics/fanin/joins/j1",
            json!({"parts": ["a", "b"], "ttl_ms": 60000}),
            Some(&worker_context),
        ),
        (
            Method::POST,
            "/topics/fanin/joins/j1/parts/a",
            json!({"result": 1}),
            Some(&worker_context),
        ),
        (
            Method::POST,
            "/topics/fanin/joins/j1/parts/b",
            json!({"result": 2}),
            None,
        ),
    ] {
        let mut request = app.client.request(method, app.url(path)).json(&body);
        if let Some(context) = context {
            request = request.header("traceparent", context);
        }
        let sent = request.send().await.expect("join");
        assert!(sent.status().is_success(), "{path}: {}", sent.status());
    }
    let aggregate = app.history("fanin").await;
    assert_eq!(aggregate.len(), 1);
    assert_eq!(aggregate[0]["payload"]["status"], "complete");
    assert_eq!(traceparent_of(&aggregate[0]), worker_context);
    Pull {
        source_id,
        first,
        worker_context,
        next,
    }
}

fn named<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn check_pull(tenant: &str, pull: &Pull, received: &[Received]) {
    let Pull {
        source_id,
        first,
        worker_context,
        next,
    } = pull;
    let source_id = source_id.as_str();
    let next_id = next["id"].as_str().expect("id");
    let named = |name: &str| named(received, name);
    let by_attempt = |name: &str, attempt: &str| -> &Received {
        named(name)
            .into_iter()
            .find(|s| s.attributes.get("streamcar.attempt").map(String::as_str) == Some(attempt))
            .unwrap_or_else(|| panic!("no {name} span of attempt {attempt} in {received:#?}"))
    };

    // One trace, the client's.
    assert!(received.len() >= 8, "{received:#?}");
    for span in received {
        assert_eq!(span.trace_id, TRACE, "{span:#?}");
    }
    let publish = named("publish")[0];
    assert_eq!(publish.parent_span_id, CLIENT_SPAN);
    assert_eq!(publish.attributes["messaging.message.id"], source_id);
    assert_eq!(publish.attributes["messaging.destination.name"], "prompts");
    assert_eq!(publish.attributes["streamcar.tenant"], tenant);

    // publish → deliver (each attempt), and the delivery names its span.
    let deliveries: Vec<&Received> = named("deliver")
        .into_iter()
        .filter(|s| s.attributes["messaging.destination.name"] == "prompts")
        .collect();
    assert_eq!(deliveries.len(), 2, "{received:#?}");
    for d in &deliveries {
        assert_eq!(d.parent_span_id, publish.span_id, "{d:#?}");
        assert_eq!(d.attributes["messaging.message.id"], source_id);
        assert_eq!(d.attributes["messaging.consumer.group.name"], "model");
    }
    let deliver1 = by_attempt("deliver", "1");
    let deliver2 = by_attempt("deliver", "2");
    assert_eq!(
        ids(&traceparent_of(first)),
        (TRACE.into(), deliver1.span_id.clone())
    );
    assert_eq!(
        ids(worker_context),
        (TRACE.into(), deliver2.span_id.clone())
    );

    // The nack of attempt 1, under the worker's context.
    let nack = named("nack")[0];
    assert_eq!(nack.parent_span_id, deliver1.span_id);
    assert_eq!(nack.attributes["streamcar.attempt"], "1");
    assert_eq!(nack.attributes["streamcar.outcome"], "nacked");
    assert_eq!(nack.attributes["messaging.consumer.group.name"], "model");

    // deliver (attempt 2) → emit → the next step's deliver.
    let emit = named("emit")[0];
    assert_eq!(emit.parent_span_id, deliver2.span_id, "{received:#?}");
    assert_eq!(emit.attributes["messaging.destination.name"], "results");
    assert_eq!(emit.attributes["streamcar.causation_id"], source_id);
    assert_eq!(emit.attributes["messaging.message.id"], next_id);
    assert_eq!(ids(&traceparent_of(next)).0, TRACE);
    let next_deliver = named("deliver")
        .into_iter()
        .find(|s| s.attributes["messaging.destination.name"] == "results")
        .unwrap_or_else(|| panic!("no delivery of the emitted message: {received:#?}"));
    assert_eq!(next_deliver.parent_span_id, emit.span_id);
    assert_eq!(next_deliver.attributes["messaging.message.id"], next_id);
    assert_eq!(
        next_deliver.attributes["messaging.consumer.group.name"],
        "post"
    );
    assert_eq!(next_deliver.attributes["streamcar.attempt"], "1");
    assert_eq!(next_deliver.attributes["streamcar.causation_id"], source_id);

    // The join parts: under the worker's context, given or (part b) not.
    let joins = named("join");
    let outcomes: Vec<(&str, &str)> = joins
        .iter()
        .map(|j| {
            assert_eq!(j.parent_span_id, deliver2.span_id, "{j:?}");
            assert_eq!(j.attributes["streamcar.join"], "j1");
            assert_eq!(j.attributes["messaging.destination.name"], "fanin");
            (
                j.attributes["streamcar.join.part"].as_str(),
                j.attributes["streamcar.outcome"].as_str(),
            )
        })
        .collect();
    assert_eq!(outcomes, [("a", "open"), ("b", "complete")]);

    // The acks: under the worker's context, and (no context given) under
    // the emitted message's own trace.
    let ack_model = named("ack")
        .into_iter()
        .find(|s| s.attributes["messaging.consumer.group.name"] == "model")
        .expect("ack of the prompt");
    assert_eq!(ack_model.parent_span_id, deliver2.span_id);
    assert_eq!(ack_model.attributes["streamcar.attempt"], "2");
    assert_eq!(ack_model.attributes["messaging.message.id"], source_id);
    assert_eq!(ack_model.attributes["streamcar.outcome"], "acked");
    let ack_post = named("ack")
        .into_iter()
        .find(|s| s.attributes["messaging.consumer.group.name"] == "post")
        .expect("ack of the emitted message");
    assert_eq!(ack_post.parent_span_id, emit.span_id);
    assert_eq!(ack_post.attributes["messaging.message.id"], next_id);
}

#[test]
fn a_bad_endpoint_is_refused_at_start() {
    for bad in ["https://collector:4318", "collector:4318", "not a url"] {
        assert!(streamcar::traces::traces_url(bad).is_err(), "{bad}");
    }
}

/// Publish to the push subscription's topic, and wait for the emitted
/// message (the push answered, was acked with emit).
async fn push_flow(app: &TestApp) {
    let url = |path: &str| format!("{}/v1/tenants/{PUSH_TENANT}{path}", app.base);
    let published = app
        .client
        .post(url("/topics/pushed/messages"))
        .header("traceparent", format!("00-{PUSH_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"payload": {"prompt": "push me"}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), StatusCode::CREATED);
    for _ in 0..200 {
        let history = app
            .send(Method::GET, &url("/topics/pushed-next/messages"), None)
            .await;
        if history.status == StatusCode::OK
            && history.body["messages"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the push was never answered with its emit");
}

/// deliver → push (the app gets the push span's context) → ack and emit.
fn check_push(pushed: &[String], received: &[Received]) {
    for span in received {
        assert_eq!(span.trace_id, PUSH_TRACE, "{span:#?}");
    }
    let one = |name: &str| -> &Received {
        let found = named(received, name);
        assert_eq!(found.len(), 1, "one {name} in {received:#?}");
        found[0]
    };
    let publish = one("publish");
    let deliver = one("deliver");
    let push = one("push");
    assert_eq!(deliver.parent_span_id, publish.span_id);
    assert_eq!(push.parent_span_id, deliver.span_id);
    assert_eq!(push.attributes["streamcar.subscription"], "traced");
    assert_eq!(push.attributes["streamcar.outcome"], "acked");
    assert_eq!(push.attributes["streamcar.attempt"], "1");
    assert_eq!(push.attributes["messaging.consumer.group.name"], "push");
    let source_id = &deliver.attributes["messaging.message.id"];
    assert_eq!(&push.attributes["messaging.message.id"], source_id);
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(ids(&pushed[0]), (PUSH_TRACE.into(), push.span_id.clone()));
    let ack = one("ack");
    assert_eq!(ack.parent_span_id, push.span_id);
    assert_eq!(&ack.attributes["messaging.message.id"], source_id);
    let emit = one("emit");
    assert_eq!(emit.parent_span_id, push.span_id);
    assert_eq!(emit.attributes["messaging.destination.name"], "pushed-next");
    assert_eq!(&emit.attributes["streamcar.causation_id"], source_id);
}
