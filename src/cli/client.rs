//! `o2dlm client DOMAIN`: a scriptable lock client over `api::Context`, for
//! tests, the demo and interop checks. One command per stdin line, one
//! machine-readable result line per command on stdout (flushed at once):
//!
//! ```text
//! t=1732512345.123 op=lock name=L level=ex try=0 rc=OK ms=3
//! ```
//!
//! Every command answers with exactly one `op=` line, in order, so a driver
//! can pair its k-th command with the k-th `op=` line. Things that happen on
//! their own (a BAST) print `event=` lines instead.

use crate::api::{BastCallback, Context, LVB_LEN, TRYLOCK};
use crate::error::Error;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: o2dlm client [--dlmfs PATH] DOMAIN

Joins DOMAIN (o2dlm_initialize; the embedded engine unless --dlmfs names a
mounted ocfs2_dlmfs) and reads one command per line on stdin:

  lock NAME pr|ex [try]            o2dlm_lock (try: O2DLM_TRYLOCK)
  bast NAME pr|ex [try] [release]  o2dlm_lock_with_bast; a thread polls the fd,
                                   prints `event=bast` when it becomes readable
                                   and runs o2dlm_process_bast, whose callback
                                   prints `event=bast_cb` (and, with release,
                                   unlocks the lock: `event=unlock`)
  unlock NAME                      o2dlm_unlock
  drop NAME                        o2dlm_drop_lock
  read NAME                        o2dlm_read_lvb (text= the LVB up to its first NUL)
  write NAME TEXT                  o2dlm_write_lvb of TEXT, NUL-padded to 64 bytes
  incr NAME                        lock EX, read the LVB as a decimal counter, add 1,
                                   write it back, unlock (value= the new count)
  append PATH TEXT                 append `TEXT begin` and `TEXT end` lines to PATH
                                   in two writes 2 ms apart (an interleaving probe)
  sleep MS                         pause
  until UNIX_MS                    pause until that wall-clock time (ms since the
                                   epoch), to line up scripts of several nodes
  echo TEXT                        print TEXT (a marker)
  destroy                          o2dlm_destroy (leave the domain)
  init [DOMAIN]                    o2dlm_initialize again (rejoin)
  quit                             destroy and exit (as end of input does)

Blank lines and lines starting with # are skipped without output. Every
other line prints exactly one result line:

  t=<unix secs> op=<command> [name=...] rc=OK|O2DLM_ET_...|BAD_COMMAND [fields]

with ms=<duration> for API calls; lines starting `t=... event=` report
BASTs as they arrive. Exit status 0 when the final destroy succeeded.
";

