//! The processes under test: a private `redis-server` and the release
//! `streamcar serve`, both on free loopback ports, both killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed when dropped.
pub struct Proc {
    child: Child,
    /// Its address (`redis://…` or `http://…`).
    pub url: String,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` without persistence (the bench measures the
/// sidecar, not the disk) and waits until it answers.
pub async fn start_redis(dir: &std::path::Path) -> Proc {
    start_redis_with(dir, &[]).await
}

/// [`start_redis`] with extra `redis-server` arguments (`--replicaof …`).
pub async fn start_redis_with(dir: &std::path::Path, extra: &[&str]) -> Proc {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "warning", "--maxmemory-policy", "noeviction"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (apt-get install redis-server)");
    // Owned by a Proc at once, so a panic below still kills and reaps it.
    let redis = Proc {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    for _ in 0..200 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return redis;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server did not start");
}

/// Builds (if needed) and returns the release `streamcar` binary next to
/// this benchmark's own executable.
pub fn streamcar_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Both packages in one build: shared dependencies then get the same
    // features as in `cargo run -p streamcar-bench`, so neither build
    // invalidates the other's artifacts (building `-p streamcar` alone
    // resolved hyper without its client features and rebuilt half the tree).
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "streamcar",
            "-p",
            "streamcar-bench",
            "--bins",
        ])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building streamcar failed");
    let exe = std::env::current_exe().expect("own path");
    exe.with_file_name("streamcar")
}

/// Starts `streamcar serve` against `redis_url` and waits for `/readyz`.
pub async fn start_streamcar(binary: &std::path::Path, redis_url: &str) -> Proc {
    start_streamcar_with(binary, redis_url, &[]).await
}

/// Starts `streamcar serve` against `redis_url` with `extra` flags and
/// waits for `/readyz`.
pub async fn start_streamcar_with(
    binary: &std::path::Path,
    redis_url: &str,
    extra: &[&str],
) -> Proc {
    let port = free_port();
    let child = Command::new(binary)
        .args(["serve", "--redis-url", redis_url])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn streamcar");
    let sidecar = Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let host = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if crate::http::is_ready(&host).await {
            return sidecar;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("streamcar did not become ready");
}

/// A line of `/proc/<pid>/status` in MiB (`VmRSS`, `VmHWM`).
pub fn memory_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) a process has used so far. `/proc/<pid>/stat`
/// counts in USER_HZ ticks, which Linux fixes at 100 per second for user
/// space whatever the kernel's own tick rate.
pub fn cpu_time(pid: u32) -> Duration {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; fields are counted after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11) // state … cmajflt; utime and stime follow
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Writes a run's results as pretty JSON to `out`, and says where.
pub fn write_results(out: &std::path::Path, results: &impl serde::Serialize) {
    let json = serde_json::to_string_pretty(results).expect("results serialize");
    std::fs::write(out, json + "\n").expect("write results");
    println!("results written to {}", out.display());
}
