//! # streamcar
//!
//! A sidecar that turns Redis Streams into durable, multi-tenant consumer
//! groups behind a small local HTTP API. Apps publish, fetch, ack and
//! coordinate with plain HTTP on loopback or a Unix socket; streamcar keeps
//! every durable fact in Redis, so any sidecar may die at any time and nothing
//! is lost.
//!
//! ## Architecture
//!
//! ```text
//! app ──HTTP──▶ http (axum: extractors, routers) ──▶ broker / coord (domain)
//!                                                        │ keys.rs names every key
//!                                                        ▼
//!                                       scripts.rs (lua/*.lua, EVALSHA) ──▶ Redis
//! ```
//!
//! * [`config`]: flags and env, validated once.
//! * [`names`]: validated tenant/topic/group names, safe inside key hash tags.
//! * [`keys`]: the only place key names are built; one hash tag per topic.
//! * [`scripts`]: every multi-key change is one Lua script, time from Redis `TIME`.
//! * [`broker`]: topics, publishing, history (no HTTP types).
//! * [`coord`]: idempotency, checkpoints, reservations, quotas (no HTTP types).
//! * [`tenants`]: keeps the tenant list down to tenants that have topics.
//! * [`http`]: routes, extractors, listeners (no Redis keys); its
//!   [`http::problem`] renders errors as RFC 9457 problem+json.
//! * [`error`]: the domain error, with a stable code per case (no HTTP types).
//! * [`dev`]: the private `redis-server` behind `streamcar dev`.
//! * [`push`]: push delivery to the app (`--subscriptions`).
//! * [`traces`]: OpenTelemetry spans per message step (`--otlp-endpoint`).
//!
//! [`start`] wires config → Redis pool → app → listeners and returns a
//! running [`Server`]; [`run`] serves until a shutdown signal.

pub mod allocator;
pub mod broker;
pub mod channels;
pub mod cluster_link;
pub mod config;
pub mod coord;
pub mod dev;
pub mod edge;
pub mod error;
pub mod http;
pub mod keys;
pub mod names;
pub mod pubsub;
pub mod push;
pub mod retry;
pub mod scripts;
pub mod slot;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod traces;
pub mod validate;
pub mod wake;
pub mod workflow;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::broker::Broker;
use crate::config::Config;
use crate::coord::Coord;
use crate::error::Error;
use crate::http::listen::{SocketFile, WriteTimeout};
use crate::http::{AppState, Services};
use crate::scripts::Scripts;
use crate::store::{Connections, Store};
use crate::wake::Wakeups;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Redis URL or pool settings are invalid.
    #[error("invalid redis configuration: {0}")]
    RedisConfig(String),
    /// The TCP address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The Unix socket cannot be bound.
    #[error("cannot bind unix socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `--strict` and Redis may evict keys.
    #[error(
        "Redis maxmemory-policy is {0}, not noeviction, and --strict is set: refusing to start (eviction would silently delete messages)"
    )]
    EvictingRedis(String),
    /// The trace exporter cannot start (`--otlp-endpoint`).
    #[error(transparent)]
    Traces(#[from] traces::ExportError),
    /// A listener failed while serving.
    #[error("server failed: {0}")]
    Serve(io::Error),
    /// The client edge cannot start (its key file, most likely).
    #[error("client edge: {0}")]
    Edge(String),
}

/// A running service: its listeners and the means to stop them.
pub struct Server {
    addr: SocketAddr,
    edge_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    listeners: JoinSet<io::Result<()>>,
    /// The tenant-list prune, awaited on shutdown so none is left half done.
    housekeeping: Option<JoinHandle<()>>,
    drain_timeout: Duration,
    pusher: push::Pusher,
    /// The span exporter (`--otlp-endpoint`), flushed last on shutdown.
    traces: Option<traces::Exporter>,
    _socket_file: Option<SocketFile>,
}

