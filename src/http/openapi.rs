//! The OpenAPI 3.1 document: generated from the route annotations (utoipa),
//! served at `/v1/openapi.json` and printed by `streamcar openapi`. Routes
//! are registered through `utoipa_axum`, so a route cannot exist without
//! being in the document. This module also holds the small response bodies
//! and path parameter sets that the annotations refer to.
//!
//! Text limits are bytes of UTF-8 (what a value costs in Redis), while JSON
//! Schema's `maxLength` counts characters and cannot express bytes. Every
//! `maxLength` therefore stays the byte limit, an upper bound that a
//! schema-valid value still has to respect in bytes, and
//! [`state_byte_limits`] says so in the description of each such field.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};

/// An RFC 9457 problem document, as every error answers.
#[derive(ToSchema)]
#[schema(example = json!({
    "type": "urn:streamcar:problem:invalid_field",
    "title": "Bad Request",
    "status": 400,
    "detail": "ttl_ms: invalid type: string \"soon\", expected u64 at line 1 column 25",
    "code": "invalid_field",
    "field": "ttl_ms"
}))]
pub struct Problem {
    /// `urn:streamcar:problem:<code>`.
    #[schema(rename = "type")]
    pub kind: String,
    /// The HTTP status phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The offending field, for input errors.
    pub field: Option<String>,
}

/// Declares error-response sets that routes name in `responses(…)` instead
/// of restating each problem response: every entry is an
/// `application/problem+json` [`Problem`], and `retry` ones also state the
/// `Retry-After` header they carry.
macro_rules! problem_responses {
    ($($(#[$doc:meta])* $name:ident: $(($status:literal, $description:expr $(, $retry:ident)?)),+;)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                [$(problem_response($status, $description, problem_responses!(@retry $($retry)?))),+]
                    .into_iter()
                    .collect()
            }
        }
    )+};
    (@retry retry) => { true };
    (@retry) => { false };
}

problem_responses! {
    /// What any `/v1` route may answer: bad input, a missing token, Redis away.
    ApiErrors:
        (400, "Invalid input: malformed JSON, wrong type, unknown field, bad name"),
        (401, "Missing or wrong bearer token (with --api-token-file)"),
        (503, REDIS_UNAVAILABLE, retry);
    /// Redis is away (`/readyz`).
    Unavailable: (503, REDIS_UNAVAILABLE, retry);
    /// What a route with a JSON body may also answer.
    BodyErrors:
        (413, "Body larger than --max-body"),
        (415, "Content-Type given and not JSON");
    /// An unknown topic, group, pool, key or dead letter.
    NotFound: (404, "No such resource");
    /// A stale receipt or token, or a state that forbids the call.
    Conflict: (409, "Conflict with the current state");
    /// A quota, a topic's max_backlog or a pool is full; nothing was dropped.
    TooManyRequests: (429, "Quota, backlog or pool full; see Retry-After", retry);
}

const REDIS_UNAVAILABLE: &str = "Redis cannot serve now (code redis_unavailable, redis_out_of_memory, redis_busy, redis_loading, redis_readonly, redis_cluster_down, redis_persistence_failed, or redis_evicts under --strict); see Retry-After";

/// One problem response for the document.
fn problem_response(status: u16, description: &str, retry: bool) -> (String, RefOr<Response>) {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content);
    if retry {
        let seconds = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0));
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(seconds))
                .description(Some("Seconds to wait before trying again"))
                .build(),
        );
    }
    (status.to_string(), response.build().into())
}

pub use crate::broker::receipt::ReceiptText;

/// A message id: 1 to 128 bytes of UTF-8, no control characters.
#[derive(ToSchema)]
#[schema(
    min_length = 1,
    max_length = 128,
    pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
)]
pub struct MessageIdText(#[allow(dead_code)] String);

/// `{tenant}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantParams {
    /// Tenant name: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
}

/// `{tenant}` and `{topic}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TopicParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Topic name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub topic: String,
}

/// `{tenant}` and `{channel}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ChannelParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Channel name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub channel: String,
}

/// `{tenant}`, `{topic}` and `{group}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GroupParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Topic name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub topic: String,
    /// Consumer group name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub group: String,
}

/// `{tenant}`, `{topic}`, `{group}` and a dead letter's message `{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeadLetterParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Topic name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub topic: String,
    /// Consumer group name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub group: String,
    /// The original message id: 1 to 128 bytes of UTF-8, percent-encoded.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub id: String,
}

/// `{tenant}` and an idempotency `{key}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Any text of 1 to 256 bytes of UTF-8 without control characters, percent-encoded.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub key: String,
}

