//! Listeners: the API on a loopback TCP address and, optionally, on a Unix
//! socket. Both serve the same router and stop together on shutdown.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

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
