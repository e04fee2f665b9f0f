//! A stored message: the envelope fields of a stream entry, decoded for
//! history reads (and, later, deliveries).
//!
//! The payload and headers are stored as JSON text and handed back as raw
//! JSON, so a message is never re-parsed into a tree on its way out.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use serde::Serialize;
use serde_json::value::RawValue;

use super::publish::{MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_HEADERS};
use crate::error::{Error, Result};

/// One message as stored in a topic, ready to serialize.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Message {
    /// Message id (client's or UUIDv7).
    pub id: String,
    /// Redis stream entry id.
    pub stream_id: String,
    /// Per-topic sequence number.
    pub seq: u64,
    /// Ordering / partition key.
    pub key: Option<String>,
    /// The payload as published.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Header string map (`{}` when none).
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub headers: Box<RawValue>,
    /// The publisher's idempotency key.
    pub idempotency_key: Option<String>,
    /// Id of the message that caused this one.
    pub causation_id: Option<String>,
    /// Workflow id.
    pub correlation_id: Option<String>,
    /// Payload schema version.
    pub schema_version: Option<String>,
    /// Server publish time (Redis clock, ms since epoch).
    pub published_at: u64,
    /// When the message expires (ms since epoch), if it has a TTL.
    pub expires_at: Option<u64>,
    /// Not deliverable before this time (ms since epoch), if delayed.
    pub deliver_at: Option<u64>,
}

fn raw_json(text: Option<String>, default: &str, stream_id: &str) -> Result<Box<RawValue>> {
    RawValue::from_string(text.unwrap_or_else(|| default.to_owned()))
        .map_err(|e| Error::Internal(format!("entry {stream_id} holds invalid JSON: {e}")))
}

fn number<S: BuildHasher>(fields: &mut HashMap<String, String, S>, name: &str) -> Option<u64> {
    fields.remove(name).and_then(|v| v.parse().ok())
}

impl Message {
    /// Decodes a stream entry written by `lua/publish.lua`.
    pub fn from_entry<S: BuildHasher>(
        stream_id: String,
        mut fields: HashMap<String, String, S>,
    ) -> Result<Self> {
        let payload = raw_json(fields.remove("payload"), "null", &stream_id)?;
        let headers = raw_json(fields.remove("headers"), "{}", &stream_id)?;
        Ok(Self {
            id: fields.remove("id").unwrap_or_default(),
            seq: number(&mut fields, "seq").unwrap_or(0),
            published_at: number(&mut fields, "published_at").unwrap_or(0),
            expires_at: number(&mut fields, "expires_at"),
            deliver_at: number(&mut fields, "deliver_at"),
            key: fields.remove("key"),
            idempotency_key: fields.remove("idempotency_key"),
            causation_id: fields.remove("causation_id"),
            correlation_id: fields.remove("correlation_id"),
            schema_version: fields.remove("schema_version"),
            payload,
            headers,
            stream_id,
        })
    }
}

/// Checks a message's `headers` against the limits the schema below
/// states; `field` names them in errors (e.g. `headers`, `messages[3].headers`).
pub fn check_headers(field: &str, headers: &BTreeMap<String, String>) -> crate::error::Result<()> {
    use crate::error::Error;
    if headers.len() > MAX_HEADERS {
        return Err(Error::invalid_field(
            field,
            format!("at most {MAX_HEADERS} headers are allowed"),
        ));
    }
    for (name, value) in headers {
        crate::validate::check_text(format_args!("{field}.{name}"), name, MAX_HEADER_NAME_LEN)?;
        if value.len() > MAX_HEADER_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(Error::invalid_field(
                format!("{field}.{name}"),
                format!(
                    "values must be at most {MAX_HEADER_VALUE_LEN} bytes without control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// The OpenAPI schema of a message's `headers`: at most [`MAX_HEADERS`]
/// string pairs; names 1 to [`MAX_HEADER_NAME_LEN`] characters, values up to
/// [`MAX_HEADER_VALUE_LEN`], no control characters. Next to the envelope it
/// describes, so the domain never reaches into the HTTP layer for it.
pub fn headers_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_HEADER_VALUE_LEN))
        .pattern(Some("^[^\\x00-\\x1F\\x7F-\\x9F]*$"))
        .build();
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_HEADER_NAME_LEN))
        .pattern(Some("^[^\\x00-\\x1F\\x7F-\\x9F]*$"))
        .build();
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .max_properties(Some(MAX_HEADERS))
        .property_names(Some(name))
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .description(Some(
            "String map carried with the message, e.g. traceparent: at most 64 headers, names of 1 to 128 bytes, values of at most 4096 bytes (UTF-8).",
        ))
        .build()
}