pub fn run(args: &[String]) -> ExitCode {
    let mut dlmfs: Option<PathBuf> = None;
    let mut domain: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--dlmfs" => match it.next() {
                Some(p) => dlmfs = Some(PathBuf::from(p)),
                None => {
                    eprintln!("o2dlm client: --dlmfs needs a path\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            d if domain.is_none() && !d.starts_with('-') => domain = Some(d.to_string()),
            other => {
                eprintln!("o2dlm client: unexpected argument '{other}'\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(domain) = domain else {
        eprintln!("o2dlm client: missing DOMAIN\n{USAGE}");
        return ExitCode::from(2);
    };
    let mut client = Client {
        dlmfs,
        domain,
        ctx: None,
        watches: HashMap::new(),
    };
    client.init(None);
    let stdin = std::io::stdin();
    let mut ok = true;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !client.command(trimmed) {
            break;
        }
    }
    if client.ctx.is_some() {
        ok = client.destroy();
    }
    // Stop the node cleanly now (the leaving heartbeat block), rather than
    // from the atexit hook, so the last line really is the last thing done.
    crate::engine::shutdown();
    emit("op=exit rc=OK");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A background thread watching one lock's BAST fd.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Watch {
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

struct Client {
    dlmfs: Option<PathBuf>,
    domain: String,
    ctx: Option<Arc<Context>>,
    watches: HashMap<String, Watch>,
}

impl Client {
    /// Runs one command line; false ends the session.
    fn command(&mut self, line: &str) -> bool {
        let (cmd, rest) = split_word(line);
        match cmd {
            "lock" | "bast" => self.lock(cmd, rest),
            "unlock" => self.with_name(cmd, rest, |c, name| {
                c.stop_watch(name);
                let ctx = c.ctx()?;
                timed(|| ctx.unlock(name.as_bytes())).map(|ms| format!("ms={ms}"))
            }),
            "drop" => self.with_name(cmd, rest, |c, name| {
                let ctx = c.ctx()?;
                timed(|| ctx.drop_lock(name.as_bytes())).map(|ms| format!("ms={ms}"))
            }),
            "read" => self.with_name(cmd, rest, |c, name| {
                let ctx = c.ctx()?;
                let mut buf = [0u8; LVB_LEN];
                let start = Instant::now();
                let n = ctx.read_lvb(name.as_bytes(), &mut buf)?;
                Ok(format!(
                    "ms={} len={n} text={}",
                    start.elapsed().as_millis(),
                    lvb_text(&buf[..n])
                ))
            }),
            "write" => {
                let (name, text) = split_word(rest);
                if name.is_empty() {
                    return self.bad(cmd, "usage: write NAME TEXT");
                }
                let r = self.ctx().and_then(|ctx| {
                    let data = lvb_bytes(text.as_bytes())?;
                    timed(|| ctx.write_lvb(name.as_bytes(), &data).map(|_| ()))
                });
                report(cmd, Some(name), r.map(|ms| format!("ms={ms}")));
                true
            }
            "incr" => self.with_name(cmd, rest, |c, name| c.incr(name)),
            "append" => {
                let (path, text) = split_word(rest);
                if path.is_empty() || text.is_empty() {
                    return self.bad(cmd, "usage: append PATH TEXT");
                }
                match append_record(path, text) {
                    Ok(()) => emit(&format!("op=append rc=OK text={text}")),
                    Err(e) => emit(&format!("op=append rc=IO_ERROR msg={e}")),
                }
                true
            }
            "sleep" => match rest.trim().parse::<u64>() {
                Ok(ms) => {
                    std::thread::sleep(Duration::from_millis(ms));
                    emit(&format!("op=sleep rc=OK ms={ms}"));
                    true
                }
                Err(_) => self.bad(cmd, "usage: sleep MS"),
            },
            "until" => match rest.trim().parse::<u64>() {
                Ok(at) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64;
                    // Late when the previous commands overran the mark.
                    let late = now.saturating_sub(at);
                    std::thread::sleep(Duration::from_millis(at.saturating_sub(now)));
                    emit(&format!("op=until rc=OK late_ms={late}"));
                    true
                }
                Err(_) => self.bad(cmd, "usage: until UNIX_MS"),
            },
            "echo" => {
                emit(&format!("op=echo rc=OK text={rest}"));
                true
            }
            "destroy" => {
                if self.ctx.is_none() {
                    emit("op=destroy rc=NOT_JOINED");
                } else {
                    self.destroy();
                }
                true
            }
            "init" => {
                let d = rest.trim();
                self.init(if d.is_empty() { None } else { Some(d) });
                true
            }
            "quit" => false,
            _ => self.bad(cmd, "unknown command (see o2dlm client --help)"),
        }
    }

    fn ctx(&self) -> Result<Arc<Context>, Error> {
        // Any call without a context is what the C API calls bad arguments
        // (a NULL ctxt).
        self.ctx.clone().ok_or(Error::InvalidArgs)
    }

    fn bad(&self, cmd: &str, msg: &str) -> bool {
        emit(&format!("op={cmd} rc=BAD_COMMAND msg={msg}"));
        true
    }

    /// A command whose only argument is a lock name.
    fn with_name(
        &mut self,
        cmd: &str,
        rest: &str,
        f: impl FnOnce(&mut Self, &str) -> Result<String, Error>,
    ) -> bool {
        let name = rest.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return self.bad(cmd, &format!("usage: {cmd} NAME"));
        }
        let r = f(self, name);
        report(cmd, Some(name), r);
        true
    }

    fn init(&mut self, domain: Option<&str>) {
        if let Some(d) = domain {
            self.domain = d.to_string();
        }
        if self.ctx.is_some() {
            emit(&format!("op=init domain={} rc=ALREADY_JOINED", self.domain));
            return;
        }
        let start = Instant::now();
        let r = Context::initialize(self.dlmfs.as_deref(), self.domain.as_bytes());
        let ms = start.elapsed().as_millis();
        match r {
            Ok(ctx) => {
                self.ctx = Some(Arc::new(ctx));
                emit(&format!("op=init domain={} rc=OK ms={ms}", self.domain));
            }
            Err(e) => emit(&format!(
                "op=init domain={} rc={} ms={ms}",
                self.domain,
                e.symbol()
            )),
        }
    }

    fn destroy(&mut self) -> bool {
        for (_, w) in self.watches.drain() {
            w.finish();
        }
        let Some(ctx) = self.ctx.take() else {
            return true;
        };
        let start = Instant::now();
        // Watch threads are joined and callbacks hold only weak references,
        // so this is the last strong reference.
        let r = match Arc::try_unwrap(ctx) {
            Ok(ctx) => ctx.destroy(),
            Err(_) => Err(Error::InternalFailure),
        };
        let ms = start.elapsed().as_millis();
        let ok = r.is_ok();
        report("destroy", None, r.map(|()| format!("ms={ms}")));
        ok
    }

    fn stop_watch(&mut self, name: &str) {
        if let Some(w) = self.watches.remove(name) {
            w.finish();
        }
    }

    fn lock(&mut self, cmd: &str, rest: &str) -> bool {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (Some(name), Some(level)) = (words.first(), words.get(1)) else {
            return self.bad(cmd, &format!("usage: {cmd} NAME pr|ex [try]"));
        };
        let level_raw = match *level {
            "pr" | "PR" => 0,
            "ex" | "EX" => 1,
            _ => return self.bad(cmd, "level must be pr or ex"),
        };
        let mut trylock = false;
        let mut release = false;
        for w in &words[2..] {
            match *w {
                "try" => trylock = true,
                "release" if cmd == "bast" => release = true,
                _ => return self.bad(cmd, &format!("unknown option '{w}'")),
            }
        }
        let flags = if trylock { TRYLOCK } else { 0 };
        let name = name.to_string();
        let fields = format!("level={level} try={}", u8::from(trylock));
        let ctx = match self.ctx() {
            Ok(c) => c,
            Err(e) => {
                report(cmd, Some(&name), Err(e));
                return true;
            }
        };
        let start = Instant::now();
        let r = if cmd == "lock" {
            ctx.lock(name.as_bytes(), flags, level_raw).map(|()| None)
        } else {
            let cb = bast_callback(Arc::downgrade(&ctx), name.clone(), release);
            ctx.lock_with_bast(name.as_bytes(), flags, level_raw, cb)
                .map(Some)
        };
        let ms = start.elapsed().as_millis();
        let fd = match r {
            Ok(fd) => fd,
            Err(e) => {
                report(cmd, Some(&name), Err(e));
                return true;
            }
        };
        report(cmd, Some(&name), Ok(format!("{fields} ms={ms}")));
        if let Some(fd) = fd {
            // A previous watch on this name ended with its lock.
            self.stop_watch(&name);
            let stop = Arc::new(AtomicBool::new(false));
            let thread = spawn_watch(ctx, name.clone(), fd, stop.clone());
            self.watches.insert(name, Watch { stop, thread });
        }
        true
    }

    fn incr(&mut self, name: &str) -> Result<String, Error> {
        let ctx = self.ctx()?;
        let start = Instant::now();
        ctx.lock(name.as_bytes(), 0, 1)?;
        let r = (|| {
            let mut buf = [0u8; LVB_LEN];
            let n = ctx.read_lvb(name.as_bytes(), &mut buf)?;
            let text = lvb_str(&buf[..n]);
            let old: u64 = if text.is_empty() {
                0
            } else {
                // A non-number here means someone else wrote the LVB: the
                // checker must notice, not restart from zero.
                text.parse().map_err(|_| Error::LvbRead)?
            };
            let new = old + 1;
            ctx.write_lvb(name.as_bytes(), &lvb_bytes(new.to_string().as_bytes())?)?;
            Ok(new)
        })();
        let u = ctx.unlock(name.as_bytes());
        let value = r?;
        u?;
        Ok(format!("value={value} ms={}", start.elapsed().as_millis()))
    }
}

/// The callback `o2dlm_process_bast` runs: reports, and in release mode
/// gives the lock back as a well-behaved holder does. Weak, because the
/// context itself stores the callback.
fn bast_callback(ctx: Weak<Context>, name: String, release: bool) -> BastCallback {
    Arc::new(move || {
        emit(&format!("event=bast_cb name={name}"));
        if !release {
            return;
        }
        let Some(ctx) = ctx.upgrade() else { return };
        let start = Instant::now();
        let r = ctx.unlock(name.as_bytes());
        let rc = match r {
            Ok(()) => "OK",
            Err(e) => e.symbol(),
        };
        emit(&format!(
            "event=unlock name={name} via=bast rc={rc} ms={}",
            start.elapsed().as_millis()
        ));
    })
}

/// Polls the BAST fd until it is readable (once per grant: it stays
/// readable until the lock is released) or `stop` is set. The fd stays
/// open while this runs: the owner joins us before unlocking, and in
/// release mode we return right after the callback unlocked.
fn spawn_watch(
    ctx: Arc<Context>,
    name: String,
    fd: RawFd,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on our stack; the fd is open (see above).
            let n = unsafe { libc::poll(&mut pfd, 1, 50) };
            if n == 1 && pfd.revents & libc::POLLIN != 0 {
                emit(&format!("event=bast name={name}"));
                ctx.process_bast(fd);
                return;
            }
        }
    })
}