/// `{tenant}` and a checkpoint `{name}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CheckpointParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Any text of 1 to 256 bytes of UTF-8 without control characters, percent-encoded.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub name: String,
}

/// `{tenant}` and `{pool}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PoolParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Pool name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub pool: String,
}

/// `{tenant}`, `{topic}` and `{join}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JoinParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Topic name (the aggregate is published here).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub topic: String,
    /// Join name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub join: String,
}

/// `{tenant}`, `{topic}`, `{join}` and `{part}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JoinPartParams {
    /// Tenant name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub tenant: String,
    /// Topic name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub topic: String,
    /// Join name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub join: String,
    /// Part name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub part: String,
}

/// `GET /topics`.
#[derive(Serialize, ToSchema)]
pub struct TopicList {
    /// Topic names, sorted.
    pub topics: Vec<String>,
}

/// `GET /v1/tenants`.
#[derive(Serialize, ToSchema)]
pub struct TenantList {
    /// Names of the tenants that have at least one topic, sorted.
    pub tenants: Vec<String>,
}

/// `POST …/fetch`.
#[derive(Serialize, ToSchema)]
pub struct FetchResponse {
    /// Deliveries, in preference order (due retries, expired leases, new).
    pub messages: Vec<crate::broker::delivery::Delivery>,
    /// With `ack` in the request: the receipts acked before fetching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<Vec<String>>,
    /// With `ack` in the request: the receipts whose lease was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_lost: Option<Vec<String>>,
}

/// `POST …/pause` and `…/resume`.
#[derive(Serialize, ToSchema)]
pub struct PausedResponse {
    /// Whether the group is paused now.
    pub paused: bool,
}

/// `POST /idempotency/{key}/complete` and `…/release`.
#[derive(Serialize, ToSchema)]
pub struct FinishResponse {
    /// `completed` or `released`.
    pub state: &'static str,
    /// When it was completed (complete only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
}

/// `POST /pools/{pool}/renew` and `…/release`.
#[derive(Serialize, ToSchema)]
pub struct HoldResponse {
    /// The reservation.
    pub reservation_id: String,
    /// New expiry (renew only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// True once released (release only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<bool>,
}

/// `GET /limits`.
#[derive(Serialize, ToSchema)]
pub struct LimitsResponse {
    /// The tenant's quota; null when it has none.
    pub limits: Option<crate::coord::limits::Limits>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct StatusResponse {
    /// `ok` (alive) or `ready`.
    pub status: &'static str,
}

/// Adds "at most N bytes" to the description of every string schema with a
/// `maxLength` under `schema` (properties, map values and names, array
/// items, composites), unless the description already speaks of bytes.
pub fn state_byte_limits(schema: &mut utoipa::openapi::schema::Schema) {
    use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema};
    let inner = |s: &mut RefOr<Schema>| {
        if let RefOr::T(s) = s {
            state_byte_limits(s);
        }
    };
    match schema {
        Schema::Object(object) => {
            if let Some(max) = object.max_length {
                let text = object.description.get_or_insert_with(String::new);
                if !text.contains("bytes") {
                    if !text.is_empty() {
                        text.push(' ');
                    }
                    text.push_str(&format!(
                        "At most {max} bytes of UTF-8 (maxLength counts characters and is only an upper bound)."
                    ));
                }
            }
            object.properties.values_mut().for_each(inner);
            if let Some(AdditionalProperties::RefOr(values)) =
                object.additional_properties.as_deref_mut()
            {
                inner(values);
            }
            if let Some(names) = object.property_names.as_deref_mut() {
                state_byte_limits(names);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                inner(items);
            }
        }
        Schema::OneOf(one) => one.items.iter_mut().for_each(inner),
        Schema::AllOf(all) => all.items.iter_mut().for_each(inner),
        Schema::AnyOf(any) => any.items.iter_mut().for_each(inner),
        _ => {}
    }
}

/// Document-level metadata; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "streamcar",
        description = "Durable multi-tenant consumer groups on Redis Streams behind a local HTTP API. Every error is application/problem+json (RFC 9457) with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem)),
    tags(
        (name = "tenants", description = "Tenants that have topics"),
        (name = "topics", description = "Topics, publishing and history"),
        (name = "groups", description = "Consumer groups and delivery under leases"),
        (name = "dead letters", description = "Dead-letter streams of a group"),
        (name = "coordination", description = "Idempotency, checkpoints, reservations, quotas"),
        (name = "channels", description = "Realtime channels: bounded history and live fan-out (SSE, WebSocket)"),
        (name = "operations", description = "Health, readiness, metrics")
    )
)]
pub struct ApiDoc;
