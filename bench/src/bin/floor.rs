//! `floor`: the least an HTTP/1.1 server spends per request on this
//! machine, as a yardstick for the sidecar's CPU per publish.
//!
//! A bare hyper server on a current-thread runtime (as the sidecar's
//! default) that reads each request's body, parses it with serde_json and
//! answers 201 with a small JSON body shaped like a publish answer: no
//! routing, no middleware, no validation, no Redis. It takes the sidecar's
//! command line and ignores all of it but `--listen`, so the main bench can
//! run it in the sidecar's place:
//!
//! `cargo build --release -p streamcar-bench --bins && CARGO=true target/release/streamcar-bench --only publish --sidecar target/release/floor`
//!
//! Its "sidecar CPU per op" is what the kernel's loopback TCP, the wake-ups
//! and hyper cost per request before the sidecar does any work of its own.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Answer = Result<Response<Full<Bytes>>, hyper::Error>;

async fn answer(request: Request<Incoming>) -> Answer {
    if request.uri().path() == "/readyz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"{}"))));
    }
    let body = request.into_body().collect().await?.to_bytes();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let published = serde_json::json!({
        "id": parsed.get("idempotency_key"),
        "seq": "1764182400000-0",
        "duplicate": false,
    });
    let mut response = Response::new(Full::new(Bytes::from(published.to_string())));
    *response.status_mut() = StatusCode::CREATED;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7400".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("bind --listen");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer)),
            );
        }
    });
}
