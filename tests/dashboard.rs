//! The Grafana dashboard (`ops/grafana/streamcar.json`) against what the
//! sidecar really exports: every PromQL expression parses, and every metric
//! and label it names is one `/metrics` shows once traffic has touched every
//! family the dashboard uses (publish, fetch, ack, nack, dead letters,
//! expiry, joins, 429s, reservations, push, channels, a Redis outage).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use promql_parser::label::Matchers;
use promql_parser::parser::{self, Expr, LabelModifier};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

/// Labels Prometheus adds at scrape time (never in the exposition).
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/grafana/streamcar.json");
    let text = std::fs::read_to_string(path).expect("ops/grafana/streamcar.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL query of the dashboard: panel targets and the `tenant`
/// variable's `label_values(metric, label)` (as `metric`, its label checked
/// as a `by`).
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(
                target["expr"]
                    .as_str()
                    .expect("expr is a string")
                    .to_owned(),
            );
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().expect("variable query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .expect("a label_values(metric, label) variable");
            let (metric, label) = inner.split_once(',').expect("metric, label");
            out.push(format!("count by ({}) ({})", label.trim(), metric.trim()));
        }
    }
    out
}

/// Grafana's variables replaced by values Prometheus would see. Any other
/// `$` outside a string is an unknown variable and fails the parse.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$__interval", "1m")
}

/// What an expression needs from the exposition: metric → label names it
/// matches on or groups by.
type Needs = BTreeMap<String, BTreeSet<String>>;

