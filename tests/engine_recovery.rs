//! Node death, recovery and fencing with embedded-engine nodes (`o2dlm
//! client` processes sharing a heartbeat file, dead threshold 7 = 14 s):
//!
//! - `kill_ex_holder`: kill -9 of an EX holder; the waiters are granted
//!   within the dead time plus a margin, the LVB it held EX on reads as
//!   zeros, the one it held PR on is kept (o2dlm-protocol.md §9.6);
//! - `killed_master`: the killed node mastered names others hold: they are
//!   re-mastered, the holders keep them, a new node joins, the killed node
//!   restarts and rejoins;
//! - `restart_before_verdict`: the killed node restarts at once; its new
//!   incarnation joins only once the old one was recovered;
//! - `stop_fence_terminate` / `stop_fence_refuse`: SIGSTOP past the dead
//!   time, the others recover; on SIGCONT the node fences (exit 70 and
//!   FENCED, or with O2DLM_FENCE=refuse every call fails with
//!   SERVICE_UNAVAILABLE) and never reports a lock it lost;
//! - `second_death`: a second node dies while the first is recovered;
//! - `reco_master_death`: the recovery master is killed as soon as it
//!   claims the role;
//! - `partition`: two network namespaces, o2net cut with iptables while the
//!   heartbeat (a shared file) goes on; the side the quorum rule picks
//!   survives, the other fences (needs root).
//!
//! The cases run at once, each in its own thread with its own cluster
//! (addresses 127.0.0.201-240, or its own namespaces), inside two tests,
//! `recovery` and `fencing`, which the harness runs side by side: the file
//! takes about as long as its longest case (about a minute).
//! `O2DLM_RECOVERY_CASES=a,b` runs only the named cases. Each case prints
//! the time it allowed and took for each step, and a summary at the end.

mod engine_support;
#[path = "engine_support/netns.rs"]
mod netns;

use engine_support::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SHORT: Duration = Duration::from_millis(700);
/// One heartbeat period.
const PERIOD: Duration = Duration::from_secs(2);
/// A node is dead after THRESHOLD periods without a heartbeat write.
const DEAD: Duration = Duration::from_secs(2 * THRESHOLD as u64);
/// What we allow recovery beyond the verdict.
const MARGIN: Duration = Duration::from_secs(10);
/// The clients' o2net idle timeout (engine_support sets 5000 ms).
const IDLE: Duration = Duration::from_secs(5);
/// o2net's delay from a lost link to the quorum decision, (threshold + 2) periods.
const QUORUM_DELAY: Duration = Duration::from_secs(2 * (THRESHOLD as u64 + 2));
/// Exit status of a fenced process (default O2DLM_FENCE=terminate).
const FENCE_STATUS: i32 = 70;

/// From a kill to the waiter's grant: the dead time, up to one period of
/// phase (the last write may be that old), and the margin.
fn after_death() -> Duration {
    DEAD + PERIOD + MARGIN
}

/// The earliest a death verdict can come after a node stops writing: its
/// last write may be a period old, and reads run every period.
fn earliest_verdict() -> Duration {
    DEAD - 2 * PERIOD
}

// --------------------------------------------------------------------------
// the harness: every case in a thread, one summary

/// One case's log: every step with the time it allowed and took.
struct Steps {
    case: &'static str,
    notes: Mutex<Vec<String>>,
}

impl Steps {
    fn note(&self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("[{}] {s}", self.case);
        self.notes.lock().unwrap().push(s);
    }

    /// Records a step and fails it past its allowance.
    fn timed(&self, what: &str, allowed: Duration, took: Duration) {
        self.note(format!(
            "{what}: took {:.1} s (allowed {:.0} s)",
            took.as_secs_f64(),
            allowed.as_secs_f64()
        ));
        assert!(
            took <= allowed,
            "{}: {what} took {took:?}, allowed {allowed:?}",
            self.case
        );
    }
}

type Case = fn(&Steps);

/// Death and recovery: every node that stops is really dead.
#[test]
fn recovery() {
    run_cases(vec![
        ("kill_ex_holder", Duration::from_secs(90), kill_ex_holder),
        ("killed_master", Duration::from_secs(150), killed_master),
        (
            "restart_before_verdict",
            Duration::from_secs(110),
            restart_before_verdict,
        ),
        ("second_death", Duration::from_secs(130), second_death),
        (
            "reco_master_death",
            Duration::from_secs(130),
            reco_master_death,
        ),
    ]);
}

/// Fencing: a node that was declared dead (paused) or lost the quorum
/// (partition) but still runs. Runs next to `recovery` (the harness runs
/// two tests at once).
#[test]
fn fencing() {
    run_cases(vec![
        (
            "stop_fence_terminate",
            Duration::from_secs(100),
            stop_fence_terminate,
        ),
        (
            "stop_fence_refuse",
            Duration::from_secs(100),
            stop_fence_refuse,
        ),
        ("partition", Duration::from_secs(170), partition),
    ]);
}

