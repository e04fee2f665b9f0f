//! A TCP proxy between a sidecar and Redis that misbehaves on cue: each
//! chunk the sidecar sends is shown to a rule, which may let it through,
//! hold it and everything after it on that connection (a request that
//! never reaches Redis), close the connection, go silent both ways with the
//! socket left open (a peer gone without a word), or have it move to a new Redis
//! connection right after the next reply (what follows runs as another
//! Redis client, as after a reconnect). A reply the old Redis connection
//! still owes then closes the sidecar's connection instead: that request
//! was in flight when its connection was lost. Two acts make a reply
//! ambiguous: [`Act::SwallowReply`] lets a command run and closes the
//! connection instead of passing its reply on, and [`Act::DelayReply`]
//! holds the reply back past the sidecar's response timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with a chunk the sidecar sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Pass it on.
    Forward,
    /// Drop it and every later chunk of this connection (replies still
    /// come through).
    Hold,
    /// Pass it on, then move to a new Redis connection after the next reply.
    RedialAfterReply,
    /// Drop it and close the connection (Redis lost mid-call).
    Close,
    /// Drop it and everything after it in both directions, keeping the
    /// connection open: a peer that vanished without closing the socket
    /// (a dead host, a NAT or firewall that forgot the flow).
    Blackhole,
    /// Pass it on and mark the connection: it goes [`Act::Blackhole`]
    /// silent once [`RedisProxy::silence_marked`] is called (a connection
    /// that sends nothing more, such as a pub/sub one, dies while idle).
    Mark,
    /// Pass it on, then drop the next reply Redis sends on this connection
    /// and close it: the command ran, the sidecar never learns its outcome
    /// (a connection lost after the write reached Redis).
    SwallowReply,
    /// Pass it on, and hold the next reply (and everything behind it on
    /// this connection) back this long: the command ran, its answer comes
    /// after the sidecar stopped waiting for it.
    DelayReply(Duration),
    /// Pass it on, then pass on only the first half of the next reply
    /// chunk and close: the command ran, its answer arrives cut off.
    CutReply,
}

type Rule = Box<dyn FnMut(&[u8]) -> Act + Send>;

/// The proxy; its task lives as long as the test's runtime.
pub struct RedisProxy {
    port: u16,
    rule: Arc<Mutex<Rule>>,
    /// How many times a rule's act other than `Forward` took effect.
    acted: Arc<AtomicUsize>,
    /// Set by [`RedisProxy::silence_marked`].
    silenced: Arc<AtomicBool>,
}

impl RedisProxy {
    /// A proxy to the Redis on `redis_port` that forwards everything until
    /// [`RedisProxy::set_rule`].
    pub async fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let rule: Arc<Mutex<Rule>> = Arc::new(Mutex::new(Box::new(|_| Act::Forward)));
        let acted = Arc::new(AtomicUsize::new(0));
        let silenced = Arc::new(AtomicBool::new(false));
        let (shared_rule, shared_acted, shared_silenced) =
            (rule.clone(), acted.clone(), silenced.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (rule, acted, silenced) = (
                    shared_rule.clone(),
                    shared_acted.clone(),
                    shared_silenced.clone(),
                );
                tokio::spawn(async move {
                    // Ends when either side closes.
                    let _ = relay(client, redis_port, &rule, &acted, &silenced).await;
                });
            }
        });
        Self {
            port,
            rule,
            acted,
            silenced,
        }
    }

    /// Every connection an [`Act::Mark`] marked goes silent both ways from
    /// now on (sockets left open).
    pub fn silence_marked(&self) {
        self.silenced.store(true, Ordering::SeqCst);
    }

    /// From now on, `rule` decides what happens to each chunk.
    pub fn set_rule(&self, rule: impl FnMut(&[u8]) -> Act + Send + 'static) {
        *self.rule.lock().expect("rule") = Box::new(rule);
    }

    /// How many times the rule's act other than `Forward` took effect.
    pub fn acted(&self) -> usize {
        self.acted.load(Ordering::SeqCst)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Whether `chunk` contains `needle`.
pub fn carries(chunk: &[u8], needle: &str) -> bool {
    chunk.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn relay(
    mut client: TcpStream,
    redis_port: u16,
    rule: &Mutex<Rule>,
    acted: &AtomicUsize,
    silenced: &AtomicBool,
) -> std::io::Result<()> {
    let dial = || TcpStream::connect(("127.0.0.1", redis_port));
    let mut redis = dial().await?;
    let mut left: Option<TcpStream> = None;
    let (mut from_client, mut from_redis) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut owed = [0u8; 1];
    let (mut holding, mut redial_after_reply, mut blackholed) = (false, false, false);
    let mut marked = false;
    let (mut swallow, mut cut, mut delay) = (false, false, None::<Duration>);
    let gone_silent = |marked: bool| marked && silenced.load(Ordering::SeqCst);
    loop {
        tokio::select! {
            _ = async { left.as_mut()?.read(&mut owed).await.ok() }, if left.is_some() => {
                return Ok(());
            }
            n = client.read(&mut from_client) => {
                let chunk = &from_client[..n?];
                if chunk.is_empty() {
                    return Ok(());
                }
                if holding || blackholed || gone_silent(marked) {
                    continue;
                }
                let act = (rule.lock().expect("rule"))(chunk);
                match act {
                    Act::Forward => redis.write_all(chunk).await?,
                    Act::Hold => {
                        holding = true;
                        acted.fetch_add(1, Ordering::SeqCst);
                    }
                    Act::RedialAfterReply => {
                        redis.write_all(chunk).await?;
                        redial_after_reply = true;
                    }
                    Act::Close => {
                        acted.fetch_add(1, Ordering::SeqCst);
                        return Ok(());
                    }
                    Act::Blackhole => {
                        blackholed = true;
                        acted.fetch_add(1, Ordering::SeqCst);
                    }
                    Act::Mark => {
                        redis.write_all(chunk).await?;
                        marked = true;
                        acted.fetch_add(1, Ordering::SeqCst);
                    }
                    Act::SwallowReply => {
                        redis.write_all(chunk).await?;
                        swallow = true;
                    }
                    Act::CutReply => {
                        redis.write_all(chunk).await?;
                        cut = true;
                    }
                    Act::DelayReply(pause) => {
                        redis.write_all(chunk).await?;
                        delay = Some(pause);
                    }
                }
            }
            n = redis.read(&mut from_redis) => {
                let chunk = &from_redis[..n?];
                if chunk.is_empty() {
                    return Ok(());
                }
                if blackholed || gone_silent(marked) {
                    continue;
                }
                if swallow {
                    acted.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                if cut {
                    acted.fetch_add(1, Ordering::SeqCst);
                    client.write_all(&chunk[..chunk.len() / 2]).await?;
                    return Ok(());
                }
                if let Some(pause) = delay.take() {
                    acted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pause).await;
                }
                client.write_all(chunk).await?;
                if redial_after_reply {
                    redial_after_reply = false;
                    left = Some(std::mem::replace(&mut redis, dial().await?));
                    acted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}
