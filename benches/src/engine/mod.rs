//! The o2dlm figures. Each figure is one function taking a config; each
//! starts its own cluster of engine node processes on 127.0.0.x (one
//! process per node, `o2dlm-bench __node`), drives them over stdin/stdout,
//! and stops them. While the engine's DLM is not built, the nodes' call to
//! `Context::initialize` fails and every figure reports that as pending.

pub mod node;

use crate::cpu::{self, Placement};
use crate::procs::{self, Server, TempDir};
use crate::report::Outcome;
use crate::stats::{monotonic_ns, Latencies};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

const CLUSTER: &str = "o2bench";
const DOMAIN: &str = "o2bench";
/// Heartbeat geometry the nodes share (the library's defaults).
const HB_BLOCK_BYTES: u64 = 512;
const HB_START_BLOCK: u64 = 1;
const HB_BLOCKS: u64 = 255;
/// How long a node may take to join (heartbeat must see every node live).
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);

/// Address of node `i`: 127.0.0.2 and up (127.0.0.1 is left to the
/// baselines' servers).
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + i as u8)
}

/// The cluster.conf (ocfs2.cluster.conf(5)) for `n` nodes sharing `port`.
pub fn cluster_conf(n: usize, port: u16) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "node:\n\tip_port = {port}\n\tip_address = {}\n\tnumber = {i}\n\tname = bench{i}\n\tcluster = {CLUSTER}\n\n",
            node_ip(i)
        ));
    }
    s.push_str(&format!(
        "cluster:\n\tnode_count = {n}\n\tname = {CLUSTER}\n\theartbeat_mode = local\n"
    ));
    s
}

/// What the node processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeBackend {
    /// The library's embedded engine: the real figures.
    Engine,
    /// flock(2) on files in a shared directory: only to test this harness
    /// (`--self-test`); its numbers say nothing about o2dlm.
    FlockStandIn,
}

