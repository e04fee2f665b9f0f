//! The `--subscriptions FILE`: which groups this sidecar pushes to which
//! app URL, read and checked once at start.
//!
//! The file is YAML or JSON (`.json` files are read as JSON, anything else as
//! YAML, which also accepts JSON). Every refusal names the field, e.g.
//! `subscriptions[1].url: …`, so an operator can fix the file without
//! guessing; `main` turns it into exit code 2.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::broker::delivery::MAX_FETCH;
use crate::broker::groups::GroupConfigRequest;
use crate::names::{Group, Tenant, Topic};

/// Most concurrent requests per subscription and sidecar.
pub const MAX_IN_FLIGHT: u32 = 1000;
/// Longest request timeout: 12 h (the longest lease; the sidecar keeps the
/// lease alive while it waits, so a timeout may outlast the lease).
pub const MAX_TIMEOUT_MS: u64 = 12 * 60 * 60 * 1000;

/// Where a subscription's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host[:port]/path`: the full URI of every request.
    Http(hyper::Uri),
    /// `unix:/path.sock:/route`: the socket and the request path.
    Unix {
        /// The socket file.
        socket: PathBuf,
        /// The request path (and query), starting with `/`.
        route: String,
    },
}

impl Target {
    /// Parses a subscription `url`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("unix:") {
            let (socket, route) = match rest.find(":/") {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, "/"),
            };
            if !socket.starts_with('/') {
                return Err(
                    "a unix: URL needs an absolute socket path: unix:/path.sock:/route".into(),
                );
            }
            // The route must be a valid request target on its own.
            route
                .parse::<hyper::http::uri::PathAndQuery>()
                .map_err(|e| format!("invalid route '{route}': {e}"))?;
            return Ok(Self::Unix {
                socket: PathBuf::from(socket),
                route: route.to_owned(),
            });
        }
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https is not supported: push to the app over loopback http:// or unix:".into(),
                );
            }
            _ => return Err(format!("'{url}' must start with http:// or unix:/")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("'{url}' has no host"));
        }
        Ok(Self::Http(uri))
    }
}

/// One subscription: push the deliveries of `group` on `tenant/topic` to `url`.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Unique name (metrics label, `GET /v1/subscriptions`).
    pub name: String,
    /// Tenant of the topic.
    pub tenant: Tenant,
    /// The topic.
    pub topic: Topic,
    /// The consumer group the sidecar fetches from.
    pub group: Group,
    /// The app endpoint.
    pub target: Target,
    /// The URL as written (for logs and status).
    pub url: String,
    /// Most requests outstanding at once.
    pub max_in_flight: u32,
    /// Deliveries per request (1: the payload is the body; more: a JSON array).
    pub batch: u32,
    /// Longest wait for the app's answer, ms.
    pub timeout_ms: u64,
    /// How to declare the group when it does not exist.
    pub group_config: std::sync::Arc<GroupConfigRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    subscriptions: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    tenant: Tenant,
    topic: Topic,
    group: Group,
    url: String,
    #[serde(default = "default_in_flight")]
    max_in_flight: u32,
    #[serde(default = "default_batch")]
    batch: u32,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    group_config: Option<GroupConfigRequest>,
}

fn default_in_flight() -> u32 {
    8
}
fn default_batch() -> u32 {
    1
}
fn default_timeout() -> u64 {
    30_000
}

/// Reads and checks a subscriptions file.
pub fn load(path: &Path) -> Result<Vec<Subscription>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --subscriptions {}: {e}", path.display()))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse(&text, json).map_err(|e| format!("--subscriptions {}: {e}", path.display()))
}

