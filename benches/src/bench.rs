//! `make bench`: o2dlm's lock latency and throughput, side by side with the
//! physical limits (pthread_mutex, a loopback TCP round trip) and with what
//! users pick instead (Redis, etcd), all measured in the same run with the
//! same CPU placement. Prints one table and writes benches/results/.
//!
//! Usage: o2dlm-bench [--quick] [--out DIR] [--self-test]
//!
//! `--self-test` runs the o2dlm figures' code against a flock(2) stand-in
//! instead of the engine (tiny counts, no Redis/etcd), to check the harness
//! itself; it exits non-zero if any figure failed to produce a number.

mod baseline;
mod cpu;
mod engine;
mod plot;
mod procs;
mod report;
mod stats;

use baseline::{etcd, mutex, redis, tcp, ServiceConfig, ServiceResult};
use cpu::Placement;
use report::{Outcome, Row, Target};
use stats::Latencies;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How much of everything to do; `--quick` scales it to about a minute.
struct Settings {
    quick: bool,
    /// Nodes run the flock stand-in; rows are labelled so.
    self_test: bool,
    backend: engine::NodeBackend,
    /// What the figures are called in the table.
    sys: &'static str,
    out: PathBuf,
    mutex_iters: u64,
    tcp_samples: usize,
    redis_samples: usize,
    etcd_samples: usize,
    service_duration: Duration,
    /// Clients of Redis/etcd for throughput = o2dlm nodes compared with.
    service_clients: usize,
    cached_iters: u64,
    mastery_count: u64,
    handoff_turns: u64,
    scaling_duration: Duration,
    names_per_node: u64,
    /// Cluster sizes for the throughput scaling, per placement.
    sizes: [(Placement, Vec<usize>); 2],
    memory_resources: u64,
}

impl Settings {
    fn new(quick: bool, out: PathBuf) -> Settings {
        if quick {
            Settings {
                quick,
                self_test: false,
                backend: engine::NodeBackend::Engine,
                sys: "o2dlm",
                out,
                mutex_iters: 2_000_000,
                tcp_samples: 10_000,
                redis_samples: 5_000,
                etcd_samples: 300,
                service_duration: Duration::from_secs(1),
                service_clients: 2,
                cached_iters: 2_000_000,
                mastery_count: 2_000,
                handoff_turns: 2_000,
                scaling_duration: Duration::from_millis(500),
                names_per_node: 100,
                // The 1-core run is only needed for the comparison at 2 nodes.
                sizes: [
                    (Placement::OneCore, vec![2]),
                    (Placement::TwoCores, vec![2, 4, 8, 16]),
                ],
                memory_resources: 100_000,
            }
        } else {
            Settings {
                quick,
                self_test: false,
                backend: engine::NodeBackend::Engine,
                sys: "o2dlm",
                out,
                mutex_iters: 20_000_000,
                tcp_samples: 50_000,
                redis_samples: 20_000,
                etcd_samples: 2_000,
                service_duration: Duration::from_secs(3),
                service_clients: 2,
                cached_iters: 20_000_000,
                mastery_count: 20_000,
                handoff_turns: 20_000,
                scaling_duration: Duration::from_secs(3),
                names_per_node: 1_000,
                sizes: [
                    (Placement::OneCore, vec![2, 4, 8, 16]),
                    (Placement::TwoCores, vec![2, 4, 8, 16]),
                ],
                memory_resources: 1_000_000,
            }
        }
    }

