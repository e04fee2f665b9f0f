//! `streamcar-bench`: measures streamcar against raw Redis in one run.
//!
//! It starts its own `redis-server` and the release `streamcar serve`, warms
//! up, then runs each scenario twice, raw (redis-rs sending the very same Lua
//! script calls, built by the same functions, at the same concurrency) and
//! through the sidecar's HTTP API. Ratios against the raw run on the same
//! machine in the same run are what matter; absolute numbers on a shared
//! 2-core machine are noise.
//!
//! `--soak <duration>` runs a long steady load instead and watches the
//! sidecar's memory and file descriptors (see `soak.rs`).

mod http;
mod load;
mod procs;
mod scenarios;
mod soak;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

/// Every scenario, in the order they run, with its concurrency.
const SCENARIOS: [(&str, usize); 7] = [
    ("publish", 64),
    ("publish_c1", 1),
    ("publish_batch", 16),
    ("consume", 8),
    ("consume_ordered", 8),
    ("consume_single", 64),
    ("e2e_latency", 4),
];

/// Command-line options.
#[derive(Parser)]
#[command(
    name = "streamcar-bench",
    about = "streamcar vs raw Redis, same scripts, same run"
)]
struct Args {
    /// How long each measured run lasts, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = streamcar::config::parse_duration)]
    duration: Duration,
    /// Where to write the JSON results.
    #[arg(long, default_value = "results.json")]
    out: PathBuf,
    /// Run only these scenarios (repeatable); all of them when not given.
    /// Targets of scenarios not run are reported as skipped.
    #[arg(long = "only", value_parser = SCENARIOS.map(|(name, _)| name))]
    only: Vec<String>,
    /// Run this `streamcar` binary instead of building the release one
    /// (e.g. an older build, to compare).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// Instead of the scenarios, a steady load for this long (e.g. `10m`)
    /// that fails if the sidecar's RSS or open descriptors grow.
    #[arg(long, value_parser = streamcar::config::parse_duration)]
    soak: Option<Duration>,
    /// Soak: messages published per second.
    #[arg(long, default_value_t = 5000, requires = "soak")]
    soak_rate: u64,
    /// Soak: largest rise of the sidecar's RSS floor after warm-up, in MB.
    #[arg(long, default_value_t = 8.0, requires = "soak")]
    soak_max_growth_mb: f64,
}

/// One row of the results.
#[derive(Serialize)]
struct Row {
    name: &'static str,
    concurrency: usize,
    raw_ops_per_s: f64,
    sidecar_ops_per_s: f64,
    ratio: f64,
    p50_us: f64,
    p99_us: f64,
    raw_p50_us: f64,
    raw_p99_us: f64,
    sidecar_cpu_us_per_op: f64,
    redis_cpu_us_per_op: f64,
    raw_redis_cpu_us_per_op: f64,
    client_cpu_us_per_op: f64,
    raw_client_cpu_us_per_op: f64,
}

/// The whole results file.
#[derive(Serialize)]
struct Results {
    scenarios: Vec<Row>,
    rss_mb_idle: f64,
    rss_mb_peak: f64,
    duration_s: f64,
    cpus: usize,
}

