//! `o2dlm node`: run this node (heartbeat and o2net links) in the
//! foreground until SIGINT or SIGTERM, printing one timestamped line per
//! event — what `ocfs2_hb_ctl -S` plus the o2cb service do for kernel
//! users.

use crate::config::EngineConfig;
use crate::driver::node::{Node, NodeEvent};
use crate::heartbeat::HbEvent;
use crate::net::NetEvent;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: o2dlm node

Runs this node of the o2cb cluster in the foreground: writes its disk
heartbeat, watches the other nodes' and keeps o2net links to the live ones.
Prints a timestamped line for every node up/down, link up/down and fence,
and stops cleanly on SIGINT or SIGTERM.

Configured by O2DLM_CLUSTER_CONF, O2DLM_NODE, O2CB_BOOTCLUSTER,
O2CB_HEARTBEAT_THRESHOLD, O2CB_IDLE_TIMEOUT_MS, O2CB_KEEPALIVE_DELAY_MS,
O2CB_RECONNECT_DELAY_MS, O2DLM_O2CB_SYSCONFIG and O2DLM_HEARTBEAT_DEVICE /
_BLOCK_BYTES / _START_BLOCK / _BLOCKS. O2DLM_LOG=debug shows keepalives.

Exit status: 0 after a clean stop, 1 on a configuration or start-up error,
3 when the node fenced itself.
";

/// Exit status after fencing.
const EXIT_FENCED: u8 = 3;

pub fn run(args: &[String]) -> ExitCode {
    if let Some(a) = args.first() {
        if a == "-h" || a == "--help" {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        eprintln!("o2dlm node: unexpected argument '{a}'\n{USAGE}");
        return ExitCode::from(2);
    }
    // Before any thread exists, so that every thread inherits the mask and
    // the signals are only ever taken by our sigwait thread.
    let signal = match catch_stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("o2dlm node: cannot set up signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    let cfg = match EngineConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("o2dlm node: {e}");
            return ExitCode::from(1);
        }
    };
    let name = |n: u8| {
        cfg.node(n)
            .map(|c| format!("{n} ({})", c.name))
            .unwrap_or_else(|| n.to_string())
    };
    let t = &cfg.timeouts;
    out(&format!(
        "starting node {} in cluster {} at {}:{}; heartbeat {} threshold {} (dead after {} ms), idle {} ms, keepalive {} ms, reconnect {} ms",
        name(cfg.local.number),
        cfg.cluster_name,
        cfg.local.ip,
        cfg.local.port,
        cfg.heartbeat.device.display(),
        t.heartbeat_threshold,
        t.dead_ms(),
        t.idle_timeout_ms,
        t.keepalive_delay_ms,
        t.reconnect_delay_ms
    ));
    let node = match Node::start(&cfg) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("o2dlm node: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    out("heartbeat started");

    loop {
        let sig = signal.load(Ordering::SeqCst);
        if sig != 0 {
            out(&format!("stopping on {}", signal_name(sig)));
            node.stop();
            out("stopped");
            return ExitCode::SUCCESS;
        }
        let ev = match node.events().recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => ev,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                out("node threads ended unexpectedly");
                return ExitCode::from(1);
            }
        };
        let fence = ev.is_fence();
        match ev {
            NodeEvent::NodeUp(n) => out(&format!("node up: {}", name(n))),
            NodeEvent::NodeDown(n) => out(&format!("node down: {}", name(n))),
            NodeEvent::Heartbeat(HbEvent::WriteTimeout) => {
                out("fence: our heartbeat writes have failed for too long")
            }
            NodeEvent::Heartbeat(other) => out(&format!("heartbeat: {other:?}")),
            NodeEvent::Net(e) => match e {
                NetEvent::LinkUp { node: n, connector } => out(&format!(
                    "link up: {} ({})",
                    name(n),
                    if connector {
                        "we connected"
                    } else {
                        "it connected"
                    }
                )),
                NetEvent::LinkDown { node: n, reason } => {
                    out(&format!("link down: {}: {reason}", name(n)))
                }
                NetEvent::HandshakeRejected { node: n, reason } => {
                    out(&format!("handshake refused: {}: {reason}", name(n)))
                }
                NetEvent::LinkIdle { node: n } => out(&format!("link idle: {}", name(n))),
                NetEvent::LinkResumed { node: n } => out(&format!("link resumed: {}", name(n))),
                NetEvent::Fence(d) => out(&format!("fence: quorum lost: {d}")),
                NetEvent::Request(r) => {
                    // No handlers are registered here; answer anyway so
                    // the peer is never left waiting.
                    if let Some(h) = node.net() {
                        h.reply_to(r, -libc::ENOPROTOOPT);
                    }
                }
                NetEvent::Response { .. } => {}
            },
        }
        if fence {
            node.fence();
            out("fenced: heartbeat stopped without the leaving block, links closed");
            return ExitCode::from(EXIT_FENCED);
        }
    }
}

/// One line on stdout with a UTC timestamp, flushed at once (tests and
/// log collectors read it live).
fn out(msg: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!("{} {msg}\n", utc_timestamp(now));
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(line.as_bytes());
    let _ = o.flush();
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the Unix epoch.
pub fn utc_timestamp(t: Duration) -> String {
    let secs = t.as_secs();
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.subsec_millis()
    )
}

/// Gregorian date of a day count since 1970-01-01 (proleptic calendar,
/// eras of 400 years).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread
/// started later) and takes them in a dedicated sigwait thread, which
/// stores the signal number. No async-signal handler is involved.
fn catch_stop_signals() -> std::io::Result<Arc<AtomicI32>> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before
    // any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by us; the calls only write
    // it, and pthread_sigmask reads it.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    let flag = Arc::new(AtomicI32::new(0));
    let f = flag.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and `sig` is a valid out
            // pointer for the duration of the call.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                f.store(sig, Ordering::SeqCst);
            }
        })?;
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        // 2026-11-25T05:30:19.785Z
        assert_eq!(
            utc_timestamp(Duration::from_millis(1_795_584_619_785)),
            "2026-11-25T05:30:19.785Z"
        );
        assert_eq!(
            utc_timestamp(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
