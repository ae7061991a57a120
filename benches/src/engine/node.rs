//! The engine node process (`o2dlm-bench __node DOMAIN`): one o2cb cluster
//! node made by the library's embedded engine, configured by the
//! environment the coordinator sets (O2DLM_BACKEND=engine,
//! O2DLM_CLUSTER_CONF, O2DLM_NODE, O2DLM_HEARTBEAT_DEVICE, O2CB_*).
//!
//! It joins DOMAIN through `o2dlm::api::Context::initialize`, then prints
//! `ready` (or `error SYMBOL message` and exits) and runs the workloads the
//! coordinator sends on stdin, one per line, answering each with one line:
//! `ok key=value ...` or `error text`.
//!
//!   cached NAME ITERS            lock+unlock NAME ITERS times after a first
//!                                acquisition; ns_per_op
//!   mastery PREFIX COUNT         first lock of COUNT fresh names; samples
//!   handoff NAME TURNS ME        EX ping-pong with the other node; samples
//!                                (grant time minus the peer's unlock time)
//!   throughput NAME|PREFIX NAMES DURATION_MS START_NS
//!                                lock+unlock as fast as possible; ops, ns
//!   hold PREFIX COUNT            take and keep COUNT PR locks; rss before/after
//!   messages                     o2net messages this node has sent
//!   quit

use crate::stats::monotonic_ns;
use o2dlm::api::Context;
use o2dlm::Error;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PR: i32 = 0;
const EX: i32 = 1;