/// Runs `cases` (name, whole-case allowance, body) at once, one thread
/// each, and prints a summary.
fn run_cases(cases: Vec<(&'static str, Duration, Case)>) {
    let only: Option<Vec<String>> = std::env::var("O2DLM_RECOVERY_CASES")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let t0 = Instant::now();
    let mut running = Vec::new();
    for (name, allowed, body) in cases {
        if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == name)) {
            continue;
        }
        let steps = Arc::new(Steps {
            case: name,
            notes: Mutex::new(Vec::new()),
        });
        let st = steps.clone();
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let t = Instant::now();
                let r = catch_unwind(AssertUnwindSafe(|| body(&st)));
                (t.elapsed(), r)
            })
            .unwrap();
        running.push((name, allowed, steps, h));
    }
    if running.is_empty() {
        eprintln!("O2DLM_RECOVERY_CASES selects none of {names:?}");
        return;
    }
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for (name, allowed, steps, h) in running {
        let (took, r) = h.join().expect("case thread");
        let verdict = match r {
            Ok(()) if took <= allowed => "PASS".to_string(),
            Ok(()) => format!("FAIL: took longer than the {allowed:?} allowed"),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                format!("FAIL: {}", msg.lines().next().unwrap_or(""))
            }
        };
        if !verdict.starts_with("PASS") {
            failed.push(name);
        }
        summary.push(format!(
            "{name:24} allowed {:4.0} s  took {:5.1} s  {verdict}",
            allowed.as_secs_f64(),
            took.as_secs_f64()
        ));
        drop(steps);
    }
    eprintln!(
        "\n=== engine recovery: {} cases in {:.1} s ===\n{}\n",
        summary.len(),
        t0.elapsed().as_secs_f64(),
        summary.join("\n")
    );
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

// --------------------------------------------------------------------------
// helpers

fn signal(c: &Client, sig: i32) {
    // SAFETY: kill(2) on a child process of ours, which we have not reaped
    // (its Client still owns it).
    let r = unsafe { libc::kill(c.pid() as i32, sig) };
    assert_eq!(r, 0, "kill({}, {sig}) failed", c.pid());
}

/// Wall-clock seconds, comparable with the `t=` of client lines.
fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Wall time of an engine log line (`o2dlm[pid] <secs.micros> LEVEL ...`).
fn log_time(line: &str) -> f64 {
    line.split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in log line {line:?}"))
}

