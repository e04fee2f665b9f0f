//! The `streamcar` binary itself: `dev` without and with redis-server, and
//! a clean exit on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_streamcar");

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
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn streamcar dev");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(resp) = client.get(format!("{base}/readyz")).send().await
            && resp.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "streamcar dev became ready");
    let resp = client
        .post(format!("{base}/v1/tenants/dev/topics/hello/messages"))
        .json(&json!({"payload": "world"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.unwrap_or_else(|| {
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
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn streamcar dev");
    let mut redis = None;
    for _ in 0..100 {
        if let Some(pid) = live_children(child.id()).first() {
            redis = Some(*pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap(); // SIGKILL: no destructors run
    child.wait().unwrap();
    let redis = redis.expect("dev started its redis-server");
    let mut gone = false;
    for _ in 0..100 {
        if !is_alive(redis) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the private redis-server stopped with its sidecar");
}
