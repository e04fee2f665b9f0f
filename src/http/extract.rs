//! Extractors that reject bad input before a handler runs, always with a
//! problem+json answer ([`Error`] or, for what only HTTP can get wrong,
//! [`HttpError`]): validated path names, JSON bodies that name the offending
//! field, and query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::{header, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::AppState;
use super::problem::HttpError;
use crate::broker::publish::MAX_ID_LEN;
use crate::error::Error;
use crate::names::{Group, Join, Name, Part, Pool, Tenant, Topic};
use crate::validate::check_text;

/// Reads path parameter `param` and validates it as name type `N`.
fn path_name<N: Name>(params: &RawPathParams, param: &str) -> Result<N, Error> {
    let raw = params
        .iter()
        .find_map(|(k, v)| (k == param).then_some(v))
        .ok_or_else(|| Error::Internal(format!("route has no {param} parameter")))?;
    N::parse(raw).map_err(|e| Error::BadRequest {
        code: "invalid_name",
        detail: format!("invalid {} name '{raw}': {e}", N::KIND),
        field: Some(param.to_owned()),
    })
}

async fn raw_params<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<RawPathParams, Error> {
    RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| Error::bad_request("invalid_path", e.body_text()))
}

/// `{tenant}` of the path.
pub struct TenantPath(pub Tenant);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let params = raw_params(parts, state).await?;
        Ok(Self(path_name(&params, "tenant")?))
    }
}

/// Declares an extractor for path parameters that are validated names: one
/// field per parameter, named after it.
macro_rules! name_path {
    ($(#[$doc:meta])* $path:ident { $($param:ident: $ty:ty),+ }) => {
        $(#[$doc])*
        pub struct $path {
            $(
                #[doc = concat!("The `{", stringify!($param), "}` parameter.")]
                pub $param: $ty,
            )+
        }

        impl<S: Send + Sync> FromRequestParts<S> for $path {
            type Rejection = Error;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
                let params = raw_params(parts, state).await?;
                Ok(Self {
                    $($param: path_name(&params, stringify!($param))?,)+
                })
            }
        }
    };
}

name_path!(
    /// `{tenant}` and `{topic}` of the path.
    TopicPath { tenant: Tenant, topic: Topic }
);
name_path!(
    /// `{tenant}`, `{topic}` and `{group}` of the path.
    GroupPath { tenant: Tenant, topic: Topic, group: Group }
);
name_path!(
    /// `{tenant}` and `{pool}` of the path.
    PoolPath { tenant: Tenant, pool: Pool }
);
name_path!(
    /// `{tenant}`, `{topic}` and `{join}` of the path.
    JoinPath { tenant: Tenant, topic: Topic, join: Join }
);
name_path!(
    /// `{tenant}`, `{topic}`, `{join}` and `{part}` of the path.
    JoinPartPath { tenant: Tenant, topic: Topic, join: Join, part: Part }
);

/// `{tenant}`, `{topic}`, `{group}` and a dead letter's message `{id}`.
pub struct DeadLetterPath {
    /// The group's path.
    pub group: GroupPath,
    /// The original message id.
    pub id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for DeadLetterPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let group = GroupPath::from_request_parts(parts, state).await?;
        let params = raw_params(parts, state).await?;
        let id = params
            .iter()
            .find_map(|(k, v)| (k == "id").then(|| v.to_owned()))
            .ok_or_else(|| Error::Internal("route has no id parameter".into()))?;
        if check_text("id", &id, MAX_ID_LEN).is_err() {
            return Err(Error::BadRequest {
                code: "invalid_name",
                detail: format!(
                    "'{id}' is not a message id (1 to {MAX_ID_LEN} bytes of UTF-8, no control characters)"
                ),
                field: Some("id".into()),
            });
        }
        Ok(Self { group, id })
    }
}

/// `{tenant}` and one free-text path parameter (`{key}` of idempotency,
/// `{name}` of checkpoints); the domain validates the text.
pub struct KeyPath {
    /// The tenant.
    pub tenant: Tenant,
    /// The key or name, percent-decoded.
    pub key: String,
}

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let params = raw_params(parts, state).await?;
        let key = params
            .iter()
            .find_map(|(k, v)| (k == "key" || k == "name").then(|| v.to_owned()))
            .ok_or_else(|| Error::Internal("route has no key parameter".into()))?;
        Ok(Self {
            tenant: path_name(&params, "tenant")?,
            key,
        })
    }
}

