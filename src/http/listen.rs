//! Listeners: the API on a loopback TCP address and, optionally, on a Unix
//! socket. Both serve the same router and stop together on shutdown, and
//! both close a connection whose writes stall ([`WriteTimeout`]).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::UnixListener;
use tokio_io_timeout::TimeoutStream;

/// Wraps a listener so that a write to any of its connections that makes
/// no progress for `timeout` fails, which closes the connection (hyper
/// drops it, and with it the response or WebSocket being written).
///
/// Without it a client that stops reading keeps its connection forever: a
/// streamed response (SSE) is no longer polled once the socket is full, so
/// nothing in the handler can notice. Reads have no deadline (an idle
/// keep-alive or event-stream client sends nothing for a long time).
pub struct WriteTimeout<L> {
    inner: L,
    timeout: Duration,
}

impl<L> WriteTimeout<L> {
    /// `inner`'s connections, with stalled writes failing after `timeout`.
    pub fn new(inner: L, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl<L: Listener> Listener for WriteTimeout<L> {
    type Io = Pin<Box<TimeoutStream<L::Io>>>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(self.timeout));
        (Box::pin(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Owns a Unix socket's file and removes it when dropped (at exit).
pub struct SocketFile {
    path: PathBuf,
}

impl SocketFile {
    /// Binds `path` with mode 0600, replacing a stale socket file left by a
    /// previous run. Refuses to replace anything that is not a socket.
    pub fn bind(path: &Path) -> io::Result<(UnixListener, Self)> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok((
            listener,
            Self {
                path: path.to_owned(),
            },
        ))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Best effort: the file may already be gone.
        let _ = std::fs::remove_file(&self.path);
    }
}
