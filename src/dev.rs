//! The private `redis-server` behind `streamcar dev`: the zero-setup path.
//!
//! It runs as a child process on a free loopback port with its data in
//! `.streamcar/redis` (AOF on, `appendfsync everysec`), and is shut down with
//! Redis `SHUTDOWN` (which flushes the AOF) when streamcar exits. The child is
//! also killed if this process drops it without a clean stop.
//!
//! Redis logs to `.streamcar/redis/redis.log`, not to the terminal: the
//! terminal is streamcar's own log, and two interleaved log formats there
//! are hard to read. Only a Redis that cannot even open its log file writes
//! to the terminal (stderr), which is where that message is needed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Shown when `redis-server` is not on PATH.
pub const INSTALL_HINT: &str = "streamcar dev needs redis-server (Redis 7 or newer) on PATH, and none was found. \
Install it with your package manager: `sudo apt-get install redis-server` on Debian/Ubuntu, \
`brew install redis` on macOS, `sudo dnf install redis` on Fedora; or run `docker compose up`, \
which brings its own Redis; or point `streamcar serve --redis-url redis://HOST:PORT` at a Redis you already have.";

/// Why the dev Redis could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// `redis-server` is not on PATH.
    #[error("{INSTALL_HINT}")]
    NotInstalled,
    /// Spawning or preparing its data directory failed.
    #[error("cannot start redis-server: {0}")]
    Io(#[from] io::Error),
    /// It started but never answered PING, or exited.
    #[error("redis-server did not become ready: {0}")]
    NotReady(String),
}

/// Redis's log file, inside its data directory.
pub const LOG_FILE: &str = "redis.log";

/// A running child `redis-server`.
pub struct DevRedis {
    child: Child,
    url: String,
}

/// Finds an executable named `name` on PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

/// A loopback port that was free a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

impl DevRedis {
    /// Starts `redis-server` with its data in `data_dir` and waits until it answers.
    pub async fn start(data_dir: &Path) -> Result<Self, DevError> {
        let binary = find_on_path("redis-server").ok_or(DevError::NotInstalled)?;
        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&data_dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--daemonize", "no", "--loglevel", "notice"])
            .arg("--logfile")
            .arg(data_dir.join(LOG_FILE))
            .args(["--maxmemory-policy", "noeviction"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // If streamcar itself is killed (-9 included), the kernel sends the
        // child SIGTERM, so a dev Redis never outlives its sidecar.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let child = command.spawn()?;
        let mut redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.wait_ready().await?;
        tracing::info!(
            url = %redis.url,
            dir = %data_dir.display(),
            log = %data_dir.join(LOG_FILE).display(),
            "started private redis-server"
        );
        Ok(redis)
    }

    /// The URL to reach it.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&mut self) -> Result<(), DevError> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| DevError::NotReady(e.to_string()))?;
        let mut last_error = String::from("no answer");
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait()? {
                return Err(DevError::NotReady(format!(
                    "redis-server exited with {status}"
                )));
            }
            match client.get_multiplexed_async_connection().await {
                Ok(mut conn) => match redis::cmd("PING").query_async::<String>(&mut conn).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DevError::NotReady(last_error))
    }

    /// Stops the child cleanly (SHUTDOWN flushes the AOF), killing it if it
    /// does not exit within five seconds.
    pub async fn stop(mut self) {
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            // The connection drops as the server exits, so an error is expected.
            let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
