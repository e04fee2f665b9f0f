//! The example AI pipeline (examples/*.py, Python standard library only),
//! end to end against `streamcar dev`: a producer publishes prompts for two
//! tenants, two workers process them through a GPU pool with idempotency
//! claims, one worker is killed -9 mid-run, and a sink consumes the results.
//! Every prompt must yield exactly one result.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const TENANTS: [&str; 2] = ["acme", "globex"];
const PROMPTS: usize = 30;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Runs an example script; the child is killed if the test fails early.
struct Script(Child);

impl Script {
    fn spawn(base: &str, script: &str, args: &[&str]) -> Self {
        let child = Command::new("python3")
            .arg(examples_dir().join(script))
            .args(args)
            .env("STREAMCAR_URL", base)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the examples");
        Self(child)
    }

    async fn wait_success(mut self, what: &str) {
        for _ in 0..1200 {
            if let Some(status) = self.0.try_wait().unwrap() {
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

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Results published so far, per tenant.
async fn result_counts(client: &reqwest::Client, base: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for tenant in TENANTS {
        let topic = get(client, format!("{base}/v1/tenants/{tenant}/topics/results")).await;
        counts.push(topic["length"].as_u64().unwrap_or(0));
    }
    counts
}

#[tokio::test]
async fn every_prompt_yields_exactly_one_result_with_a_worker_killed_mid_run() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    // In a guard, so a failing assertion still stops it (and its Redis).
    let mut dev = Script(
        Command::new(env!("CARGO_BIN_EXE_streamcar"))
            .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("streamcar dev"),
    );
    let client = reqwest::Client::new();

    let tenants = TENANTS.join(",");
    let count = PROMPTS.to_string();
    Script::spawn(
        &base,
        "producer.py",
        &["--tenants", &tenants, "--count", &count],
    )
    .wait_success("producer")
    .await;

    let doomed = Script::spawn(
        &base,
        "worker.py",
        &["--tenants", &tenants, "--name", "doomed"],
    );
    let survivor = Script::spawn(
        &base,
        "worker.py",
        &["--tenants", &tenants, "--name", "survivor"],
    );
    // Let both work for a while, then kill one without warning.
    for _ in 0..300 {
        if result_counts(&client, &base).await.iter().sum::<u64>() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut doomed = doomed;
    doomed.0.kill().unwrap(); // SIGKILL
    doomed.0.wait().unwrap();

    // The survivor finishes everything, including the dead worker's leases.
    let mut done = false;
    for _ in 0..600 {
        let mut all_acked = true;
        for tenant in TENANTS {
            let g = get(
                &client,
                format!("{base}/v1/tenants/{tenant}/topics/prompts/groups/llm"),
            )
            .await;
            all_acked &= g["lag"] == 0 && g["pending"] == 0 && g["delayed"] == 0;
            assert_eq!(g["dead_lettered"], 0, "no prompt dead-lettered: {g}");
        }
        if all_acked {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "every prompt was processed");
    drop(survivor);

    // Exactly one result per prompt in the results topic…
    for tenant in TENANTS {
        let history = get(
            &client,
            format!("{base}/v1/tenants/{tenant}/topics/results/messages?limit=1000"),
        )
        .await;
        let causes: Vec<&str> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["causation_id"].as_str().unwrap())
            .collect();
        let unique: BTreeSet<&str> = causes.iter().copied().collect();
        assert_eq!(causes.len(), PROMPTS, "{tenant}: one result per prompt");
        let expected: BTreeSet<String> = (0..PROMPTS)
            .map(|i| format!("{tenant}-prompt-{i}"))
            .collect();
        assert_eq!(
            unique
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<BTreeSet<_>>(),
            expected
        );
    }

    // …and the second stage sees each exactly once.
    let out = dir.path().join("results.jsonl");
    Script::spawn(
        &base,
        "sink.py",
        &[
            "--tenants",
            &tenants,
            "--out",
            out.to_str().unwrap(),
            "--max-idle-polls",
            "5",
        ],
    )
    .wait_success("sink")
    .await;
    let lines = std::fs::read_to_string(&out).unwrap();
    let seen: Vec<(String, String)> = lines
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["tenant"].as_str().unwrap().to_owned(),
                v["causation_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let unique: BTreeSet<&(String, String)> = seen.iter().collect();
    assert_eq!(seen.len(), TENANTS.len() * PROMPTS, "sink got every result");
    assert_eq!(unique.len(), seen.len(), "and none twice");

    // A clean stop lets `dev` shut its Redis down too.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(dev.0.id()).unwrap(), libc::SIGTERM) };
    let _ = dev.0.wait();
}