fn selectors_under(expr: &Expr, out: &mut Vec<(String, Vec<String>)>) {
    match expr {
        Expr::VectorSelector(vs) => out.push((
            vs.name.clone().unwrap_or_default(),
            matcher_labels(&vs.matchers),
        )),
        Expr::MatrixSelector(ms) => out.push((
            ms.vs.name.clone().unwrap_or_default(),
            matcher_labels(&ms.vs.matchers),
        )),
        Expr::Aggregate(a) => {
            selectors_under(&a.expr, out);
            if let Some(p) = &a.param {
                selectors_under(p, out);
            }
        }
        Expr::Unary(u) => selectors_under(&u.expr, out),
        Expr::Binary(b) => {
            selectors_under(&b.lhs, out);
            selectors_under(&b.rhs, out);
        }
        Expr::Paren(p) => selectors_under(&p.expr, out),
        Expr::Subquery(s) => selectors_under(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors_under(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn matcher_labels(m: &Matchers) -> Vec<String> {
    m.matchers
        .iter()
        .chain(m.or_matchers.iter().flatten())
        .map(|m| m.name.clone())
        .filter(|n| n != "__name__")
        .collect()
}

/// Each selector's metric with its matcher labels, plus every label an
/// aggregation groups by (or a binary operation matches on), charged to
/// each metric under it.
fn needs(expr: &Expr, out: &mut Needs) {
    let grouped = |labels: &[String], under: &Expr, out: &mut Needs| {
        let mut selectors = Vec::new();
        selectors_under(under, &mut selectors);
        for (metric, _) in selectors {
            out.entry(metric)
                .or_default()
                .extend(labels.iter().cloned());
        }
    };
    match expr {
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) => {
            let mut selectors = Vec::new();
            selectors_under(expr, &mut selectors);
            for (metric, labels) in selectors {
                out.entry(metric).or_default().extend(labels);
            }
        }
        Expr::Aggregate(a) => {
            if let Some(m) = &a.modifier {
                grouped(&m.labels().labels, &a.expr, out);
            }
            needs(&a.expr, out);
            if let Some(p) = &a.param {
                needs(p, out);
            }
        }
        Expr::Binary(b) => {
            if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) =
                b.modifier.as_ref().and_then(|m| m.matching.as_ref())
            {
                grouped(&l.labels, &b.lhs, out);
                grouped(&l.labels, &b.rhs, out);
            }
            needs(&b.lhs, out);
            needs(&b.rhs, out);
        }
        Expr::Unary(u) => needs(&u.expr, out),
        Expr::Paren(p) => needs(&p.expr, out),
        Expr::Subquery(s) => needs(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| needs(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses every query; returns what they need, or the parse errors.
fn dashboard_needs(queries: &[String]) -> Result<Needs, Vec<String>> {
    let mut all = Needs::new();
    let mut errors = Vec::new();
    for q in queries {
        match parser::parse(&substitute(q)) {
            Ok(expr) => needs(&expr, &mut all),
            Err(e) => errors.push(format!("{q}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(all)
    } else {
        Err(errors)
    }
}

/// Exported series names (histograms as their `_bucket/_sum/_count`) with
/// the union of their label names, from a Prometheus text exposition.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            // Label values are quoted and may hold `,` or `=`: walk them.
            let mut s = rest;
            while let Some(eq) = s.find("=\"") {
                labels.insert(s[..eq].trim_start_matches(',').to_owned());
                let mut value = &s[eq + 2..];
                loop {
                    let q = value.find('"').expect("closing quote");
                    let escaped = value[..q].ends_with('\\') && !value[..q].ends_with("\\\\");
                    value = &value[q + 1..];
                    if !escaped {
                        break;
                    }
                }
                s = value;
                if s.starts_with('}') {
                    break;
                }
            }
        }
    }
    out
}

/// What the dashboard needs and the exposition lacks.
fn missing(needs: &Needs, exported: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (metric, labels) in needs {
        if !metric.starts_with("streamcar_") {
            out.push(format!("{metric:?}: not a streamcar_ metric"));
            continue;
        }
        let Some(has) = exported.get(metric) else {
            out.push(format!("{metric}: not exported"));
            continue;
        };
        for label in labels {
            if !has.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                out.push(format!("{metric}: no label {label} (has {has:?})"));
            }
        }
    }
    out
}

#[test]
fn the_checker_catches_bad_queries_names_and_labels() {
    let bad = dashboard_needs(&["sum by (tenant) (rate(streamcar_acked_total[5m])".into()]);
    assert!(bad.is_err(), "an unclosed paren must not parse");
    let text = "# TYPE streamcar_acked_total counter\n\
        streamcar_acked_total{tenant=\"a,b=\\\"c\",topic=\"p\",group=\"g\"} 1\n\
        streamcar_x_seconds_bucket{script=\"s\",le=\"0.5\"} 1\n";
    let exposition = exported(text);
    assert_eq!(
        exposition["streamcar_acked_total"],
        BTreeSet::from(["tenant".into(), "topic".into(), "group".into()])
    );
    let check = |q: &str| missing(&dashboard_needs(&[q.into()]).expect("parses"), &exposition);
    assert!(check("sum by (tenant, group) (rate(streamcar_acked_total[5m]))").is_empty());
    assert!(check(r#"sum by (le) (streamcar_x_seconds_bucket{script="s"})"#).is_empty());
    assert_eq!(check("sum by (pool) (streamcar_acked_total)").len(), 1);
    assert_eq!(check(r#"streamcar_acked_total{reason="x"}"#).len(), 1);
    assert_eq!(check("streamcar_made_up_total").len(), 1);
    assert_eq!(check("up").len(), 1, "only streamcar_ metrics");
    assert_eq!(
        check("sum by (tenant) (streamcar_acked_total) / on (pool) streamcar_acked_total").len(),
        1,
        "on (...) labels are checked on both sides"
    );
    let with_vars = dashboard_needs(&[
        r#"sum by (tenant) (increase(streamcar_acked_total{tenant=~"$tenant"}[$__range]))"#.into(),
    ]);
    assert!(with_vars.is_ok(), "{with_vars:?}");
    assert!(dashboard_needs(&["rate(streamcar_acked_total[$unknown])".into()]).is_err());
}

#[test]
fn the_dashboard_has_the_datasource_and_tenant_variables() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("tenant")["type"], "query");
    let mut panels = 0;
    for panel in d["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            // Per-tenant series follow the tenant variable.
            if expr.contains("by (tenant") {
                assert!(expr.contains(r#"tenant=~"$tenant""#), "{title}: {expr}");
            }
        }
    }
    assert!(panels >= 20, "{panels} panels");
}

/// A push target that answers 200 to everything.
async fn push_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(|| async { StatusCode::OK });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Drives traffic through every family the dashboard names (on one tenant),
/// then reads `/metrics` (last of all with Redis down, for the error kinds).
async fn exposition_after_traffic() -> String {
    let target = push_app().await;
    // The client edge, HS256 with a secret of our own; browsers of one origin.
    let key = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(key.path(), "a-dashboard-test-secret-of-at-least-32-bytes").expect("key");
    let mut edge = streamcar::config::EdgeConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        key.path().to_owned(),
        streamcar::config::JwtAlg::Hs256,
    );
    edge.allowed_origins = vec!["https://app.example".into()];
    let subscriptions = json!({"subscriptions": [{
        "name": "dash-push", "tenant": "dash-push", "topic": "pushed", "group": "push",
        "url": format!("http://{target}/"),
    }]});
    let subscriptions = streamcar::push::spec::parse(&subscriptions.to_string(), true)
        .expect("valid subscriptions");
    let mut app = TestApp::start_with(|c| {
        c.metrics_interval = Duration::from_millis(100);
        c.retention_interval = Duration::from_millis(100);
        c.subscriptions = subscriptions;
        c.edge = Some(edge);
    })
    .await;
    // Push: one message to the subscription's topic.
    let pushed = app
        .send(
            reqwest::Method::POST,
            &format!("{}/v1/tenants/dash-push/topics/pushed/messages", app.base),
            Some(&json!({"payload": 1})),
        )
        .await;
    assert_eq!(pushed.status, StatusCode::CREATED, "{}", pushed.body);

    // Publish, duplicate, fetch, ack; nack until dead-lettered; a lost lease.
    let group = json!({"max_deliveries": 2, "backoff": {"initial_ms": 1, "max_ms": 1}});
    app.group("work", "g", &group).await;
    app.publish("work", &json!({"payload": 1, "idempotency_key": "k"}))
        .await;
    app.publish("work", &json!({"payload": 1, "idempotency_key": "k"}))
        .await;
    app.publish("work", &json!({"payload": 2})).await;
    let first = app.fetch("work", "g", "c", 2, 0).await;
    assert_eq!(first.len(), 2);
    let receipt = |m: &Value| m["receipt"].as_str().expect("receipt").to_owned();
    let acked = app.ack("work", "g", &[&receipt(&first[0])]).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.body);
    let mut stale = receipt(&first[1]);
    let nack = json!({"receipts": [stale], "delay_ms": 0});
    let nacked = app.post("/topics/work/groups/g/nack", &nack).await;
    assert_eq!(nacked.body["nacked"].as_array().map(Vec::len), Some(1));
    for _ in 0..100 {
        let again = app.fetch("work", "g", "c", 1, 1000).await;
        if let Some(m) = again.first() {
            assert_eq!(m["attempt"], 2);
            let lost = app.ack("work", "g", &[&stale]).await;
            assert_eq!(lost.status, StatusCode::CONFLICT, "{}", lost.body);
            stale = receipt(m);
            let nack = json!({"receipts": [stale], "delay_ms": 0});
            let dead = app.post("/topics/work/groups/g/nack", &nack).await;
            assert_eq!(dead.body["dead_lettered"].as_array().map(Vec::len), Some(1));
            break;
        }
    }
    // Expiry: a ttl that has passed by the time of the fetch.
    app.publish("work", &json!({"payload": 3, "ttl_ms": 1}))
        .await;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if app.fetch("work", "g", "c", 1, 0).await.is_empty() {
            break;
        }
    }
    // A join that times out (the retention sweep finishes it).
    let join = json!({"parts": ["a"], "ttl_ms": 1});
    let declared = app.put("/topics/work/joins/j", &join).await;
    assert!(declared.status.is_success(), "{}", declared.body);
    // A reservation.
    let pool = app
        .put("/pools/gpu", &json!({"capacity": 1, "lease_ms": 60000}))
        .await;
    assert!(pool.status.is_success(), "{}", pool.body);
    let held = app
        .post("/pools/gpu/acquire", &json!({"holder": "h"}))
        .await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    // 429s: a full backlog, then the tenant quota.
    let topic = json!({"max_backlog": 1});
    assert!(app.put("/topics/full", &topic).await.status.is_success());
    app.group("full", "g", &json!({})).await;
    app.publish("full", &json!({"payload": 1})).await;
    let refused = app
        .post("/topics/full/messages", &json!({"payload": 2}))
        .await;
    refused.assert_problem(429, "backlog_full");
    let limits = json!({"publish_per_sec": 1, "burst": 1});
    assert!(app.put("/limits", &limits).await.status.is_success());
    let mut limited = false;
    for _ in 0..10 {
        let r = app
            .post("/topics/quota/messages", &json!({"payload": 1}))
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "the quota never refused");
    assert!(app.delete("/limits").await.status.is_success());
    // A channel: history, a resumed SSE subscriber, live fan-out.
    let posted = app
        .post("/channels/feed/messages", &json!({"payload": "m1"}))
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    let epoch = posted.body["epoch"].as_str().expect("epoch").to_owned();
    let sse = app
        .client
        .get(app.url(&format!("/channels/feed/events?since={epoch}:0")))
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), StatusCode::OK);
    let mut events = sse.bytes_stream();
    // The edge: a connection, a refused token, a refused origin, a channel
    // not granted.
    let token = streamcar::edge::token::mint(&streamcar::edge::token::TokenRequest {
        key_file: key.path().to_owned(),
        alg: streamcar::config::JwtAlg::Hs256,
        sub: "u1".into(),
        tenant: app.tenant.clone(),
        channels: vec!["feed".into()],
        publish: Vec::new(),
        ttl: Duration::from_secs(600),
        audience: None,
        issuer: None,
    })
    .expect("token");
    let edge = app.edge_base().expect("edge on");
    let events_url = |channel: &str, token: &str| {
        format!("{edge}/v1/edge/events?channel={channel}&token={token}")
    };
    let edge_sse = app
        .client
        .get(events_url("feed", &token))
        .send()
        .await
        .expect("edge sse");
    assert_eq!(edge_sse.status(), StatusCode::OK);
    let bad = app.client.get(events_url("feed", "x.y.z")).send().await;
    assert_eq!(bad.expect("edge").status(), StatusCode::UNAUTHORIZED);
    let not_granted = app.client.get(events_url("other", &token)).send().await;
    assert_eq!(not_granted.expect("edge").status(), StatusCode::FORBIDDEN);
    let foreign = app
        .client
        .get(events_url("feed", &token))
        .header("origin", "https://evil.example")
        .send()
        .await;
    assert_eq!(foreign.expect("edge").status(), StatusCode::FORBIDDEN);

    // Poke the live paths until every family shows (gauges need a stats
    // round, joins a retention sweep, fan-out the Redis subscription).
    let needed = dashboard_needs(&queries(&dashboard())).expect("the dashboard parses");
    let mut text = String::new();
    for _ in 0..100 {
        let live = app
            .post("/channels/feed/messages", &json!({"payload": "live"}))
            .await;
        assert_eq!(live.status, StatusCode::CREATED, "{}", live.body);
        let _ = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
        text = app.metrics_text().await;
        let lacking: Vec<String> = missing(&needed, &exported(&text))
            .into_iter()
            .filter(|m| !m.starts_with("streamcar_redis_errors_total"))
            .collect();
        if lacking.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Last: Redis goes away, and a publish counts its error kind.
    app.redis.kill();
    let down = app
        .post("/topics/work/messages", &json!({"payload": 4}))
        .await;
    down.assert_problem(503, "redis_unavailable");
    let after = app.metrics_text().await;
    drop((events, edge_sse));
    app.stop().await;
    assert!(!text.is_empty());
    after
}

#[tokio::test]
async fn every_metric_and_label_the_dashboard_uses_is_exported() {
    let queries = queries(&dashboard());
    assert!(queries.len() >= 40, "{} queries", queries.len());
    let needed = dashboard_needs(&queries).unwrap_or_else(|e| panic!("unparsable: {e:#?}"));
    let text = exposition_after_traffic().await;
    let lacking = missing(&needed, &exported(&text));
    assert!(
        lacking.is_empty(),
        "the dashboard names what /metrics does not export:\n{}",
        lacking.join("\n")
    );
}
