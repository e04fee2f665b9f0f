//! Adversarial probe of the single-publish fast path (`src/http/dispatch.rs`),
//! the listeners serving it (`axum::serve` over [`streamcar::http::Api`]) and
//! the publish metrics counted once per `publish.lua` call
//! (`src/broker/publish.rs` `count_outcomes`).
//!
//! Fast path against router: every request is sent as the same raw bytes to
//! two sidecars, one serving single publishes directly and one forced
//! through the router by an API token (the request carries the token, so
//! the router lets it in). Both must answer the same status, content type,
//! problem `code`/`field`, header names and publish outcome, and write the
//! same messages; each case also states what the README / OpenAPI document
//! expect.
//!
//! Listeners: pipelining, HTTP/1.0, `Expect: 100-continue`, clients that
//! leave mid-body or stop reading, WebSocket and SSE, the Unix socket, many
//! connections, and the graceful drain (a hand-written hyper loop tried
//! for speed kept its listener open through the drain: a connection made
//! then was queued unserved and reset; the loop is gone, the test stays).
//!
//! Metrics: concurrent publishes combined into one script call are counted
//! once each (written, duplicates, backlog refusals).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::sse::Sse;
use support::{RedisServer, StreamcarProcess, TestApp, get_text, ws};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// The API token of the sidecar forced through the router.
const TOKEN: &str = "probe-token-0123456789";
/// `--max-body` of the differential pairs (small, so limits are cheap to hit).
const MAX_BODY: usize = 2048;
/// Longest wait for anything the server owes before the test fails.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Raw HTTP/1 over a socket.
// ---------------------------------------------------------------------------

/// One HTTP/1 response as read off the wire.
#[derive(Debug, Clone)]
struct RawResponse {
    status: u16,
    /// Header names lower-cased, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A request: `METHOD target HTTP/1.1`, `Host`, the router sidecar's token,
/// `extra` header lines, `Content-Length` (unless `extra` frames the body
/// itself) and `Connection: close` (unless `extra` says otherwise).
fn request(method: &str, target: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let has = |name: &str| {
        extra
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with(&format!("{name}:")))
    };
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: streamcar\r\nAuthorization: Bearer {TOKEN}\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    if !has("content-length") && !has("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A JSON publish request for `target` (keep-alive unless `close`).
fn publish_request(target: &str, body: &Value, close: bool) -> Vec<u8> {
    let connection: &[&str] = if close {
        &["Content-Type: application/json"]
    } else {
        &["Content-Type: application/json", "Connection: keep-alive"]
    };
    request("POST", target, connection, body.to_string().as_bytes())
}

/// `body` in HTTP/1.1 chunked framing, `size` bytes a chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Index of the first `\r\n\r\n` in `bytes` (the end of a head).
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Decodes a chunked body at the start of `bytes`: the body and the bytes
/// it took, or None while incomplete.
fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut body, mut at) = (Vec::new(), 0);
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
            return Some((body, end + 2));
        }
        if bytes.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

/// Every response in `bytes`, in order; interim (1xx) answers are kept.
/// A body cut short by the end of the stream keeps what arrived (HEAD
/// answers carry a length but no body).
fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = head_end(bytes) {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let rest = &bytes[end + 4..];
        let taken = if (100..200).contains(&status) {
            0
        } else if response.header("transfer-encoding") == Some("chunked") {
            match dechunk(rest) {
                Some((body, taken)) => {
                    response.body = body;
                    taken
                }
                None => {
                    response.body = rest.to_vec();
                    rest.len()
                }
            }
        } else {
            let length = response
                .header("content-length")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(rest.len());
            let taken = length.min(rest.len());
            response.body = rest[..taken].to_vec();
            taken
        };
        bytes = &rest[taken..];
        out.push(response);
    }
    out
}

/// Responses that are not interim (1xx).
fn finals(responses: Vec<RawResponse>) -> Vec<RawResponse> {
    responses.into_iter().filter(|r| r.status >= 200).collect()
}

/// Reads until the server closes (or resets) the stream; fails the test if
/// it does not within [`WAIT`].
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("the server closed the connection in time");
    buffer
}