/// Connects to Redis (lazily: an unreachable Redis is not fatal, `/readyz`
/// answers 503 until it comes up), binds the listeners and starts serving.
pub async fn start(config: &Config) -> Result<Server, StartError> {
    // Install the recorder before anything counts.
    telemetry::install(config.metrics_interval);
    error::describe_metrics();
    // Before the router is built: it adds the caller's trace only when on.
    let traces = match &config.otlp_endpoint {
        Some(endpoint) => Some(traces::install(endpoint)?),
        None => None,
    };
    let urls = config.redis_urls();
    let connect = |response_timeout| {
        if config.redis_cluster {
            Connections::cluster(&urls, response_timeout)
        } else {
            Connections::new(
                &config.redis_url,
                config.redis_connections,
                response_timeout,
            )
        }
        .map_err(|e| StartError::RedisConfig(e.to_string()))
    };
    let connections = connect(store::response_timeout(config.durability))?;
    // Reads must not queue behind a write's `WAIT`: their own connections,
    // which never wait for replicas, so a hung Redis shows on them as soon
    // as without `--durability`.
    let durability = match config.durability {
        Some(replicas) => Some((replicas, connect(store::response_timeout(None))?)),
        None => None,
    };
    let (shutdown, signal) = watch::channel(false);
    // Pub/sub messages reach every node of a cluster, so any live one will do.
    let wakeups = Wakeups::start(&urls, config.wake_recheck);
    let store = Store::new(
        Arc::new(connections),
        Arc::new(Scripts::new()),
        wakeups,
        signal.clone(),
        config.strict,
    )
    .with_durability(durability);
    let broker = Broker::new(store.clone());
    match store.check_ready().await {
        Ok(()) => {
            if let Some(policy) = store.eviction_policy().await {
                tracing::warn!(
                    %policy,
                    "Redis maxmemory-policy is not noeviction: Redis may delete streamcar's keys under memory pressure; set maxmemory-policy noeviction (or run with --strict to refuse such a Redis)"
                );
            }
        }
        Err(Error::EvictingRedis(policy)) => return Err(StartError::EvictingRedis(policy)),
        Err(e) => {
            tracing::warn!(error = %e, "redis is not ready yet; serving anyway, /readyz answers 503 until it is")
        }
    }
    if !config.metrics_interval.is_zero() {
        tokio::spawn(broker::stats::run(
            broker.clone(),
            config.metrics_interval,
            signal.clone(),
        ));
    }
    let mut housekeeping = None;
    if !config.retention_interval.is_zero() {
        tokio::spawn(broker::retention::run(
            broker.clone(),
            config.retention_interval,
            config.consumer_idle,
            signal.clone(),
        ));
        housekeeping = Some(tokio::spawn(tenants::run(
            store.clone(),
            config.retention_interval,
            signal.clone(),
        )));
    }
    let channels = channels::Channels::start(
        store.clone(),
        &urls,
        config.redis_cluster,
        config.channel_queue_bytes,
    );
    let coord = Coord::new(store.clone());
    let pusher = push::Pusher::start(
        push::Services {
            broker: broker.clone(),
            coord: coord.clone(),
            channels: channels.clone(),
        },
        &config.subscriptions,
        &signal,
    );
    let state = AppState::new(Services {
        channels,
        coord,
        store,
        broker,
        max_body: config.max_body,
        api_token: config.api_token.clone().map(Arc::from),
        subscriptions: pusher.registry(),
    });
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(http::Api::new(
        http::router(state.clone()),
        state.clone(),
    ));

    let (tcp, addr) = bind(config.listen).await?;
    let stopped = move |mut signal: watch::Receiver<bool>| async move {
        let _ = signal.wait_for(|stop| *stop).await;
    };

    let mut listeners = JoinSet::new();
    // No Nagle delay on small responses: they are whole HTTP messages.
    let tcp = tcp.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let tcp = WriteTimeout::new(tcp, config.write_timeout);
    listeners.spawn(
        axum::serve(tcp, app.clone())
            .with_graceful_shutdown(stopped(signal.clone()))
            .into_future(),
    );
    let socket_file = match &config.socket {
        Some(path) => {
            let (unix, file) = SocketFile::bind(path).map_err(|source| StartError::Socket {
                path: path.clone(),
                source,
            })?;
            let unix = WriteTimeout::new(unix, config.write_timeout);
            listeners.spawn(
                axum::serve(unix, app)
                    .with_graceful_shutdown(stopped(signal.clone()))
                    .into_future(),
            );
            tracing::info!(path = %path.display(), "serving on unix socket");
            Some(file)
        }
        None => None,
    };
    let edge_addr = match &config.edge {
        Some(edge) => {
            Some(start_edge(edge, state, &signal, &mut listeners, config.write_timeout).await?)
        }
        None => None,
    };
    tracing::info!(%addr, "serving HTTP API");
    Ok(Server {
        addr,
        edge_addr,
        shutdown,
        listeners,
        housekeeping,
        drain_timeout: config.drain_timeout,
        pusher,
        traces,
        _socket_file: socket_file,
    })
}

