//! `o2dlm node` processes on loopback sharing one heartbeat file: nodes see
//! each other, links come up in the right direction, keepalives flow, a
//! killed node is declared dead within the dead time, a clean stop is seen
//! at once, and a node with other timeouts has its handshake refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const THRESHOLD: u64 = 7;
const PERIOD_MS: u64 = 2000;

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

struct NodeProc {
    name: String,
    child: Child,
    out: Lines,
    err: Lines,
}

impl NodeProc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// First stdout line containing `pat`, waiting up to `limit`.
    fn wait_line(&self, pat: &str, limit: Duration) -> Option<(Instant, String)> {
        let end = Instant::now() + limit;
        loop {
            if let Some(l) = self.find(pat) {
                return Some(l);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find(&self, pat: &str) -> Option<(Instant, String)> {
        self.out
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(pat))
            .cloned()
    }

    fn count_err(&self, pat: &str) -> usize {
        self.err
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(pat))
            .count()
    }

    fn dump(&self) -> String {
        let out = self.out.lock().unwrap();
        let mut s = format!("--- {} stdout:\n", self.name);
        for (_, l) in out.iter() {
            s.push_str(l);
            s.push('\n');
        }
        let err = self.err.lock().unwrap();
        s.push_str(&format!(
            "--- {} stderr (last 40 of {}):\n",
            self.name,
            err.len()
        ));
        for (_, l) in err
            .iter()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// SIGTERM and wait for the exit status.
    fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(r: impl std::io::Read + Send + 'static, lines: Lines) {
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            lines.lock().unwrap().push((Instant::now(), l));
        }
    });
}

struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    hb: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster.conf with nodes `n0..` at 127.0.0.(ip_base + n), and an
/// empty heartbeat file.
fn cluster(tag: &str, ip_base: u8, count: u8, port: u16) -> Cluster {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("node-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = format!("cluster:\n\tnode_count = {count}\n\tname = loop{ip_base}\n\n");
    for n in 0..count {
        text.push_str(&format!(
            "node:\n\tip_port = {port}\n\tip_address = 127.0.0.{}\n\tnumber = {n}\n\tname = n{n}\n\tcluster = loop{ip_base}\n\n",
            ip_base + n
        ));
    }
    let conf = dir.join("cluster.conf");
    std::fs::write(&conf, text).unwrap();
    let hb = dir.join("heartbeat");
    std::fs::write(&hb, b"").unwrap();
    Cluster { dir, conf, hb }
}

fn base_port(offset: u16) -> u16 {
    20000 + (std::process::id() % 20000) as u16 + offset
}

fn spawn(c: &Cluster, n: u8, extra: &[(&str, &str)]) -> NodeProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_o2dlm"));
    cmd.arg("node")
        .env_remove("O2CB_BOOTCLUSTER")
        .env("O2DLM_CLUSTER_CONF", &c.conf)
        .env("O2DLM_NODE", format!("n{n}"))
        .env("O2DLM_O2CB_SYSCONFIG", "")
        .env("O2CB_HEARTBEAT_THRESHOLD", THRESHOLD.to_string())
        .env("O2CB_IDLE_TIMEOUT_MS", "5000")
        .env("O2CB_KEEPALIVE_DELAY_MS", "1000")
        .env("O2CB_RECONNECT_DELAY_MS", "2000")
        .env("O2DLM_HEARTBEAT_DEVICE", &c.hb)
        .env("O2DLM_HEARTBEAT_BLOCKS", "8")
        .env("O2DLM_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn o2dlm node");
    let out: Lines = Arc::default();
    let err: Lines = Arc::default();
    collect(child.stdout.take().unwrap(), out.clone());
    collect(child.stderr.take().unwrap(), err.clone());
    NodeProc {
        name: format!("n{n}"),
        child,
        out,
        err,
    }
}

fn dump_all(ps: &[&NodeProc]) -> String {
    ps.iter().map(|p| p.dump()).collect()
}