fn row(name: &'static str, concurrency: usize, pair: &scenarios::Pair) -> Row {
    let round = |v: f64| (v * 100.0).round() / 100.0;
    Row {
        name,
        concurrency,
        raw_ops_per_s: round(pair.raw.ops_per_s),
        sidecar_ops_per_s: round(pair.sidecar.ops_per_s),
        ratio: round(pair.sidecar.ops_per_s / pair.raw.ops_per_s.max(1.0)),
        p50_us: pair.sidecar.p50_us,
        p99_us: pair.sidecar.p99_us,
        raw_p50_us: pair.raw.p50_us,
        raw_p99_us: pair.raw.p99_us,
        sidecar_cpu_us_per_op: round(pair.sidecar.sidecar_cpu_us_per_op),
        redis_cpu_us_per_op: round(pair.sidecar.redis_cpu_us_per_op),
        raw_redis_cpu_us_per_op: round(pair.raw.redis_cpu_us_per_op),
        client_cpu_us_per_op: round(pair.sidecar.client_cpu_us_per_op),
        raw_client_cpu_us_per_op: round(pair.raw.client_cpu_us_per_op),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let binary = args.sidecar.clone().unwrap_or_else(procs::streamcar_binary);
    let dir = std::env::temp_dir().join(format!("streamcar-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis = procs::start_redis(&dir).await;
    let sidecar = procs::start_streamcar(&binary, &redis.url).await;
    if let Some(duration) = args.soak {
        let settings = soak::Settings {
            duration,
            rate: args.soak_rate,
            max_growth_mb: args.soak_max_growth_mb,
        };
        let passed = soak::run(&settings, &sidecar.url, sidecar.pid()).await;
        drop(sidecar);
        drop(redis);
        let _ = std::fs::remove_dir_all(&dir);
        return if passed {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_mb_idle = procs::memory_mb(sidecar.pid(), "VmRSS");

    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let ctx = scenarios::Ctx {
        scripts: Arc::new(streamcar::scripts::Scripts::new()),
        redis: client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection"),
        redis_url: redis.url.clone(),
        sidecar_pid: sidecar.pid(),
        redis_pid: redis.pid(),
        http: Arc::new(
            http::Clients::new(
                sidecar.url.trim_start_matches("http://"),
                "/v1/tenants/bench",
                64,
            )
            .await,
        ),
    };

    eprintln!("warming up…");
    scenarios::publish(&ctx, 16, Duration::from_secs(1)).await;

    let d = args.duration;
    let mut rows = Vec::new();
    for (name, concurrency) in SCENARIOS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("{name}…");
        let pair = match name {
            "publish" | "publish_c1" => scenarios::publish(&ctx, concurrency, d).await,
            "publish_batch" => scenarios::publish_batch(&ctx, concurrency, d).await,
            "consume" => scenarios::consume(&ctx, concurrency, d, false).await,
            "consume_ordered" => scenarios::consume(&ctx, concurrency, d, true).await,
            "consume_single" => scenarios::consume_single(&ctx, concurrency, d).await,
            _ => scenarios::e2e_latency(&ctx, concurrency, d).await,
        };
        rows.push(row(name, concurrency, &pair));
    }
    let rss_mb_peak = procs::memory_mb(sidecar.pid(), "VmHWM");

    println!(
        "{:<14} {:>5} {:>12} {:>12} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "scenario",
        "conc",
        "raw ops/s",
        "sidecar/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "raw p50",
        "raw p99"
    );
    for r in &rows {
        println!(
            "{:<14} {:>5} {:>12.0} {:>12.0} {:>6.2} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            r.name,
            r.concurrency,
            r.raw_ops_per_s,
            r.sidecar_ops_per_s,
            r.ratio,
            r.p50_us,
            r.p99_us,
            r.raw_p50_us,
            r.raw_p99_us
        );
    }
    println!(
        "\nCPU µs per op  {:>8} {:>8} {:>8} {:>8} {:>8}",
        "sidecar", "redis", "client", "raw:redis", "raw:client"
    );
    for r in &rows {
        println!(
            "{:<14} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>10.1}",
            r.name,
            r.sidecar_cpu_us_per_op,
            r.redis_cpu_us_per_op,
            r.client_cpu_us_per_op,
            r.raw_redis_cpu_us_per_op,
            r.raw_client_cpu_us_per_op
        );
    }
    println!("sidecar RSS: idle {rss_mb_idle:.1} MB, peak {rss_mb_peak:.1} MB");

    let ratio = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.ratio);
    let throughput = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| r.sidecar_ops_per_s)
    };
    let e2e_p99_ms = rows
        .iter()
        .find(|r| r.name == "e2e_latency")
        .map(|r| r.p99_us / 1000.0);
    let row_of = |name: &str| rows.iter().find(|r| r.name == name);
    let targets = [
        ("publish ratio >= 0.75", ratio("publish").map(|r| r >= 0.75)),
        (
            "publish_batch ratio >= 0.9",
            ratio("publish_batch").map(|r| r >= 0.9),
        ),
        ("consume ratio >= 0.9", ratio("consume").map(|r| r >= 0.9)),
        (
            "consume_single ratio >= 0.6",
            ratio("consume_single").map(|r| r >= 0.6),
        ),
        (
            "consume_ordered >= 0.7x consume (sidecar)",
            throughput("consume_ordered")
                .zip(throughput("consume"))
                .map(|(o, c)| o >= 0.7 * c),
        ),
        (
            "publish_c1 p99 <= raw p99 + 150 µs",
            row_of("publish_c1").map(|r| r.p99_us <= r.raw_p99_us + 150.0),
        ),
        (
            "sidecar CPU per single publish <= 10 µs",
            row_of("publish").map(|r| r.sidecar_cpu_us_per_op <= 10.0),
        ),
        (
            "e2e p99 <= 2 ms at 2,000 msg/s",
            e2e_p99_ms.map(|p| p <= 2.0),
        ),
        ("peak RSS <= 64 MB", Some(rss_mb_peak <= 64.0)),
    ];
    let mut all_met = true;
    for (target, met) in targets {
        let verdict = match met {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "SKIP",
        };
        println!("{verdict} {target}");
        all_met &= met != Some(false);
    }

    let results = Results {
        scenarios: rows,
        rss_mb_idle: (rss_mb_idle * 10.0).round() / 10.0,
        rss_mb_peak: (rss_mb_peak * 10.0).round() / 10.0,
        duration_s: d.as_secs_f64(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
    };
    procs::write_results(&args.out, &results);
    drop(sidecar);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    if all_met {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