/// Reads until `count` final responses have arrived (keep-alive); what
/// arrived if the stream ended first.
async fn read_responses(stream: &mut (impl AsyncRead + Unpin), count: usize) -> Vec<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    for _ in 0..10_000 {
        let done = finals(parse_responses(&buffer));
        let complete = done.len() >= count
            && done.iter().take(count).all(|r| {
                r.header("content-length")
                    .and_then(|l| l.parse::<usize>().ok())
                    .is_none_or(|l| r.body.len() == l)
            });
        if complete {
            return done;
        }
        match tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a response in time")
        {
            Ok(0) | Err(_) => return finals(parse_responses(&buffer)),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    panic!("responses never completed");
}

/// Writes `bytes` (ignoring a server that closes early, as after a 413)
/// and reads every response until the server closes.
async fn exchange_on(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    bytes: &[u8],
) -> Vec<RawResponse> {
    let _ = stream.write_all(bytes).await;
    parse_responses(&read_to_close(&mut stream).await)
}

/// [`exchange_on`] over a new TCP connection to `app`.
async fn exchange(app: &TestApp, bytes: &[u8]) -> Vec<RawResponse> {
    exchange_on(connect(app).await, bytes).await
}

/// A new TCP connection to `app`'s API.
async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// `target` with `{tenant}` replaced by `app`'s tenant.
fn for_app(app: &TestApp, target: &str) -> String {
    target.replace("{tenant}", &app.tenant)
}

// ---------------------------------------------------------------------------
// The differential pair: fast path and router.
// ---------------------------------------------------------------------------

/// Two sidecars with the same settings: `fast` serves single publishes
/// directly, `routed` has an API token, so everything goes through the
/// router.
struct Pair {
    fast: TestApp,
    routed: TestApp,
}

impl Pair {
    async fn start() -> Self {
        let fast = TestApp::start_with(|c| c.max_body = MAX_BODY).await;
        let routed = TestApp::start_with(|c| {
            c.max_body = MAX_BODY;
            c.api_token = Some(TOKEN.into());
        })
        .await;
        Self { fast, routed }
    }

    /// Sends the bytes `build` makes for each app's tenant (`{tenant}` in
    /// the target) to both; each side's responses.
    async fn both(
        &self,
        build: impl Fn(&TestApp) -> Vec<u8>,
    ) -> (Vec<RawResponse>, Vec<RawResponse>) {
        let fast = exchange(&self.fast, &build(&self.fast)).await;
        let routed = exchange(&self.routed, &build(&self.routed)).await;
        (fast, routed)
    }

    /// Runs one case on both sides: they must answer alike, and as expected.
    async fn case(&self, case: &Case) {
        let (fast, routed) = self
            .both(|app| {
                request(
                    case.method,
                    &for_app(app, &case.target),
                    &case.headers,
                    &case.body,
                )
            })
            .await;
        let (fast, routed) = (views(&fast), views(&routed));
        assert_eq!(
            fast, routed,
            "{}: fast path (left) vs router (right)",
            case.what
        );
        let last = fast
            .last()
            .unwrap_or_else(|| panic!("{}: no answer", case.what));
        assert_eq!(last.status, case.status, "{}: {last:?}", case.what);
        assert_eq!(last.code.as_deref(), case.code, "{}: {last:?}", case.what);
    }

    /// Both sides wrote the same messages (by topic: payloads and headers).
    async fn assert_same_writes(&self) -> usize {
        let fast = written(&self.fast).await;
        let routed = written(&self.routed).await;
        assert_eq!(
            fast, routed,
            "messages written: fast path (left) vs router (right)"
        );
        fast.values().map(Vec::len).sum()
    }
}

/// One request and what the README / OpenAPI document say it gets.
struct Case {
    what: &'static str,
    method: &'static str,
    /// The request target, `{tenant}` standing for each app's tenant.
    target: String,
    headers: Vec<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

impl Case {
    /// A JSON `{"payload": …}` POST to `target`.
    fn post(
        what: &'static str,
        target: impl Into<String>,
        status: u16,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            what,
            method: "POST",
            target: target.into(),
            headers: vec!["Content-Type: application/json"],
            body: br#"{"payload": {"probe": true}}"#.to_vec(),
            status,
            code,
        }
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn headers(mut self, headers: &[&'static str]) -> Self {
        self.headers = headers.to_vec();
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// The plain publish target of `topic` under the app's tenant.
fn messages(topic: &str) -> String {
    format!("/v1/tenants/{{tenant}}/topics/{topic}/messages")
}

/// What is compared of an answer: everything but ids, times and lengths
/// (the two sidecars have different tenants).
#[derive(Debug, PartialEq, Eq)]
struct View {
    status: u16,
    content_type: Option<String>,
    code: Option<String>,
    field: Option<String>,
    seq: Option<u64>,
    duplicate: Option<bool>,
    header_names: BTreeSet<String>,
}

fn view(r: &RawResponse) -> View {
    let body = r.json();
    View {
        status: r.status,
        content_type: r.header("content-type").map(str::to_owned),
        code: body["code"].as_str().map(str::to_owned),
        field: body["field"].as_str().map(str::to_owned),
        seq: body["seq"].as_u64(),
        duplicate: body["duplicate"].as_bool(),
        header_names: r
            .headers
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n != "date")
            .collect(),
    }
}

fn views(responses: &[RawResponse]) -> Vec<View> {
    responses.iter().map(view).collect()
}

/// Every message of the app's tenant, by topic: payload and headers.
async fn written(app: &TestApp) -> BTreeMap<String, Vec<(Value, Value)>> {
    let get = |url: String| {
        let request = app.client.get(url).bearer_auth(TOKEN);
        async move { TestApp::reply(request.send().await.expect("get")).await }
    };
    let topics = get(app.url("/topics")).await;
    assert_eq!(topics.status, StatusCode::OK, "{}", topics.body);
    let mut all = BTreeMap::new();
    for topic in topics.body["topics"].as_array().expect("topics") {
        let topic = topic.as_str().expect("name");
        let page = get(app.url(&format!("/topics/{topic}/messages?limit=1000"))).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let messages = page.body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| (m["payload"].clone(), m["headers"].clone()))
            .collect();
        all.insert(topic.to_owned(), messages);
    }
    all
}

// ---------------------------------------------------------------------------
// Fast path against router.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn other_methods_on_the_publish_path_answer_as_the_router_does() {
    let pair = Pair::start().await;
    // A topic to read, so GET and HEAD have something to answer.
    pair.case(&Case::post("a publish first", messages("m"), 201, None))
        .await;
    let cases = [
        Case::post("GET is history", messages("m"), 200, None).method("GET"),
        Case::post("HEAD is history without a body", messages("m"), 200, None).method("HEAD"),
        Case::post("PUT", messages("m"), 405, Some("method_not_allowed")).method("PUT"),
        Case::post("DELETE", messages("m"), 405, Some("method_not_allowed")).method("DELETE"),
        Case::post("PATCH", messages("m"), 405, Some("method_not_allowed")).method("PATCH"),
        Case::post("OPTIONS", messages("m"), 405, Some("method_not_allowed")).method("OPTIONS"),
        Case::post(
            "lower-case post",
            messages("m"),
            405,
            Some("method_not_allowed"),
        )
        .method("post"),
        Case::post(
            "made-up method",
            messages("m"),
            405,
            Some("method_not_allowed"),
        )
        .method("PUBLISH"),
    ];
    for case in &cases {
        pair.case(case).await;
    }
    assert_eq!(pair.assert_same_writes().await, 1);
}

#[tokio::test]
async fn path_shapes_near_the_publish_route_answer_as_the_router_does() {
    let pair = Pair::start().await;
    let not_found = Some("route_not_found");
    let cases = [
        Case::post(
            "upper-case V1",
            "/V1/tenants/{tenant}/topics/p/messages",
            404,
            not_found,
        ),
        Case::post(
            "upper-case Messages",
            "/v1/tenants/{tenant}/topics/p/Messages",
            404,
            not_found,
        ),
        Case::post(
            "trailing slash",
            "/v1/tenants/{tenant}/topics/p/messages/",
            404,
            not_found,
        ),
        Case::post(
            "double slash before topics",
            "/v1/tenants/{tenant}//topics/p/messages",
            404,
            not_found,
        ),
        Case::post(
            "double slash at the start",
            "//v1/tenants/{tenant}/topics/p/messages",
            404,
            not_found,
        ),
        Case::post(
            "empty topic",
            "/v1/tenants/{tenant}/topics//messages",
            400,
            Some("invalid_name"),
        ),
        Case::post(
            "empty tenant",
            "/v1/tenants//topics/p/messages",
            400,
            Some("invalid_name"),
        ),
        Case::post(
            "dot topic",
            "/v1/tenants/{tenant}/topics/./messages",
            400,
            Some("invalid_name"),
        ),
        Case::post(
            "dot-dot topic",
            "/v1/tenants/{tenant}/topics/../messages",
            400,
            Some("invalid_name"),
        ),
        Case::post(
            "dot-dot segment after the topic",
            "/v1/tenants/{tenant}/topics/p/../p/messages",
            404,
            not_found,
        ),
        Case::post(
            "extra segment",
            "/v1/tenants/{tenant}/topics/p/messages/x",
            404,
            not_found,
        ),
        Case::post(
            "batch route stays batch",
            "/v1/tenants/{tenant}/topics/p/messages:batch",
            400,
            Some("invalid_field"),
        ),
        Case::post(
            "absolute-form target",
            "http://streamcar/v1/tenants/{tenant}/topics/abs/messages",
            201,
            None,
        ),
        Case::post(
            "fragment-looking suffix",
            "/v1/tenants/{tenant}/topics/p/messages#frag",
            201,
            None,
        ),
    ];
    for case in &cases {
        pair.case(case).await;
    }
    pair.assert_same_writes().await;
}

#[tokio::test]
async fn escaped_and_limit_length_names_answer_as_the_router_does() {
    let pair = Pair::start().await;
    let name128 = format!("n{}", "x".repeat(127));
    let name129 = format!("n{}", "x".repeat(128));
    let invalid = Some("invalid_name");
    let cases = [
        Case::post("plain dotted", messages("a.b"), 201, None),
        Case::post("escaped dot (same topic)", messages("a%2Eb"), 201, None),
        Case::post("escaped letter", messages("%61"), 201, None),
        Case::post("escaped slash", messages("a%2Fb"), 400, invalid),
        Case::post("escaped colon", messages("a%3Ab"), 400, invalid),
        Case::post("bad escape", messages("a%ZZ"), 400, invalid),
        Case::post("128-byte topic", messages(&name128), 201, None),
        Case::post("129-byte topic", messages(&name129), 400, invalid),
        Case::post(
            "128-byte tenant",
            format!("/v1/tenants/{name128}/topics/p/messages"),
            201,
            None,
        ),
        Case::post(
            "129-byte tenant",
            format!("/v1/tenants/{name129}/topics/p/messages"),
            400,
            invalid,
        ),
        Case::post("topic starting with '-'", messages("-p"), 400, invalid),
        Case::post("topic starting with '_'", messages("_p"), 400, invalid),
        Case::post("topic with a space escape", messages("a%20b"), 400, invalid),
        Case::post("topic with UTF-8", messages("%C3%A9t%C3%A9"), 400, invalid),
        Case::post(
            "tenant with a brace",
            "/v1/tenants/a%7Bb/topics/p/messages",
            400,
            invalid,
        ),
    ];
    for case in &cases {
        pair.case(case).await;
    }
    pair.assert_same_writes().await;
    // The escaped and plain dotted names are one topic.
    let fast = written(&pair.fast).await;
    assert_eq!(fast.get("a.b").map(Vec::len), Some(2), "{fast:?}");
}

#[tokio::test]
async fn query_strings_leave_a_publish_as_it_is() {
    let pair = Pair::start().await;
    let cases = [
        Case::post("empty query", format!("{}?", messages("q")), 201, None),
        Case::post(
            "unknown parameter",
            format!("{}?x=1", messages("q")),
            201,
            None,
        ),
        Case::post(
            "a query naming a field",
            format!("{}?id=from-query&payload=2", messages("q")),
            201,
            None,
        ),
        Case::post(
            "an escaped slash in the query",
            format!("{}?a=%2F..%2F", messages("q")),
            201,
            None,
        ),
    ];
    for case in &cases {
        pair.case(case).await;
    }
    assert_eq!(pair.assert_same_writes().await, 4);
}

#[tokio::test]
async fn content_types_are_judged_the_same_way() {
    let pair = Pair::start().await;
    let unsupported = Some("unsupported_media_type");
    let ct = |what: &'static str, header: &'static str, status: u16, code: Option<&'static str>| {
        let headers: Vec<&'static str> = if header.is_empty() {
            vec![]
        } else {
            vec![header]
        };
        Case::post(what, messages("ct"), status, code).headers(&headers)
    };
    let cases = [
        ct("no content type", "", 201, None),
        ct(
            "charset parameter",
            "Content-Type: application/json; charset=utf-8",
            201,
            None,
        ),
        ct("upper case", "Content-Type: APPLICATION/JSON", 201, None),
        ct(
            "+json suffix",
            "Content-Type: application/cloudevents+json",
            201,
            None,
        ),
        ct(
            "spaces around",
            "Content-Type:   application/json  ",
            201,
            None,
        ),
        ct("text/plain", "Content-Type: text/plain", 415, unsupported),
        ct(
            "json as a prefix",
            "Content-Type: application/jsonx",
            415,
            unsupported,
        ),
        ct(
            "form",
            "Content-Type: application/x-www-form-urlencoded",
            415,
            unsupported,
        ),
        ct("empty value", "Content-Type:", 415, unsupported),
        ct(
            "non-ASCII value",
            "Content-Type: application/json\u{e9}",
            415,
            unsupported,
        ),
    ];
    for case in &cases {
        pair.case(case).await;
    }
    assert_eq!(pair.assert_same_writes().await, 5);
}

