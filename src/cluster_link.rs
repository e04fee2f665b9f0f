//! On a Redis Cluster, the command connection and when it sends a request
//! again.
//!
//! redis-rs's cluster connection retries by itself, and among what it
//! retries is a request whose connection dropped, or whose reply was cut
//! off, after the request reached its node: a write that ran is then run a
//! second time and answered once (a publish without an idempotency key
//! written twice, an ack that answers `lease_lost` for its own first run).
//! So its retries are off (see [`crate::store::Connections::cluster`]) and
//! [`ClusterLink`] sends again only what certainly ran nowhere: a
//! redirect (`MOVED`, `ASK`), a node that asked for a retry (`TRYAGAIN`,
//! `CLUSTERDOWN`, `LOADING`…), a write sent to a node that just became a
//! replica (`READONLY`), a node it could not connect to. A read is sent
//! again after any transient failure. A write whose fate is unknown is the
//! caller's 503, as on a single Redis: the client retries it, with its
//! idempotency key. A pipeline of several writes is not sent again at all
//! (one may have run while another was redirected); with `--durability`, a
//! write and its `WAIT` are sent again together, to the node named, so the
//! `WAIT` counts the replicas of that write.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, RetryMethod, Value};
use tokio::time::Instant;

use crate::store::ReadOnly;

/// How many times a request is sent again, at most.
const RESENDS: u32 = 4;
/// The waits before sending again a request a node refused for now (a
/// redirect goes at once): together about a cluster-node-timeout, time
/// for a replica's promotion to reach the slot map.
const WAITS_MS: [u64; RESENDS as usize] = [100, 200, 400, 500];
/// No request is sent again once this long has passed since it was first
/// sent (a slow node's answers must not add up).
const RESEND_WITHIN: Duration = Duration::from_secs(2);

/// The cluster connection, with its resend policy (see the module docs).
#[derive(Clone)]
pub struct ClusterLink {
    /// redis-rs's connection, its own retries off.
    pub conn: ClusterConnection,
    /// Which commands never write (those are sent again freely).
    read_only: Arc<ReadOnly>,
}

/// How to send a request again.
enum Resend {
    /// To this node (`host`, `port`) at once, as `MOVED` said.
    Moved(String, u16),
    /// To this node at once, after `ASKING`, as `ASK` said.
    Ask(String, u16),
    /// Where the slot map says, after a wait.
    Later,
}

/// Whether a request that failed with `error` is sent again, and how;
/// `writes`: whether it may write.
fn resend_for(error: &RedisError, writes: bool) -> Option<Resend> {
    if error.is_timeout() {
        // The node may run it still; the caller's time is spent anyway.
        return None;
    }
    let redirect = || {
        let (addr, _slot) = error.redirect_node()?;
        let (host, port) = addr.rsplit_once(':')?;
        Some((host.to_owned(), port.parse().ok()?))
    };
    match error.retry_method() {
        RetryMethod::MovedRedirect => redirect().map(|(h, p)| Resend::Moved(h, p)),
        RetryMethod::AskRedirect => redirect().map(|(h, p)| Resend::Ask(h, p)),
        RetryMethod::WaitAndRetry
        | RetryMethod::RefreshSlotsAndRetry
        | RetryMethod::ReconnectFromInitialConnections => Some(Resend::Later),
        // A lost connection, a cut-off reply: the request may have run.
        // A refused connection is the exception: nothing was sent.
        RetryMethod::Reconnect | RetryMethod::RetryImmediately => {
            (!writes || error.is_connection_refusal()).then_some(Resend::Later)
        }
        _ => None,
    }
}

impl ClusterLink {
    /// Wraps `conn`; `read_only` tells reads from writes.
    pub fn new(conn: ClusterConnection, read_only: Arc<ReadOnly>) -> Self {
        Self { conn, read_only }
    }

