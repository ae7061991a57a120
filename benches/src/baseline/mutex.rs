//! Uncontended pthread_mutex lock + unlock: the floor for a lock that is
//! already held locally ("cached re-lock").

use crate::cpu::{self, Placement};
use crate::report::Outcome;
use std::time::Instant;

pub struct MutexConfig {
    /// lock+unlock pairs per batch.
    pub iters: u64,
    /// Batches; the median batch is reported (robust to a neighbour's burst).
    pub batches: usize,
    pub placement: Placement,
}

/// ns per lock+unlock pair.
pub fn pthread_mutex(cfg: &MutexConfig) -> Outcome {
    let cpu = match cfg.placement.client_cpu() {
        Ok(c) => c,
        Err(e) => return Outcome::Unavailable(e.to_string()),
    };
    let (iters, batches) = (cfg.iters, cfg.batches.max(1));
    let run = move || -> Result<f64, String> {
        cpu::pin_current_thread(cpu).map_err(|e| format!("pin: {e}"))?;
        // Boxed so the mutex never moves after initialisation.
        let m: Box<std::cell::UnsafeCell<libc::pthread_mutex_t>> =
            Box::new(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
        let mut per_batch = Vec::with_capacity(batches);
        for _ in 0..batches {
            let t0 = Instant::now();
            for _ in 0..iters {
                // SAFETY: m is an initialised, never-moved mutex used by this
                // thread only; every lock is paired with an unlock.
                unsafe {
                    libc::pthread_mutex_lock(std::hint::black_box(m.get()));
                    libc::pthread_mutex_unlock(std::hint::black_box(m.get()));
                }
            }
            per_batch.push(t0.elapsed().as_nanos() as f64 / iters as f64);
        }
        // SAFETY: unlocked, and no other reference exists.
        unsafe { libc::pthread_mutex_destroy(m.get()) };
        per_batch.sort_by(f64::total_cmp);
        Ok(per_batch[per_batch.len() / 2])
    };
    match std::thread::spawn(run).join() {
        Ok(Ok(ns)) => Outcome::Value(ns),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed("measuring thread panicked".into()),
    }
}
