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
//!   warm NAME|PREFIX NAMES       lock+unlock each name once (mastery)
//!   throughput NAME|PREFIX NAMES DURATION_MS START_NS
//!                                lock+unlock as fast as possible; ops, ns
//!   hold PREFIX COUNT            take and keep COUNT PR locks; rss before/after
//!   messages                     o2net messages this node has sent
//!   quit
//!
//! `o2dlm-bench __node --flock DIR` serves the same commands over a flock(2)
//! stand-in (see `FlockLocks`), for `--self-test` of the harness.

use crate::stats::monotonic_ns;
use o2dlm::api::Context;
use o2dlm::Error;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PR: i32 = 0;
const EX: i32 = 1;

/// What a workload needs from a lock manager. The real one is the
/// library's `Context`; `FlockLocks` is a stand-in that lets the harness
/// itself be tested before the engine exists.
pub trait Locks {
    fn lock(&self, name: &str, level: i32) -> Result<(), String>;
    fn unlock(&self, name: &str) -> Result<(), String>;
    /// Ok(0) when the LVB holds nothing valid yet.
    fn read_lvb(&self, name: &str, buf: &mut [u8]) -> Result<usize, String>;
    fn write_lvb(&self, name: &str, data: &[u8]) -> Result<(), String>;
    /// o2net messages (requests and status replies) this node has sent.
    fn messages_sent(&self) -> Result<u64, String>;
}

fn err(what: &str, e: Error) -> String {
    format!("{what}: {} ({})", e.symbol(), e.message())
}

impl Locks for Context {
    fn lock(&self, name: &str, level: i32) -> Result<(), String> {
        Context::lock(self, name.as_bytes(), 0, level).map_err(|e| err("lock", e))
    }

    fn unlock(&self, name: &str) -> Result<(), String> {
        Context::unlock(self, name.as_bytes()).map_err(|e| err("unlock", e))
    }

    fn read_lvb(&self, name: &str, buf: &mut [u8]) -> Result<usize, String> {
        match Context::read_lvb(self, name.as_bytes(), buf) {
            Ok(n) => Ok(n),
            Err(Error::LvbInvalid) => Ok(0),
            Err(e) => Err(err("read_lvb", e)),
        }
    }

    fn write_lvb(&self, name: &str, data: &[u8]) -> Result<(), String> {
        Context::write_lvb(self, name.as_bytes(), data)
            .map(|_| ())
            .map_err(|e| err("write_lvb", e))
    }

    fn messages_sent(&self) -> Result<u64, String> {
        Context::messages_sent(self).ok_or_else(|| "this backend counts no messages".into())
    }
}

/// Stand-in lock manager for the harness self-test: one file per lock name
/// in a directory shared by the node processes, flock(2) for the lock, the
/// file's first bytes for the LVB. Not a DLM and never reported as o2dlm.
pub struct FlockLocks {
    dir: PathBuf,
    files: RefCell<HashMap<String, File>>,
}

impl FlockLocks {
    pub fn new(dir: PathBuf) -> FlockLocks {
        FlockLocks {
            dir,
            files: RefCell::new(HashMap::new()),
        }
    }

    fn flock(file: &File, op: i32) -> Result<(), String> {
        loop {
            // SAFETY: the fd is owned by `file`, open for the whole call.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("flock: {e}"));
            }
        }
    }
}

impl Locks for FlockLocks {
    fn lock(&self, name: &str, level: i32) -> Result<(), String> {
        let mut files = self.files.borrow_mut();
        if !files.contains_key(name) {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.dir.join(name))
                .map_err(|e| format!("open {name}: {e}"))?;
            files.insert(name.to_string(), f);
        }
        let f = files.get(name).ok_or("lock file vanished")?;
        Self::flock(
            f,
            if level == EX {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            },
        )
    }

    fn unlock(&self, name: &str) -> Result<(), String> {
        let files = self.files.borrow();
        Self::flock(
            files.get(name).ok_or("unlock of a lock not held")?,
            libc::LOCK_UN,
        )
    }

    fn read_lvb(&self, name: &str, buf: &mut [u8]) -> Result<usize, String> {
        let files = self.files.borrow();
        let f = files.get(name).ok_or("read_lvb of a lock not held")?;
        f.read_at(buf, 0).map_err(|e| format!("read_lvb: {e}"))
    }

    fn write_lvb(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let files = self.files.borrow();
        let f = files.get(name).ok_or("write_lvb of a lock not held")?;
        f.write_all_at(data, 0)
            .map_err(|e| format!("write_lvb: {e}"))
    }

    fn messages_sent(&self) -> Result<u64, String> {
        Err("the flock stand-in sends no messages".into())
    }
}

pub fn node_main(args: &[String]) -> ExitCode {
    match args {
        [flag, dir] if flag == "--flock" => serve(&FlockLocks::new(PathBuf::from(dir))),
        [domain] => {
            let ctx = match Context::initialize(None, domain.as_bytes()) {
                Ok(c) => c,
                Err(e) => {
                    reply(format!("error {} {}", e.symbol(), e.message()));
                    return ExitCode::from(2);
                }
            };
            serve(&ctx);
            match ctx.destroy() {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(1),
            }
        }
        _ => {
            reply("error usage: __node DOMAIN | __node --flock DIR".into());
            ExitCode::from(2)
        }
    }
}