#[tokio::test]
async fn bodies_and_their_framing_are_judged_the_same_way() {
    let pair = Pair::start().await;
    // A body of exactly `len` bytes.
    let sized = |len: usize| {
        let head = r#"{"payload": ""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len())).into_bytes()
    };
    let json_ct = "Content-Type: application/json";
    let too_large = Some("payload_too_large");
    let cases = [
        Case::post("exactly --max-body", messages("b"), 201, None).body(sized(MAX_BODY)),
        Case::post("one byte over", messages("b"), 413, too_large).body(sized(MAX_BODY + 1)),
        Case::post("far over", messages("b"), 413, too_large).body(sized(MAX_BODY * 20)),
        Case::post("chunked, small", messages("b"), 201, None)
            .headers(&[json_ct, "Transfer-Encoding: chunked"])
            .body(chunked(br#"{"payload": "chunked"}"#, 5)),
        Case::post("chunked, over the limit", messages("b"), 413, too_large)
            .headers(&[json_ct, "Transfer-Encoding: chunked"])
            .body(chunked(&sized(MAX_BODY * 2), 100)),
        Case::post("empty body", messages("b"), 400, Some("invalid_field")).body(Vec::new()),
        Case::post("truncated JSON", messages("b"), 400, Some("invalid_body")).body(&b"{"[..]),
        Case::post("array body", messages("b"), 400, Some("invalid_body")).body(&b"[]"[..]),
        Case::post("unknown field", messages("b"), 400, Some("invalid_field"))
            .body(&br#"{"payload": 1, "nope": 2}"#[..]),
        Case::post(
            "control character in id",
            messages("b"),
            400,
            Some("invalid_field"),
        )
        .body(&br#"{"payload": 1, "id": "a\u0001"}"#[..]),
        Case::post(
            "a Content-Length that is not a number",
            messages("b"),
            400,
            None,
        )
        .headers(&[json_ct, "Content-Length: abc"]),
    ];
    for case in &cases {
        pair.case(case).await;
    }
    // A declared length far over the limit is refused once the limit is
    // crossed, before the whole body is sent (the length alone is not
    // judged: with no body bytes at all the answer waits for them). Hyper
    // then waits for the rest of the body: read the answer, not the close.
    let mut answers = Vec::new();
    for app in [&pair.fast, &pair.routed] {
        let mut stream = connect(app).await;
        let head = request(
            "POST",
            &for_app(app, &messages("b")),
            &[json_ct, "Content-Length: 1000000"],
            &vec![b' '; MAX_BODY + 100],
        );
        stream.write_all(&head).await.expect("write");
        answers.push(views(&read_responses(&mut stream, 1).await));
    }
    assert_eq!(answers[0], answers[1], "fast path (left) vs router (right)");
    assert_eq!(answers[0][0].status, 413, "{:?}", answers[0]);
    assert_eq!(answers[0][0].code.as_deref(), too_large);
    assert_eq!(pair.assert_same_writes().await, 2);
}

#[tokio::test]
async fn expect_continue_and_http10_are_served_the_same_way() {
    let pair = Pair::start().await;
    let expect = Case::post("Expect: 100-continue", messages("e"), 201, None)
        .headers(&["Content-Type: application/json", "Expect: 100-continue"]);
    pair.case(&expect).await;
    let refused = Case::post(
        "Expect with a bad type",
        messages("e"),
        415,
        Some("unsupported_media_type"),
    )
    .headers(&["Content-Type: text/plain", "Expect: 100-continue"]);
    pair.case(&refused).await;
    // The refusal comes before the body is asked for: no 100 first.
    let (fast, routed) = pair
        .both(|app| {
            request(
                "POST",
                &for_app(app, &messages("e")),
                &["Content-Type: text/plain", "Expect: 100-continue"],
                b"{}",
            )
        })
        .await;
    assert_eq!(views(&fast), views(&routed));
    // HTTP/1.0, no Host, no Connection header: answered, then closed.
    let (fast, routed) = pair
        .both(|app| {
            let body = br#"{"payload": "http/1.0"}"#;
            let mut bytes = format!(
                "POST {} HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                for_app(app, &messages("e")),
                body.len()
            )
            .into_bytes();
            bytes.extend_from_slice(body);
            bytes
        })
        .await;
    assert_eq!(views(&fast), views(&routed));
    assert_eq!(fast.len(), 1, "{fast:?}");
    assert_eq!(fast[0].status, 201, "{fast:?}");
    assert_eq!(pair.assert_same_writes().await, 2);
}

#[tokio::test]
async fn duplicate_traceparent_headers_carry_no_trace_either_way() {
    let pair = Pair::start().await;
    let one = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let other = "traceparent: 00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01";
    let json_ct = "Content-Type: application/json";
    let cases = [
        Case::post("one traceparent", messages("tp1"), 201, None).headers(&[json_ct, one]),
        Case::post("two traceparents", messages("tp2"), 201, None).headers(&[json_ct, one, other]),
        Case::post("the same traceparent twice", messages("tp3"), 201, None)
            .headers(&[json_ct, one, one]),
        Case::post("an invalid traceparent", messages("tp4"), 201, None)
            .headers(&[json_ct, "traceparent: 00-zz-zz-01"]),
    ];
    for case in &cases {
        pair.case(case).await;
    }
    pair.assert_same_writes().await;
    let fast = written(&pair.fast).await;
    assert_eq!(
        fast["tp1"][0].1["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    for topic in ["tp2", "tp3", "tp4"] {
        assert!(
            fast[topic][0].1.get("traceparent").is_none(),
            "{topic}: {:?}",
            fast[topic]
        );
    }
}

#[tokio::test]
async fn pipelined_publishes_on_one_connection_are_answered_in_order() {
    let pair = Pair::start().await;
    let (fast, routed) = pair
        .both(|app| {
            let target = for_app(app, &messages("pipe"));
            let mut bytes = Vec::new();
            for i in 0..20 {
                bytes.extend(publish_request(&target, &json!({ "payload": i }), false));
            }
            // A refused one in the middle of the stream, then more.
            bytes.extend(request(
                "POST",
                &target,
                &["Content-Type: text/plain", "Connection: keep-alive"],
                b"{}",
            ));
            bytes.extend(publish_request(&target, &json!({ "payload": 20 }), false));
            bytes.extend(request("GET", &format!("{target}?limit=1000"), &[], b""));
            bytes
        })
        .await;
    assert_eq!(views(&fast), views(&routed));
    assert_eq!(fast.len(), 23, "every request answered: {fast:?}");
    for (i, r) in fast.iter().take(20).enumerate() {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.json()["seq"], i as u64 + 1, "in order: {r:?}");
    }
    assert_eq!(fast[20].status, 415);
    assert_eq!(fast[21].json()["seq"], 21);
    let history: Vec<Value> = fast[22].json()["messages"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(history, (0..=20).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(pair.assert_same_writes().await, 21);
}

#[tokio::test]
async fn a_publish_after_an_oversized_body_on_the_same_connection_is_answered_alike() {
    let pair = Pair::start().await;
    let (fast, routed) = pair
        .both(|app| {
            let target = for_app(app, &messages("big"));
            let big = json!({ "payload": "x".repeat(MAX_BODY * 4) });
            let mut bytes = publish_request(&target, &big, false);
            bytes.extend(publish_request(
                &target,
                &json!({ "payload": "after" }),
                true,
            ));
            bytes
        })
        .await;
    assert_eq!(views(&fast), views(&routed));
    assert_eq!(fast[0].status, 413, "{fast:?}");
    // Whatever hyper does with the rest of the connection, a publish is
    // written exactly when it was answered 201.
    let answered = fast.iter().filter(|r| r.status == 201).count();
    assert_eq!(pair.assert_same_writes().await, answered);
}

#[tokio::test]
async fn a_client_leaving_mid_body_writes_nothing_and_serving_goes_on() {
    let app = TestApp::start().await;
    let target = for_app(&app, &messages("gone"));
    for _ in 0..20 {
        let mut stream = connect(&app).await;
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"payload\": "
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        drop(stream);
    }
    // Chunked, left before the last chunk.
    let mut stream = connect(&app).await;
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"pay\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    drop(stream);
    let reply = app
        .post("/topics/gone/messages", &json!({"payload": "whole"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["seq"], 1, "nothing before it: {}", reply.body);
    assert_eq!(app.history("gone").await.len(), 1);
}

// ---------------------------------------------------------------------------
// The listeners.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_websocket_upgrade_works_through_the_serve_loop() {
    let app = TestApp::start().await;
    let mut socket = ws::connect(&app).await;
    let subscribed = ws::subscribe(&mut socket, "live").await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let reply = app
        .post("/channels/live/messages", &json!({"payload": "over http"}))
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    let frame = ws::next(&mut socket).await;
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(frame["payload"], "over http");
    // The connection it was upgraded from no longer counts: plain requests
    // and publishes go on beside it.
    app.publish("t", &json!({"payload": 1})).await;
    ws::send(
        &mut socket,
        json!({"op": "publish", "channel": "live", "payload": "over ws"}),
    )
    .await;
    let frame = ws::next(&mut socket).await;
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(frame["payload"], "over ws");
}

#[tokio::test]
async fn sse_events_stream_through_the_serve_loop() {
    let app = TestApp::start().await;
    let mut events = Sse::open(&app.url("/channels/feed/events"), None).await;
    for i in 1..=5 {
        let reply = app
            .post("/channels/feed/messages", &json!({ "payload": i }))
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
    }
    for i in 1..=5u64 {
        let event = events.expect().await;
        assert_eq!(event.data["offset"], i, "{event:?}");
        assert_eq!(event.data["payload"], i, "{event:?}");
    }
}

#[tokio::test]
async fn the_unix_socket_serves_plain_pipelined_and_refused_publishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sc.sock");
    let socket = path.clone();
    let app = TestApp::start_with(move |c| c.socket = Some(socket)).await;
    let target = for_app(&app, &messages("unix"));
    let unix = |path: &Path| UnixStream::connect(path.to_owned());
    let one = exchange_on(
        unix(&path).await.expect("connect"),
        &publish_request(&target, &json!({"payload": 0}), true),
    )
    .await;
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0].status, 201, "{one:?}");
    let mut bytes = Vec::new();
    for i in 1..=5 {
        bytes.extend(publish_request(&target, &json!({ "payload": i }), false));
    }
    bytes.extend(request("PUT", &target, &[], b""));
    let piped = exchange_on(unix(&path).await.expect("connect"), &bytes).await;
    let statuses: Vec<u16> = piped.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 201, 201, 201, 201, 405]);
    assert_eq!(piped[5].json()["code"], "method_not_allowed");
    assert_eq!(app.history("unix").await.len(), 6);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_by_the_write_timeout() {
    let app = TestApp::start_with(|c| c.write_timeout = Duration::from_millis(500)).await;
    let doc_len = app
        .get_root("/v1/openapi.json")
        .await
        .body
        .to_string()
        .len();
    // Enough pipelined answers to fill both socket buffers many times over.
    let count = (64 << 20) / doc_len.max(1) + 1;
    let mut stream = connect(&app).await;
    let requests = b"GET /v1/openapi.json HTTP/1.1\r\nHost: s\r\n\r\n".repeat(count);
    let (mut reader, mut writer) = stream.split();
    // The server stops reading requests once its writes stall, so this
    // write stalls too: give up on it, then leave the server past its
    // write timeout without reading anything.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.write_all(&requests)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Cut: what was buffered, then the end, well short of every answer.
    let got = finals(parse_responses(&read_to_close(&mut reader).await));
    assert!(
        got.len() < count,
        "{} of {count} answers: never cut",
        got.len()
    );
    // The sidecar serves on.
    assert_eq!(app.get_root("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn many_connections_at_once_each_publish_once() {
    let app = TestApp::start().await;
    let connections = 200;
    let mut tasks = Vec::new();
    for i in 0..connections {
        let addr = app.base.trim_start_matches("http://").to_owned();
        let bytes = publish_request(
            &for_app(&app, &messages("crowd")),
            &json!({ "payload": i }),
            true,
        );
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            exchange_on(stream, &bytes).await
        }));
    }
    let mut seqs = BTreeSet::new();
    for task in tasks {
        let answers = task.await.expect("task");
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].status, 201, "{answers:?}");
        seqs.insert(answers[0].json()["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs, (1..=connections).collect());
    assert_eq!(
        published_metric(&app, "crowd", "streamcar_published_total").await,
        connections
    );
}

/// Serves until SIGTERM with a publish mid-body, a waiting long-poll and an
/// idle keep-alive connection: the long-poll ends empty, the idle
/// connection is closed, the publish finishes (201, written) and the
/// process exits 0.
#[tokio::test]
async fn sigterm_lets_a_publish_mid_body_finish_and_exits_zero() {
    let redis = RedisServer::start();
    let mut sc = StreamcarProcess::start(&redis.url(), &["--drain-timeout", "60s"]).await;
    let (poll, mut idle, mut publishing, rest) = drain_setup(&sc).await;
    sc.signal(libc::SIGTERM);
    let polled = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the long-poll ended")
        .expect("task");
    assert_eq!(polled.status, StatusCode::OK, "{}", polled.body);
    assert_eq!(polled.body["messages"], json!([]));
    assert!(
        read_to_close(&mut idle).await.is_empty(),
        "idle keep-alive closed"
    );
    publishing
        .write_all(rest.as_bytes())
        .await
        .expect("rest of the body");
    let answers = parse_responses(&read_to_close(&mut publishing).await);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 201, "{answers:?}");
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert_eq!(sc.wait_exit().await.code(), Some(0));
    // Written: another sidecar on the same Redis reads it.
    let again = StreamcarProcess::start(&redis.url(), &[]).await;
    let history = get_text(
        &reqwest::Client::new(),
        format!("{}/v1/tenants/d/topics/drain/messages", again.base),
    )
    .await;
    let history: Value = serde_json::from_str(&history).expect("history");
    assert_eq!(history["messages"][0]["payload"], "mid-body", "{history}");
}

/// README "Shutdown": SIGTERM stops accepting connections. While a drain
/// is held open by a request in flight, a new connection must be refused
/// (`axum::serve` drops its listener before waiting), not accepted by the
/// kernel into a backlog nobody serves any more.
#[tokio::test]
async fn new_connections_are_refused_during_the_drain() {
    let redis = RedisServer::start();
    let mut sc = StreamcarProcess::start(&redis.url(), &["--drain-timeout", "60s"]).await;
    let (poll, _idle, mut publishing, rest) = drain_setup(&sc).await;
    sc.signal(libc::SIGTERM);
    // The drain has begun once the long-poll is ended by it.
    let _ = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the long-poll ended");
    let addr = sc.base.trim_start_matches("http://").to_owned();
    let mut refused = false;
    let mut late = None;
    for _ in 0..50 {
        match TcpStream::connect(&addr).await {
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                refused = true;
                break;
            }
            Ok(stream) => late = Some(stream),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the drain end either way.
    publishing
        .write_all(rest.as_bytes())
        .await
        .expect("rest of the body");
    let answers = parse_responses(&read_to_close(&mut publishing).await);
    assert_eq!(answers.first().map(|r| r.status), Some(201), "{answers:?}");
    assert_eq!(sc.wait_exit().await.code(), Some(0));
    if let Some(mut late) = late {
        // What a client connected during the drain got: nothing.
        let _ = late
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n")
            .await;
        let got = read_to_close(&mut late).await;
        assert!(
            refused,
            "connections made during the drain were accepted and then answered {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(
        refused,
        "no connection attempt was refused during the drain"
    );
}

/// What the drain tests hold open before SIGTERM: a waiting long-poll, an
/// idle keep-alive connection that was served once, and a publish whose
/// body is half sent (the other half returned).
async fn drain_setup(
    sc: &StreamcarProcess,
) -> (
    tokio::task::JoinHandle<support::Reply>,
    TcpStream,
    TcpStream,
    String,
) {
    let client = reqwest::Client::new();
    let group = format!("{}/v1/tenants/d/topics/wait/groups/g", sc.base);
    let declared = client
        .put(&group)
        .json(&json!({}))
        .send()
        .await
        .expect("group");
    assert!(declared.status().is_success());
    let poll = tokio::spawn({
        let url = format!("{group}/fetch");
        async move {
            let request = client
                .post(url)
                .json(&json!({"consumer": "w", "wait_ms": 30000}));
            TestApp::reply(request.send().await.expect("fetch")).await
        }
    });
    let addr = sc.base.trim_start_matches("http://").to_owned();
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .expect("write");
    let served = read_responses(&mut idle, 1).await;
    assert_eq!(served.first().map(|r| r.status), Some(200), "{served:?}");
    let body = r#"{"payload": "mid-body"}"#;
    let (first, rest) = body.split_at(10);
    let mut publishing = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/tenants/d/topics/drain/messages HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    );
    publishing.write_all(head.as_bytes()).await.expect("write");
    // Let the long-poll reach its wait before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (poll, idle, publishing, rest.to_owned())
}

// ---------------------------------------------------------------------------
// Publish metrics: once per script call, each message once.
// ---------------------------------------------------------------------------

/// `series{tenant=…,topic=…}` of the app's tenant and `topic` (0 if absent).
async fn published_metric(app: &TestApp, topic: &str, series: &str) -> u64 {
    let text = app.metrics_text().await;
    let tenant = format!("tenant=\"{}\"", app.tenant);
    let topic = format!("topic=\"{topic}\"");
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{series}{{")) && l.contains(&tenant) && l.contains(&topic)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Publishes each body to `topic` at once, each on a request of its own;
/// the statuses and bodies.
async fn concurrent_publishes(app: &TestApp, topic: &str, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let url = app.url(&format!("/topics/{topic}/messages"));
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let request = app.client.post(&url).json(&body);
            tokio::spawn(async move {
                let reply = TestApp::reply(request.send().await.expect("publish")).await;
                (reply.status.as_u16(), reply.body)
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn concurrent_publishes_are_each_counted_once() {
    let app = TestApp::start().await;
    let singles = 300;
    let bodies = (0..singles).map(|i| json!({ "payload": i })).collect();
    let (answers, batch) = tokio::join!(concurrent_publishes(&app, "count", bodies), async {
        // Batches beside them (16 and more skip group commit, fewer join it).
        for size in [3usize, 16, 40] {
            let messages: Vec<Value> = (0..size).map(|i| json!({ "payload": i })).collect();
            app.publish_batch("count", &messages).await;
        }
        3 + 16 + 40
    });
    assert!(answers.iter().all(|(s, _)| *s == 201), "{answers:?}");
    let total = singles + batch;
    assert_eq!(app.history("count").await.len() as u64, total);
    assert_eq!(
        published_metric(&app, "count", "streamcar_published_total").await,
        total
    );
    assert_eq!(
        published_metric(&app, "count", "streamcar_publish_duplicates_total").await,
        0
    );
}

#[tokio::test]
async fn concurrent_duplicates_are_each_counted_once() {
    let app = TestApp::start().await;
    let callers = 50;
    let bodies = (0..callers)
        .map(
            |i| json!({ "payload": i, "idempotency_key": if i % 2 == 0 { "even" } else { "odd" } }),
        )
        .collect();
    let answers = concurrent_publishes(&app, "dups", bodies).await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count() as u64;
    let duplicates = answers.iter().filter(|(s, _)| *s == 200).count() as u64;
    assert_eq!((created, duplicates), (2, callers - 2), "{answers:?}");
    assert_eq!(
        published_metric(&app, "dups", "streamcar_published_total").await,
        2
    );
    assert_eq!(
        published_metric(&app, "dups", "streamcar_publish_duplicates_total").await,
        callers - 2
    );
}

#[tokio::test]
async fn concurrent_backlog_refusals_are_each_counted_once() {
    let app = TestApp::start().await;
    let declared = app.put("/topics/full", &json!({"max_backlog": 5})).await;
    assert!(declared.status.is_success(), "{}", declared.body);
    app.group("full", "g", &json!({})).await;
    let callers = 60;
    let bodies = (0..callers).map(|i| json!({ "payload": i })).collect();
    let answers = concurrent_publishes(&app, "full", bodies).await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count() as u64;
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == 429 && b["code"] == "backlog_full")
        .count() as u64;
    assert_eq!(created + refused, callers, "{answers:?}");
    assert_eq!(created, 5, "{answers:?}");
    assert_eq!(
        published_metric(&app, "full", "streamcar_published_total").await,
        created
    );
    assert_eq!(
        published_metric(&app, "full", "streamcar_backlog_refused_total").await,
        refused
    );
}