fn timed(f: impl FnOnce() -> Result<(), Error>) -> Result<u128, Error> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_millis())
}

fn report(cmd: &str, name: Option<&str>, r: Result<String, Error>) {
    let name = name.map(|n| format!(" name={n}")).unwrap_or_default();
    match r {
        Ok(fields) if fields.is_empty() => emit(&format!("op={cmd}{name} rc=OK")),
        Ok(fields) => emit(&format!("op={cmd}{name} rc=OK {fields}")),
        Err(e) => emit(&format!("op={cmd}{name} rc={}", e.symbol())),
    }
}

/// The first word and the rest (leading blanks of the rest removed).
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// TEXT as a full 64-byte LVB (NUL-padded) so a shorter value never leaves
/// the tail of a longer one behind.
fn lvb_bytes(text: &[u8]) -> Result<[u8; LVB_LEN], Error> {
    if text.len() > LVB_LEN {
        return Err(Error::InvalidArgs);
    }
    let mut b = [0u8; LVB_LEN];
    b[..text.len()].copy_from_slice(text);
    Ok(b)
}

/// The LVB up to its first NUL, lossily as text.
fn lvb_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `lvb_str` with control bytes and backslashes escaped, for one line.
fn lvb_text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let mut s = String::new();
    for &c in &b[..end] {
        if c == b'\\' || !(0x20..0x7f).contains(&c) {
            s.push_str(&format!("\\x{c:02x}"));
        } else {
            s.push(c as char);
        }
    }
    s
}

/// Two separate appends with a pause between, so two unsynchronised
/// writers would interleave their begin/end lines.
fn append_record(path: &str, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{text} begin\n").as_bytes())?;
    f.flush()?;
    std::thread::sleep(Duration::from_millis(2));
    f.write_all(format!("{text} end\n").as_bytes())?;
    f.flush()
}

/// One line with the wall-clock time (comparable across processes),
/// written whole and flushed at once.
fn emit(msg: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!("t={}.{:03} {msg}\n", now.as_secs(), now.subsec_millis());
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(line.as_bytes());
    let _ = o.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_lvb_text() {
        assert_eq!(split_word("  write L  a b "), ("write", "L  a b "));
        assert_eq!(split_word("quit"), ("quit", ""));
        assert_eq!(lvb_text(b"ab\\c\n\0zz"), "ab\\x5cc\\x0a");
        assert_eq!(lvb_str(b"12\0\0"), "12");
        assert_eq!(lvb_bytes(b"7").unwrap()[..2], [b'7', 0]);
        assert!(lvb_bytes(&[b'x'; 65]).is_err());
    }
}