pub fn node_main(args: &[String]) -> ExitCode {
    let Some(domain) = args.first() else {
        println!("error usage: __node DOMAIN");
        return ExitCode::from(2);
    };
    let ctx = match Context::initialize(None, domain.as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            println!("error {} {}", e.symbol(), e.message());
            return ExitCode::from(2);
        }
    };
    reply("ready".into());
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        let answer = match w.as_slice() {
            ["quit"] => break,
            ["cached", name, iters] => num(iters).and_then(|n| cached(&ctx, name, n)),
            ["mastery", prefix, count] => num(count).and_then(|n| mastery(&ctx, prefix, n)),
            ["handoff", name, turns, me] => {
                num(turns).and_then(|t| num(me).and_then(|m| handoff(&ctx, name, t, m)))
            }
            ["throughput", name, names, ms, start] => num(names).and_then(|n| {
                num(ms).and_then(|ms| num(start).and_then(|s| throughput(&ctx, name, n, ms, s)))
            }),
            ["hold", prefix, count] => num(count).and_then(|n| hold(&ctx, prefix, n)),
            ["messages"] => messages_sent(&ctx).map(|n| format!("sent={n}")),
            _ => Err(format!("unknown command {line:?}")),
        };
        reply(match answer {
            Ok(kv) => format!("ok {kv}"),
            Err(e) => format!("error {e}"),
        });
    }
    match ctx.destroy() {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

fn reply(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn num(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn err(what: &str, e: Error) -> String {
    format!("{what}: {} ({})", e.symbol(), e.message())
}

/// The number of o2net messages (requests and status replies) this node
/// has sent. The engine does not count them yet; when it does, this is the
/// one place to read its counter.
pub fn messages_sent(_ctx: &Context) -> Result<u64, String> {
    Err("the engine exposes no message counter yet".into())
}

fn cached(ctx: &Context, name: &str, iters: u64) -> Result<String, String> {
    ctx.lock(name.as_bytes(), 0, EX)
        .map_err(|e| err("lock", e))?;
    ctx.unlock(name.as_bytes()).map_err(|e| err("unlock", e))?;
    let before = messages_sent(ctx).ok();
    let t0 = Instant::now();
    for _ in 0..iters {
        ctx.lock(name.as_bytes(), 0, EX)
            .map_err(|e| err("lock", e))?;
        ctx.unlock(name.as_bytes()).map_err(|e| err("unlock", e))?;
    }
    let ns = t0.elapsed().as_nanos() as f64 / iters.max(1) as f64;
    let msgs = match (before, messages_sent(ctx).ok()) {
        (Some(a), Some(b)) => format!(" msgs={}", b.saturating_sub(a)),
        _ => String::new(),
    };
    Ok(format!("ns_per_op={ns}{msgs}"))
}

fn join_samples(v: &[u64]) -> String {
    let parts: Vec<String> = v.iter().map(u64::to_string).collect();
    parts.join(",")
}

fn mastery(ctx: &Context, prefix: &str, count: u64) -> Result<String, String> {
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let t0 = Instant::now();
        ctx.lock(name.as_bytes(), 0, EX)
            .map_err(|e| err("lock", e))?;
        samples.push(t0.elapsed().as_nanos() as u64);
        ctx.unlock(name.as_bytes()).map_err(|e| err("unlock", e))?;
    }
    Ok(format!("samples={}", join_samples(&samples)))
}

/// LVB layout of the handoff: whose turn it is (node index + 1, so a
/// never-written LVB of zeros means "nobody yet"), and the monotonic time
/// at which the previous holder released the lock.
fn handoff(ctx: &Context, name: &str, turns: u64, me: u64) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut done, mut wasted) = (0u64, 0u64);
    let mut samples = Vec::with_capacity(turns as usize);
    let mut lvb = [0u8; 16];
    while done < turns {
        if Instant::now() > deadline {
            return Err(format!("handoff: only {done} of {turns} turns in 600 s"));
        }
        ctx.lock(name.as_bytes(), 0, EX)
            .map_err(|e| err("lock", e))?;
        let granted = monotonic_ns();
        let (turn, released) = match ctx.read_lvb(name.as_bytes(), &mut lvb) {
            Ok(16) => (
                u64::from_le_bytes(lvb[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(lvb[8..].try_into().unwrap_or_default()),
            ),
            Ok(_) | Err(Error::LvbInvalid) => (0, 0),
            Err(e) => return Err(err("read_lvb", e)),
        };
        // Node 0 opens the game on a fresh LVB; after that turns alternate.
        let mine = turn == me + 1 || (turn == 0 && me == 0);
        if mine {
            if released != 0 {
                samples.push(granted.saturating_sub(released));
            }
            done += 1;
            let next = if me == 0 { 2u64 } else { 1u64 };
            lvb[..8].copy_from_slice(&next.to_le_bytes());
            lvb[8..].copy_from_slice(&monotonic_ns().to_le_bytes());
            ctx.write_lvb(name.as_bytes(), &lvb)
                .map_err(|e| err("write_lvb", e))?;
        } else {
            wasted += 1;
        }
        ctx.unlock(name.as_bytes()).map_err(|e| err("unlock", e))?;
    }
    Ok(format!(
        "wasted={wasted} samples={}",
        join_samples(&samples)
    ))
}

/// NAMES = 1: every node hammers the one name NAME (shared). NAMES > 1:
/// this node cycles over its own NAME0..NAME{NAMES-1} (disjoint), each
/// locked once beforehand so mastery is not part of the timed loop.
fn throughput(
    ctx: &Context,
    name: &str,
    names: u64,
    ms: u64,
    start_ns: u64,
) -> Result<String, String> {
    let ids: Vec<String> = if names <= 1 {
        vec![name.to_string()]
    } else {
        (0..names).map(|i| format!("{name}{i}")).collect()
    };
    if names > 1 {
        for id in &ids {
            ctx.lock(id.as_bytes(), 0, EX).map_err(|e| err("lock", e))?;
            ctx.unlock(id.as_bytes()).map_err(|e| err("unlock", e))?;
        }
    }
    while monotonic_ns() < start_ns {
        std::thread::sleep(Duration::from_micros(200));
    }
    let before = messages_sent(ctx).ok();
    let t0 = Instant::now();
    let end = t0 + Duration::from_millis(ms);
    let mut ops = 0u64;
    while Instant::now() < end {
        let id = &ids[(ops % ids.len() as u64) as usize];
        ctx.lock(id.as_bytes(), 0, EX).map_err(|e| err("lock", e))?;
        ctx.unlock(id.as_bytes()).map_err(|e| err("unlock", e))?;
        ops += 1;
    }
    let elapsed = t0.elapsed().as_nanos();
    let msgs = match (before, messages_sent(ctx).ok()) {
        (Some(a), Some(b)) => format!(" msgs={}", b.saturating_sub(a)),
        _ => String::new(),
    };
    Ok(format!("ops={ops} ns={elapsed}{msgs}"))
}

fn rss_bytes() -> Result<u64, String> {
    let statm = std::fs::read_to_string("/proc/self/statm").map_err(|e| e.to_string())?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad /proc/self/statm")?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page).unwrap_or(4096))
}

fn hold(ctx: &Context, prefix: &str, count: u64) -> Result<String, String> {
    let before = rss_bytes()?;
    for i in 0..count {
        let name = format!("{prefix}{i}");
        ctx.lock(name.as_bytes(), 0, PR)
            .map_err(|e| err("lock", e))?;
    }
    let after = rss_bytes()?;
    Ok(format!("rss_before={before} rss_after={after}"))
}