fn serve(locks: &dyn Locks) -> ExitCode {
    reply("ready".into());
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        let answer = match w.as_slice() {
            ["quit"] => break,
            ["cached", name, iters] => num(iters).and_then(|n| cached(locks, name, n)),
            ["mastery", prefix, count] => num(count).and_then(|n| mastery(locks, prefix, n)),
            ["handoff", name, turns, me] => {
                num(turns).and_then(|t| num(me).and_then(|m| handoff(locks, name, t, m)))
            }
            ["warm", name, names] => num(names).and_then(|n| warm(locks, name, n)),
            ["throughput", name, names, ms, start] => num(names).and_then(|n| {
                num(ms).and_then(|ms| num(start).and_then(|s| throughput(locks, name, n, ms, s)))
            }),
            ["hold", prefix, count] => num(count).and_then(|n| hold(locks, prefix, n)),
            ["messages"] => locks.messages_sent().map(|n| format!("sent={n}")),
            _ => Err(format!("unknown command {line:?}")),
        };
        reply(match answer {
            Ok(kv) => format!("ok {kv}"),
            Err(e) => format!("error {e}"),
        });
    }
    ExitCode::SUCCESS
}

fn reply(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn num(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn cached(ctx: &dyn Locks, name: &str, iters: u64) -> Result<String, String> {
    ctx.lock(name, EX)?;
    ctx.unlock(name)?;
    let t0 = Instant::now();
    for _ in 0..iters {
        ctx.lock(name, EX)?;
        ctx.unlock(name)?;
    }
    let ns = t0.elapsed().as_nanos() as f64 / iters.max(1) as f64;
    Ok(format!("ns_per_op={ns}"))
}

fn join_samples(v: &[u64]) -> String {
    let parts: Vec<String> = v.iter().map(u64::to_string).collect();
    parts.join(",")
}

fn mastery(ctx: &dyn Locks, prefix: &str, count: u64) -> Result<String, String> {
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let t0 = Instant::now();
        ctx.lock(&name, EX)?;
        samples.push(t0.elapsed().as_nanos() as u64);
        ctx.unlock(&name)?;
    }
    Ok(format!("samples={}", join_samples(&samples)))
}

/// LVB layout of the handoff: whose turn it is (node index + 1, so a
/// never-written LVB of zeros means "nobody yet"), and the monotonic time
/// at which the previous holder released the lock.
fn handoff(ctx: &dyn Locks, name: &str, turns: u64, me: u64) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut done, mut wasted) = (0u64, 0u64);
    let mut samples = Vec::with_capacity(turns as usize);
    let mut lvb = [0u8; 16];
    while done < turns {
        if Instant::now() > deadline {
            return Err(format!("handoff: only {done} of {turns} turns in 600 s"));
        }
        ctx.lock(name, EX)?;
        let granted = monotonic_ns();
        let (turn, released) = match ctx.read_lvb(name, &mut lvb)? {
            16 => (
                u64::from_le_bytes(lvb[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(lvb[8..].try_into().unwrap_or_default()),
            ),
            _ => (0, 0),
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
            ctx.write_lvb(name, &lvb)?;
        } else {
            wasted += 1;
        }
        ctx.unlock(name)?;
        if !mine {
            // Not our turn: let the peer run rather than spin on a lock
            // we may be granted again locally (matters on one core).
            std::thread::yield_now();
        }
    }
    Ok(format!(
        "wasted={wasted} samples={}",
        join_samples(&samples)
    ))
}

/// NAMES = 1: every node hammers the one name NAME (shared). NAMES > 1:
/// this node cycles over its own NAME0..NAME{NAMES-1} (disjoint), each
/// locked once beforehand so mastery is not part of the timed loop.
fn names_of(name: &str, names: u64) -> Vec<String> {
    if names <= 1 {
        vec![name.to_string()]
    } else {
        (0..names).map(|i| format!("{name}{i}")).collect()
    }
}

/// Locks and unlocks each name once, so mastery is not part of the timed
/// throughput loop.
fn warm(ctx: &dyn Locks, name: &str, names: u64) -> Result<String, String> {
    for id in names_of(name, names) {
        ctx.lock(&id, EX)?;
        ctx.unlock(&id)?;
    }
    Ok(String::new())
}

/// NAMES = 1: every node hammers the one name NAME (shared). NAMES > 1:
/// this node cycles over its own NAME0..NAME{NAMES-1} (disjoint). Starts
/// at START_NS on the machine-wide monotonic clock, with the other nodes.
fn throughput(
    ctx: &dyn Locks,
    name: &str,
    names: u64,
    ms: u64,
    start_ns: u64,
) -> Result<String, String> {
    let ids = names_of(name, names);
    while monotonic_ns() < start_ns {
        std::thread::sleep(Duration::from_micros(100));
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_millis(ms);
    let mut ops = 0u64;
    while Instant::now() < end {
        let id = &ids[(ops % ids.len() as u64) as usize];
        ctx.lock(id, EX)?;
        ctx.unlock(id)?;
        ops += 1;
    }
    Ok(format!("ops={ops} ns={}", t0.elapsed().as_nanos()))
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

fn hold(ctx: &dyn Locks, prefix: &str, count: u64) -> Result<String, String> {
    let before = rss_bytes()?;
    for i in 0..count {
        let name = format!("{prefix}{i}");
        ctx.lock(&name, PR)?;
    }
    let after = rss_bytes()?;
    Ok(format!("rss_before={before} rss_after={after}"))
}