/// Binds a TCP listener on `addr`; the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let local = tcp.local_addr().map_err(StartError::Serve)?;
    Ok((tcp, local))
}

/// Starts the client edge (`--edge-listen`): loads its key, binds its
/// listener, serves its router, and re-reads the key on SIGHUP.
async fn start_edge(
    config: &config::EdgeConfig,
    state: AppState,
    signal: &watch::Receiver<bool>,
    listeners: &mut JoinSet<io::Result<()>>,
    write_timeout: Duration,
) -> Result<SocketAddr, StartError> {
    let edge =
        edge::Edge::start(config, state.store.clone(), signal.clone()).map_err(StartError::Edge)?;
    let (tcp, addr) = bind(config.listen).await?;
    // Clients out there stop reading too: the same write deadline.
    let tcp = WriteTimeout::new(tcp, write_timeout);
    let mut stop = signal.clone();
    listeners.spawn(
        axum::serve(tcp, http::edge::router(state, edge.clone()))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .into_future(),
    );
    let mut stop = signal.clone();
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: the edge key is not reloadable");
            return;
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => match edge.reload_key() {
                    Ok(()) => tracing::info!("SIGHUP: edge key reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: edge key not reloaded; the old key stays"),
                },
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    });
    tracing::info!(%addr, "serving the client edge");
    Ok(addr)
}

impl Server {
    /// The bound TCP address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client edge's address, when `--edge-listen` is set.
    pub fn edge_addr(&self) -> Option<SocketAddr> {
        self.edge_addr
    }

    /// Graceful drain: stop accepting and fetching, let in-flight requests
    /// (served and pushed) finish, and cut whatever is still running after
    /// the drain timeout (pushes left then are nacked with no delay).
    pub async fn shutdown(self) -> Result<(), StartError> {
        let Server {
            shutdown,
            mut listeners,
            housekeeping,
            drain_timeout,
            pusher,
            traces,
            _socket_file,
            ..
        } = self;
        let _ = shutdown.send(true);
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let served = async {
            let drained = tokio::time::timeout_at(deadline, async {
                if let Some(task) = housekeeping {
                    let _ = task.await;
                }
                while let Some(joined) = listeners.join_next().await {
                    match joined {
                        Ok(Err(e)) => return Err(StartError::Serve(e)),
                        Err(e) if e.is_panic() => {
                            return Err(StartError::Serve(io::Error::other("listener panicked")));
                        }
                        _ => {}
                    }
                }
                Ok(())
            })
            .await;
            match drained {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(timeout = ?drain_timeout, "drain timeout passed; cutting remaining requests");
                    listeners.abort_all();
                    Ok(())
                }
            }
        };
        let (result, ()) = tokio::join!(served, pusher.drain(deadline));
        if let Some(traces) = traces {
            traces.shutdown().await;
        }
        result
    }
}

/// Serves `config` until `signal` resolves, then drains and returns.
pub async fn run(config: &Config, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    let server = start(config).await?;
    signal.await;
    tracing::info!("shutting down: draining requests");
    server.shutdown().await
}