    /// Small counts over the flock stand-in: seconds, not minutes.
    fn self_test(out: PathBuf) -> Settings {
        Settings {
            self_test: true,
            backend: engine::NodeBackend::FlockStandIn,
            sys: "flock stand-in",
            mutex_iters: 100_000,
            tcp_samples: 1_000,
            cached_iters: 10_000,
            mastery_count: 200,
            handoff_turns: 200,
            scaling_duration: Duration::from_millis(200),
            names_per_node: 10,
            sizes: [
                (Placement::OneCore, vec![2]),
                (Placement::TwoCores, vec![2, 4]),
            ],
            memory_resources: 1_000,
            ..Settings::new(true, out)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__echo") => return tcp::echo_main(args.get(2).map(String::as_str).unwrap_or("")),
        Some("__node") => return engine::node::node_main(&args[2..]),
        _ => {}
    }
    let (mut quick, mut self_test) = (false, false);
    let mut out: Option<PathBuf> = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--self-test" => self_test = true,
            "--out" => match it.next() {
                Some(d) => out = Some(PathBuf::from(d)),
                None => return usage("--out needs a directory"),
            },
            "-h" | "--help" => {
                println!("usage: o2dlm-bench [--quick] [--out DIR] [--self-test]");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    // Record the allowed CPUs before any thread narrows its own mask.
    cpu::allowed_cpus();
    if self_test {
        let out = out.unwrap_or_else(|| std::env::temp_dir().join("o2dlm-bench-self-test"));
        return run(&Settings::self_test(out));
    }
    let out = out.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    run(&Settings::new(quick, out))
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("o2dlm-bench: {problem}\nusage: o2dlm-bench [--quick] [--out DIR] [--self-test]");
    ExitCode::from(2)
}

/// Progress on stderr, so stdout carries only the table.
struct Progress(Instant);

impl Progress {
    fn step(&self, what: &str) {
        eprintln!("bench [{:>5.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

fn latency_rows(rows: &mut Vec<Row>, name: &str, lat: &Result<Latencies, Outcome>) {
    let (med, p99) = match lat {
        Ok(l) => (Outcome::Value(l.median_us()), Outcome::Value(l.p99_us())),
        Err(e) => (e.clone(), e.clone()),
    };
    rows.push(Row::new(format!("{name}, median"), med, "µs"));
    rows.push(Row::new(format!("{name}, p99"), p99, "µs"));
}

fn pct(lat: &Result<Latencies, Outcome>, p: f64) -> Outcome {
    match lat {
        Ok(l) if !l.is_empty() => Outcome::Value(l.percentile_ns(p) / 1e3),
        Ok(_) => Outcome::Failed("no samples".into()),
        Err(e) => e.clone(),
    }
}

fn run(s: &Settings) -> ExitCode {
    let progress = Progress(Instant::now());
    let mut rows: Vec<Row> = Vec::new();
    let mut plot_latency: Vec<(String, Latencies)> = Vec::new();
    let cores = cpu::allowed_cpus();
    eprintln!(
        "bench: {} mode, allowed CPUs {:?}, results to {}",
        match (s.self_test, s.quick) {
            (true, _) => "self-test (flock stand-in, not o2dlm)",
            (false, true) => "quick",
            (false, false) => "full",
        },
        cores,
        s.out.display()
    );

    // ---- baselines
    progress.step("pthread_mutex");
    let mutex_ns = mutex::pthread_mutex(&mutex::MutexConfig {
        iters: s.mutex_iters,
        batches: 7,
        placement: Placement::OneCore,
    });
    rows.push(Row::new(
        "pthread_mutex lock+unlock [1 core]",
        mutex_ns.clone(),
        "ns/op",
    ));
    rows.push(Row::new(
        "pthread_mutex lock+unlock [1 core]",
        mutex_ns.map(|ns| 1e9 / ns),
        "ops/s",
    ));

    let mut tcp_rtt = Vec::new();
    let mut redis_r = Vec::new();
    let mut etcd_r = Vec::new();
    for p in Placement::ALL {
        progress.step(&format!("TCP ping-pong [{}]", p.label()));
        let lat = tcp::ping_pong(&tcp::TcpConfig {
            placement: p,
            warmup: s.tcp_samples / 10,
            samples: s.tcp_samples,
        });
        latency_rows(
            &mut rows,
            &format!("TCP 24 B round trip [{}]", p.label()),
            &lat,
        );
        if let Ok(l) = &lat {
            plot_latency.push((format!("TCP round trip [{}]", p.label()), l.clone()));
        }
        tcp_rtt.push((p, lat));
    }
    for p in Placement::ALL {
        let cfg = |samples: usize| ServiceConfig {
            placement: p,
            warmup: samples / 10,
            samples,
            clients: s.service_clients,
            duration: s.service_duration,
        };
        for (name, result) in [("Redis", &mut redis_r), ("etcd", &mut etcd_r)] {
            progress.step(&format!("{name} [{}]", p.label()));
            let r: ServiceResult = if s.self_test {
                ServiceResult::unavailable(&Outcome::Unavailable("skipped in --self-test".into()))
            } else if name == "Redis" {
                redis::measure(&cfg(s.redis_samples))
            } else {
                etcd::measure(&cfg(s.etcd_samples))
            };
            let what = if name == "Redis" {
                "Redis SET NX PX + DEL"
            } else {
                "etcd v3 lock + unlock"
            };
            latency_rows(&mut rows, &format!("{what} [{}]", p.label()), &r.latency);
            rows.push(Row::new(
                format!("{what}, {} clients [{}]", s.service_clients, p.label()),
                r.throughput.clone(),
                "ops/s",
            ));
            if let Ok(l) = &r.latency {
                plot_latency.push((format!("{name} lock+unlock [{}]", p.label()), l.clone()));
            }
            result.push((p, r));
        }
    }

    // ---- o2dlm figures
    let mut pending_notes: Vec<String> = Vec::new();
    let mut note = |o: &Outcome| {
        let line = match o {
            Outcome::Pending { reason, detail } => {
                format!("{}: pending, {reason}: {detail}", s.sys)
            }
            Outcome::Failed(why) => format!("{}: failed: {why}", s.sys),
            _ => return,
        };
        if !pending_notes.contains(&line) {
            pending_notes.push(line);
        }
    };
    progress.step(&format!("{} cached re-lock", s.sys));
    let cached = engine::cached_relock(&engine::CachedConfig {
        backend: s.backend,
        iters: s.cached_iters,
    });
    note(&cached.ns_per_op);
    rows.push(
        Row::new(
            format!("{} cached re-lock [1 core]", s.sys),
            cached.ns_per_op.clone(),
            "ns/op",
        )
        .baseline("pthread_mutex", mutex_ns.clone())
        .target(Target::RatioAtMost(2.0)),
    );
    rows.push(Row::new(
        format!("{} cached re-lock [1 core]", s.sys),
        cached.ns_per_op.map(|ns| 1e9 / ns),
        "ops/s",
    ));

    progress.step(&format!("{} new-lock mastery, 1 node", s.sys));
    let m1 = engine::mastery(&engine::MasteryConfig {
        backend: s.backend,
        nodes: 1,
        placement: Placement::OneCore,
        count: s.mastery_count,
    });
    note(&m1.ops_per_sec);
    latency_rows(
        &mut rows,
        &format!("{} new-lock mastery, 1 node [1 core]", s.sys),
        &m1.latency,
    );
    rows.push(Row::new(
        format!("{} new-lock mastery, 1 node [1 core]", s.sys),
        m1.ops_per_sec.clone(),
        "ops/s",
    ));

    let mut m3 = Vec::new();
    let mut handoffs = Vec::new();
    for (p, rtt) in &tcp_rtt {
        progress.step(&format!(
            "{} new-lock mastery, 3 nodes [{}]",
            s.sys,
            p.label()
        ));
        let m = engine::mastery(&engine::MasteryConfig {
            backend: s.backend,
            nodes: 3,
            placement: *p,
            count: s.mastery_count,
        });
        let name = format!("{} new-lock mastery, 3 nodes [{}]", s.sys, p.label());
        rows.push(
            Row::new(format!("{name}, median"), pct(&m.latency, 50.0), "µs")
                .baseline("TCP RTT median", pct(rtt, 50.0)),
        );
        rows.push(
            Row::new(format!("{name}, p99"), pct(&m.latency, 99.0), "µs")
                .baseline("TCP RTT p99", pct(rtt, 99.0)),
        );
        rows.push(Row::new(name, m.ops_per_sec.clone(), "ops/s"));
        m3.push((*p, m));

        progress.step(&format!("{} EX handoff [{}]", s.sys, p.label()));
        let h = engine::handoff(&engine::HandoffConfig {
            backend: s.backend,
            placement: *p,
            turns: s.handoff_turns,
        });
        let name = format!("{} EX handoff, 2 nodes [{}]", s.sys, p.label());
        for (stat, pc) in [("median", 50.0), ("p99", 99.0)] {
            rows.push(
                Row::new(format!("{name}, {stat}"), pct(&h.latency, pc), "µs")
                    .baseline(format!("TCP RTT {stat}"), pct(rtt, pc))
                    .target(Target::RatioAtMost(2.0)),
            );
        }
        if let Ok(l) = &h.latency {
            plot_latency.push((format!("{} EX handoff [{}]", s.sys, p.label()), l.clone()));
        }
        handoffs.push((*p, h));
    }

    let mut scaling: Vec<(Placement, usize, engine::ScalingPoint)> = Vec::new();
    for (p, sizes) in &s.sizes {
        for &n in sizes {
            progress.step(&format!("{} throughput, {n} nodes [{}]", s.sys, p.label()));
            let pt = engine::scaling(&engine::ScalingConfig {
                backend: s.backend,
                nodes: n,
                placement: *p,
                duration: s.scaling_duration,
                names_per_node: s.names_per_node,
            });
            note(&pt.disjoint);
            if n == s.service_clients {
                let find = |v: &Vec<(Placement, ServiceResult)>| {
                    v.iter()
                        .find(|(q, _)| q == p)
                        .map(|(_, r)| r.throughput.clone())
                        .unwrap_or(Outcome::Unavailable("not measured".into()))
                };
                for (svc, base, goal) in [
                    ("Redis", find(&redis_r), 3.0),
                    ("etcd", find(&etcd_r), 20.0),
                ] {
                    rows.push(
                        Row::new(
                            format!(
                                "{} lock+unlock, {n} nodes, disjoint names [{}]",
                                s.sys,
                                p.label()
                            ),
                            pt.disjoint.clone(),
                            "ops/s",
                        )
                        .baseline(format!("{svc}, {n} clients"), base)
                        .target(Target::RatioAtLeast(goal)),
                    );
                }
            } else {
                rows.push(Row::new(
                    format!(
                        "{} lock+unlock, {n} nodes, disjoint names [{}]",
                        s.sys,
                        p.label()
                    ),
                    pt.disjoint.clone(),
                    "ops/s",
                ));
            }
            rows.push(Row::new(
                format!(
                    "{} lock+unlock, {n} nodes, one shared name [{}]",
                    s.sys,
                    p.label()
                ),
                pt.shared.clone(),
                "ops/s",
            ));
            scaling.push((*p, n, pt));
        }
    }

    progress.step(&format!(
        "{} memory, {} resources",
        s.sys, s.memory_resources
    ));
    let mem = engine::memory(&engine::MemoryConfig {
        backend: s.backend,
        resources: s.memory_resources,
    });
    let held = if mem.resources == 1_000_000 {
        "1 M held".to_string()
    } else {
        format!("{} held", mem.resources)
    };
    rows.push(Row::new(
        format!("{} memory per lock resource ({held})", s.sys),
        mem.bytes_per_resource.clone(),
        "bytes",
    ));
    let scaled = if mem.resources == 1_000_000 {
        String::new()
    } else {
        format!(", scaled from {}", mem.resources)
    };
    rows.push(
        Row::new(
            format!("{} memory for 1 M lock resources{scaled}", s.sys),
            mem.bytes_per_resource.map(|b| b * 1e6 / (1024.0 * 1024.0)),
            "MiB",
        )
        .target(Target::AtMost(256.0)),
    );

    // ---- messages per operation, against what the kernel's o2dlm sends for
    // the same operation (o2net requests plus their status replies).
    let mut msg_row = |name: String, v: &Outcome, kernel: f64| {
        rows.push(
            Row::new(
                format!("{} messages/op: {name}", s.sys),
                v.clone(),
                "msgs/op",
            )
            .baseline("kernel", Outcome::Value(kernel))
            .target(Target::AtMost(kernel)),
        );
    };
    msg_row("cached re-lock".into(), &cached.msgs_per_op, 0.0);
    msg_row("new-lock mastery, 1 node".into(), &m1.msgs_per_op, 0.0);
    for (p, m) in &m3 {
        // 2 MASTER_REQUESTs + 2 ASSERT_MASTERs, each with its status reply.
        msg_row(
            format!("new-lock mastery, 3 nodes [{}]", p.label()),
            &m.msgs_per_op,
            8.0,
        );
    }
    for (p, h) in &handoffs {
        // Request to the master and grant, or BAST and downconvert: 2 + 2.
        msg_row(format!("EX handoff [{}]", p.label()), &h.msgs_per_op, 4.0);
    }
    for (p, n, pt) in &scaling {
        msg_row(
            format!("{n} nodes, disjoint names [{}]", p.label()),
            &pt.msgs_disjoint,
            0.0,
        );
        // Worst case per lock+unlock: convert to the master, BAST to the
        // holder, its downconvert, the grant: 4 requests + 4 replies (2
        // nodes: one of them is the master, so 2 + 2).
        let kernel = if *n == 2 { 4.0 } else { 8.0 };
        msg_row(
            format!("{n} nodes, one shared name [{}]", p.label()),
            &pt.msgs_shared,
            kernel,
        );
    }

    // ---- output
    let table = report::text_table(&rows);
    println!("{table}");
    for n in &pending_notes {
        println!("{n}");
    }
    let stamp = report::utc_stamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let mut scaling_series = Vec::new();
    for (p, sizes) in &s.sizes {
        for (kind, pick) in [("disjoint names", 0), ("one shared name", 1)] {
            let pts: Vec<(usize, f64)> = scaling
                .iter()
                .filter(|(q, n, _)| q == p && sizes.contains(n))
                .filter_map(|(_, n, pt)| {
                    let o = if pick == 0 { &pt.disjoint } else { &pt.shared };
                    o.value().map(|v| (*n, v))
                })
                .collect();
            scaling_series.push((format!("{} {kind} [{}]", s.sys, p.label()), pts));
        }
    }
    let mut references = Vec::new();
    for (name, v) in [("Redis", &redis_r), ("etcd", &etcd_r)] {
        for (p, r) in v {
            if let Some(x) = r.throughput.value() {
                references.push((
                    format!("{name}, {} clients [{}]", s.service_clients, p.label()),
                    x,
                ));
            }
        }
    }
    let data = plot::PlotData {
        title: format!(
            "o2dlm benchmark, {stamp}{}",
            match (s.self_test, s.quick) {
                (true, _) => " (harness self-test: flock stand-in, not o2dlm)",
                (false, true) => " (quick)",
                (false, false) => "",
            }
        ),
        latency: plot_latency,
        scaling: scaling_series,
        references,
        notes: pending_notes.clone(),
    };
    if let Err(e) = std::fs::create_dir_all(&s.out) {
        eprintln!("bench: cannot create {}: {e}", s.out.display());
        return ExitCode::from(1);
    }
    let png = s.out.join("bench.png");
    match plot::write_png(&png, &data) {
        Ok(true) => eprintln!("bench: wrote {}", png.display()),
        Ok(false) => eprintln!(
            "bench: wrote {} without text (no TTF font found)",
            png.display()
        ),
        Err(e) => eprintln!("bench: plot failed: {e}"),
    }
    let md = s.out.join("results.md");
    let text = markdown(s, &stamp, &rows, &pending_notes);
    if let Err(e) = std::fs::write(&md, text) {
        eprintln!("bench: cannot write {}: {e}", md.display());
        return ExitCode::from(1);
    }
    eprintln!("bench: wrote {}", md.display());
    progress.step("done");
    if s.self_test {
        // Every figure but message counts (the stand-in has none) must have
        // produced a number, or the harness is broken.
        let broken: Vec<&Row> = rows
            .iter()
            .filter(|r| r.figure.starts_with(s.sys) && r.unit != "msgs/op")
            .filter(|r| r.value.value().is_none())
            .collect();
        for r in &broken {
            eprintln!("self-test: {} gave {}", r.figure, r.value.text());
        }
        if !broken.is_empty() {
            return ExitCode::from(1);
        }
        eprintln!("self-test: every figure produced a number");
    }
    ExitCode::SUCCESS
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {} CPUs allowed, Linux {}",
        cpu::allowed_cpus().len(),
        kernel.trim()
    )
}

fn markdown(s: &Settings, stamp: &str, rows: &[Row], notes: &[String]) -> String {
    let mut out = format!(
        "## Benchmarks ({stamp})\n\n`make bench{}` on {}.\n\n",
        match (s.self_test, s.quick) {
            (true, _) => " BENCH_ARGS=--self-test` (flock stand-in, not o2dlm) `",
            (false, true) => " BENCH_ARGS=--quick",
            (false, false) => "",
        },
        machine()
    );
    out.push_str(
        "Placement: `[1 core]` = every process of the measurement pinned to one core; \
`[2 cores]` = the measuring side on one core and the other party (server, echo process, \
other node) on the other. Each baseline is measured in the same run with the placement of the \
figure it is compared with. Ratio = value / baseline.\n\n",
    );
    out.push_str(&report::markdown_table(rows));
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out.push_str("\n![latency and scaling](bench.png)\n");
    out
}
