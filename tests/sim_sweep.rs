//! The cluster simulator (issue 6): a short sweep over seeds must find no
//! failure, runs must replay exactly, and deliberately broken variants
//! must be caught.

use o2dlm::sim::{self, FaultSet, Schedule, SimConfig};

#[test]
fn probe_sweep() {
    let cfg = SimConfig::default();
    let r = sim::sweep(&cfg, 1, 300, 1, 5, &|_, _| {});
    println!(
        "ran {} in {:?}: {:.0}/s msgs {} grants {} reads {}",
        r.ran,
        r.elapsed,
        r.per_second(),
        r.messages,
        r.grants,
        r.lvb_reads
    );
    for (s, f) in &r.failures {
        println!("seed {} nodes {}: {f}", s.seed, s.nodes);
    }
    let _ = (FaultSet::NONE, Schedule::generate(1, &cfg));
}

#[test]
fn probe_shrink() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let cfg = SimConfig::default();
    let s = Schedule::generate(seed, &cfg);
    let Err(f) = sim::run_schedule(&s) else {
        return;
    };
    let (m, g, runs) = sim::shrink(&s, &f, 3000);
    println!("shrunk in {runs} runs: {g}\n{}", m.to_text());
    let (_, tr) = sim::run_traced(&m);
    for l in tr.iter().filter(|l| !l.contains("request 505")) {
        println!("{l}");
    }
}