/// The environment that makes the library's engine node `i` of the
/// cluster described by the files at `conf`, `hb` and `sysconfig`.
pub fn node_env(
    i: usize,
    conf: &std::path::Path,
    hb: &std::path::Path,
    sysconfig: &std::path::Path,
) -> Vec<(String, String)> {
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    [
        ("O2DLM_BACKEND", "engine".to_string()),
        ("O2DLM_CLUSTER_CONF", path(conf)),
        ("O2CB_BOOTCLUSTER", CLUSTER.to_string()),
        ("O2DLM_NODE", format!("bench{i}")),
        ("O2DLM_HEARTBEAT_DEVICE", path(hb)),
        ("O2DLM_HEARTBEAT_BLOCK_BYTES", HB_BLOCK_BYTES.to_string()),
        ("O2DLM_HEARTBEAT_START_BLOCK", HB_START_BLOCK.to_string()),
        ("O2DLM_HEARTBEAT_BLOCKS", HB_BLOCKS.to_string()),
        ("O2DLM_O2CB_SYSCONFIG", path(sysconfig)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A parsed `ok key=value ...` answer.
pub struct Reply(HashMap<String, String>);

impl Reply {
    fn parse(line: &str) -> Result<Reply, String> {
        let rest = line
            .strip_prefix("ok")
            .ok_or_else(|| line.strip_prefix("error ").unwrap_or(line).to_string())?;
        Ok(Reply(
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    pub fn num(&self, key: &str) -> Result<f64, String> {
        self.0
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("answer has no number {key}"))
    }

    pub fn samples(&self) -> Result<Vec<u64>, String> {
        let s = self.0.get("samples").ok_or("answer has no samples")?;
        if s.is_empty() {
            return Ok(Vec::new());
        }
        s.split(',')
            .map(|x| x.parse().map_err(|_| format!("bad sample {x:?}")))
            .collect()
    }
}

struct Node {
    proc_: Server,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: PathBuf,
}

/// A running set of engine node processes.
pub struct Cluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts `n` nodes, node i pinned per `placement`, and waits until each
    /// has joined the domain (or refused to).
    pub fn start(n: usize, placement: Placement, backend: NodeBackend) -> Result<Cluster, Outcome> {
        let fail = |what: &str, e: &dyn std::fmt::Display| Outcome::Failed(format!("{what}: {e}"));
        if let Some(why) = (n > 1 && placement == Placement::TwoCores)
            .then(|| placement.unavailable_reason())
            .flatten()
        {
            return Err(Outcome::Unavailable(why));
        }
        let dir = TempDir::new("cluster").map_err(|e| fail("temp dir", &e))?;
        let ips: Vec<Ipv4Addr> = (0..n).map(node_ip).collect();
        let port = procs::free_port_on_all(&ips).map_err(|e| fail("port", &e))?;
        let conf = dir.path().join("cluster.conf");
        std::fs::write(&conf, cluster_conf(n, port)).map_err(|e| fail("cluster.conf", &e))?;
        // A zeroed heartbeat region, as a freshly formatted device.
        let hb = dir.path().join("heartbeat");
        let f = std::fs::File::create(&hb).map_err(|e| fail("heartbeat file", &e))?;
        f.set_len((HB_START_BLOCK + HB_BLOCKS) * HB_BLOCK_BYTES)
            .map_err(|e| fail("heartbeat file", &e))?;
        // An empty o2cb sysconfig, so the host's /etc/default/o2cb is not read.
        let sysconfig = dir.path().join("o2cb");
        std::fs::write(&sysconfig, "").map_err(|e| fail("sysconfig", &e))?;
        let locks_dir = dir.path().join("locks");
        std::fs::create_dir(&locks_dir).map_err(|e| fail("locks dir", &e))?;
        let exe = std::env::current_exe().map_err(|e| fail("current_exe", &e))?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let cpu = placement
                .node_cpu(i)
                .map_err(|e| Outcome::Unavailable(e.to_string()))?;
            let log = dir.path().join(format!("node{i}.log"));
            let logf = std::fs::File::create(&log).map_err(|e| fail("node log", &e))?;
            let mut cmd = Command::new(&exe);
            match backend {
                NodeBackend::Engine => cmd
                    .args(["__node", DOMAIN])
                    .envs(node_env(i, &conf, &hb, &sysconfig))
                    .env(
                        "O2DLM_LOG",
                        std::env::var("O2DLM_LOG").unwrap_or("warn".into()),
                    ),
                NodeBackend::FlockStandIn => cmd.arg("__node").arg("--flock").arg(&locks_dir),
            };
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(logf);
            cpu::pin_command(&mut cmd, cpu);
            let mut child = cmd.spawn().map_err(|e| fail("spawn node", &e))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(Outcome::Failed("node pipes missing".into()));
            };
            // A reader thread per node, so every wait can have a timeout.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            nodes.push(Node {
                proc_: Server::new("engine node", child),
                stdin,
                lines: rx,
                log,
            });
        }
        let mut cluster = Cluster { nodes, _dir: dir };
        for i in 0..n {
            let line = cluster.recv_line(i, JOIN_TIMEOUT)?;
            if line == "ready" {
                continue;
            }
            return Err(init_refusal(&line));
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn recv_line(&mut self, i: usize, timeout: Duration) -> Result<String, Outcome> {
        let node = &mut self.nodes[i];
        match node.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(Outcome::Failed(format!(
                "node {i}: no answer in {} s{}",
                timeout.as_secs(),
                log_tail(&node.log)
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                let status = node.proc_.check_running().err().unwrap_or_default();
                Err(Outcome::Failed(format!(
                    "node {i} closed its output {status}{}",
                    log_tail(&node.log)
                )))
            }
        }
    }

    pub fn send(&mut self, i: usize, cmd: &str) -> Result<(), Outcome> {
        writeln!(self.nodes[i].stdin, "{cmd}")
            .and_then(|_| self.nodes[i].stdin.flush())
            .map_err(|e| Outcome::Failed(format!("node {i}: {e}")))
    }

    pub fn recv(&mut self, i: usize, timeout: Duration) -> Result<Reply, Outcome> {
        let line = self.recv_line(i, timeout)?;
        Reply::parse(&line).map_err(|e| Outcome::Failed(format!("node {i}: {e}")))
    }

    pub fn ask(&mut self, i: usize, cmd: &str, timeout: Duration) -> Result<Reply, Outcome> {
        self.send(i, cmd)?;
        self.recv(i, timeout)
    }

    /// o2net messages sent so far by all nodes together.
    pub fn messages_sent(&mut self) -> Result<u64, Outcome> {
        let mut total = 0u64;
        for i in 0..self.nodes.len() {
            match self.ask(i, "messages", Duration::from_secs(10)) {
                Ok(r) => total += r.num("sent").map_err(Outcome::Failed)? as u64,
                Err(Outcome::Failed(why)) => return Err(Outcome::Unavailable(why)),
                Err(other) => return Err(other),
            }
        }
        Ok(total)
    }

    /// Asks every node to leave and waits for them to exit.
    pub fn stop(mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.send(i, "quit");
        }
        for n in &mut self.nodes {
            n.proc_.stop(Duration::from_secs(30));
        }
    }
}

/// What a node's refusal to initialise means for the figure.
fn init_refusal(line: &str) -> Outcome {
    let detail = line.strip_prefix("error ").unwrap_or(line);
    if detail.starts_with("O2DLM_ET_SERVICE_UNAVAILABLE") {
        Outcome::Pending {
            reason: "engine DLM not available".into(),
            detail: format!("Context::initialize with O2DLM_BACKEND=engine returned {detail}"),
        }
    } else {
        Outcome::Failed(format!("Context::initialize: {detail}"))
    }
}

fn log_tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.lines().last() {
        Some(l) => format!(" (last log line: {l})"),
        None => String::new(),
    }
}

/// Messages per operation from two counter snapshots.
fn per_op(before: &Result<u64, Outcome>, after: &Result<u64, Outcome>, ops: f64) -> Outcome {
    match (before, after) {
        (Ok(a), Ok(b)) if ops > 0.0 => Outcome::Value(b.saturating_sub(*a) as f64 / ops),
        (Err(e), _) | (_, Err(e)) => e.clone(),
        _ => Outcome::Failed("no operations".into()),
    }
}

/// A figure with a latency distribution.
pub struct LatencyFigure {
    pub latency: Result<Latencies, Outcome>,
    pub ops_per_sec: Outcome,
    pub msgs_per_op: Outcome,
}

impl LatencyFigure {
    fn from_outcome(why: Outcome) -> LatencyFigure {
        LatencyFigure {
            latency: Err(why.clone()),
            ops_per_sec: why.clone(),
            msgs_per_op: why,
        }
    }
}

// ---------------------------------------------------------------- figures

pub struct CachedConfig {
    pub backend: NodeBackend,
    pub iters: u64,
}

pub struct CachedResult {
    pub ns_per_op: Outcome,
    pub msgs_per_op: Outcome,
}

/// Cached re-lock: lock+unlock of a name this node already holds at EX.
/// One node, pinned to the first core (like the mutex baseline).
pub fn cached_relock(cfg: &CachedConfig) -> CachedResult {
    let run = || -> Result<CachedResult, Outcome> {
        let mut c = Cluster::start(1, Placement::OneCore, cfg.backend)?;
        // Held once at EX, so the timed loop is all cached re-locks.
        c.ask(0, "warm relock 1", Duration::from_secs(60))?;
        let before = c.messages_sent();
        let cmd = format!("cached relock {}", cfg.iters);
        let r = c.ask(0, &cmd, Duration::from_secs(300))?;
        let ns = r.num("ns_per_op").map_err(Outcome::Failed)?;
        let msgs = per_op(&before, &c.messages_sent(), cfg.iters as f64);
        c.stop();
        Ok(CachedResult {
            ns_per_op: Outcome::Value(ns),
            msgs_per_op: msgs,
        })
    };
    run().unwrap_or_else(|why| CachedResult {
        ns_per_op: why.clone(),
        msgs_per_op: why,
    })
}

pub struct MasteryConfig {
    pub backend: NodeBackend,
    /// Nodes in the domain; node 0 takes the locks, the others only vote.
    pub nodes: usize,
    pub placement: Placement,
    pub count: u64,
}

/// New-lock mastery: the first lock of fresh names.
pub fn mastery(cfg: &MasteryConfig) -> LatencyFigure {
    let run = || -> Result<LatencyFigure, Outcome> {
        let mut c = Cluster::start(cfg.nodes, cfg.placement, cfg.backend)?;
        let before = c.messages_sent();
        let t0 = std::time::Instant::now();
        let r = c.ask(
            0,
            &format!("mastery m{}n {}", cfg.nodes, cfg.count),
            Duration::from_secs(600),
        )?;
        let secs = t0.elapsed().as_secs_f64();
        let samples = r.samples().map_err(Outcome::Failed)?;
        let after = c.messages_sent();
        c.stop();
        let n = samples.len() as f64;
        Ok(LatencyFigure {
            latency: Ok(Latencies::new(samples)),
            ops_per_sec: Outcome::Value(n / secs),
            msgs_per_op: per_op(&before, &after, n),
        })
    };
    run().unwrap_or_else(LatencyFigure::from_outcome)
}

pub struct HandoffConfig {
    pub backend: NodeBackend,
    pub placement: Placement,
    /// Turns per node (so 2 x turns - 1 handoffs are timed).
    pub turns: u64,
}

/// Two-node EX ping-pong: each node takes its turn on one name when the
/// other has released it; the latency is release-to-grant, timed with the
/// machine-wide monotonic clock written into the LVB.
pub fn handoff(cfg: &HandoffConfig) -> LatencyFigure {
    let run = || -> Result<LatencyFigure, Outcome> {
        let mut c = Cluster::start(2, cfg.placement, cfg.backend)?;
        let before = c.messages_sent();
        let t0 = std::time::Instant::now();
        for i in 0..2 {
            c.send(i, &format!("handoff pingpong {} {i}", cfg.turns))?;
        }
        let mut samples = Vec::new();
        for i in 0..2 {
            let r = c.recv(i, Duration::from_secs(660))?;
            samples.extend(r.samples().map_err(Outcome::Failed)?);
        }
        let secs = t0.elapsed().as_secs_f64();
        let after = c.messages_sent();
        c.stop();
        let handoffs = samples.len() as f64;
        Ok(LatencyFigure {
            latency: Ok(Latencies::new(samples)),
            ops_per_sec: Outcome::Value(handoffs / secs),
            msgs_per_op: per_op(&before, &after, handoffs),
        })
    };
    run().unwrap_or_else(LatencyFigure::from_outcome)
}

pub struct ScalingConfig {
    pub backend: NodeBackend,
    pub nodes: usize,
    pub placement: Placement,
    pub duration: Duration,
    /// Names each node cycles over in the disjoint case.
    pub names_per_node: u64,
}

/// Lock+unlock throughput of one cluster size, summed over the nodes.
pub struct ScalingPoint {
    pub disjoint: Outcome,
    pub shared: Outcome,
    pub msgs_disjoint: Outcome,
    pub msgs_shared: Outcome,
}

/// Throughput with every node locking its own names, then with every node
/// locking one shared name; the same cluster serves both.
pub fn scaling(cfg: &ScalingConfig) -> ScalingPoint {
    let run = || -> Result<ScalingPoint, Outcome> {
        let mut c = Cluster::start(cfg.nodes, cfg.placement, cfg.backend)?;
        let (disjoint, msgs_disjoint) =
            throughput_round(&mut c, cfg, |i| (format!("d{i}x"), cfg.names_per_node))?;
        let (shared, msgs_shared) = throughput_round(&mut c, cfg, |_| ("shared".to_string(), 1))?;
        c.stop();
        Ok(ScalingPoint {
            disjoint,
            shared,
            msgs_disjoint,
            msgs_shared,
        })
    };
    run().unwrap_or_else(|why| ScalingPoint {
        disjoint: why.clone(),
        shared: why.clone(),
        msgs_disjoint: why.clone(),
        msgs_shared: why,
    })
}

fn throughput_round(
    c: &mut Cluster,
    cfg: &ScalingConfig,
    names: impl Fn(usize) -> (String, u64),
) -> Result<(Outcome, Outcome), Outcome> {
    // Mastery first, outside the timed window.
    for i in 0..c.len() {
        let (name, n) = names(i);
        c.send(i, &format!("warm {name} {n}"))?;
    }
    for i in 0..c.len() {
        c.recv(i, Duration::from_secs(600))?;
    }
    let before = c.messages_sent();
    // Every node starts at the same instant of the machine-wide clock.
    let start = monotonic_ns() + 50_000_000;
    let ms = cfg.duration.as_millis() as u64;
    for i in 0..c.len() {
        let (name, n) = names(i);
        c.send(i, &format!("throughput {name} {n} {ms} {start}"))?;
    }
    let (mut rate, mut ops) = (0.0, 0.0);
    for i in 0..c.len() {
        let r = c.recv(i, cfg.duration + Duration::from_secs(300))?;
        let o = r.num("ops").map_err(Outcome::Failed)?;
        let ns = r.num("ns").map_err(Outcome::Failed)?;
        rate += o / (ns / 1e9);
        ops += o;
    }
    let after = c.messages_sent();
    Ok((Outcome::Value(rate), per_op(&before, &after, ops)))
}

pub struct MemoryConfig {
    pub backend: NodeBackend,
    pub resources: u64,
}

pub struct MemoryResult {
    /// RSS growth divided by the number of lock resources held.
    pub bytes_per_resource: Outcome,
    pub resources: u64,
}

/// Memory: one node takes and holds `resources` PR locks.
pub fn memory(cfg: &MemoryConfig) -> MemoryResult {
    let run = || -> Result<Outcome, Outcome> {
        let mut c = Cluster::start(1, Placement::OneCore, cfg.backend)?;
        let r = c.ask(
            0,
            &format!("hold mem {}", cfg.resources),
            Duration::from_secs(600),
        )?;
        let grow = r.num("rss_after").map_err(Outcome::Failed)?
            - r.num("rss_before").map_err(Outcome::Failed)?;
        c.stop();
        Ok(Outcome::Value(grow / cfg.resources.max(1) as f64))
    };
    MemoryResult {
        bytes_per_resource: run().unwrap_or_else(|why| why),
        resources: cfg.resources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files and variables we hand a node are what the library's engine
    /// configuration accepts, for every node of the largest cluster.
    #[test]
    fn node_env_is_a_valid_engine_config() {
        let dir = TempDir::new("test").unwrap();
        let (conf, hb, sys) = (
            dir.path().join("cluster.conf"),
            dir.path().join("hb"),
            dir.path().join("o2cb"),
        );
        std::fs::write(&conf, cluster_conf(16, 23456)).unwrap();
        std::fs::write(&sys, "").unwrap();
        std::fs::File::create(&hb)
            .unwrap()
            .set_len((HB_START_BLOCK + HB_BLOCKS) * HB_BLOCK_BYTES)
            .unwrap();
        for i in [0, 15] {
            let env: HashMap<String, String> = node_env(i, &conf, &hb, &sys).into_iter().collect();
            let cfg = o2dlm::config::EngineConfig::from_lookup(&|k| env.get(k).cloned());
            let cfg = cfg.unwrap_or_else(|e| panic!("node {i}: {e}"));
            assert_eq!(cfg.nodes.len(), 16);
            assert_eq!(cfg.local.number as usize, i);
            assert_eq!(cfg.local.ip, node_ip(i));
            assert_eq!(cfg.local.port, 23456);
            assert_eq!(cfg.cluster_name, CLUSTER);
        }
    }

    #[test]
    fn replies() {
        let r = Reply::parse("ok ns_per_op=12.5 samples=1,2,3").unwrap();
        assert_eq!(r.num("ns_per_op"), Ok(12.5));
        assert_eq!(r.samples(), Ok(vec![1, 2, 3]));
        assert_eq!(Reply::parse("ok samples=").unwrap().samples(), Ok(vec![]));
        assert!(Reply::parse("error lock: X").is_err());
        assert_eq!(
            init_refusal("error O2DLM_ET_SERVICE_UNAVAILABLE Unable to access cluster service"),
            Outcome::Pending {
                reason: "engine DLM not available".into(),
                detail: "Context::initialize with O2DLM_BACKEND=engine returned \
                         O2DLM_ET_SERVICE_UNAVAILABLE Unable to access cluster service"
                    .into()
            }
        );
    }
}
