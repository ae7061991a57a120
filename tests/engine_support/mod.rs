//! Helpers for the engine cluster tests: a cluster.conf and heartbeat file
//! in a temporary directory, and `o2dlm client` processes driven line by
//! line through their stdin (one `op=` result line per command).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Dead threshold in 2 s periods (the minimum o2cb accepts).
pub const THRESHOLD: u32 = 7;

/// Generous bound for one command that needs cluster messages.
pub const OP: Duration = Duration::from_secs(20);
/// Bound for a first `o2dlm_initialize` of a process (~10 s normally).
pub const INIT: Duration = Duration::from_secs(45);

pub struct Cluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub hb: PathBuf,
    pub ip_base: u8,
    pub port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ports in 31000..39100, varying with the test process so two runs of the
/// suite (two checkouts) do not collide. Addresses 127.0.0.121..160 are
/// used by no other test of this crate.
pub fn port(offset: u16) -> u16 {
    31000 + (std::process::id() % 8000) as u16 + offset
}

/// A cluster.conf of `count` nodes `n0..` at 127.0.0.(ip_base + n) on
/// `port`, and an empty heartbeat file, in a fresh directory.
pub fn cluster(tag: &str, ip_base: u8, count: u8, port: u16) -> Cluster {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cname = format!("e{tag}");
    let mut text = format!("cluster:\n\tnode_count = {count}\n\tname = {cname}\n\n");
    for n in 0..count {
        text.push_str(&format!(
            "node:\n\tip_port = {port}\n\tip_address = 127.0.0.{}\n\tnumber = {n}\n\tname = n{n}\n\tcluster = {cname}\n\n",
            ip_base + n
        ));
    }
    let conf = dir.join("cluster.conf");
    std::fs::write(&conf, text).unwrap();
    let hb = dir.join("heartbeat");
    std::fs::write(&hb, b"").unwrap();
    Cluster {
        dir,
        conf,
        hb,
        ip_base,
        port,
    }
}

type Lines = Arc<(Mutex<Vec<(Instant, String)>>, Condvar)>;

/// One `o2dlm client` process.
pub struct Client {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    err: Lines,
    /// `op=` lines consumed so far.
    acked: usize,
    /// Commands sent whose result was not yet consumed (the implicit init
    /// counts as one).
    pending: usize,
}

impl Client {
    /// Starts node `n` of `c` as a client of `domain`; it joins at once.
    pub fn spawn(c: &Cluster, n: u8, domain: &str) -> Client {
        Client::start(format!("n{n}"), Client::command(c, n, domain, &[]))
    }