/// Parses and checks the text of a subscriptions file (`json`: JSON, else YAML).
pub fn parse(text: &str, json: bool) -> Result<Vec<Subscription>, String> {
    let file: File = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(path_error)?
    } else {
        serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text))
            .map_err(path_error)?
    };
    let mut names = HashSet::new();
    file.subscriptions
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let field = |f: &str| format!("subscriptions[{i}].{f}");
            crate::names::validate(&e.name).map_err(|err| format!("{}: {err}", field("name")))?;
            if !names.insert(e.name.clone()) {
                return Err(format!("{}: duplicate name '{}'", field("name"), e.name));
            }
            let target = Target::parse(&e.url).map_err(|err| format!("{}: {err}", field("url")))?;
            if !(1..=MAX_IN_FLIGHT).contains(&e.max_in_flight) {
                return Err(format!(
                    "{}: must be between 1 and {MAX_IN_FLIGHT}",
                    field("max_in_flight")
                ));
            }
            if !(1..=MAX_FETCH).contains(&e.batch) {
                return Err(format!(
                    "{}: must be between 1 and {MAX_FETCH}",
                    field("batch")
                ));
            }
            if !(1..=MAX_TIMEOUT_MS).contains(&e.timeout_ms) {
                return Err(format!(
                    "{}: must be between 1 and {MAX_TIMEOUT_MS}",
                    field("timeout_ms")
                ));
            }
            let group_config = e.group_config.unwrap_or_default();
            group_config.check().map_err(|err| match &err {
                crate::error::Error::BadRequest {
                    field: Some(f),
                    detail,
                    ..
                } => format!("{}.{f}: {detail}", field("group_config")),
                other => format!("{}: {other}", field("group_config")),
            })?;
            Ok(Subscription {
                name: e.name,
                tenant: e.tenant,
                topic: e.topic,
                group: e.group,
                target,
                url: e.url,
                max_in_flight: e.max_in_flight,
                batch: e.batch,
                timeout_ms: e.timeout_ms,
                group_config: std::sync::Arc::new(group_config),
            })
        })
        .collect()
}

/// `subscriptions[0].url: invalid type …`: the path first, then the reason.
fn path_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    if path == "." || path.is_empty() {
        e.into_inner().to_string()
    } else {
        format!("{path}: {}", e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(matches!(
            Target::parse("http://127.0.0.1:8080/push"),
            Ok(Target::Http(_))
        ));
        assert_eq!(
            Target::parse("unix:/run/app.sock:/hook?x=1"),
            Ok(Target::Unix {
                socket: "/run/app.sock".into(),
                route: "/hook?x=1".into()
            })
        );
        assert_eq!(
            Target::parse("unix:/run/app.sock"),
            Ok(Target::Unix {
                socket: "/run/app.sock".into(),
                route: "/".into()
            })
        );
        for bad in [
            "https://x/",
            "ftp://x/",
            "unix:rel.sock:/",
            "http:///x",
            "",
            "x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_name_the_field() {
        let ok = "subscriptions:\n  - {name: a, tenant: t, topic: p, group: g, url: 'http://127.0.0.1:1/'}\n";
        let subs = parse(ok, false).unwrap();
        assert_eq!(
            (subs[0].max_in_flight, subs[0].batch, subs[0].timeout_ms),
            (8, 1, 30_000)
        );
        let json = r#"{"subscriptions": [{"name": "a", "tenant": "t", "topic": "p", "group": "g",
            "url": "unix:/s.sock:/x", "batch": 10, "group_config": {"lease_ms": 1000}}]}"#;
        assert_eq!(parse(json, true).unwrap()[0].batch, 10);
        assert_eq!(parse(json, false).unwrap()[0].batch, 10);
        let cases = [
            (
                r#"{"subscriptions": [{"name": "a", "tenant": "t", "topic": "p", "group": "g", "url": "ftp://x"}]}"#,
                "subscriptions[0].url",
            ),
            (
                r#"{"subscriptions": [{"name": "a", "tenant": "t", "topic": "p", "group": "g", "url": "http://x/", "max_in_flight": 0}]}"#,
                "subscriptions[0].max_in_flight",
            ),
            (
                r#"{"subscriptions": [{"name": "a", "tenant": "t{", "topic": "p", "group": "g", "url": "http://x/"}]}"#,
                "subscriptions[0].tenant",
            ),
            (
                r#"{"subscriptions": [{"name": "a", "tenant": "t", "topic": "p", "group": "g", "url": "http://x/", "bogus": 1}]}"#,
                "subscriptions[0]",
            ),
            (
                r#"{"subscriptions": [{"name": "a", "tenant": "t", "topic": "p", "group": "g", "url": "http://x/", "group_config": {"lease_ms": 5}}]}"#,
                "subscriptions[0].group_config.lease_ms",
            ),
            (
                r#"{"subscriptions": [{"name": "a", "tenant": "t", "topic": "p", "group": "g", "url": "http://x/"}, {"name": "a", "tenant": "t", "topic": "p", "group": "g", "url": "http://x/"}]}"#,
                "subscriptions[1].name",
            ),
            (
                r#"{"subscriptions": [{"tenant": "t", "topic": "p", "group": "g", "url": "http://x/"}]}"#,
                "name",
            ),
            ("{}", "subscriptions"),
        ];
        for (text, field) in cases {
            for json in [true, false] {
                let err = parse(text, json).err().unwrap_or_default();
                assert!(err.contains(field), "{text} → {err}");
            }
        }
    }
}