#[test]
fn three_nodes_links_keepalives_and_death() {
    let c = cluster("three", 11, 3, base_port(101));
    let mut ps: Vec<NodeProc> = (0..3).map(|n| spawn(&c, n, &[])).collect();
    let all = |ps: &Vec<NodeProc>| dump_all(&ps.iter().collect::<Vec<_>>());

    // Everybody sees everybody (itself included) up.
    for p in &ps {
        for n in 0..3 {
            let pat = format!("node up: {n} (n{n})");
            assert!(
                p.wait_line(&pat, Duration::from_secs(30)).is_some(),
                "{} never printed '{pat}'\n{}",
                p.name,
                all(&ps)
            );
        }
    }
    // Links in the right direction: the higher number connects.
    for (i, p) in ps.iter().enumerate() {
        for n in 0..3usize {
            if n == i {
                continue;
            }
            let how = if i > n {
                "we connected"
            } else {
                "it connected"
            };
            let pat = format!("link up: {n} (n{n}) ({how})");
            assert!(
                p.wait_line(&pat, Duration::from_secs(20)).is_some(),
                "{} never printed '{pat}'\n{}",
                p.name,
                all(&ps)
            );
        }
    }
    // Keepalives flow on every process (debug log lines).
    std::thread::sleep(Duration::from_millis(3000));
    for p in &ps {
        let sent = p.count_err("keepalive request to node");
        let answered = p.count_err("keepalive request from node");
        let got = p.count_err("keepalive response from node");
        assert!(
            sent >= 1 && got >= 1 && sent + answered >= 3,
            "{}: {sent} keepalives sent, {got} answered by peers, {answered} answered by us\n{}",
            p.name,
            all(&ps)
        );
    }

    // kill -9 node 2: the others lose the link at once and declare the
    // node dead after the heartbeat threshold.
    ps[2].signal(libc::SIGKILL);
    let killed = Instant::now();
    let _ = ps[2].child.wait();
    let allowed = Duration::from_millis(THRESHOLD * PERIOD_MS + PERIOD_MS + 3000);
    for p in &ps[..2] {
        let link = p.wait_line("link down: 2 (n2)", Duration::from_secs(5));
        assert!(link.is_some(), "{}: no link down\n{}", p.name, all(&ps));
        let down = p.wait_line("node down: 2 (n2)", allowed);
        let Some((at, _)) = down else {
            panic!(
                "{}: node 2 not declared down within {allowed:?}\n{}",
                p.name,
                all(&ps)
            );
        };
        let taken = at - killed;
        eprintln!(
            "{}: node 2 declared dead {:.1} s after kill -9 (threshold {THRESHOLD} x {PERIOD_MS} ms; allowed {:.1} s)",
            p.name,
            taken.as_secs_f64(),
            allowed.as_secs_f64()
        );
        // Not before the threshold of unchanged samples could elapse (the
        // kill may fall up to one period after the last write; 1 s slack
        // for timer jitter).
        assert!(
            taken >= Duration::from_millis((THRESHOLD - 1) * PERIOD_MS - 1000),
            "{}: declared dead too early ({taken:?})",
            p.name
        );
        assert!(p.find("fence").is_none(), "{} fenced\n{}", p.name, all(&ps));
    }

    // A clean stop of node 0 is seen by node 1 at its next reads, far
    // sooner than the threshold.
    let st = ps[0].terminate(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "n0 exit {st:?}\n{}",
        all(&ps)
    );
    let stopped = Instant::now();
    assert!(ps[0].find("stopped").is_some());
    let down = ps[1].wait_line("node down: 0 (n0)", Duration::from_secs(8));
    let Some((at, _)) = down else {
        panic!("n1 did not see n0 leave\n{}", all(&ps));
    };
    eprintln!(
        "n1: clean stop of n0 seen after {:.1} s",
        at.saturating_duration_since(stopped).as_secs_f64()
    );
    let st = ps[1].terminate(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "n1 exit {st:?}\n{}",
        all(&ps)
    );
    drop(ps);
    drop(c);
}

#[test]
fn different_idle_timeout_is_refused_by_both() {
    let c = cluster("mismatch", 21, 2, base_port(102));
    let p0 = spawn(&c, 0, &[]);
    let p1 = spawn(&c, 1, &[("O2CB_IDLE_TIMEOUT_MS", "6000")]);
    let ps = [&p0, &p1];
    for p in ps {
        let other = if p.name == "n0" { 1 } else { 0 };
        let pat = format!("handshake refused: {other} (n{other})");
        assert!(
            p.wait_line(&pat, Duration::from_secs(30)).is_some(),
            "{} never printed '{pat}'\n{}",
            p.name,
            dump_all(&ps)
        );
        let (_, line) = p.find(&pat).unwrap();
        assert!(line.contains("idle timeout"), "{line}");
    }
    assert!(p0.find("node up: 1").is_some() && p1.find("node up: 0").is_some());
    // Give a would-be link a moment: it must never come up.
    std::thread::sleep(Duration::from_secs(1));
    for p in ps {
        assert!(p.find("link up").is_none(), "{}\n{}", p.name, dump_all(&ps));
    }
    let (mut p0, mut p1) = (p0, p1);
    for p in [&mut p0, &mut p1] {
        let st = p.terminate(Duration::from_secs(10));
        assert!(st.is_some_and(|s| s.success()), "{} exit {st:?}", p.name);
    }
}
