//! What the o2dlm figures are compared with, measured in the same run.

pub mod etcd;
pub mod http;
pub mod mutex;
pub mod redis;
pub mod tcp;

use crate::cpu;
use crate::report::Outcome;
use crate::stats::Latencies;
use std::time::{Duration, Instant};

/// A client of a lock service that users pick instead of a DLM.
pub trait LockClient: Send {
    /// Takes the client's lock; an Err is a protocol or transport failure.
    fn lock(&mut self) -> Result<(), String>;
    fn unlock(&mut self) -> Result<(), String>;
}

/// Settings shared by the Redis and etcd measurements.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub placement: cpu::Placement,
    pub warmup: usize,
    /// lock+unlock pairs timed one by one on a single client.
    pub samples: usize,
    /// Concurrent clients (threads, one connection each, disjoint keys) for
    /// throughput; matched to the number of o2dlm nodes it is compared with.
    pub clients: usize,
    pub duration: Duration,
}

/// What one service measurement yields.
pub struct ServiceResult {
    /// Latency of one lock+unlock pair on an otherwise idle service.
    pub latency: Result<Latencies, Outcome>,
    /// Aggregate lock+unlock pairs per second over `clients` clients.
    pub throughput: Outcome,
}

impl ServiceResult {
    pub fn unavailable(why: &Outcome) -> ServiceResult {
        ServiceResult {
            latency: Err(why.clone()),
            throughput: why.clone(),
        }
    }
}

/// Times `samples` lock+unlock pairs on one client pinned to `cpu`.
pub fn measure_latency(
    mut client: Box<dyn LockClient>,
    cpu: usize,
    warmup: usize,
    samples: usize,
) -> Result<Latencies, Outcome> {
    let run = move || -> Result<Vec<u64>, String> {
        cpu::pin_current_thread(cpu).map_err(|e| format!("pin: {e}"))?;
        let mut out = Vec::with_capacity(samples);
        for i in 0..warmup + samples {
            let t0 = Instant::now();
            client.lock()?;
            client.unlock()?;
            if i >= warmup {
                out.push(t0.elapsed().as_nanos() as u64);
            }
        }
        Ok(out)
    };
    match std::thread::spawn(run).join() {
        Ok(Ok(v)) => Ok(Latencies::new(v)),
        Ok(Err(e)) => Err(Outcome::Failed(e)),
        Err(_) => Err(Outcome::Failed("client thread panicked".into())),
    }
}

/// Runs every client in its own thread pinned to `cpu` for `duration`;
/// returns lock+unlock pairs per second, summed over the clients.
pub fn measure_throughput(
    clients: Vec<Box<dyn LockClient>>,
    cpu: usize,
    duration: Duration,
) -> Outcome {
    let start = Instant::now() + Duration::from_millis(20);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || -> Result<f64, String> {
                cpu::pin_current_thread(cpu).map_err(|e| format!("pin: {e}"))?;
                while Instant::now() < start {
                    std::hint::spin_loop();
                }
                let end = start + duration;
                let mut n = 0u64;
                while Instant::now() < end {
                    c.lock()?;
                    c.unlock()?;
                    n += 1;
                }
                Ok(n as f64 / start.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut total = 0.0;
    for h in handles {
        match h.join() {
            Ok(Ok(rate)) => total += rate,
            Ok(Err(e)) => return Outcome::Failed(e),
            Err(_) => return Outcome::Failed("client thread panicked".into()),
        }
    }
    Outcome::Value(total)
}