    /// The command `spawn` runs, for callers that adjust it (more
    /// environment) before `start`. A non-empty `wrap` is a program and
    /// arguments that run the client (e.g. `ip netns exec NS`).
    pub fn command(c: &Cluster, n: u8, domain: &str, wrap: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_o2dlm");
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut cmd = Command::new(prog);
                cmd.args(args).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("client")
            .arg(domain)
            .env_remove("O2CB_BOOTCLUSTER")
            .env_remove("O2DLM_BACKEND")
            .env("O2DLM_CLUSTER_CONF", &c.conf)
            .env("O2DLM_NODE", format!("n{n}"))
            .env("O2DLM_O2CB_SYSCONFIG", "")
            .env("O2CB_HEARTBEAT_THRESHOLD", THRESHOLD.to_string())
            .env("O2CB_IDLE_TIMEOUT_MS", "5000")
            .env("O2CB_KEEPALIVE_DELAY_MS", "1000")
            .env("O2CB_RECONNECT_DELAY_MS", "2000")
            .env("O2DLM_HEARTBEAT_DEVICE", &c.hb)
            .env("O2DLM_HEARTBEAT_BLOCKS", "8")
            .env(
                "O2DLM_LOG",
                std::env::var("O2DLM_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs a command made by `command` as the client called `name`.
    pub fn start(name: String, mut cmd: Command) -> Client {
        let mut child = cmd.spawn().expect("spawn o2dlm client");
        let out: Lines = Arc::default();
        let err: Lines = Arc::default();
        collect(child.stdout.take().unwrap(), out.clone());
        collect(child.stderr.take().unwrap(), err.clone());
        Client {
            name,
            stdin: child.stdin.take(),
            child,
            out,
            err,
            acked: 0,
            pending: 1,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (no clean leave, no heartbeat leaving block) and reap, so
    /// its sockets are gone when this returns.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends one command line without waiting.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{cmd}").expect("write to client");
        stdin.flush().expect("flush client stdin");
        self.pending += 1;
    }

    /// The result line of the oldest command not yet consumed.
    pub fn next_op(&mut self, limit: Duration) -> String {
        assert!(self.pending > 0, "{}: no command pending", self.name);
        let want = self.acked;
        let found = self.wait_until(limit, |lines| {
            lines
                .iter()
                .filter(|(_, l)| is_op(l))
                .nth(want)
                .map(|(_, l)| l.clone())
        });
        match found {
            Some(l) => {
                self.acked += 1;
                self.pending -= 1;
                l
            }
            None => panic!(
                "{}: no result within {limit:?} for command #{}\n{}",
                self.name,
                want,
                self.dump()
            ),
        }
    }

    /// Sends `cmd` and returns its result line.
    pub fn call(&mut self, cmd: &str) -> String {
        self.call_within(cmd, OP)
    }

    pub fn call_within(&mut self, cmd: &str, limit: Duration) -> String {
        assert_eq!(
            self.pending, 0,
            "{}: call with results outstanding",
            self.name
        );
        self.send(cmd);
        self.next_op(limit)
    }

    /// Sends `cmd` and asserts it succeeded; returns the line.
    pub fn ok(&mut self, cmd: &str) -> String {
        let l = self.call(cmd);
        assert_eq!(
            field(&l, "rc"),
            Some("OK"),
            "{}: `{cmd}` failed: {l}\n{}",
            self.name,
            self.dump()
        );
        l
    }

    /// Waits for the implicit init and asserts it succeeded.
    pub fn joined(&mut self) -> String {
        let l = self.next_op(INIT);
        assert_eq!(
            field(&l, "rc"),
            Some("OK"),
            "{}: init failed: {l}\n{}",
            self.name,
            self.dump()
        );
        l
    }

    /// The exit status, waiting up to `limit` (stdin stays open), or None
    /// while the process still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// First stderr line containing every one of `pats`, waiting up to `limit`.
    pub fn wait_stderr(&self, pats: &[&str], limit: Duration) -> Option<String> {
        let end = Instant::now() + limit;
        let (m, cv) = &*self.err;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some((_, l)) = lines
                .iter()
                .find(|(_, l)| pats.iter().all(|p| l.contains(p)))
            {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            lines = cv.wait_timeout(lines, end - now).unwrap().0;
        }
    }

    /// True when a result line beyond the consumed ones has arrived.
    pub fn has_unread_op(&self) -> bool {
        let lines = self.out.0.lock().unwrap();
        lines.iter().filter(|(_, l)| is_op(l)).count() > self.acked
    }

    /// First stdout line containing every one of `pats`, waiting up to `limit`.
    pub fn wait_line(&self, pats: &[&str], limit: Duration) -> Option<String> {
        self.wait_until(limit, |lines| {
            lines
                .iter()
                .find(|(_, l)| pats.iter().all(|p| l.contains(p)))
                .map(|(_, l)| l.clone())
        })
    }

    pub fn count_lines(&self, pats: &[&str]) -> usize {
        let lines = self.out.0.lock().unwrap();
        lines
            .iter()
            .filter(|(_, l)| pats.iter().all(|p| l.contains(p)))
            .count()
    }

    pub fn stderr_count(&self, pat: &str) -> usize {
        let lines = self.err.0.lock().unwrap();
        lines.iter().filter(|(_, l)| l.contains(pat)).count()
    }

    fn wait_until<T>(
        &self,
        limit: Duration,
        mut f: impl FnMut(&[(Instant, String)]) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + limit;
        let (m, cv) = &*self.out;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(v) = f(&lines) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            lines = cv.wait_timeout(lines, end - now).unwrap().0;
        }
    }

    /// Closes stdin (the client destroys its context and exits) and waits.
    pub fn finish(&mut self, limit: Duration) -> ExitStatus {
        self.stdin.take();
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return st;
            }
            if Instant::now() >= end {
                panic!(
                    "{}: did not exit within {limit:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stdout line (for the checkers).
    pub fn lines(&self) -> Vec<String> {
        self.out
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Every stderr line (the engine's log), for post-mortems.
    pub fn stderr_all(&self) -> String {
        let err = self.err.0.lock().unwrap();
        err.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    pub fn dump(&self) -> String {
        let mut s = format!("--- {} (pid {}) stdout:\n", self.name, self.child.id());
        for (_, l) in self.out.0.lock().unwrap().iter() {
            s.push_str(l);
            s.push('\n');
        }
        let err = self.err.0.lock().unwrap();
        s.push_str(&format!(
            "--- {} stderr (last 60 of {}):\n",
            self.name,
            err.len()
        ));
        let skip = err.len().saturating_sub(60);
        for (_, l) in err.iter().skip(skip) {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dump_all(cs: &[&Client]) -> String {
    cs.iter().map(|c| c.dump()).collect()
}

fn is_op(l: &str) -> bool {
    l.split_whitespace()
        .nth(1)
        .is_some_and(|w| w.starts_with("op="))
}

fn collect(r: impl std::io::Read + Send + 'static, lines: Lines) {
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            let (m, cv) = &*lines;
            m.lock().unwrap().push((Instant::now(), l));
            cv.notify_all();
        }
    });
}

/// The value of `key=` in a result line; `text=` runs to the end of line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    if key == "text" {
        return Some(rest);
    }
    Some(rest.split_whitespace().next().unwrap_or(""))
}

/// The wall-clock time of a line (`t=<secs>`), in seconds.
pub fn time_of(line: &str) -> f64 {
    line.strip_prefix("t=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"))
}

/// Waits for every client's init in parallel-started processes.
pub fn join_all(cs: &mut [&mut Client]) -> Vec<u128> {
    cs.iter_mut()
        .map(|c| {
            let l = c.joined();
            field(&l, "ms").and_then(|m| m.parse().ok()).unwrap_or(0)
        })
        .collect()
}
