//! The client edge (`--edge-listen`) for the tests: an app with the edge on
//! (HS256 with the test secret), its WebSocket address and token claims.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use streamcar::config::{EdgeConfig, JwtAlg};

use super::TestApp;

/// The HS256 secret of these tests (at least 32 bytes).
pub const SECRET: &[u8] = b"edge-test-secret-0123456789abcdef-0123456789";

/// Now, in seconds since the epoch (what `exp` and `nbf` count in).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_secs()
}

/// A key file holding [`SECRET`].
pub fn secret_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), SECRET).expect("write the secret");
    file
}

/// Claims of `sub` in `tenant`, valid for `ttl` seconds.
pub fn claims(tenant: &str, sub: &str, channels: &[&str], ttl: u64) -> Value {
    json!({ "sub": sub, "tenant": tenant, "channels": channels, "exp": now() + ttl })
}

/// An app with the edge on (HS256 with [`SECRET`]), `adjust`ed; keep the
/// key file as long as the app.
pub async fn edge_app(adjust: impl FnOnce(&mut EdgeConfig)) -> (TestApp, tempfile::NamedTempFile) {
    let key = secret_file();
    let path = key.path().to_owned();
    let app = TestApp::start_with(move |config| {
        let mut edge = EdgeConfig::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            path,
            JwtAlg::Hs256,
        );
        adjust(&mut edge);
        config.edge = Some(edge);
    })
    .await;
    (app, key)
}

/// The edge's WebSocket URL.
pub fn ws_url(app: &TestApp) -> String {
    let base = app.edge_base().expect("edge on");
    format!("{}/v1/edge/ws", base.replacen("http", "ws", 1))
}
