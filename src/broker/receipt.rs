//! Delivery receipts: the token a worker gets with each delivery and hands
//! back to ack, nack, extend or reject it.
//!
//! A receipt names exactly one delivery: the stream entry, its attempt
//! (the PEL delivery count when it was handed out) and the consumer it was
//! handed to. The scripts accept a receipt only while the PEL still shows
//! that consumer with that count, so a receipt from before a redelivery is
//! refused (`lease_lost`): that is the fencing. Receipts are opaque to
//! clients; the text form is `<stream id>:<attempt>:<consumer>`, and the
//! consumer alphabet has no `:`.

use std::fmt;

use crate::names::{Consumer, Name};
use crate::validate::is_id_number;

/// One delivery of one entry to one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The stream entry id.
    pub stream_id: String,
    /// The delivery count this receipt was issued for (1 = first delivery).
    pub attempt: u64,
    /// The consumer the entry was delivered to.
    pub consumer: Consumer,
}

/// Why a receipt string is not a receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a receipt issued by fetch")]
pub struct MalformedReceipt(pub String);

fn is_stream_id(s: &str) -> bool {
    s.split_once('-')
        .is_some_and(|(ms, seq)| is_id_number(ms) && is_id_number(seq))
}

impl Receipt {
    /// Parses the text form, refusing anything fetch could not have issued.
    pub fn parse(text: &str) -> Result<Self, MalformedReceipt> {
        let bad = || MalformedReceipt(text.chars().take(300).collect());
        let mut parts = text.splitn(3, ':');
        let (Some(stream_id), Some(attempt), Some(consumer)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if !is_stream_id(stream_id) {
            return Err(bad());
        }
        // Numbers exactly as issued, so every accepted text is one receipt.
        if !is_id_number(attempt) {
            return Err(bad());
        }
        let attempt: u64 = attempt.parse().map_err(|_| bad())?;
        if attempt == 0 {
            return Err(bad());
        }
        let consumer = <Consumer as Name>::parse(consumer).map_err(|_| bad())?;
        Ok(Self {
            stream_id: stream_id.to_owned(),
            attempt,
            consumer,
        })
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.stream_id, self.attempt, self.consumer)
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
            consumer: Consumer::parse("worker.a-1").unwrap(),
        };
        let text = r.to_string();
        assert_eq!(text, "1718000000000-3:2:worker.a-1");
        assert_eq!(Receipt::parse(&text), Ok(r));
    }

    proptest::proptest! {
        #[test]
        fn issued_receipts_round_trip(
            ms in 0u64..10_000_000_000_000_000_000,
            seq in 0u64..10_000_000_000_000_000_000,
            attempt in 1u64..10_000_000_000_000_000_000,
            consumer in "[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        ) {
            let r = Receipt {
                stream_id: format!("{ms}-{seq}"),
                attempt,
                consumer: Consumer::parse(&consumer).unwrap(),
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
            "1-0:0:w",
            "1-0:-1:w",
            "1-0:x:w",
            "1:1:w",
            "a-0:1:w",
            "1-0:1:",
            "1-0:1:w:x",
            "1-0:1:w x",
            "1-0:10000000000000000000:w",
            "01-0:1:w",
            "1-00:1:w",
            "1-0:01:w",
            "1-0:+1:w",
            "+1-0:1:w",
        ] {
            assert!(Receipt::parse(bad).is_err(), "{bad:?}");
        }
    }
}
