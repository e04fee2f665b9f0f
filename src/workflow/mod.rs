//! Workflows: steps that emit the next step with exactly-once effect.
//!
//! Ack with emit ([`emit`]): a worker acks its delivery and, in the same
//! call, publishes the messages of the next step. Topics live under
//! different hash tags, so this cannot be one script; instead every emitted
//! message carries a deterministic idempotency key,
//! `emit:<group>:<message id>:<index>`, and is deduplicated by its source
//! entry (`\x01emit:<topic>:<group>:<stream id>:<index>`: the control
//! character keeps every client idempotency key out), so a step that is
//! redone (the worker crashed between the emits and the ack, or lost its
//! lease) emits nothing new. Joins ([`joins`]) fan in: the last part (or the deadline)
//! publishes one aggregate, exactly once. No HTTP types here.

pub mod emit;
pub mod joins;