/// Parses JSON bytes into `T`, naming the field that failed. `prefix` is
/// put before field names (`messages[3].` for an item of a batch); it is
/// formatted only when the bytes are refused.
pub fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    prefix: &dyn std::fmt::Display,
) -> Result<T, Error> {
    // Every body and batch item is an object; serde would otherwise read an
    // array positionally and report a confusing field.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let prefix = prefix.to_string();
        let at = prefix.trim_end_matches('.');
        return Err(if at.is_empty() {
            Error::bad_request("invalid_body", "the body must be a JSON object")
        } else {
            Error::invalid_field(at, "must be a JSON object")
        });
    }
    // Fast path: plain serde_json. Only a body that fails is parsed again
    // with path tracking, to name the field in the 400.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let prefix = prefix.to_string();
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            let at = prefix.trim_end_matches('.');
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" in {at}")
            };
            return Error::bad_request("invalid_body", format!("invalid JSON{at}: {inner}"));
        }
        let field = if path == "." {
            missing_field(&inner.to_string()).unwrap_or_default()
        } else {
            path
        };
        let field = format!("{prefix}{field}");
        let field = field.trim_end_matches('.');
        if field.is_empty() {
            Error::bad_request("invalid_body", format!("invalid JSON body: {inner}"))
        } else {
            Error::invalid_field(field, inner.to_string())
        }
    })?;
    de.end()
        .map_err(|e| Error::bad_request("invalid_body", format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// The field name of serde's "missing field `x`" message, which serde
/// reports at the enclosing object rather than at the field.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_owned)
}

/// A JSON request body: `Content-Type` must be JSON when given, size is
/// bounded by `--max-body` (413), and parse errors name the field (400).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, HttpError> {
        let bytes = read_body(req, state).await?;
        // An empty body means "no fields": the 400 then names the missing one.
        let json: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        Ok(parse_json(json, &"").map(Self)?)
    }
}

/// The body, if its `Content-Type` (when given) is JSON and it fits
/// `--max-body`. Read here under the limit rather than through axum's
/// `Bytes` extractor and a `DefaultBodyLimit` layer: that layer wraps every
/// route (a boxed service cloned per request) to carry a number the state
/// already has.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, HttpError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        // A header value that is text is visible ASCII: the cases compare
        // byte for byte, without a lowercased copy.
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        let suffix = essence
            .len()
            .checked_sub("+json".len())
            .and_then(|at| essence.get(at..));
        if !(essence.eq_ignore_ascii_case("application/json")
            || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json")))
        {
            return Err(HttpError::UnsupportedMediaType);
        }
    }
    let limit = state.max_body;
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(HttpError::PayloadTooLarge { limit }),
        Err(e) => Err(Error::bad_request(
            "invalid_body",
            format!("Failed to buffer the request body: {e}"),
        )
        .into()),
    }
}

/// `?after=<stream id>&limit=N` of paged listings (history, dead letters).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Cursor: list entries after this stream id.
    #[param(pattern = "^(0|[1-9][0-9]{0,18})(-(0|[1-9][0-9]{0,18}))?$")]
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A JSON body that may be left out: an empty body or `null` means
/// `T::default()` (`PUT` a topic or group with defaults, replay everything).
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, HttpError> {
        let bytes = read_body(req, state).await?;
        // No body at all is no body; whitespace alone is not JSON.
        if bytes.is_empty() || bytes.trim_ascii() == b"null" {
            return Ok(Self(T::default()));
        }
        Ok(parse_json(&bytes, &"").map(Self)?)
    }
}

/// A query string parsed into `T`; errors are 400 `invalid_query`.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Self(q.0))
            .map_err(|e| Error::bad_request("invalid_query", e.body_text()))
    }
}

/// A request's `traceparent` header, when it was sent exactly once: sent
/// twice it names no trace (W3C Trace Context, whose test suite's
/// `test_traceparent_duplicated` expects a new trace).
pub fn sole_traceparent(headers: &axum::http::HeaderMap) -> Option<&axum::http::HeaderValue> {
    let mut sent = headers.get_all(crate::traces::TRACEPARENT).iter();
    sent.next().filter(|_| sent.next().is_none())
}
