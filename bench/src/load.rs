//! A closed-loop load runner: `concurrency` workers repeat one operation
//! until the deadline; the result is operations per second and the latency
//! distribution of the calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One call of an operation; resolves to how many operations it did (a
/// batch of 100 messages counts 100).
pub type Op = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = u64> + Send>> + Send + Sync>;

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    /// Operations per second.
    pub ops_per_s: f64,
    /// Median call latency, µs.
    pub p50_us: f64,
    /// 99th percentile call latency, µs.
    pub p99_us: f64,
    /// CPU time (user + system) the sidecar spent per operation, µs.
    pub sidecar_cpu_us_per_op: f64,
    /// CPU time Redis spent per operation, µs.
    pub redis_cpu_us_per_op: f64,
    /// CPU time the load generator itself spent per operation, µs.
    pub client_cpu_us_per_op: f64,
}

/// Percentile `p` (0..=1) of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64
}

/// What one or more load runs recorded, merged before it is summarized (so
/// percentiles come from all samples, not averages of percentiles).
#[derive(Debug, Default)]
pub struct Record {
    /// Call latencies, µs.
    pub latencies: Vec<u64>,
    /// Operations done.
    pub ops: u64,
    /// Time the runs took.
    pub elapsed: Duration,
    /// CPU time (user + system) spent meanwhile by the sidecar, Redis and
    /// the load generator itself.
    pub cpu: [Duration; 3],
}

impl Record {
    /// Adds another run's record to this one.
    pub fn merge(&mut self, other: Record) {
        self.latencies.extend(other.latencies);
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        for (mine, theirs) in self.cpu.iter_mut().zip(other.cpu) {
            *mine += theirs;
        }
    }

    /// Throughput, latency percentiles and CPU per operation.
    pub fn summary(mut self) -> Measured {
        self.latencies.sort_unstable();
        let per_op = |spent: Duration| spent.as_secs_f64() * 1e6 / self.ops.max(1) as f64;
        Measured {
            ops_per_s: self.ops as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON),
            p50_us: percentile(&self.latencies, 0.50),
            p99_us: percentile(&self.latencies, 0.99),
            sidecar_cpu_us_per_op: per_op(self.cpu[0]),
            redis_cpu_us_per_op: per_op(self.cpu[1]),
            client_cpu_us_per_op: per_op(self.cpu[2]),
        }
    }
}

/// Runs `op` from `concurrency` workers for `duration`.
pub async fn run(concurrency: usize, duration: Duration, op: Op) -> Record {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ops = 0;
            while Instant::now() < deadline {
                let call = Instant::now();
                ops += op(worker).await;
                latencies.push(call.elapsed().as_micros() as u64);
            }
            (latencies, ops)
        }));
    }
    let mut record = Record::default();
    for w in workers {
        let (latencies, ops) = w.await.expect("worker");
        record.latencies.extend(latencies);
        record.ops += ops;
    }
    record.elapsed = started.elapsed();
    record
}
