//! The broker's spans (see [`crate::traces`]): `deliver` per message handed
//! out, and `ack`/`nack`/`reject` per receipt settled. Called only while
//! traces are exported; nothing here changes what is stored.

use super::delivery::Delivery;
use super::receipt::Receipt;
use crate::names::{Consumer, Group, Tenant, Topic};
use crate::traces::{self, MessageSpan, Step, attr};

/// A `deliver` span per delivery, under the message's `traceparent` (its
/// publish); the delivery then carries the span's own, so the consumer's
/// work continues from the hand-off.
pub(super) fn deliver(
    (tenant, topic, group): (&Tenant, &Topic, &Group),
    consumer: &Consumer,
    deliveries: &mut [Delivery],
) {
    for d in deliveries {
        let m = &mut d.message;
        let parent = traces::of_headers(&m.headers);
        let mut span =
            MessageSpan::on(Step::Deliver, parent.as_deref(), tenant, topic, Some(group));
        span.set(attr::MESSAGE_ID, &m.id);
        span.set_int(attr::ATTEMPT, i64::try_from(d.attempt).unwrap_or(i64::MAX));
        span.set(attr::CONSUMER, consumer.as_str());
        if let Some(c) = &m.correlation_id {
            span.set(attr::CORRELATION_ID, c);
        }
        if let Some(c) = &m.causation_id {
            span.set(attr::CAUSATION_ID, c);
        }
        if let Some(traceparent) = span.traceparent() {
            traces::set_in_headers(&mut m.headers, &traceparent);
        }
    }
}

/// A settled receipt: what it was for and what came of it.
pub(super) struct Settled<'a> {
    /// The receipt.
    pub receipt: &'a Receipt,
    /// The message id, when the script told it.
    pub message_id: Option<&'a str>,
    /// The message's stored `traceparent`, when the script told it.
    pub traceparent: Option<&'a str>,
    /// `acked`, `nacked`, `dead_lettered`, `rejected` or `lease_lost`.
    pub outcome: &'static str,
}

/// One `step` span for a settled receipt, under the caller's context when
/// it continues the message's trace, else the message's. With neither there
/// is no trace to add to, and no span (never a stray one-span trace).
pub(super) fn settled(
    step: Step,
    (tenant, topic, group): (&Tenant, &Topic, &Group),
    s: &Settled<'_>,
) {
    let Some(parent) = traces::continued(s.traceparent.filter(|t| !t.is_empty())) else {
        return;
    };
    let parent = Some(parent);
    let mut span = MessageSpan::on(step, parent.as_deref(), tenant, topic, Some(group));
    if let Some(id) = s.message_id.filter(|id| !id.is_empty()) {
        span.set(attr::MESSAGE_ID, id);
    }
    span.set_int(
        attr::ATTEMPT,
        i64::try_from(s.receipt.attempt).unwrap_or(i64::MAX),
    );
    span.set(attr::OUTCOME, s.outcome);
    if s.outcome == "lease_lost" {
        span.fail("lease_lost");
    }
}
