//! `o2dlm simulate`: sweeps the deterministic cluster simulator over many
//! seeds (printing schedules per second), or replays one seed or one
//! schedule file, shrinking a failure to its shortest schedule.

use crate::sim::{self, Broken, FaultSet, Schedule, SimConfig};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: o2dlm simulate [options]

Sweep:   o2dlm simulate --schedules N [--seed FIRST] [--threads T]
Replay:  o2dlm simulate --replay SEED [--trace]
File:    o2dlm simulate --file SCHEDULE.txt [--trace]

Options (the same ones must be given to replay a seed):
  --nodes K | --nodes LO-HI   nodes per schedule (2..8; default 2-4)
  --domains D                 domains every node joins (1..2; default 1)
  --names S                   lock names per domain (default 3)
  --ops N                     client operations per schedule (default 40)
  --faults LIST               none | all | delays,pauses,links,crashes
                              (default all)
  --cache-clients C           clients per node through LocalLock (default 2)
  --direct-clients C          clients per node on the Dlm API (default 1)
  --broken grant|unlock|lvb   a deliberately broken variant (checker demo);
  --broken engine-cancel      the engine's current refused-cancel handling
  --shrink-runs N             re-runs allowed for shrinking (default 5000)
  --failures N                sweep on until N failures (default 1); each
                              is listed, the first one is shrunk
  --trace                     print every step of the (shrunk) run

A failure prints the seed, the failure, and the shrunk schedule as text:
save it to a file and replay it with --file.
";

pub fn run(args: &[String]) -> ExitCode {
    match run_inner(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("o2dlm simulate: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn num(v: Option<&String>, what: &str) -> Result<u64, String> {
    let v = v.ok_or(format!("{what} needs a value"))?;
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|_| format!("bad number '{v}' for {what}"))
}

fn run_inner(args: &[String]) -> Result<ExitCode, String> {
    let mut cfg = SimConfig::default();
    let (mut schedules, mut first, mut threads) = (None, 1u64, 2usize);
    let (mut replay, mut file, mut trace, mut shrink_runs) = (None, None, false, 5000usize);
    let mut max_failures = 1usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            "--schedules" => schedules = Some(num(it.next(), a)?),
            "--seed" => first = num(it.next(), a)?,
            "--threads" => threads = num(it.next(), a)?.clamp(1, 64) as usize,
            "--replay" => replay = Some(num(it.next(), a)?),
            "--file" => file = Some(it.next().ok_or("--file needs a path")?.clone()),
            "--trace" => trace = true,
            "--shrink-runs" => shrink_runs = num(it.next(), a)? as usize,
            "--failures" => max_failures = num(it.next(), a)?.max(1) as usize,
            "--nodes" => {
                let v = it.next().ok_or("--nodes needs a value")?;
                let (lo, hi) = match v.split_once('-') {
                    Some((l, h)) => (l.to_string(), h.to_string()),
                    None => (v.clone(), v.clone()),
                };
                let lo = num(Some(&lo), a)?.clamp(2, 8) as u8;
                let hi = num(Some(&hi), a)?.clamp(u64::from(lo), 8) as u8;
                cfg.nodes_min = lo;
                cfg.nodes_max = hi;
            }
            "--domains" => cfg.domains = num(it.next(), a)?.clamp(1, 2) as u8,
            "--names" => cfg.names = num(it.next(), a)?.clamp(1, 16) as u8,
            "--ops" => cfg.ops = num(it.next(), a)?.min(100_000) as u32,
            "--cache-clients" => cfg.cache_clients = num(it.next(), a)?.min(8) as u8,
            "--direct-clients" => cfg.direct_clients = num(it.next(), a)?.min(8) as u8,
            "--faults" => cfg.faults = FaultSet::parse(it.next().ok_or("--faults needs a list")?)?,
            "--broken" => {
                cfg.broken = Some(Broken::parse(it.next().ok_or("--broken needs a variant")?)?)
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let s = Schedule::from_text(&text)?;
        return Ok(one(&s, trace, shrink_runs));
    }
    if let Some(seed) = replay {
        return Ok(one(&Schedule::generate(seed, &cfg), trace, shrink_runs));
    }
    let Some(count) = schedules else {
        return Err("give --schedules, --replay or --file".into());
    };
    println!(
        "simulating {count} schedules from seed {first} on {threads} threads: nodes {}-{}, {} domain(s), {} names, {} ops, faults {}{}",
        cfg.nodes_min,
        cfg.nodes_max,
        cfg.domains,
        cfg.names,
        cfg.ops,
        cfg.faults,
        cfg.broken.map_or(String::new(), |b| format!(", BROKEN {b:?}"))
    );
    let progress = |done: u64, el: Duration| {
        if el.as_secs() % 10 == 0 {
            println!(
                "  {done} schedules, {:.0}/s",
                done as f64 / el.as_secs_f64().max(1e-9)
            );
        }
    };
    let r = sim::sweep(&cfg, first, count, threads, max_failures, &progress);
    let rate = r.per_second();
    println!(
        "{} schedules in {:.1} s: {:.0} schedules/s ({:.0} per thread); {} messages, {} grants, {} LVB reads checked ({} invalid), {} node deaths",
        r.ran,
        r.elapsed.as_secs_f64(),
        rate,
        rate / threads as f64,
        r.messages,
        r.grants,
        r.lvb_reads,
        r.lvb_invalid_reads,
        r.deaths
    );
    if rate > 0.0 {
        println!(
            "projected time for 1,000,000 schedules at this rate: {:.1} min",
            1e6 / rate / 60.0
        );
    }
    if r.failures.len() > 1 {
        println!("{} failures:", r.failures.len());
        for (s, f) in &r.failures {
            println!("  seed {} ({} nodes): {f}", s.seed, s.nodes);
        }
    }
    match r.failures.first() {
        None => {
            println!("no failure");
            Ok(ExitCode::SUCCESS)
        }
        Some((s, _)) => Ok(one(s, trace, shrink_runs)),
    }
}

/// Runs one schedule; on failure shrinks it and prints the result.
fn one(s: &Schedule, trace: bool, shrink_runs: usize) -> ExitCode {
    let (r, lines) = if trace {
        sim::run_traced(s)
    } else {
        (sim::run_schedule(s), Vec::new())
    };
    let f = match r {
        Ok(st) => {
            for l in lines {
                println!("{l}");
            }
            println!(
                "seed {} ({} nodes): passed: {} ms simulated, {} events, {} messages, {} grants, {} ops applied, {} LVB reads",
                s.seed, s.nodes, st.end_ms, st.events, st.messages, st.grants, st.ops_applied, st.lvb_reads
            );
            return ExitCode::SUCCESS;
        }
        Err(f) => f,
    };
    println!("FAILED: seed {} ({} nodes): {f}", s.seed, s.nodes);
    let (m, g, runs) = sim::shrink(s, &f, shrink_runs);
    println!(
        "shrunk from {} to {} items in {runs} runs: {g}",
        s.items.len(),
        m.items.len()
    );
    if trace {
        let (_, lines) = sim::run_traced(&m);
        for l in lines {
            println!("{l}");
        }
    }
    println!("--- schedule (replay: save to a file, o2dlm simulate --file FILE [--trace]) ---");
    print!("{}", m.to_text());
    ExitCode::FAILURE
}
