//! The `streamcar` command line: `serve`, `dev`, `openapi` and `token`.
//! Nothing else lives here.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use streamcar::config::{Config, ServerArgs};
use streamcar::dev::{DevError, DevRedis};

/// mimalloc: the service allocates many small short-lived buffers per
/// request; measured faster than the system allocator (see README,
/// Performance).
#[global_allocator]
static GLOBAL: streamcar::allocator::Allocator = streamcar::allocator::Allocator;

/// Durable multi-tenant consumer groups on Redis Streams, behind a local HTTP API.
#[derive(Parser)]
#[command(name = "streamcar", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API against an existing Redis.
    Serve {
        /// Redis to use.
        #[arg(
            long,
            env = "STREAMCAR_REDIS_URL",
            default_value = "redis://127.0.0.1:6379"
        )]
        redis_url: String,
        /// Redis is a Redis Cluster; --redis-url then lists seed nodes,
        /// comma-separated (any one reachable node is enough).
        #[arg(long, env = "STREAMCAR_REDIS_CLUSTER")]
        redis_cluster: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start a private redis-server (data in .streamcar/redis) and serve against it.
    Dev {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API and exit.
    Openapi,
    /// Print a signed development token for the client edge and exit.
    Token {
        /// Signing key: the HS256 secret, or the RS256/ES256 private key (PKCS#8 PEM).
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// Algorithm (the edge's --jwt-alg).
        #[arg(long, value_enum, default_value_t = streamcar::config::JwtAlg::Hs256)]
        alg: streamcar::config::JwtAlg,
        /// The user (`sub`).
        #[arg(long)]
        sub: String,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Channels the client may subscribe to, comma-separated (`user.u1,news.*`).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// Topics the client may publish to, comma-separated.
        #[arg(long, value_delimiter = ',')]
        publish: Vec<String>,
        /// Lifetime, e.g. `5m`, `90s`.
        #[arg(long, default_value = "5m", value_parser = streamcar::config::parse_duration)]
        ttl: std::time::Duration,
        /// `aud` claim (the edge's --jwt-audience).
        #[arg(long)]
        audience: Option<String>,
        /// `iss` claim (the edge's --jwt-issuer).
        #[arg(long)]
        issuer: Option<String>,
    },
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match &cli.command {
        Command::Serve { server, .. } | Command::Dev { server } => server.runtime(),
        Command::Openapi | Command::Token { .. } => {
            tokio::runtime::Builder::new_current_thread().build()
        }
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("streamcar: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let server = match &cli.command {
        Command::Serve { server, .. } | Command::Dev { server } => server,
        Command::Token {
            key_file,
            alg,
            sub,
            tenant,
            channels,
            publish,
            ttl,
            audience,
            issuer,
        } => {
            let request = streamcar::edge::token::TokenRequest {
                key_file: key_file.clone(),
                alg: *alg,
                sub: sub.clone(),
                tenant: tenant.clone(),
                channels: channels.clone(),
                publish: publish.clone(),
                ttl: *ttl,
                audience: audience.clone(),
                issuer: issuer.clone(),
            };
            return match streamcar::edge::token::mint(&request) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("streamcar token: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Openapi => {
            match streamcar::http::openapi_document().to_pretty_json() {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("streamcar: cannot render the OpenAPI document: {e}");
                    return ExitCode::FAILURE;
                }
            }
            return ExitCode::SUCCESS;
        }
    };
    streamcar::telemetry::init_logging(server.log_format);
    let result = match cli.command {
        Command::Openapi | Command::Token { .. } => return ExitCode::SUCCESS,
        Command::Serve {
            redis_url,
            redis_cluster,
            server,
        } => match Config::new(redis_url, &server) {
            Ok(config) => {
                let config = Config {
                    redis_cluster,
                    ..config
                };
                streamcar::run(&config, shutdown_signal()).await
            }
            Err(e) => {
                eprintln!("streamcar: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Dev { server } => {
            // Check the flags before starting anything.
            if let Err(e) = Config::new(String::new(), &server) {
                eprintln!("streamcar: {e}");
                return ExitCode::from(2);
            }
            let redis = match DevRedis::start(Path::new(".streamcar/redis")).await {
                Ok(redis) => redis,
                Err(e @ DevError::NotInstalled) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("streamcar dev: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = match Config::new(redis.url().to_owned(), &server) {
                Ok(config) => streamcar::run(&config, shutdown_signal()).await,
                Err(e) => Err(streamcar::StartError::RedisConfig(e)),
            };
            redis.stop().await;
            result
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamcar: {e}");
            ExitCode::FAILURE
        }
    }
}
