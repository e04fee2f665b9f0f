//! The `streamcar` binary itself: `dev` without and with redis-server (and
//! where its Redis logs go), and a clean exit on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_streamcar");

/// Calls `probe` every 100 ms, at most 100 times, until it gives Some.
async fn within_10s<T>(mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    for _ in 0..100 {
        if let Some(found) = probe().await {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// `streamcar dev` listening on `port`, in `dir`.
fn dev(dir: &tempfile::TempDir, port: u16) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path());
    command
}

/// `streamcar dev` on `port` in `dir`, started with its output dropped.
fn spawn_dev_quiet(dir: &tempfile::TempDir, port: u16) -> std::process::Child {
    dev(dir, port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn streamcar dev")
}

/// Whether `/readyz` under `base` answered 2xx within 10 s.
async fn became_ready(client: &reqwest::Client, base: &str) -> bool {
    within_10s(async || {
        let resp = client.get(format!("{base}/readyz")).send().await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await
    .is_some()
}

/// Sends SIGTERM to `child` and waits up to 10 s for its exit status.
async fn sigterm_and_wait(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    within_10s(async || child.try_wait().unwrap()).await
}

#[test]
fn dev_without_redis_server_explains_how_to_install_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("dev")
        .current_dir(dir.path())
        .env("PATH", dir.path()) // nothing on PATH
        .output()
        .expect("run streamcar");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("redis-server"), "{stderr}");
    assert!(stderr.contains("apt-get install redis-server"), "{stderr}");
}

#[tokio::test]
async fn dev_serves_against_its_own_redis_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut child = spawn_dev_quiet(&dir, port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = became_ready(&client, &base).await;
    assert!(ready, "streamcar dev became ready");
    let resp = client
        .post(format!("{base}/v1/tenants/dev/topics/hello/messages"))
        .json(&json!({"payload": "world"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let status = sigterm_and_wait(&mut child).await.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("streamcar dev did not exit after SIGTERM");
    });
    assert!(status.success(), "exit status {status}");
    let aof = dir.path().join(".streamcar/redis/appendonlydir");
    assert!(aof.is_dir(), "AOF data kept in .streamcar/redis");
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "no longer serving"
    );
}

/// Live (not zombie) children of process `parent`.
fn live_children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            field("PPid:") == parent.to_string() && !field("State:").starts_with('Z')
        })
        .collect()
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn dev_redis_does_not_outlive_a_killed_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut child = spawn_dev_quiet(&dir, port);
    let redis = within_10s(async || live_children(child.id()).first().copied()).await;
    child.kill().unwrap(); // SIGKILL: no destructors run
    child.wait().unwrap();
    let redis = redis.expect("dev started its redis-server");
    let gone = within_10s(async || (!is_alive(redis)).then_some(()))
        .await
        .is_some();
    assert!(gone, "the private redis-server stopped with its sidecar");
}

