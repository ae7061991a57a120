//! Latency samples and their summaries.

/// A sorted set of latency samples, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    sorted_ns: Vec<u64>,
}

impl Latencies {
    pub fn new(mut samples_ns: Vec<u64>) -> Latencies {
        samples_ns.sort_unstable();
        Latencies {
            sorted_ns: samples_ns,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sorted_ns.is_empty()
    }

    /// The `p`-th percentile (0..=100), nearest-rank, in nanoseconds.
    pub fn percentile_ns(&self, p: f64) -> f64 {
        if self.sorted_ns.is_empty() {
            return f64::NAN;
        }
        let n = self.sorted_ns.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted_ns[rank.clamp(1, n) - 1] as f64
    }

    pub fn median_us(&self) -> f64 {
        self.percentile_ns(50.0) / 1e3
    }

    pub fn p99_us(&self) -> f64 {
        self.percentile_ns(99.0) / 1e3
    }

    /// Points of the cumulative distribution (latency µs, percent at or
    /// below), thinned to at most `max_points` for plotting.
    pub fn cdf_points_us(&self, max_points: usize) -> Vec<(f64, f64)> {
        let n = self.sorted_ns.len();
        if n == 0 {
            return Vec::new();
        }
        let step = (n / max_points.max(1)).max(1);
        let mut pts: Vec<(f64, f64)> = (0..n)
            .step_by(step)
            .map(|i| {
                (
                    self.sorted_ns[i] as f64 / 1e3,
                    100.0 * (i + 1) as f64 / n as f64,
                )
            })
            .collect();
        pts.push((self.sorted_ns[n - 1] as f64 / 1e3, 100.0));
        pts
    }
}

/// Monotonic nanoseconds, shared by every process on the machine
/// (CLOCK_MONOTONIC), so a time written by one process can be compared with
/// a time read by another.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let l = Latencies::new((1..=100).rev().collect());
        assert_eq!(l.percentile_ns(50.0), 50.0);
        assert_eq!(l.percentile_ns(99.0), 99.0);
        assert_eq!(l.percentile_ns(100.0), 100.0);
        assert_eq!(l.percentile_ns(0.0), 1.0);
        assert!(Latencies::new(vec![]).percentile_ns(50.0).is_nan());
    }

    #[test]
    fn cdf_ends_at_the_maximum() {
        let l = Latencies::new(vec![3000, 1000, 2000]);
        let pts = l.cdf_points_us(2);
        assert_eq!(pts.first(), Some(&(1.0, 100.0 / 3.0)));
        assert_eq!(pts.last(), Some(&(3.0, 100.0)));
    }
}
