//! The example AI pipeline (examples/*.py, Python standard library only),
//! end to end against a real sidecar and Redis:
//!
//! prompts →(push)→ model_handler.py →(emit)→ drafts → postprocess.py
//! (declares a join, emits to both models) → fanout_model.py ×2 (join
//! parts) → the join's aggregate in `answers` → notifier.py →(emit)→ the
//! user's channel.
//!
//! Workers of every step are killed with SIGKILL twice mid-run and started
//! again. Every prompt must still yield exactly one final result on its
//! user's channel, in the order the user sent the prompts, nothing may be
//! dead-lettered, and (with the `otlp` feature) each prompt is one trace:
//! every span the sidecar exported belongs to the trace its prompt's
//! publish started, and the final message carries that trace on.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{RedisServer, StreamcarProcess, free_port};

const TENANTS: [&str; 2] = ["acme", "globex"];
const USERS: usize = 3;
/// Prompts per user.
const PROMPTS: usize = 6;
const TOTAL: usize = TENANTS.len() * USERS * PROMPTS;
/// The steps whose groups must drain, `(topic, group)`.
const GROUPS: [(&str, &str); 5] = [
    ("prompts", "model"),
    ("drafts", "post"),
    ("model-a", "model-a"),
    ("model-b", "model-b"),
    ("answers", "notify"),
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A running example script, killed (SIGKILL) when dropped.
struct Script(Child);

impl Script {
    fn spawn(base: &str, script: &str, args: &[&str]) -> Self {
        let child = Command::new("python3")
            .arg(examples_dir().join(script))
            .args(args)
            .env("STREAMCAR_URL", base)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the examples");
        Self(child)
    }

    async fn wait_success(mut self, what: &str) {
        for _ in 0..1200 {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                assert!(status.success(), "{what} exited with {status}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what} did not finish");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pipeline's workers: one push handler and the pull workers of each
/// step, each restartable under the same name.
struct Workers {
    base: String,
    handler_port: String,
    running: BTreeMap<&'static str, Script>,
}

impl Workers {
    const ALL: [&'static str; 6] = [
        "handler", "post-1", "post-2", "model-a", "model-b", "notifier",
    ];

    fn start(&mut self, name: &'static str) {
        let tenants = TENANTS.join(",");
        let port = self.handler_port.clone();
        let (script, mut args): (&str, Vec<&str>) = match name {
            "handler" => ("model_handler.py", vec!["--port", &port]),
            "post-1" | "post-2" => ("postprocess.py", vec!["--tenants", &tenants]),
            "model-a" | "model-b" => (
                "fanout_model.py",
                vec!["--model", name, "--tenants", &tenants],
            ),
            _ => ("notifier.py", vec!["--tenants", &tenants]),
        };
        args.extend(["--name", name]);
        self.running
            .insert(name, Script::spawn(&self.base, script, &args));
    }

    /// SIGKILL, wherever the worker is in its step; started again at once
    /// (the handler's port is taken again, as a restarted container would).
    fn kill_and_restart(&mut self, names: &[&'static str]) {
        for name in names {
            drop(self.running.remove(name));
            self.start(name);
        }
    }
}

async fn get(base: &str, path: &str) -> Value {
    let reply = reqwest::get(format!("{base}{path}")).await.expect("GET");
    reply.json().await.expect("JSON")
}

/// Final results on the users' channels so far.
async fn delivered(base: &str) -> usize {
    let mut total = 0;
    for tenant in TENANTS {
        for user in 0..USERS {
            let channel = get(base, &format!("/v1/tenants/{tenant}/channels/user-u{user}")).await;
            total += usize::try_from(channel["top_offset"].as_u64().unwrap_or(0)).expect("small");
        }
    }
    total
}

async fn wait_delivered(base: &str, at_least: usize) {
    for _ in 0..1800 {
        if delivered(base).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "only {} of {at_least} final results arrived",
        delivered(base).await
    );
}

/// Waits until every step's group has nothing left in flight; no message
/// may have been dead-lettered on the way.
async fn wait_drained(base: &str) {
    for tenant in TENANTS {
        for (topic, group) in GROUPS {
            let path = format!("/v1/tenants/{tenant}/topics/{topic}/groups/{group}");
            let mut g = Value::Null;
            for _ in 0..600 {
                g = get(base, &path).await;
                assert_eq!(g["dead_lettered"], 0, "{tenant} {topic}/{group}: {g}");
                if ["lag", "pending", "delayed", "parked"]
                    .iter()
                    .all(|f| g[f] == 0)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(g["pending"], 0, "{tenant} {topic}/{group} drained: {g}");
        }
    }
}

/// The trace id of a `traceparent`.
fn trace_id(traceparent: &Value) -> String {
    let text = traceparent.as_str().expect("a traceparent");
    text.split('-').nth(1).expect("trace id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prompt_yields_one_final_result_in_order_with_workers_killed_mid_run() {
    let redis = RedisServer::start();
    let (collector, spans) = support::otlp::receiver().await;
    let handler_port = free_port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let subscriptions = dir.path().join("subscriptions.yaml");
    let example = std::fs::read_to_string(examples_dir().join("subscriptions.yaml"))
        .expect("examples/subscriptions.yaml");
    std::fs::write(
        &subscriptions,
        example.replace("127.0.0.1:8080", &format!("127.0.0.1:{handler_port}")),
    )
    .expect("write subscriptions");
    let endpoint = format!("http://{collector}");
    let mut flags = vec!["--subscriptions", subscriptions.to_str().expect("utf-8")];
    if cfg!(feature = "otlp") {
        flags.extend(["--otlp-endpoint", &endpoint]);
    }
    let mut sidecar = StreamcarProcess::start(&redis.url(), &flags).await;
    let base = sidecar.base.clone();

    let (tenants, users, count) = (TENANTS.join(","), USERS.to_string(), PROMPTS.to_string());
    Script::spawn(
        &base,
        "producer.py",
        &["--tenants", &tenants, "--users", &users, "--count", &count],
    )
    .wait_success("producer")
    .await;

    let mut workers = Workers {
        base: base.clone(),
        handler_port,
        running: BTreeMap::new(),
    };
    for name in Workers::ALL {
        workers.start(name);
    }
    // Two rounds of SIGKILLs, each hitting a worker of every step.
    wait_delivered(&base, TOTAL / 4).await;
    workers.kill_and_restart(&["handler", "post-1", "model-a", "notifier"]);
    wait_delivered(&base, TOTAL * 3 / 5).await;
    workers.kill_and_restart(&["handler", "post-2", "model-b", "notifier"]);
    wait_delivered(&base, TOTAL).await;
    wait_drained(&base).await;
    drop(workers);

    // Exactly one final result per prompt, in the order each user sent them.
    let mut final_traces = BTreeMap::new();
    for tenant in TENANTS {
        for user in 0..USERS {
            let path = format!("/v1/tenants/{tenant}/channels/user-u{user}/messages?limit=1000");
            let history = get(&base, &path).await;
            let messages = history["messages"].as_array().expect("messages");
            let prompts: Vec<&str> = messages
                .iter()
                .map(|m| m["payload"]["prompt_id"].as_str().expect("prompt_id"))
                .collect();
            let sent: Vec<String> = (0..PROMPTS)
                .map(|n| format!("{tenant}-u{user}-{n}"))
                .collect();
            assert_eq!(
                prompts, sent,
                "{tenant} u{user}: one result per prompt, in order"
            );
            for message in messages {
                let payload = &message["payload"];
                assert_eq!(payload["status"], "complete", "{message}");
                let answers = payload["answers"].as_object().expect("answers");
                assert_eq!(
                    answers.keys().collect::<Vec<_>>(),
                    ["model-a", "model-b"],
                    "{message}"
                );
                let prompt = payload["prompt_id"].as_str().expect("id").to_owned();
                assert_eq!(message["headers"]["correlation_id"], prompt.as_str());
                final_traces.insert(prompt, message["headers"]["traceparent"].clone());
            }
        }
    }
    let drafts: usize = {
        let mut n = 0;
        for tenant in TENANTS {
            n += get(&base, &format!("/v1/tenants/{tenant}/topics/drafts")).await["length"]
                .as_u64()
                .expect("length") as usize;
        }
        n
    };
    assert_eq!(
        drafts, TOTAL,
        "one draft per prompt: the push step emitted each once"
    );

    if !cfg!(feature = "otlp") {
        return;
    }
    // One trace per prompt: each prompt's publish started its own trace…
    let mut prompt_traces = BTreeMap::new();
    for tenant in TENANTS {
        let path = format!("/v1/tenants/{tenant}/topics/prompts/messages?limit=1000");
        for message in get(&base, &path).await["messages"]
            .as_array()
            .expect("prompts")
        {
            let id = message["id"].as_str().expect("id").to_owned();
            prompt_traces.insert(id, trace_id(&message["headers"]["traceparent"]));
        }
    }
    let distinct: BTreeSet<&String> = prompt_traces.values().collect();
    assert_eq!(distinct.len(), TOTAL, "a trace of its own per prompt");
    // …the final message carries it on…
    for (prompt, traceparent) in &final_traces {
        assert_eq!(&trace_id(traceparent), &prompt_traces[prompt], "{prompt}");
    }
    // …and every span exported (after a clean stop flushes them) is in one
    // of those traces, each of which reached the user's channel.
    sidecar.signal(libc::SIGTERM);
    assert!(sidecar.wait_exit().await.success());
    let received = spans.lock().expect("spans").clone();
    let mut per_trace: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for span in &received {
        assert!(
            distinct.contains(&span.trace_id),
            "span {} ({:?}) is outside every prompt's trace",
            span.name,
            span.attributes
        );
        let step = match span.attributes.get("streamcar.channel") {
            Some(_) => "emit to channel",
            None => span.name.as_str(),
        };
        per_trace.entry(&span.trace_id).or_default().insert(step);
    }
    for trace in &distinct {
        let steps = per_trace.get(trace.as_str()).cloned().unwrap_or_default();
        for step in [
            "publish",
            "deliver",
            "push",
            "emit",
            "join",
            "ack",
            "emit to channel",
        ] {
            assert!(
                steps.contains(step),
                "trace {trace} lacks {step}: {steps:?}"
            );
        }
    }
}