/// `--worker-threads` picks the runtime: 1 (the default) a current-thread
/// runtime, 0 one thread per CPU, N a multi-thread runtime. Each one must
/// serve the same API (a long-poll woken by a publish included) and drain on
/// SIGTERM.
#[tokio::test]
async fn every_worker_thread_setting_serves_and_drains() {
    let redis = support::RedisServer::start();
    let client = reqwest::Client::new();
    for threads in ["1", "2", "0"] {
        let mut sc =
            support::StreamcarProcess::start(&redis.url(), &["--worker-threads", threads]).await;
        let topic = format!("{}/v1/tenants/threads-{threads}/topics/jobs", sc.base);
        let put = client
            .put(format!("{topic}/groups/workers"))
            .json(&json!({"start": "earliest"}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "threads={threads}");
        // A fetch waiting on an empty topic, woken by the publishes below.
        let fetch = client
            .post(format!("{topic}/groups/workers/fetch"))
            .json(&json!({"consumer": "c1", "max": 10, "wait_ms": 10000}))
            .send();
        let publishes = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for n in 0..3 {
                let resp = client
                    .post(format!("{topic}/messages"))
                    .json(&json!({"payload": {"n": n}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201, "threads={threads}");
            }
        };
        let (fetched, ()) = tokio::join!(fetch, publishes);
        let fetched: serde_json::Value = fetched.unwrap().json().await.unwrap();
        let messages = fetched["messages"].as_array().expect("messages");
        assert!(!messages.is_empty(), "threads={threads}: {fetched}");
        let receipts: Vec<_> = messages.iter().map(|m| m["receipt"].clone()).collect();
        let acked: serde_json::Value = client
            .post(format!("{topic}/groups/workers/ack"))
            .json(&json!({"receipts": receipts}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            acked["acked"].as_array().map(Vec::len),
            Some(messages.len())
        );
        sc.signal(libc::SIGTERM);
        let status = sc.wait_exit().await;
        assert!(status.success(), "threads={threads}: exit {status}");
    }
}

#[test]
fn a_bad_worker_thread_count_is_refused_with_exit_2() {
    for bad in ["-1", "many", "5000"] {
        let out = Command::new(BIN)
            .args(["serve", &format!("--worker-threads={bad}")])
            .output()
            .expect("run streamcar");
        assert_eq!(out.status.code(), Some(2), "--worker-threads {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--worker-threads"), "{stderr}");
    }
}

#[tokio::test]
async fn dev_writes_redis_own_log_to_a_file_not_to_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let terminal_path = dir.path().join("terminal.txt");
    let terminal = std::fs::File::create(&terminal_path).unwrap();
    let mut child = dev(&dir, port)
        .stdout(terminal.try_clone().unwrap())
        .stderr(terminal)
        .spawn()
        .expect("spawn streamcar dev");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = became_ready(&client, &base).await;
    let log_path = dir.path().join(".streamcar/redis/redis.log");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();

    let exited = sigterm_and_wait(&mut child).await.is_some();
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let terminal = std::fs::read_to_string(&terminal_path).unwrap();
    assert!(ready, "streamcar dev became ready: {terminal}");
    assert!(exited, "streamcar dev exited on SIGTERM");
    assert!(
        log.contains("Redis is starting") && log.contains("Ready to accept connections"),
        "Redis's startup lines are in {}: {log:?}",
        log_path.display()
    );
    assert!(
        !terminal.contains("Redis is starting") && !terminal.contains("Ready to accept"),
        "Redis's own log stays off the terminal: {terminal}"
    );
    assert!(
        terminal.contains("redis.log"),
        "the terminal says where Redis's log is: {terminal}"
    );
}

/// `--durability` takes `leader` or `replicas:N`; the binary starts with
/// either and refuses anything else with exit 2.
#[tokio::test]
async fn durability_settings_start_or_are_refused() {
    let redis = support::RedisServer::start();
    for good in ["leader", "replicas:1"] {
        let mut sc = support::StreamcarProcess::start(&redis.url(), &["--durability", good]).await;
        sc.signal(libc::SIGTERM);
        assert!(sc.wait_exit().await.success(), "--durability {good}");
    }
    for bad in ["", "replicas:0", "followers:1"] {
        let out = Command::new(BIN)
            .args(["serve", &format!("--durability={bad}")])
            .output()
            .expect("run streamcar");
        assert_eq!(out.status.code(), Some(2), "--durability {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--durability"), "{stderr}");
    }
    // A write's `WAIT` holds its Redis connection for up to this long, and
    // the connection's response timeout grows with it: 1 ms to 60 s.
    for bad in ["0ms", "61s", "18446744073709551615s", "1h"] {
        let out = Command::new(BIN)
            .args(["serve", "--durability=replicas:1"])
            .arg(format!("--durability-timeout={bad}"))
            .output()
            .expect("run streamcar");
        assert_eq!(out.status.code(), Some(2), "--durability-timeout {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--durability-timeout"), "{stderr}");
    }
}
