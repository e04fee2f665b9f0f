//! Small input checks shared by the domain modules, each answering a 400
//! that names the field.

use crate::error::{Error, Result};

/// A free-text reference (id, key, causation id…): non-empty, at most `max`
/// bytes of UTF-8, no control characters.
///
/// Limits are in bytes because bytes are what a value costs in Redis and in
/// every key it is spliced into; the README and the OpenAPI descriptions say
/// bytes too. (JSON Schema's `maxLength` counts characters, so the document
/// keeps `maxLength` = `max` as an upper bound and states the byte limit in
/// the description; see `crate::http::openapi`.)
///
/// `field` is only rendered when the value is refused, so callers can pass
/// `format_args!(…)` for composed names without allocating on the happy path.
pub fn check_text(field: impl std::fmt::Display, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_field(field.to_string(), "must not be empty"));
    }
    if value.len() > max {
        return Err(Error::invalid_field(
            field.to_string(),
            format!("must be at most {max} bytes of UTF-8, got {}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid_field(
            field.to_string(),
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A JSON text stored verbatim (a message payload): refused when a string
/// in it escapes a lone UTF-16 surrogate (`"\ud800"`): the JSON parser lets
/// it through in raw text, but strict readers (I-JSON, RFC 7493; serde_json)
/// refuse it, so they could not read the message back from history, fetch
/// or push. Only a text with a surrogate escape in it is looked at further,
/// so the usual payload costs one scan; then only its strings with such an
/// escape are decoded, each on its own (decoding the whole text would also
/// refuse what the sidecar otherwise stores as it came: a number beyond a
/// double's range, nesting deeper than serde_json's 128 levels).
pub fn check_json_strings(field: impl std::fmt::Display, raw: &str) -> Result<()> {
    let bytes = raw.as_bytes();
    let surrogate_at = |i: usize| {
        bytes.get(i).is_some_and(|c| c | 0x20 == b'd')
            && bytes
                .get(i + 1)
                .is_some_and(|c| matches!(c | 0x20, b'8'..=b'9' | b'a'..=b'f'))
    };
    // A search for one byte (memchr) rather than for the two-byte `\u`
    // (a two-way substring search, about 500 instructions per payload).
    let escapes_a_surrogate_at = |(i, _)| bytes.get(i + 1) == Some(&b'u') && surrogate_at(i + 2);
    if !raw.match_indices('\\').any(escapes_a_surrogate_at) {
        return Ok(());
    }
    // `raw` is JSON text: outside its strings, a quote opens one.
    let mut at = 0;
    while let Some(open) = raw.get(at..).and_then(|rest| rest.find('"')) {
        let start = at + open;
        let mut end = start + 1;
        let mut escapes_a_surrogate = false;
        while let Some(&c) = bytes.get(end) {
            match c {
                b'"' => break,
                b'\\' => {
                    escapes_a_surrogate |=
                        bytes.get(end + 1) == Some(&b'u') && surrogate_at(end + 2);
                    end += 2;
                }
                _ => end += 1,
            }
        }
        let string = raw.get(start..=end).unwrap_or(&raw[start..]);
        if escapes_a_surrogate && serde_json::from_str::<String>(string).is_err() {
            return Err(Error::invalid_field(
                field.to_string(),
                "must not hold a lone UTF-16 surrogate escape (such as \\ud800)",
            ));
        }
        at = end + 1;
    }
    Ok(())
}

/// A stream-id part as Redis prints it: decimal, no sign, no leading zeros,
/// at most 19 digits (so it always fits in a u64).
pub fn is_id_number(s: &str) -> bool {
    (1..=19).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
}

/// An optional number that, when given, lies in `min..=max`.
pub fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    min: T,
    max: T,
) -> Result<()> {
    match value {
        Some(v) if !(v >= min && v <= max) => Err(Error::invalid_field(
            field,
            format!("must be between {min} and {max}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text() {
        assert!(check_text("f", "ok", 2).is_ok());
        assert!(check_text("f", "", 2).is_err());
        assert!(check_text("f", "abc", 2).is_err());
        assert!(check_text("f", "a\tb", 8).is_err());
        // Bytes, not characters: 'é' is two bytes.
        assert!(check_text("f", "éé", 4).is_ok());
        assert!(check_text("f", "ééa", 4).is_err());
    }

    #[test]
    fn json_strings() {
        for ok in [
            r#""a""#,
            r#""\ud83d\ude00""#,
            r#""\\ud800""#,
            r#"{"\uD83D\uDE00":1}"#,
            r#"[1e400,"\ud83d\ude00"]"#,
            r#"["\\", "\"\\ud800"]"#,
        ] {
            assert!(check_json_strings("p", ok).is_ok(), "{ok}");
        }
        for bad in [
            r#""\ud800""#,
            r#"{"a\uDFFF":1}"#,
            r#"["x","\ud83dx"]"#,
            r#"[1e400,"\\","\ud800"]"#,
        ] {
            assert!(check_json_strings("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_numbers() {
        for ok in ["0", "1", "1718000000000", "9999999999999999999"] {
            assert!(is_id_number(ok), "{ok}");
        }
        for bad in [
            "",
            "01",
            "00",
            "+1",
            "-1",
            "1.0",
            "10000000000000000000",
            "a",
        ] {
            assert!(!is_id_number(bad), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert!(check_range("f", None, 1, 2).is_ok());
        assert!(check_range("f", Some(2), 1, 2).is_ok());
        assert!(check_range("f", Some(3), 1, 2).is_err());
        assert!(check_range("f", Some(f64::NAN), 0.0, 1.0).is_err());
    }
}

/// Serde helper for an optional nested object: refuses the array form serde
/// would otherwise accept for a struct (`[1, 2]` read positionally), and
/// keeps field paths in errors (`backoff.initial`).
pub fn object<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use std::marker::PhantomData;

    use serde::de::value::MapAccessDeserializer;
    use serde::de::{MapAccess, Visitor};

    struct Object<T>(PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for Object<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }

    struct MaybeObject<T>(PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for MaybeObject<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or null")
        }

        fn visit_none<E>(self) -> std::result::Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> std::result::Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D2: serde::Deserializer<'de>>(
            self,
            d: D2,
        ) -> std::result::Result<Option<T>, D2::Error> {
            d.deserialize_map(Object(PhantomData)).map(Some)
        }
    }

    d.deserialize_option(MaybeObject(PhantomData))
}

/// Serde helpers for integer fields that also take integer-valued floats
/// (`1.0`): JSON Schema's `integer` includes them, and clients in languages
/// without a separate integer type send them.
pub mod whole {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{self, Visitor};

    struct Whole<const MAX: u64>;

    impl<'de, const MAX: u64> Visitor<'de> for Whole<MAX> {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an integer between 0 and {MAX}")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            if v <= MAX {
                Ok(v)
            } else {
                Err(E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                .and_then(|v| self.visit_u64(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // Exactly representable whole numbers only (below 2^53).
            if v.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&v) {
                self.visit_u64(v as u64)
            } else {
                Err(E::invalid_type(de::Unexpected::Float(v), &self))
            }
        }
    }

    struct MaybeWhole<const MAX: u64>;

    impl<'de, const MAX: u64> Visitor<'de> for MaybeWhole<MAX> {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an integer between 0 and {MAX}, or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
            d.deserialize_any(Whole::<MAX>).map(Some)
        }
    }

    /// A `u64`.
    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole::<{ u64::MAX }>)
    }

    /// An optional `u64`.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(MaybeWhole::<{ u64::MAX }>)
    }

    /// An optional `u32`.
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_option(MaybeWhole::<{ u32::MAX as u64 }>)
            .map(|v| v.map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    }
}