    /// Sends `cmd`; sent again (see [`Self::resend`]) when it failed.
    async fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let error = match self.conn.req_packed_command(cmd).await {
            Err(error) => error,
            answered => return answered,
        };
        let mut alone = Pipeline::with_capacity(1);
        alone.add_command(cmd.clone());
        let writers = usize::from(self.read_only.writes(cmd));
        let mut values = self.resend(&alone, 0, 1, writers, error).await?;
        values
            .pop()
            .ok_or_else(|| (redis::ErrorKind::Client, "no reply in the pipeline").into())
            .and_then(Value::extract_error)
    }

    /// Sends `pipeline`; sent again (see [`Self::resend`]) when it failed.
    async fn pipeline(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let error = match self.conn.req_packed_commands(pipeline, offset, count).await {
            Err(error) => error,
            answered => return answered,
        };
        let writers = self.read_only.writers(pipeline);
        self.resend(pipeline, offset, count, writers, error).await
    }

    /// Sends `pipeline`, which holds `writers` commands that may write,
    /// again after it failed with `error`, while [`resend_for`] allows: to
    /// the node a redirect names (after `ASKING` for `ASK`; a transaction,
    /// which cannot carry it, waits instead), or where the slot map says
    /// after a wait. A pipeline of several writes is never sent again: one
    /// of them may have run while another was redirected (`ASK` and
    /// `TRYAGAIN` answer per key).
    pub(crate) async fn resend(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
        writers: usize,
        mut error: RedisError,
    ) -> RedisResult<Vec<Value>> {
        if writers > 1 {
            return Err(error);
        }
        let writes = writers == 1;
        let started = Instant::now();
        for wait_ms in WAITS_MS {
            let Some(how) =
                resend_for(&error, writes).filter(|_| started.elapsed() < RESEND_WITHIN)
            else {
                break;
            };
            let reply = match how {
                Resend::Moved(host, port) => {
                    let node = SingleNodeRoutingInfo::ByAddress { host, port };
                    self.conn
                        .route_pipeline(pipeline.clone(), offset, count, node)
                        .await
                }
                Resend::Ask(host, port) if !pipeline.is_transaction() => {
                    // `ASKING` lets only the next command through.
                    let mut asking = Pipeline::with_capacity(2 * pipeline.len());
                    for cmd in pipeline.cmd_iter() {
                        asking.add_command(redis::cmd("ASKING"));
                        asking.add_command(cmd.clone());
                    }
                    let node = SingleNodeRoutingInfo::ByAddress { host, port };
                    let all = 2 * pipeline.len();
                    self.conn
                        .route_pipeline(asking, 0, all, node)
                        .await
                        .map(|replies| {
                            let own = replies.into_iter().skip(1).step_by(2);
                            own.skip(offset).take(count).collect()
                        })
                }
                Resend::Ask(..) | Resend::Later => {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    self.conn.req_packed_commands(pipeline, offset, count).await
                }
            };
            match reply {
                Err(again) => error = again,
                answered => return answered,
            }
        }
        Err(error)
    }
}

impl ConnectionLike for ClusterLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.pipeline(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// The error a node's `-<text>` reply becomes.
    fn refused_by_node(text: &str) -> RedisError {
        let reply = redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).expect("RESP");
        reply.extract_error().expect_err("an error reply")
    }

    fn io(kind: io::ErrorKind) -> RedisError {
        io::Error::new(kind, "test").into()
    }

    fn resent(error: &RedisError, writes: bool) -> &'static str {
        match resend_for(error, writes) {
            None => "no",
            Some(Resend::Moved(..)) => "moved",
            Some(Resend::Ask(..)) => "ask",
            Some(Resend::Later) => "later",
        }
    }

    #[test]
    fn what_ran_nowhere_is_sent_again_and_a_write_that_may_have_run_is_not() {
        let moved = refused_by_node("MOVED 3999 127.0.0.1:6381");
        assert!(
            matches!(resend_for(&moved, true), Some(Resend::Moved(h, 6381)) if h == "127.0.0.1")
        );
        let ask = refused_by_node("ASK 3999 127.0.0.1:6382");
        assert!(matches!(resend_for(&ask, true), Some(Resend::Ask(h, 6382)) if h == "127.0.0.1"));
        for text in [
            "TRYAGAIN x",
            "CLUSTERDOWN x",
            "LOADING x",
            "MASTERDOWN x",
            "READONLY x",
        ] {
            assert_eq!(resent(&refused_by_node(text), true), "later", "{text}");
        }
        assert_eq!(resent(&io(io::ErrorKind::ConnectionRefused), true), "later");
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::ConnectionAborted,
        ] {
            let error = io(kind);
            assert_eq!(resent(&error, true), "no", "a write after {kind:?}");
            assert_eq!(resent(&error, false), "later", "a read after {kind:?}");
        }
        // A reply cut off halfway (redis-rs: a parse error).
        let cut = redis::parse_redis_value(b"*2\r\n:1\r\n").expect_err("cut off");
        assert_eq!(resent(&cut, true), "no");
        assert_eq!(resent(&cut, false), "later");
        for error in [
            io(io::ErrorKind::TimedOut),
            refused_by_node("ERR wrong"),
            refused_by_node("NOSCRIPT x"),
        ] {
            assert_eq!(resent(&error, false), "no", "{error}");
        }
    }
}
