//! A deterministic cluster simulator that checks lock safety (issue 6).
//!
//! One schedule = N nodes (2..=8) of the real sans-IO protocol code (`Dlm`
//! and `Heartbeat`, with `LocalLock` for the engine's caching path) over a
//! simulated network, heartbeat disk and clock, with a random workload and
//! random faults, all drawn from one seed. Invariants are checked as the
//! run goes (see world.rs); a failing schedule is shrunk by delta debugging
//! to the shortest list of operations and faults that still fails the same
//! way, and printed as text that replays exactly.
//!
//! Faults (all on by default): message delays; node pauses; crashes with
//! restart and pauses long enough to be declared dead (survivors run the
//! DLM's recovery); cut connections, which o2net does not re-make while
//! both ends heartbeat, settled by the quorum rule. Two rules keep the
//! schedules within what an o2cb cluster can survive at all: a lone cut
//! between two nodes that both keep a majority (o2quorum fences neither)
//! ends with an operator reboot of the higher node, and no node pauses
//! while another starts up (it would miss the paused node and form the
//! domain alone, as a kernel node would).
//!
//! Checks: no two incompatible holders (holders on a paused or dead node
//! count until the granting master has learned of the death); every
//! completion expected; LVB reads return the last EX write, or zero after
//! a death that §9.5/§9.6 say loses it, flagged by
//! `Dlm::lock_lvb_invalid` when the master is local; liveness: within
//! `LIVENESS_MS` of the end of faults and of the last death verdict every
//! request is granted and the cluster has settled (every node back, every
//! domain joined, no recovery pending); no message a kernel would BUG on.
//!
//! Entry points: [`run_schedule`], [`shrink`], [`sweep`]; the
//! `o2dlm simulate` command wraps them.

mod rng;
mod schedule;
mod world;

pub use rng::Rng;
pub use schedule::{
    item_text, Act, Broken, FaultKind, FaultSet, Item, Schedule, SimConfig, START_MS,
};
pub use world::{FailKind, Failure, Stats, LIVENESS_MS};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Runs one schedule; a panic in the protocol code is a failure too.
pub fn run_schedule(s: &Schedule) -> Result<Stats, Failure> {
    run_inner(s, false).0
}

/// Like [`run_schedule`], also returning a line per step of the run.
pub fn run_traced(s: &Schedule) -> (Result<Stats, Failure>, Vec<String>) {
    run_inner(s, true)
}

fn run_inner(s: &Schedule, trace: bool) -> (Result<Stats, Failure>, Vec<String>) {
    let mut w = world::World::new(s, trace);
    let r = catch_unwind(AssertUnwindSafe(|| w.run()));
    let r = match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Failure {
                kind: FailKind::Panic,
                at_ms: w.now_ms(),
                detail: msg,
            })
        }
    };
    (r, w.take_trace())
}

/// Delta debugging (ddmin) over the schedule's items: the smallest list
/// found (within `max_runs` re-runs) that still fails with the same kind.
/// Every candidate is re-run from the same seed.
pub fn shrink(s: &Schedule, f: &Failure, max_runs: usize) -> (Schedule, Failure, usize) {
    let mut runs = 0usize;
    let mut best = (s.clone(), f.clone());
    let try_items = |items: &[Item], runs: &mut usize| -> Option<(Schedule, Failure)> {
        *runs += 1;
        let mut t = s.clone();
        t.items = items.to_vec();
        t.cfg.ops = items
            .iter()
            .filter(|i| matches!(i, Item::Op { .. }))
            .count() as u32;
        match run_schedule(&t) {
            Err(g) if g.kind == f.kind => Some((t, g)),
            _ => None,
        }
    };
    if let Some(r) = try_items(&[], &mut runs) {
        return (r.0, r.1, runs);
    }
    let mut items = s.items.clone();
    let mut n = 2usize;
    while items.len() >= 2 && runs < max_runs {
        let len = items.len();
        let chunk = len.div_ceil(n);
        let mut reduced = false;
        // Complements first: drop one chunk at a time.
        let mut start = 0;
        while start < len && runs < max_runs {
            let cand: Vec<Item> = items[..start]
                .iter()
                .chain(items[(start + chunk).min(len)..].iter())
                .copied()
                .collect();
            if let Some(r) = try_items(&cand, &mut runs) {
                items = cand;
                best = r;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
            start += chunk;
        }
        if !reduced {
            if n >= len {
                break;
            }
            n = (n * 2).min(len);
        }
    }
    if items.len() == 1 && runs < max_runs {
        if let Some(r) = try_items(&[], &mut runs) {
            best = r;
        }
    }
    (best.0, best.1, runs)
}

/// Totals of a sweep.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub ran: u64,
    pub elapsed: Duration,
    pub events: u64,
    pub messages: u64,
    pub grants: u64,
    pub lvb_reads: u64,
    pub lvb_invalid_reads: u64,
    pub deaths: u64,
    /// Failing schedules (unshrunk), by seed.
    pub failures: Vec<(Schedule, Failure)>,
}

impl SweepReport {
    pub fn per_second(&self) -> f64 {
        self.ran as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the schedules of seeds `first..first + count` on `threads`
/// workers, stopping early once `stop_after` failures were found.
/// `progress(done, elapsed)` is called about once a second.
pub fn sweep(
    cfg: &SimConfig,
    first: u64,
    count: u64,
    threads: usize,
    stop_after: usize,
    progress: &(dyn Fn(u64, Duration) + Sync),
) -> SweepReport {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let out = Mutex::new(SweepReport::default());
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..threads.max(1) {
            sc.spawn(|| {
                let mut local = SweepReport::default();
                let mut fails = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let s = Schedule::generate(first.wrapping_add(i), cfg);
                    match run_schedule(&s) {
                        Ok(st) => {
                            local.events += st.events;
                            local.messages += st.messages;
                            local.grants += st.grants;
                            local.lvb_reads += st.lvb_reads;
                            local.lvb_invalid_reads += st.lvb_invalid_reads;
                            local.deaths += st.deaths;
                        }
                        Err(f) => {
                            fails.push((s, f));
                            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                            if o.failures.len() + fails.len() >= stop_after {
                                stop.store(true, Ordering::Relaxed);
                            }
                            o.failures.append(&mut fails);
                        }
                    }
                    local.ran += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                o.ran += local.ran;
                o.events += local.events;
                o.messages += local.messages;
                o.grants += local.grants;
                o.lvb_reads += local.lvb_reads;
                o.lvb_invalid_reads += local.lvb_invalid_reads;
                o.deaths += local.deaths;
            });
        }
        let mut last = Instant::now();
        while done.load(Ordering::Relaxed) < count && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(done.load(Ordering::Relaxed), start.elapsed());
            }
            if next.load(Ordering::Relaxed) >= count {
                break;
            }
        }
    });
    let mut r = out.into_inner().unwrap_or_else(|e| e.into_inner());
    r.elapsed = start.elapsed();
    r.failures.sort_by_key(|(s, _)| s.seed);
    r
}
