//! Validated names for the things a client can address: tenants, topics,
//! groups, consumers, pools, checkpoints.
//!
//! Every name matches `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` (the API's name
//! grammar, stated in the README and the OpenAPI document). The alphabet
//! leaves out `{`, `}` and `:` on purpose: names are spliced into
//! Redis keys as hash tags (`{tenant:topic}`), so a name must never be able to
//! end a tag early or forge another tenant's key. Once a value has one of these
//! types it is known to be safe to put in a key; nothing else is.

use std::fmt;

use thiserror::Error;

/// Longest name accepted, in bytes (all accepted bytes are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// The name grammar as a regular expression (for the OpenAPI document).
pub const PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";

/// Why a name was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name has no characters.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes (the number is its
    /// length in bytes: a refused name may hold multi-byte characters).
    #[error("must be at most {MAX_NAME_LEN} bytes, got {0}")]
    TooLong(usize),
    /// The first character is not a letter or digit.
    #[error("must start with a letter or digit")]
    BadStart,
    /// A character outside `A-Z a-z 0-9 . _ -`.
    #[error("may only contain letters, digits, '.', '_' and '-'")]
    BadChar,
}

/// Checks `s` against the name grammar.
pub fn validate(s: &str) -> Result<(), NameError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(NameError::Empty);
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(bytes.len()));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NameError::BadChar);
    }
    Ok(())
}

/// What every validated name type offers, so extractors can be generic.
pub trait Name: Sized {
    /// What this kind of name is called in error messages and paths.
    const KIND: &'static str;
    /// Validates `s` and wraps it.
    fn parse(s: &str) -> Result<Self, NameError>;
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl Name for $name {
            const KIND: &'static str = $what;

            fn parse(s: &str) -> Result<Self, NameError> {
                validate(s).map(|()| Self(s.to_owned()))
            }
        }

        impl $name {
            /// Validates `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                <Self as Name>::parse(s)
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid {}: {e}", $what)))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(PATTERN))
                    .min_length(Some(1))
                    .max_length(Some(MAX_NAME_LEN))
                    .description(Some(concat!(
                        "A ", $what, " name: 1 to 128 bytes of ASCII letters, digits, '.', '_' and '-'."
                    )))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A tenant: the unit of isolation, quotas and key hash tags.
    Tenant, "tenant"
);
name_type!(
    /// A topic: one Redis stream of a tenant.
    Topic, "topic"
);
name_type!(
    /// A consumer group of a topic.
    Group, "group"
);
name_type!(
    /// A consumer (worker) inside a group.
    Consumer, "consumer"
);
name_type!(
    /// A reservation pool of a tenant.
    Pool, "pool"
);
name_type!(
    /// A fan-in join of a topic.
    Join, "join"
);
name_type!(
    /// One part of a join.
    Part, "part"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in [
            "a",
            "A9",
            "0",
            "orders.v2",
            "user_events-1",
            &"x".repeat(128),
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate(&"x".repeat(129)), Err(NameError::TooLong(129)));
        assert_eq!(validate(&"é".repeat(65)), Err(NameError::TooLong(130)));
        assert_eq!(validate("-a"), Err(NameError::BadStart));
        assert_eq!(validate(".a"), Err(NameError::BadStart));
        for bad in ["a{b", "a}b", "a:b", "a b", "a/b", "aé", "a\n", "a\0"] {
            assert_eq!(validate(bad), Err(NameError::BadChar), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_string_of_the_grammar_is_accepted(s in "[A-Za-z0-9][A-Za-z0-9._-]{0,127}") {
            proptest::prop_assert_eq!(validate(&s), Ok(()));
        }

        #[test]
        fn accepted_names_are_safe_in_hash_tags(s in "\\PC{0,200}") {
            if validate(&s).is_ok() {
                let tag_breakers = ['{', '}', ':', ' '];
                proptest::prop_assert!(!s.contains(tag_breakers));
                proptest::prop_assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
            }
        }

        #[test]
        fn a_forbidden_character_anywhere_is_refused(
            prefix in "[a-z]{1,10}",
            bad in "[{}: /\\\\\\x00-\\x1f\\x{80}-\\x{10FFFF}]",
            suffix in "[a-z]{0,10}",
        ) {
            let name = format!("{prefix}{bad}{suffix}");
            proptest::prop_assert!(validate(&name).is_err(), "{:?}", name);
        }
    }

    #[test]
    fn serde_validates() {
        let t: Result<Tenant, _> = serde_json::from_str("\"a:b\"");
        assert!(t.is_err());
        let t: Tenant = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(t.as_str(), "acme");
    }
}