/// Log lines of `c` containing every one of `pats`.
fn log_lines(c: &Client, pats: &[&str]) -> Vec<String> {
    c.stderr_all()
        .lines()
        .filter(|l| pats.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// The client of node `n` with extra environment and an optional wrapper.
fn spawn_with(c: &Cluster, n: u8, domain: &str, env: &[(&str, &str)], wrap: &[&str]) -> Client {
    let mut cmd = Client::command(c, n, domain, wrap);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Client::start(format!("n{n}"), cmd)
}

/// Waits for the result of the pending command of `c` and asserts OK.
fn granted(s: &Steps, c: &mut Client, what: &str, since: Instant, allowed: Duration) -> String {
    let limit = allowed.saturating_sub(since.elapsed()) + Duration::from_millis(200);
    let l = c.next_op(limit);
    let took = since.elapsed();
    assert_eq!(field(&l, "rc"), Some("OK"), "{what}: {l}\n{}", c.dump());
    s.timed(what, allowed, took);
    l
}

/// The LVB as `c` reads it (the lock must be held).
fn lvb(c: &mut Client, name: &str) -> String {
    let l = c.ok(&format!("read {name}"));
    field(&l, "text").unwrap_or("").to_string()
}

/// Result lines printed after `t` (wall) that claim a lock or its LVB.
fn claims_after(c: &Client, t: f64) -> Vec<String> {
    c.lines()
        .into_iter()
        .filter(|l| l.starts_with("t=") && time_of(l) > t)
        .filter(|l| {
            matches!(
                field(l, "op"),
                Some("lock" | "bast" | "read" | "write" | "incr" | "unlock")
            ) && field(l, "rc") == Some("OK")
        })
        .collect()
}

/// No survivor fenced or panicked.
fn healthy(cs: &[&Client]) {
    for c in cs {
        assert_eq!(
            c.stderr_count("FENCED"),
            0,
            "{} fenced\n{}",
            c.name,
            c.dump()
        );
        assert_eq!(
            c.stderr_count("panicked"),
            0,
            "{} panicked\n{}",
            c.name,
            c.dump()
        );
    }
}

/// Every client ends with a clean destroy and exit.
fn finish_all(s: &Steps, cs: &mut [&mut Client]) {
    let t = Instant::now();
    for c in cs.iter_mut() {
        let st = c.finish(OP);
        assert!(st.success(), "{} exit {st:?}\n{}", c.name, c.dump());
    }
    s.timed("survivors leave and exit", OP, t.elapsed());
}

/// Who claimed the recovery master role for `dead`, per the survivors' logs.
fn reco_masters(cs: &[&Client], dead: u8) -> Vec<String> {
    let pat = format!("is the recovery master for dead node Some({dead})");
    cs.iter()
        .filter(|c| c.stderr_count(&pat) > 0)
        .map(|c| c.name.clone())
        .collect()
}

/// Waits until each of `cs` logged the end of recovery of `dead`.
fn recovered(s: &Steps, cs: &[&Client], dead: u8, since: Instant, allowed: Duration) {
    let pat = format!("end recovery of node {dead} ");
    for c in cs {
        let limit = allowed.saturating_sub(since.elapsed());
        assert!(
            c.wait_stderr(&[&pat], limit).is_some(),
            "{}: no `{pat}` within {allowed:?}\n{}",
            c.name,
            dump_all(cs)
        );
    }
    s.timed(
        &format!("every survivor ended the recovery of node {dead}"),
        allowed,
        since.elapsed(),
    );
}

// --------------------------------------------------------------------------
// the cases

/// Node 2 holds L at EX and P at PR, both mastered by node 0; node 1 waits
/// for L at PR, node 0 for P at EX. kill -9 node 2: both waiters are
/// granted after the dead time; L (held EX by the dead node) reads zeros,
/// P (held PR) keeps its value.
fn kill_ex_holder(s: &Steps) {
    let c = cluster("rk1", 201, 3, port(21));
    let mut n0 = Client::spawn(&c, 0, "k1");
    let mut n1 = Client::spawn(&c, 1, "k1");
    let mut n2 = Client::spawn(&c, 2, "k1");
    let t = Instant::now();
    join_all(&mut [&mut n0, &mut n1, &mut n2]);
    s.timed("3 nodes joined", INIT, t.elapsed());

    n0.ok("lock L ex");
    n0.ok("write L from-n0");
    n0.ok("unlock L");
    n0.ok("lock P ex");
    n0.ok("write P p-n0");
    n0.ok("unlock P");
    n2.ok("lock L ex");
    assert_eq!(lvb(&mut n2, "L"), "from-n0");
    n2.ok("write L from-n2");
    n2.ok("lock P pr");
    assert_eq!(lvb(&mut n2, "P"), "p-n0");
    n1.send("lock L pr");
    n0.send("lock P ex");
    std::thread::sleep(SHORT);
    assert!(!n1.has_unread_op(), "n1 got L while n2 holds EX");
    assert!(!n0.has_unread_op(), "n0 got P at EX while n2 holds PR");

    signal(&n2, libc::SIGKILL);
    let k = Instant::now();
    s.note("kill -9 n2 (EX holder of L, PR holder of P)");
    granted(
        s,
        &mut n1,
        "n1's PR on L granted after the kill",
        k,
        after_death(),
    );
    let w1 = k.elapsed();
    granted(
        s,
        &mut n0,
        "n0's EX on P granted after the kill",
        k,
        after_death(),
    );
    assert!(
        w1 >= earliest_verdict(),
        "n1 granted {w1:?} after the kill: before n2 could be declared dead"
    );
    let l = lvb(&mut n1, "L");
    assert_eq!(
        l, "",
        "L: the dead node held EX, its LVB must read as zeros"
    );
    let p = lvb(&mut n0, "P");
    assert_eq!(
        p, "p-n0",
        "P: the dead node held only PR, the LVB must stay"
    );
    s.note("LVB of L (dead node held EX): zeros; LVB of P (dead node held PR): kept");
    // The survivors go on with both names.
    n1.ok("unlock L");
    n0.ok("unlock P");
    n0.ok("incr L");
    n1.ok("incr L");
    n1.ok("lock P pr");
    assert_eq!(lvb(&mut n1, "P"), "p-n0");
    n1.ok("unlock P");
    n0.ok("lock L pr");
    assert_eq!(lvb(&mut n0, "L"), "2");
    n0.ok("unlock L");
    healthy(&[&n0, &n1]);
    finish_all(s, &mut [&mut n0, &mut n1]);
}

/// Node 1 masters M1..M3 (first user); node 0 holds M1 PR, node 2 holds
/// M2 EX, node 1 itself holds M3 EX with node 3 waiting. kill -9 node 1:
/// recovery re-masters the three names, the holders keep their locks, the
/// waiter is granted; then a new node 4 joins and node 1 restarts and
/// rejoins, and all of them use the names.
fn killed_master(s: &Steps) {
    let c = cluster("rk2", 205, 5, port(22));
    let mut n0 = Client::spawn(&c, 0, "k2");
    let mut n1 = spawn_with(&c, 1, "k2", &[("O2DLM_LOG", "debug")], &[]);
    let mut n2 = Client::spawn(&c, 2, "k2");
    let mut n3 = Client::spawn(&c, 3, "k2");
    let t = Instant::now();
    join_all(&mut [&mut n0, &mut n1, &mut n2, &mut n3]);
    s.timed("4 nodes joined", INIT, t.elapsed());

    for m in ["M1", "M2", "M3"] {
        n1.ok(&format!("lock {m} ex"));
        n1.ok(&format!("write {m} {m}-n1"));
        n1.ok(&format!("unlock {m}"));
        assert_eq!(
            n1.stderr_count(&format!("node 1 masters {m}")),
            1,
            "n1 does not master {m}\n{}",
            n1.dump()
        );
    }
    n0.ok("lock M1 pr");
    assert_eq!(lvb(&mut n0, "M1"), "M1-n1");
    n2.ok("lock M2 ex");
    assert_eq!(lvb(&mut n2, "M2"), "M2-n1");
    n2.ok("write M2 M2-n2");
    n1.ok("lock M3 ex");
    n1.ok("write M3 M3-dead");
    n3.send("lock M3 pr");
    std::thread::sleep(SHORT);
    assert!(!n3.has_unread_op(), "n3 got M3 while n1 holds EX");

    signal(&n1, libc::SIGKILL);
    let k = Instant::now();
    s.note("kill -9 n1 (master of M1..M3, EX holder of M3)");
    granted(
        s,
        &mut n3,
        "n3's PR on M3 (dead master held EX) granted",
        k,
        after_death(),
    );
    assert!(
        k.elapsed() >= earliest_verdict(),
        "granted before the verdict"
    );
    assert_eq!(lvb(&mut n3, "M3"), "", "M3: the dead node held EX: zeros");
    recovered(s, &[&n0, &n2, &n3], 1, k, after_death());
    s.note(format!(
        "recovery master for n1: {:?}",
        reco_masters(&[&n0, &n2, &n3], 1)
    ));
    // The holders still hold, with their values.
    assert_eq!(lvb(&mut n0, "M1"), "M1-n1");
    n2.ok("write M2 M2-n2b");
    let t = Instant::now();
    n2.ok("unlock M2");
    n0.ok("unlock M1");
    n3.ok("unlock M3");
    // Each re-mastered name is served again, with the values the surviving
    // holders vouch for.
    n0.ok("lock M2 pr");
    assert_eq!(lvb(&mut n0, "M2"), "M2-n2b", "M2 lost n2's EX write");
    n0.ok("unlock M2");
    n3.ok("incr M3");
    n2.ok("lock M1 ex");
    n2.ok("write M1 M1-n2");
    n2.ok("unlock M1");
    n0.ok("lock M1 pr");
    assert_eq!(lvb(&mut n0, "M1"), "M1-n2");
    n0.ok("unlock M1");
    s.timed("survivors use M1..M3 again", OP, t.elapsed());

    // A node that was never up joins, and the killed node comes back.
    let t = Instant::now();
    let mut n4 = Client::spawn(&c, 4, "k2");
    let mut n1b = Client::spawn(&c, 1, "k2");
    join_all(&mut [&mut n4, &mut n1b]);
    s.timed(
        "new node 4 and restarted node 1 joined after recovery",
        INIT,
        t.elapsed(),
    );
    n4.ok("incr M3");
    n1b.ok("lock M3 pr");
    assert_eq!(lvb(&mut n1b, "M3"), "2");
    n1b.ok("unlock M3");
    n1b.ok("lock M2 ex");
    assert_eq!(lvb(&mut n1b, "M2"), "M2-n2b");
    n1b.ok("unlock M2");
    n4.ok("lock M1 pr");
    assert_eq!(lvb(&mut n4, "M1"), "M1-n2");
    n4.ok("unlock M1");
    healthy(&[&n0, &n2, &n3, &n4, &n1b]);
    finish_all(s, &mut [&mut n0, &mut n2, &mut n3, &mut n4, &mut n1b]);
}

/// kill -9 of an EX holder, restarted at once in the same slot: the
/// waiter is served with zeros, and the new incarnation's join completes
/// only after the survivors recovered the old one (JOIN_DISALLOW).
fn restart_before_verdict(s: &Steps) {
    let c = cluster("rk8", 211, 3, port(28));
    let mut n0 = Client::spawn(&c, 0, "k8");
    let mut n1 = Client::spawn(&c, 1, "k8");
    let mut n2 = Client::spawn(&c, 2, "k8");
    let t = Instant::now();
    join_all(&mut [&mut n0, &mut n1, &mut n2]);
    s.timed("3 nodes joined", INIT, t.elapsed());
    n0.ok("lock L ex");
    n0.ok("write L from-n0");
    n0.ok("unlock L");
    n2.ok("lock L ex");
    n2.ok("write L from-n2");
    n2.ok("lock R ex"); // n2 masters R
    n2.ok("write R r-n2");
    n1.send("lock L pr");
    std::thread::sleep(SHORT);
    assert!(!n1.has_unread_op());

    signal(&n2, libc::SIGKILL);
    let k = Instant::now();
    let mut n2b = Client::spawn(&c, 2, "k8");
    s.note("kill -9 n2 (EX holder), restarted at once as a new process");
    granted(s, &mut n1, "n1's PR on L granted", k, after_death());
    assert_eq!(lvb(&mut n1, "L"), "", "L: the dead node held EX: zeros");
    let l = n2b.joined();
    let joined_at = time_of(&l);
    s.timed("restarted n2 joined", after_death() + INIT, k.elapsed());
    recovered(s, &[&n0, &n1], 2, k, after_death());
    for sv in [&n0, &n1] {
        let end = log_lines(sv, &["end recovery of node 2 "]);
        let t_end = log_time(&end[0]);
        assert!(
            t_end <= joined_at,
            "{}: the new n2 joined at {joined_at} before the old one was recovered ({t_end})\n{}",
            sv.name,
            dump_all(&[sv, &n2b])
        );
    }
    s.note(format!(
        "join of the new incarnation returned {:.1} s after the kill ({}); JOIN_DISALLOW answers seen in its log: {}",
        joined_at - (wall() - k.elapsed().as_secs_f64()),
        field(&l, "ms").map(|m| format!("init took {m} ms")).unwrap_or_default(),
        n2b.stderr_count("DISALLOW") + n2b.stderr_count("disallow")
    ));
    // The new incarnation starts from nothing: R is free, its LVB zero.
    n2b.ok("lock R ex");
    assert_eq!(lvb(&mut n2b, "R"), "", "R: the dead node held EX: zeros");
    n2b.ok("unlock R");
    n1.ok("unlock L");
    n2b.ok("incr L");
    n0.ok("lock L pr");
    assert_eq!(lvb(&mut n0, "L"), "1");
    n0.ok("unlock L");
    healthy(&[&n0, &n1, &n2b]);
    finish_all(s, &mut [&mut n0, &mut n1, &mut n2b]);
}

/// What a stopped node is given to do first when it runs again: use what
/// it believes it holds (none of these may succeed; the commands after the
/// fence use other names, so a wrong success here does not change them).
const QUEUED: [&str; 5] = [
    "lock C ex",
    "read L",
    "write L stale",
    "lock L pr",
    "echo resumed",
];

/// Shared by the two SIGSTOP cases: node 2 (with `env`) holds L at EX
/// (mastered by node 0) and has C cached (it masters C); node 1 waits
/// for L. SIGSTOP node 2 until the others have recovered it and node 0
/// took C, queue commands on its stdin, SIGCONT. Returns the clients and
/// the wall time of the SIGSTOP.
fn stopped_node(s: &Steps, c: &Cluster, domain: &str, env: &[(&str, &str)]) -> ([Client; 3], f64) {
    let mut n0 = Client::spawn(c, 0, domain);
    let mut n1 = Client::spawn(c, 1, domain);
    let mut n2 = spawn_with(c, 2, domain, env, &[]);
    let t = Instant::now();
    join_all(&mut [&mut n0, &mut n1, &mut n2]);
    s.timed("3 nodes joined", INIT, t.elapsed());
    n0.ok("lock L ex");
    n0.ok("write L from-n0");
    n0.ok("unlock L");
    n2.ok("lock L ex");
    n2.ok("write L from-n2");
    n2.ok("lock C ex");
    n2.ok("write C c-n2");
    n2.ok("unlock C");
    n2.ok("lock D ex");
    n2.ok("unlock D");
    n1.send("lock L pr");
    std::thread::sleep(SHORT);
    assert!(!n1.has_unread_op());

    let stop_wall = wall();
    signal(&n2, libc::SIGSTOP);
    let k = Instant::now();
    s.note("SIGSTOP n2 (EX holder of L, C cached)");
    granted(
        s,
        &mut n1,
        "n1's PR on L granted while n2 is stopped",
        k,
        after_death(),
    );
    assert!(
        k.elapsed() >= earliest_verdict(),
        "granted before the verdict"
    );
    assert_eq!(lvb(&mut n1, "L"), "", "L: the stopped node held EX: zeros");
    recovered(s, &[&n0, &n1], 2, k, after_death());
    let t = Instant::now();
    n0.ok("lock C ex");
    s.timed(
        "n0 takes C, which the stopped node had cached",
        OP,
        t.elapsed(),
    );
    n0.ok("write C c-n0");
    // What the stopped node will do first when it runs again: use what it
    // believes it holds.
    // Past the dead time for sure (the verdict may come up to a period
    // before it, counted from the last write before the stop).
    if let Some(rest) = (DEAD + PERIOD).checked_sub(k.elapsed()) {
        std::thread::sleep(rest);
    }
    for cmd in QUEUED {
        n2.send(cmd);
    }
    s.note(format!(
        "n2 stopped {:.1} s (dead time {} s); SIGCONT",
        k.elapsed().as_secs_f64(),
        DEAD.as_secs()
    ));
    signal(&n2, libc::SIGCONT);
    // Anything n2 printed after the stop, it printed after it resumed.
    ([n0, n1, n2], stop_wall)
}

fn stop_fence_terminate(s: &Steps) {
    let c = cluster("rk3", 215, 3, port(23));
    let ([mut n0, mut n1, mut n2], stop_wall) = stopped_node(s, &c, "k3", &[]);
    let t = Instant::now();
    let st = n2.wait_exit(Duration::from_secs(15));
    let Some(st) = st else {
        panic!(
            "n2 still runs 15 s after SIGCONT (it must fence and exit {FENCE_STATUS})\n{}",
            n2.dump()
        );
    };
    s.timed(
        "n2 exits after SIGCONT",
        Duration::from_secs(15),
        t.elapsed(),
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.code(),
        Some(FENCE_STATUS),
        "n2 ended with {st:?} (signal {:?})\n{}",
        st.signal(),
        n2.dump()
    );
    assert!(
        n2.stderr_count("FENCED") >= 1,
        "no FENCED on stderr\n{}",
        n2.dump()
    );
    s.note(format!(
        "n2 exit status 70, FENCED: {}",
        log_lines(&n2, &["FENCED"])
            .first()
            .cloned()
            .unwrap_or_default()
    ));
    // The survivors carry on; n2 never comes back to disturb them.
    n1.ok("unlock L");
    n0.ok("unlock C");
    n1.ok("lock C pr");
    assert_eq!(lvb(&mut n1, "C"), "c-n0");
    n1.ok("unlock C");
    n0.ok("incr L");
    healthy(&[&n0, &n1]);
    finish_all(s, &mut [&mut n0, &mut n1]);
    let claims = claims_after(&n2, stop_wall);
    assert!(
        claims.is_empty(),
        "the fenced node reported locks it had lost after SIGCONT: {claims:?}\n{}",
        n2.dump()
    );
}

fn stop_fence_refuse(s: &Steps) {
    let c = cluster("rk4", 219, 3, port(24));
    let ([mut n0, mut n1, mut n2], stop_wall) =
        stopped_node(s, &c, "k4", &[("O2DLM_FENCE", "refuse")]);
    let t = Instant::now();
    assert!(
        n2.wait_stderr(&["FENCED"], Duration::from_secs(15))
            .is_some(),
        "no FENCED within 15 s of SIGCONT\n{}",
        n2.dump()
    );
    s.timed(
        "n2 reports FENCED after SIGCONT",
        Duration::from_secs(15),
        t.elapsed(),
    );
    // The queued commands are answered (checked below), and the process
    // stays.
    for _ in 0..QUEUED.len() {
        n2.next_op(OP);
    }
    assert!(
        n2.wait_exit(Duration::from_millis(300)).is_none(),
        "refuse mode must not exit"
    );
    // Every call now fails with SERVICE_UNAVAILABLE.
    for cmd in [
        "lock D ex",
        "lock D pr try",
        "lock New ex",
        "read L",
        "write L x",
        "unlock L",
        "drop D",
        "destroy",
        "init",
    ] {
        let l = n2.call(cmd);
        assert_eq!(
            field(&l, "rc"),
            Some("O2DLM_ET_SERVICE_UNAVAILABLE"),
            "after the fence, `{cmd}` gave {l}\n{}",
            n2.dump()
        );
    }
    s.note("refuse mode: 9 calls after the fence all failed with SERVICE_UNAVAILABLE");
    n1.ok("unlock L");
    n0.ok("unlock C");
    n1.ok("lock C pr");
    assert_eq!(lvb(&mut n1, "C"), "c-n0");
    n1.ok("unlock C");
    n0.ok("incr L");
    healthy(&[&n0, &n1]);
    finish_all(s, &mut [&mut n0, &mut n1]);
    let claims = claims_after(&n2, stop_wall);
    assert!(
        claims.is_empty(),
        "the fenced node reported locks it had lost after SIGCONT: {claims:?}\n{}",
        n2.dump()
    );
}

/// Four nodes. Node 3 holds A (mastered by 0) and B3 (its own) at EX,
/// node 2 holds B2 (its own) at EX; node 1 waits for A, node 0 for B3.
/// kill -9 node 3; 10 s later SIGSTOP node 2 (so it cannot take part in
/// node 3's recovery) and SIGKILL it the moment node 0 sees node 3 dead:
/// the second death falls in the first one's recovery. Both are recovered,
/// the waiters granted, all names usable.
fn second_death(s: &Steps) {
    let c = cluster("rk5", 223, 4, port(25));
    let mut n0 = Client::spawn(&c, 0, "k5");
    let mut n1 = Client::spawn(&c, 1, "k5");
    let mut n2 = Client::spawn(&c, 2, "k5");
    let mut n3 = Client::spawn(&c, 3, "k5");
    let t = Instant::now();
    join_all(&mut [&mut n0, &mut n1, &mut n2, &mut n3]);
    s.timed("4 nodes joined", INIT, t.elapsed());
    n0.ok("lock A ex");
    n0.ok("write A a-n0");
    n0.ok("unlock A");
    n3.ok("lock A ex");
    n3.ok("write A a-n3");
    n3.ok("lock B3 ex");
    n3.ok("write B3 b3-n3");
    n2.ok("lock B2 ex");
    n2.ok("write B2 b2-n2");
    n1.send("lock A pr");
    n0.send("lock B3 pr");
    std::thread::sleep(SHORT);
    assert!(!n1.has_unread_op() && !n0.has_unread_op());

    signal(&n3, libc::SIGKILL);
    let k = Instant::now();
    s.note("kill -9 n3");
    std::thread::sleep(earliest_verdict() - PERIOD);
    signal(&n2, libc::SIGSTOP);
    let stop2 = wall();
    s.note(format!(
        "SIGSTOP n2 {:.1} s after the first kill",
        k.elapsed().as_secs_f64()
    ));
    let seen = n0.wait_stderr(&["node 3 died"], after_death());
    let seen = seen.unwrap_or_else(|| panic!("n0 never saw n3 die\n{}", n0.dump()));
    signal(&n2, libc::SIGKILL);
    s.note(format!(
        "n0 saw n3 die {:.1} s after the kill; SIGKILL n2 now",
        k.elapsed().as_secs_f64()
    ));
    assert!(
        log_time(&seen) > stop2,
        "n3's death was seen before n2 stopped: not a death during recovery"
    );
    // Both waiters: the first death's recovery may wait for the second
    // verdict, so allow two dead times.
    let both = after_death() + DEAD;
    granted(
        s,
        &mut n1,
        "n1's PR on A (dead n3 held EX) granted",
        k,
        both,
    );
    granted(
        s,
        &mut n0,
        "n0's PR on B3 (dead n3 mastered and held EX) granted",
        k,
        both,
    );
    assert_eq!(lvb(&mut n1, "A"), "");
    assert_eq!(lvb(&mut n0, "B3"), "");
    recovered(s, &[&n0, &n1], 3, k, both);
    recovered(s, &[&n0, &n1], 2, k, both + PERIOD);
    let end3 = log_time(&log_lines(&n0, &["end recovery of node 3 "])[0]);
    s.note(format!(
        "n0 ended node 3's recovery {:.1} s after n2 stopped; recovery masters: node 3 {:?}, node 2 {:?}",
        end3 - stop2,
        reco_masters(&[&n0, &n1], 3),
        reco_masters(&[&n0, &n1], 2)
    ));
    let t = Instant::now();
    n1.ok("lock B2 pr");
    assert_eq!(lvb(&mut n1, "B2"), "", "B2: the dead n2 held EX: zeros");
    n1.ok("unlock B2");
    n1.ok("unlock A");
    n0.ok("unlock B3");
    for name in ["A", "B2", "B3"] {
        n0.ok(&format!("incr {name}"));
        n1.ok(&format!("incr {name}"));
        n0.ok(&format!("lock {name} pr"));
        assert_eq!(lvb(&mut n0, name), "2", "{name}");
        n0.ok(&format!("unlock {name}"));
    }
    s.timed("survivors use A, B2, B3 again", OP, t.elapsed());
    healthy(&[&n0, &n1]);
    finish_all(s, &mut [&mut n0, &mut n1]);
}

/// Four nodes. Node 3 masters D0..D2 and holds them at EX; node k (k <
/// 3) waits for Dk at PR and holds its own Fk at EX. kill -9 node 3, then
/// kill -9 whichever survivor claims the recovery master role (the lowest
/// node, if it wins the `$RECOVERY` lock first) the moment its claim
/// appears — during its recovery when the kill is fast enough, else right
/// after it (the output says which). The two
/// others elect again and recover both dead nodes: their waiters are
/// granted, the names of both dead nodes read zeros and are usable.
fn reco_master_death(s: &Steps) {
    let c = cluster("rk6", 227, 4, port(26));
    let mut ns: Vec<Client> = (0..4).map(|n| Client::spawn(&c, n, "k6")).collect();
    let t = Instant::now();
    for n in ns.iter_mut() {
        n.joined();
    }
    s.timed("4 nodes joined", INIT, t.elapsed());
    for k in 0..3 {
        ns[3].ok(&format!("lock D{k} ex"));
        ns[3].ok(&format!("write D{k} d{k}-n3"));
        ns[k].ok(&format!("lock F{k} ex"));
        ns[k].ok(&format!("write F{k} f{k}-n{k}"));
    }
    for k in 0..3 {
        ns[k].send(&format!("lock D{k} pr"));
    }
    std::thread::sleep(SHORT);
    assert!(ns[..3].iter().all(|n| !n.has_unread_op()));

    signal(&ns[3], libc::SIGKILL);
    let k = Instant::now();
    s.note("kill -9 n3");
    // The claim is logged before BEGIN_RECO goes out.
    let pat = "is the recovery master for dead node Some(3)";
    let end = Instant::now() + after_death();
    let m = loop {
        if let Some(i) = ns[..3].iter().position(|c| c.stderr_count(pat) > 0) {
            break i;
        }
        assert!(
            Instant::now() < end,
            "nobody claimed to be the recovery master for n3\n{}",
            dump_all(&[&ns[0], &ns[1], &ns[2]])
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    signal(&ns[m], libc::SIGKILL);
    let kill2 = wall();
    let claim = log_time(&log_lines(&ns[m], &[pat])[0]);
    let done_before: Vec<String> = ns[..3]
        .iter()
        .flat_map(|c| log_lines(c, &["end recovery of node 3 "]))
        .filter(|l| log_time(l) < kill2)
        .collect();
    s.note(format!(
        "n{m} claimed recovery master {:.1} s after the first kill; SIGKILL n{m} {:.1} ms after its claim",
        k.elapsed().as_secs_f64(),
        (kill2 - claim) * 1000.0
    ));
    // Recovery often ends within a millisecond of the claim, faster than
    // this test can kill: then the run checks a death right after a
    // recovery instead, and says so. The death of a recovery master in the
    // middle of its recovery is covered deterministically by
    // tests/dlm_recovery.rs and by the simulator's sweeps.
    if done_before.is_empty() {
        s.note(format!("n{m} killed during its recovery of n3"));
    } else {
        s.note(format!(
            "NOTE: recovery of n3 had already ended when n{m} was killed \
             ({} lines); this run checks a death right after recovery",
            done_before.len()
        ));
    }
    let live: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let both = after_death() + DEAD + PERIOD;
    for &i in &live {
        let n = &mut ns[i];
        granted(
            s,
            n,
            &format!("n{i}'s PR on D{i} (dead n3 mastered, held EX) granted"),
            k,
            both,
        );
        assert_eq!(
            lvb(n, &format!("D{i}")),
            "",
            "D{i}: the dead n3 held EX: zeros"
        );
    }
    let sv: Vec<&Client> = live.iter().map(|&i| &ns[i]).collect();
    recovered(s, &sv, 3, k, both);
    recovered(s, &sv, m as u8, k, both + PERIOD);
    s.note(format!(
        "recovery masters after the election again: node 3 {:?}, node {m} {:?}",
        reco_masters(&sv, 3),
        reco_masters(&sv, m as u8)
    ));
    let t = Instant::now();
    let (a, b) = (live[0], live[1]);
    for &i in &live {
        ns[i].ok(&format!("unlock D{i}"));
        ns[i].ok(&format!("unlock F{i}"));
    }
    // The names of both dead nodes and of the survivors.
    ns[a].ok(&format!("lock F{m} pr"));
    assert_eq!(
        lvb(&mut ns[a], &format!("F{m}")),
        "",
        "F{m}: the dead n{m} held EX: zeros"
    );
    ns[a].ok(&format!("unlock F{m}"));
    for name in ["D0", "D1", "D2", &format!("F{m}")] {
        ns[a].ok(&format!("incr {name}"));
        ns[b].ok(&format!("incr {name}"));
        ns[a].ok(&format!("lock {name} pr"));
        assert_eq!(lvb(&mut ns[a], name), "2", "{name}");
        ns[a].ok(&format!("unlock {name}"));
    }
    ns[b].ok(&format!("lock F{a} pr"));
    assert_eq!(lvb(&mut ns[b], &format!("F{a}")), format!("f{a}-n{a}"));
    ns[b].ok(&format!("unlock F{a}"));
    s.timed("survivors use every name again", OP, t.elapsed());
    let [x, y] = [a, b];
    let (lo, hi) = ns.split_at_mut(y);
    let (na, nb) = (&mut lo[x], &mut hi[0]);
    healthy(&[na, nb]);
    finish_all(s, &mut [na, nb]);
}

/// Four nodes in two network namespaces: side A = {0, 3}, side B = {1, 2}.
/// o2net is cut between the sides; the heartbeat file is shared. With 4
/// heartbeating and 2 connected on each side, the quorum rule (o2net-wire
/// §8.1) keeps the side with the lowest node (A) and fences B. Node 1 (B)
/// held L at EX with node 3 (A) waiting; node 2 (B) waited for M, held by
/// node 0 (A): it must die without reporting a grant.
fn partition(s: &Steps) {
    let net = match netns::Netns::new("p", [vec![0, 3], vec![1, 2]]) {
        Ok(n) => n,
        Err(e) => panic!(
            "partition test needs network namespaces (root, `ip netns`, veth, iptables): {e}"
        ),
    };
    let c = net.cluster("rk7", 4, port(27));
    let spawn = |n: u8| spawn_with(&c, n, "k7", &[], &net.wrap(n));
    let mut n0 = spawn(0);
    let mut n1 = spawn(1);
    let mut n2 = spawn(2);
    let mut n3 = spawn(3);
    let t = Instant::now();
    join_all(&mut [&mut n0, &mut n1, &mut n2, &mut n3]);
    s.timed("4 nodes in 2 namespaces joined", INIT, t.elapsed());
    n0.ok("lock L ex");
    n0.ok("write L from-n0");
    n0.ok("unlock L");
    n0.ok("lock M ex");
    n1.ok("lock L ex");
    assert_eq!(lvb(&mut n1, "L"), "from-n0");
    n1.ok("write L from-n1");
    n3.send("lock L pr");
    n2.send("lock M ex");
    std::thread::sleep(SHORT);
    assert!(!n3.has_unread_op() && !n2.has_unread_op());

    let cut_wall = wall();
    net.cut()
        .unwrap_or_else(|e| panic!("cannot cut the partition: {e}"));
    let k = Instant::now();
    s.note("o2net cut between {n0, n3} and {n1, n2}; heartbeat goes on");
    // Side B fences once its links have been idle for IDLE and the quorum
    // delay has passed. If one B node fences (and its link drops) just
    // before the other decides, that link is a new hold and the other's
    // decision waits for it to clear, at the first node's death verdict
    // (the kernel's quorum.c does the same): up to DEAD + PERIOD more.
    let fence_by = IDLE + QUORUM_DELAY + DEAD + PERIOD + MARGIN;
    use std::os::unix::process::ExitStatusExt;
    for n in [&mut n1, &mut n2] {
        let limit = fence_by.saturating_sub(k.elapsed());
        let Some(st) = n.wait_exit(limit) else {
            panic!(
                "{} (losing side) still runs {fence_by:?} after the cut\n{}",
                n.name,
                n.dump()
            );
        };
        assert_eq!(
            st.code(),
            Some(FENCE_STATUS),
            "{} ended with {st:?} (signal {:?})\n{}",
            n.name,
            st.signal(),
            n.dump()
        );
        assert!(n.stderr_count("FENCED") >= 1, "{}", n.dump());
        // What led there: the link losses and the decision.
        let why: Vec<String> = n
            .stderr_all()
            .lines()
            .filter(|l| l.contains("quorum") || l.contains("no longer connected"))
            .map(|l| l.split_once(" o2net: ").map_or(l, |x| x.1).to_string())
            .collect();
        s.note(format!("{}: {}", n.name, why.join(" | ")));
        s.timed(
            &format!("{} (side B) fenced, exit 70", n.name),
            fence_by,
            k.elapsed(),
        );
    }
    let claims = claims_after(&n2, cut_wall);
    assert!(
        claims.is_empty(),
        "n2 reported a grant it never had: {claims:?}"
    );
    assert!(claims_after(&n1, cut_wall).is_empty());
    // Side A: not fenced, and recovers B once its heartbeat stopped.
    let recover_by = fence_by + DEAD + PERIOD;
    granted(
        s,
        &mut n3,
        "n3's PR on L (fenced n1 held EX) granted",
        k,
        recover_by,
    );
    assert_eq!(lvb(&mut n3, "L"), "", "L: the fenced node held EX: zeros");
    for dead in [1, 2] {
        recovered(s, &[&n0, &n3], dead, k, recover_by + PERIOD);
    }
    let decisions = log_lines(&n0, &["quorum kept"]);
    s.note(format!(
        "n0's quorum decision: {}",
        decisions
            .first()
            .map(String::as_str)
            .unwrap_or("(none logged)")
    ));
    n0.ok("write M m-n0");
    n0.ok("unlock M");
    n3.ok("unlock L");
    n3.ok("incr L");
    n0.ok("lock L pr");
    assert_eq!(lvb(&mut n0, "L"), "1");
    n0.ok("unlock L");
    healthy(&[&n0, &n3]);
    // The partition heals; a fenced node restarts and rejoins.
    net.heal()
        .unwrap_or_else(|e| panic!("cannot heal the partition: {e}"));
    let t = Instant::now();
    let mut n1b = spawn(1);
    n1b.joined();
    s.timed(
        "n1 restarted on side B and rejoined after the heal",
        INIT,
        t.elapsed(),
    );
    n1b.ok("lock M pr");
    assert_eq!(lvb(&mut n1b, "M"), "m-n0");
    n1b.ok("unlock M");
    finish_all(s, &mut [&mut n0, &mut n3, &mut n1b]);
}
