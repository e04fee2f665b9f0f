//! Delivery receipts: the token a worker gets with each delivery and hands
//! back to ack, nack, extend or reject it.
//!
//! A receipt names exactly one delivery, forever: the stream entry, its
//! attempt (1 = first delivery) and the delivery's number. Delivery numbers
//! come from a per-topic counter that never goes back (it starts at the
//! Redis clock in microseconds), so no two deliveries share one: not a
//! redelivery after a lost lease, not a delivery after a DLQ replay, not one
//! of another group or of an earlier group under the same name. The scripts
//! accept a receipt only while the group's deliveries hash still holds its
//! `<attempt>:<delivery>` for the entry: that is the fencing. Receipts are
//! opaque to clients; the text form is `<stream id>:<attempt>:<delivery>`.

use std::fmt;

use crate::validate::is_id_number;

/// One delivery of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The stream entry id.
    pub stream_id: String,
    /// The delivery count this receipt was issued for (1 = first delivery).
    pub attempt: u64,
    /// The delivery's number, unique within the topic.
    pub delivery: u64,
}

/// A delivery receipt as fetch issues it, for the OpenAPI document
/// (`<stream id>:<attempt>:<delivery>`).
#[derive(utoipa::ToSchema)]
#[schema(
    pattern = "^(0|[1-9][0-9]{0,18})-(0|[1-9][0-9]{0,18}):[1-9][0-9]{0,18}:[1-9][0-9]{0,18}$",
    example = "1718000000000-0:1:1764130000123456"
)]
pub struct ReceiptText(#[allow(dead_code)] String);

/// Why a receipt string is not a receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a receipt issued by fetch")]
pub struct MalformedReceipt(pub String);

fn is_stream_id(s: &str) -> bool {
    s.split_once('-')
        .is_some_and(|(ms, seq)| is_id_number(ms) && is_id_number(seq))
}

/// A positive number exactly as issued (no sign, no leading zero).
fn positive(s: &str) -> Option<u64> {
    if !is_id_number(s) {
        return None;
    }
    s.parse().ok().filter(|n| *n > 0)
}

impl Receipt {
    /// Parses the text form, refusing anything fetch could not have issued.
    pub fn parse(text: &str) -> Result<Self, MalformedReceipt> {
        let bad = || MalformedReceipt(text.chars().take(300).collect());
        let mut parts = text.split(':');
        let (Some(stream_id), Some(attempt), Some(delivery), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if !is_stream_id(stream_id) {
            return Err(bad());
        }
        Ok(Self {
            stream_id: stream_id.to_owned(),
            attempt: positive(attempt).ok_or_else(bad)?,
            delivery: positive(delivery).ok_or_else(bad)?,
        })
    }

    /// The part the scripts compare with the stored delivery:
    /// `<attempt>:<delivery>`.
    pub fn fence(&self) -> String {
        format!("{}:{}", self.attempt, self.delivery)
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.stream_id, self.attempt, self.delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Receipt {
            stream_id: "1718000000000-3".into(),
            attempt: 2,
            delivery: 1_764_130_000_123_456,
        };
        let text = r.to_string();
        assert_eq!(text, "1718000000000-3:2:1764130000123456");
        assert_eq!(r.fence(), "2:1764130000123456");
        assert_eq!(Receipt::parse(&text), Ok(r));
    }

    proptest::proptest! {
        #[test]
        fn issued_receipts_round_trip(
            ms in 0u64..10_000_000_000_000_000_000,
            seq in 0u64..10_000_000_000_000_000_000,
            attempt in 1u64..10_000_000_000_000_000_000,
            delivery in 1u64..10_000_000_000_000_000_000,
        ) {
            let r = Receipt {
                stream_id: format!("{ms}-{seq}"),
                attempt,
                delivery,
            };
            proptest::prop_assert_eq!(Receipt::parse(&r.to_string()), Ok(r));
        }

        #[test]
        fn any_text_parses_without_panicking_and_only_canonically(text in "\\PC{0,300}") {
            if let Ok(r) = Receipt::parse(&text) {
                // Accepted text is exactly what fetch would have issued.
                proptest::prop_assert_eq!(r.to_string(), text);
            }
        }
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "garbage",
            "1-0",
            "1-0:1",
            "1-0:0:7",
            "1-0:1:0",
            "1-0:-1:7",
            "1-0:x:7",
            "1:1:7",
            "a-0:1:7",
            "1-0:1:",
            "1-0:1:w",
            "1-0:1:7:8",
            "1-0:1:7 ",
            "1-0:10000000000000000000:7",
            "1-0:1:10000000000000000000",
            "01-0:1:7",
            "1-00:1:7",
            "1-0:01:7",
            "1-0:1:07",
            "1-0:+1:7",
            "+1-0:1:7",
        ] {
            assert!(Receipt::parse(bad).is_err(), "{bad:?}");
        }
    }
}
