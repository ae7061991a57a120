//! One simulated cluster running one schedule: N real `Dlm`s and real
//! `Heartbeat`s over a simulated network (one FIFO connection per node
//! pair, random delays, breaks and reconnects), a simulated heartbeat disk
//! and simulated time, with crash, restart and pause. Clients drive the
//! lock API directly or through `LocalLock` as the engine does; the
//! checker looks at every grant and every LVB read as it happens.
//!
//! Everything is single-threaded and event-driven: the next thing to
//! happen (a message arriving, a timer, a schedule item) is always the
//! earliest one, ties broken in a fixed order, so a schedule replays
//! exactly.

use super::rng::Rng;
use super::schedule::{Act, Broken, FaultKind, Item, Schedule, START_MS};
use crate::dlm::cache::{CacheAction, ClusterOp, HolderId, LocalLock};
use crate::dlm::lockres::Queue;
use crate::dlm::sim::{kernel_safety_violations, node_table, Record};
use crate::dlm::{
    Dlm, DlmConfig, DomainId, Event, LockFlags, LockId, Lvb, Mode, ReplyToken, RequestId, Transmit,
    TransportError, UnlockFlags,
};
use crate::heartbeat::{HbEvent, HbParams, Heartbeat, PERIOD};
use crate::net::quorum::{Decision, Quorum};
use crate::wire::dlm::{
    uses_mod_key, DlmMessage, DLM_BEGIN_RECO_MSG, DLM_NORMAL, DLM_NOTQUEUED, DLM_UNLOCK_LOCK_MSG,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Heartbeat block size on the simulated disk.
const BLOCK: usize = 512;
/// Dead threshold of the simulated heartbeat (the kernel default is 31;
/// a small one keeps deaths cheap in simulated time, the rules are the
/// same): dead after 4 unchanged reads, own write timeout 6 s.
const DEAD_THRESHOLD: u32 = 4;
/// Heartbeat reads before a node counts its view of the cluster settled
/// and joins (the engine waits a few periods the same way).
const SETTLE_READS: u32 = 3;
/// o2net's delay between a lost link and the quorum decision,
/// (threshold + 2) heartbeat periods.
const QUORUM_DELAY_MS: u64 = (DEAD_THRESHOLD as u64 + 2) * 2_000;
/// Simulated time the cluster gets, after faults and operations stop, to
/// grant every waiting request (the liveness bound).
pub const LIVENESS_MS: u64 = 60_000;
/// Events one schedule may take before it counts as a message storm.
const MAX_EVENTS: u64 = 3_000_000;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailKind {
    /// Two incompatible grants of one resource at once.
    Conflict,
    /// An LVB read returned something other than the last EX write.
    Lvb,
    /// A completion (grant, failure) for a request not in flight, or twice.
    DoubleGrant,
    /// `LIVENESS_MS` after faults stopped (and after the last death
    /// verdict): a request still not granted, or the cluster not settled
    /// (a node not back, a domain not rejoined, a recovery not over).
    Liveness,
    /// A message or reply that would make a Linux kernel peer BUG.
    KernelBug,
    /// The protocol code panicked.
    Panic,
    /// Too many events: a message or timer storm.
    Storm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    pub at_ms: u64,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {} ms: {}", self.kind, self.at_ms, self.detail)
    }
}

/// Counters of one successful run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub messages: u64,
    pub grants: u64,
    pub ops_applied: u64,
    pub lvb_reads: u64,
    /// LVB reads that returned zero (invalid) after a death or a purge.
    pub lvb_invalid_reads: u64,
    /// Node deaths (crashes, fences, operator reboots).
    pub deaths: u64,
    pub end_ms: u64,
}

#[derive(Debug, Clone)]
enum Frame {
    Request {
        id: RequestId,
        msg_type: u16,
        key: u32,
        payload: Vec<u8>,
    },
    Reply {
        id: RequestId,
        msg_type: u16,
        result: Result<i32, TransportError>,
        dom: u32,
    },
}

/// The domain a request belongs to (join-time messages name it inside).
fn msg_domain(msg_type: u16, key: u32, payload: &[u8]) -> u32 {
    if !uses_mod_key(msg_type) {
        return key;
    }
    let name = match DlmMessage::decode(msg_type, payload) {
        Ok(DlmMessage::QueryJoin(m)) => m.domain,
        Ok(DlmMessage::AssertJoined(m)) => m.domain,
        Ok(DlmMessage::CancelJoin(m)) => m.domain,
        Ok(DlmMessage::QueryRegion(m)) => m.domain,
        Ok(DlmMessage::QueryNodeinfo(m)) => m.domain,
        _ => return 0,
    };
    Dlm::domain_key(name.as_bytes())
}

/// A request being handled: (requester, request, type, conn gen, domain).
type Token = (u8, RequestId, u16, u32, u32);

struct Msg {
    at: u64,
    seq: u64,
    frame: Frame,
}

#[derive(Debug, Clone, Copy, Default)]
struct Conn {
    up: bool,
    gen: u32,
    connecting: bool,
    /// A link fault keeps the pair apart until then.
    blocked_until: u64,
    /// o2net's persistent "not connected" after a valid link was lost:
    /// no reconnect until one end sees the other's heartbeat go down.
    persistent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomSt {
    Out,
    Joining(DomainId),
    Joined(DomainId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Cache(u8, u8),
    Direct(u8),
}

/// The completion the glue expects next for one `Dlm` lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Grant { mode: Mode, cancel: bool },
    Unlock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheSt {
    Idle,
    Waiting { dom: u8, name: u8, mode: Mode },
    Holding { dom: u8, name: u8, mode: Mode },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectSt {
    Idle,
    Creating {
        lock: LockId,
        dom: u8,
        name: u8,
        mode: Mode,
    },
    Held {
        lock: LockId,
        dom: u8,
        name: u8,
        mode: Mode,
    },
    Converting {
        lock: LockId,
        dom: u8,
        name: u8,
        from: Mode,
        to: Mode,
        cancelling: bool,
    },
    Unlocking {
        lock: LockId,
    },
}

#[derive(Debug, Clone, Copy)]
enum Client {
    Cache { st: CacheSt, hid: HolderId },
    Direct(DirectSt),
}

impl Client {
    /// What the client may use right now: (domain, name, mode).
    fn holding(&self) -> Option<(u8, u8, Mode)> {
        match *self {
            Client::Cache {
                st: CacheSt::Holding { dom, name, mode },
                ..
            } => Some((dom, name, mode)),
            Client::Direct(DirectSt::Held {
                dom, name, mode, ..
            }) => Some((dom, name, mode)),
            // Going down, the client has already stopped using the higher
            // mode; going up, it still has only the lower one.
            Client::Direct(DirectSt::Converting {
                dom,
                name,
                from,
                to,
                ..
            }) => Some((dom, name, from.min(to))),
            _ => None,
        }
    }

    fn idle(&self) -> bool {
        matches!(
            self,
            Client::Cache {
                st: CacheSt::Idle,
                ..
            } | Client::Direct(DirectSt::Idle)
        )
    }
}

struct NameEntry {
    cache: LocalLock,
    lock: Option<LockId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Up,
    Paused { until: u64 },
    Down,
}

struct Node {
    num: u8,
    run: Run,
    inc: u32,
    dlm: Dlm,
    hb: Heartbeat,
    quorum: Quorum,
    hb_first: u64,
    hb_reads: u32,
    live: u16,
    doms: Vec<DomSt>,
    names: BTreeMap<(u8, u8), NameEntry>,
    by_lock: BTreeMap<u64, Owner>,
    /// (domain, name) of every lock in `by_lock`.
    lock_names: BTreeMap<u64, (u8, u8)>,
    expect: BTreeMap<u64, Expect>,
    clients: Vec<Client>,
    pending_link_down: Vec<u8>,
    next_hid: u64,
}

impl Node {
    fn running(&self) -> bool {
        self.run == Run::Up
    }

    fn hb_due(&self) -> Option<Instant> {
        self.hb.poll_timeout()
    }
}

/// A crashed node's grants: still counted as held until every node that
/// saw it live has declared it dead.
struct Ghost {
    node: u8,
    holds: Vec<(u8, u8, Mode)>,
    waiting: u16,
    /// Per domain: the nodes whose DLM has taken it out of the domain map
    /// (sticky: it may come back once restarted and rejoined).
    known: [u16; 2],
}

/// The resources a dead node mastered: an LVB written there after the
/// crash and before recovery is over may be lost (an unlock or
/// down-convert that never reached the master, or whose lock recovery no
/// longer finds).
struct Fragile {
    node: u8,
    /// Survivors that have not declared it dead yet.
    waiting: u16,
    keys: Vec<(u8, u8)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct LvbModel {
    last: u64,
    /// Zero is acceptable too, without the invalid flag: at some moment
    /// no lock at all existed on the resource (it may have been purged,
    /// and a new one starts with a zero LVB, as in the kernel), or a lost
    /// LVB was since written back as zero by an EX holder.
    purged: bool,
    /// Zero is acceptable too: since the last write a node died that held
    /// the resource at EX (§9.6: the master zeroes the LVB) or mastered it
    /// (§9.5: recovery keeps only an LVB another survivor vouches for).
    /// A local master then flags the grant (`Dlm::lock_lvb_invalid`).
    died: bool,
}

impl LvbModel {
    fn invalid(&self) -> bool {
        self.purged || self.died
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agenda {
    Resume(u8, u32),
    Restart(u8, u32),
    LinkRestore(u8, u8),
    Connect(u8, u8, u32),
    /// The quorum delay after node .0 lost its link to .1 (incarnation .2).
    QuorumCheck(u8, u8, u32),
}

pub struct World {
    sched: Schedule,
    n: usize,
    base: Instant,
    now: u64,
    nodes: Vec<Node>,
    links: Vec<VecDeque<Msg>>,
    link_last: Vec<u64>,
    conns: Vec<Conn>,
    /// (receiver, token) -> (requester, request, type, conn gen, domain).
    tokens: HashMap<(u8, u64), Token>,
    next_token: u64,
    next_seq: u64,
    disk: Vec<u8>,
    agenda: Vec<(u64, u64, Agenda)>,
    net_rng: Rng,
    node_rng: Rng,
    next_item: usize,
    /// Delivered messages with their domain key (for the kernel checks,
    /// which follow one domain at a time).
    log: Vec<(u32, Record)>,
    ghosts: Vec<Ghost>,
    fragile: Vec<Fragile>,
    lvb: BTreeMap<(u8, u8), LvbModel>,
    next_lvb: u64,
    drain_at: u64,
    /// The last heartbeat death verdict: recovery starts from there.
    last_death: u64,
    draining: bool,
    fail: Option<Failure>,
    stats: Stats,
    trace: Option<Vec<String>>,
}

fn lvb_of(v: u64) -> Lvb {
    let mut l = [0u8; 64];
    for c in l.chunks_mut(8) {
        c.copy_from_slice(&v.to_le_bytes());
    }
    l
}

/// The value in an LVB, None when its eight copies disagree (torn).
fn lvb_value(l: &Lvb) -> Option<u64> {
    let mut b = [0u8; 8];
    b.copy_from_slice(&l[..8]);
    l.chunks(8).all(|c| c == b).then_some(u64::from_le_bytes(b))
}

fn dom_name(d: u8) -> Vec<u8> {
    format!("simdom{d}").into_bytes()
}

fn lock_name(s: u8) -> Vec<u8> {
    format!("simlock{s}").into_bytes()
}

fn new_node(num: u8, n: usize, sched: &Schedule, inc: u32, first_hb: u64, rng: &mut Rng) -> Node {
    let mut cfg = DlmConfig::new(num, node_table(n));
    cfg.seed = rng.next() | 1;
    let params = HbParams {
        local: num,
        nodes: (0..n as u8).collect(),
        block_bytes: BLOCK,
        dead_threshold: DEAD_THRESHOLD,
        generation: rng.next() | 1,
        period: PERIOD,
        max_write_timeout: Duration::from_millis(
            u64::from(DEAD_THRESHOLD - 1) * PERIOD.as_millis() as u64,
        ),
    };
    // Parameters are fixed and valid; a failure here is a simulator bug.
    let hb = Heartbeat::new(params).unwrap_or_else(|e| panic!("sim heartbeat: {e}"));
    let c = &sched.cfg;
    let mut clients = Vec::new();
    for i in 0..c.cache_clients + c.direct_clients {
        clients.push(if i < c.cache_clients {
            Client::Cache {
                st: CacheSt::Idle,
                hid: 0,
            }
        } else {
            Client::Direct(DirectSt::Idle)
        });
    }
    Node {
        num,
        run: Run::Up,
        inc,
        dlm: Dlm::new(cfg),
        hb,
        quorum: Quorum::new(num),
        hb_first: first_hb,
        hb_reads: 0,
        live: 0,
        doms: vec![DomSt::Out; c.domains.max(1) as usize],
        names: BTreeMap::new(),
        by_lock: BTreeMap::new(),
        lock_names: BTreeMap::new(),
        expect: BTreeMap::new(),
        clients,
        pending_link_down: Vec::new(),
        next_hid: 1,
    }
}

impl World {
    pub fn new(sched: &Schedule, trace: bool) -> World {
        let n = sched.nodes as usize;
        let mut node_rng = Rng::stream(sched.seed, 3);
        let mut net_rng = Rng::stream(sched.seed, 2);
        let nodes = (0..n)
            .map(|i| {
                let first = net_rng.below(PERIOD.as_millis() as u64);
                new_node(i as u8, n, sched, 0, first, &mut node_rng)
            })
            .collect();
        let end = sched.items.iter().map(Item::end).max().unwrap_or(START_MS);
        World {
            sched: sched.clone(),
            n,
            base: Instant::now(),
            now: 0,
            nodes,
            links: (0..n * n).map(|_| VecDeque::new()).collect(),
            link_last: vec![0; n * n],
            conns: vec![Conn::default(); n * n],
            tokens: HashMap::new(),
            next_token: 1,
            next_seq: 1,
            disk: vec![0; n * BLOCK],
            agenda: Vec::new(),
            net_rng,
            node_rng,
            next_item: 0,
            log: Vec::new(),
            ghosts: Vec::new(),
            fragile: Vec::new(),
            lvb: BTreeMap::new(),
            next_lvb: 1,
            drain_at: u64::from(end.max(START_MS)) + 1_000,
            last_death: 0,
            draining: false,
            fail: None,
            stats: Stats::default(),
            trace: trace.then(Vec::new),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// The trace lines gathered (when tracing).
    pub fn take_trace(&mut self) -> Vec<String> {
        self.trace.take().unwrap_or_default()
    }

    fn tr(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("{:>7} {}", self.now, f()));
        }
    }

    fn inst(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Milliseconds of an instant, rounded up so a timer is never run early.
    fn ms_of(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.base).as_nanos();
        ns.div_ceil(1_000_000) as u64
    }

    fn fail(&mut self, kind: FailKind, detail: String) {
        if self.fail.is_none() {
            self.fail = Some(Failure {
                kind,
                at_ms: self.now,
                detail,
            });
        }
    }

    fn conn_ix(&self, a: u8, b: u8) -> usize {
        let (x, y) = (a.min(b) as usize, a.max(b) as usize);
        x * self.n + y
    }

    fn push_agenda(&mut self, at: u64, a: Agenda) {
        let s = self.next_seq;
        self.next_seq += 1;
        self.agenda.push((at, s, a));
    }

    // ----- the main loop ----------------------------------------------------

    /// Runs the schedule to its end (or to the first failure).
    pub fn run(&mut self) -> Result<Stats, Failure> {
        loop {
            // Waiting requests must be granted within the bound after
            // faults stop, and after the last death verdict (recovery).
            let deadline = self.drain_at.max(self.last_death) + LIVENESS_MS;
            if let Some(f) = self.fail.take() {
                return Err(f);
            }
            self.stats.events += 1;
            if self.stats.events > MAX_EVENTS {
                return Err(Failure {
                    kind: FailKind::Storm,
                    at_ms: self.now,
                    detail: format!("more than {MAX_EVENTS} events"),
                });
            }
            if self.draining && self.all_idle() && self.unsettled().is_empty() {
                break;
            }
            let next = self.next_event();
            let Some((t, ev)) = next else {
                break;
            };
            if t > deadline {
                self.now = deadline;
                let d = self.stuck_report();
                return Err(Failure {
                    kind: FailKind::Liveness,
                    at_ms: deadline,
                    detail: format!(
                        "not settled {LIVENESS_MS} ms after faults stopped and the last death verdict: {d}"
                    ),
                });
            }
            self.now = self.now.max(t);
            self.dispatch(ev);
            if self.draining {
                for i in 0..self.n {
                    self.drain_kick(i);
                }
            }
        }
        if let Some(f) = self.fail.take() {
            return Err(f);
        }
        let mut doms: Vec<u32> = self.log.iter().map(|(d, _)| *d).collect();
        doms.sort_unstable();
        doms.dedup();
        let mut bad = Vec::new();
        for d in doms {
            let part: Vec<Record> = self
                .log
                .iter()
                .filter(|(x, _)| *x == d)
                .map(|(_, r)| r.clone())
                .collect();
            bad.extend(kernel_safety_violations(&part));
        }
        if let Some(b) = bad.first() {
            return Err(Failure {
                kind: FailKind::KernelBug,
                at_ms: self.now,
                detail: format!("{b} ({} violations)", bad.len()),
            });
        }
        self.stats.end_ms = self.now;
        Ok(self.stats)
    }

    fn all_idle(&self) -> bool {
        self.nodes
            .iter()
            .all(|nd| nd.run == Run::Down || nd.clients.iter().all(Client::idle))
    }

    /// What keeps the cluster from having settled after the faults: a
    /// node not (yet) back, a domain not (re)joined, a recovery not over.
    fn unsettled(&self) -> Vec<String> {
        let mut v = Vec::new();
        for nd in &self.nodes {
            if nd.run != Run::Up {
                v.push(format!("n{} {:?}", nd.num, nd.run));
                continue;
            }
            for (d, st) in nd.doms.iter().enumerate() {
                match st {
                    DomSt::Joined(id) => {
                        let p = nd.dlm.recovery_pending(*id);
                        if !p.is_empty() {
                            v.push(format!("n{} d{d} recovering {p:?}", nd.num));
                        }
                    }
                    other => v.push(format!("n{} d{d} {other:?}", nd.num)),
                }
            }
        }
        v
    }

    fn stuck_report(&self) -> String {
        let mut v = self.unsettled();
        for nd in &self.nodes {
            for (i, c) in nd.clients.iter().enumerate() {
                if !c.idle() && nd.run != Run::Down {
                    v.push(format!("n{} c{i} {:?}", nd.num, c));
                }
            }
        }
        v.join("; ")
    }

    fn next_event(&self) -> Option<(u64, Ev)> {
        let mut best: Option<(u64, u8, u64, Ev)> = None;
        let mut consider = |t: u64, class: u8, ix: u64, ev: Ev| {
            let k = (t, class, ix);
            if best.as_ref().is_none_or(|b| k < (b.0, b.1, b.2)) {
                best = Some((t, class, ix, ev));
            }
        };
        if let Some(it) = self.sched.items.get(self.next_item) {
            consider(u64::from(it.at()), 0, 0, Ev::Item);
        }
        for (i, &(at, seq, a)) in self.agenda.iter().enumerate() {
            if let Agenda::QuorumCheck(x, _, _) = a {
                if !self.nodes[x as usize].running() {
                    continue;
                }
            }
            consider(at, 1, seq, Ev::Agenda(i));
        }
        if !self.draining {
            consider(self.drain_at, 2, 0, Ev::Drain);
        }
        for (i, nd) in self.nodes.iter().enumerate() {
            if !nd.running() {
                continue;
            }
            let hb = match nd.hb.next_read() {
                None => Some(nd.hb_first),
                Some(_) => nd.hb_due().map(|t| self.ms_of(t)),
            };
            if let Some(t) = hb {
                consider(t, 3, i as u64, Ev::Heartbeat(i));
            }
            if let Some(t) = nd.dlm.poll_timeout() {
                consider(self.ms_of(t), 4, i as u64, Ev::Timer(i));
            }
        }
        for (ix, q) in self.links.iter().enumerate() {
            let Some(m) = q.front() else { continue };
            if !self.nodes[ix % self.n].running() {
                continue;
            }
            consider(m.at, 5, m.seq, Ev::Deliver(ix));
        }
        best.map(|b| (b.0, b.3))
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Item => {
                let it = self.sched.items[self.next_item];
                self.next_item += 1;
                match it {
                    Item::Op {
                        node, client, act, ..
                    } => self.apply_op(node as usize, client as usize, act),
                    Item::Fault { kind, .. } => self.apply_fault(kind),
                }
            }
            Ev::Agenda(i) => {
                let (_, _, a) = self.agenda.swap_remove(i);
                self.run_agenda(a);
            }
            Ev::Drain => {
                self.tr(|| "drain: faults and operations are over".into());
                self.draining = true;
            }
            Ev::Heartbeat(i) => self.hb_step(i),
            Ev::Timer(i) => {
                let now = self.inst(self.now);
                self.nodes[i].dlm.handle_timeout(now);
                self.pump(i);
            }
            Ev::Deliver(ix) => self.deliver(ix),
        }
    }

    // ----- heartbeat --------------------------------------------------------

    fn hb_step(&mut self, i: usize) {
        let now = self.inst(self.now);
        let nd = &mut self.nodes[i];
        // The write timeout is checked before this period's write, as the
        // kernel's separate timer would after a stall.
        nd.hb.handle_timeout(now);
        let due = match nd.hb.next_read() {
            None => nd.hb_first <= self.now,
            Some(t) => t <= now,
        };
        let mut fenced = false;
        while let Some(e) = self.nodes[i].hb.poll_event() {
            if e == HbEvent::WriteTimeout {
                self.tr(|| format!("n{i}: heartbeat write timeout"));
                fenced = true;
            }
        }
        if fenced {
            self.fence(i);
            return;
        }
        if due {
            let wall = 1_700_000_000 + self.now / 1000;
            let me = self.nodes[i].num as usize;
            let out = self.nodes[i].hb.handle_read(&self.disk, wall, now);
            let slot = &mut self.disk[me * BLOCK..(me + 1) * BLOCK];
            let k = out.len().min(BLOCK);
            slot[..k].copy_from_slice(&out[..k]);
            let nd = &mut self.nodes[i];
            nd.hb.handle_write_done(true, now);
            nd.hb_reads += 1;
        }
        let mut evs = Vec::new();
        while let Some(e) = self.nodes[i].hb.poll_event() {
            evs.push(e);
        }
        for e in evs {
            if !self.nodes[i].running() {
                return;
            }
            match e {
                HbEvent::NodeUp(p) if p as usize == i => {
                    let d = self.nodes[i].quorum.hb_up(p);
                    if self.quorum_verdict(i, d) {
                        return;
                    }
                }
                HbEvent::NodeUp(p) => {
                    self.tr(|| format!("hb n{i}: n{p} up"));
                    self.nodes[i].live |= 1 << p;
                    let d = self.nodes[i].quorum.hb_up(p);
                    if self.quorum_verdict(i, d) {
                        return;
                    }
                    self.nodes[i].dlm.handle_node_up(now, p);
                    self.pump(i);
                    // o2net forgets a lost connection once the peer's
                    // heartbeat comes (back) up.
                    let ci = self.conn_ix(i as u8, p);
                    self.conns[ci].persistent = false;
                    self.maybe_connect(i as u8, p);
                }
                HbEvent::NodeDown(p) if p as usize != i => {
                    self.tr(|| format!("hb n{i}: n{p} down"));
                    self.last_death = self.now;
                    if matches!(self.nodes[p as usize].run, Run::Paused { .. }) {
                        // Declared dead while stopped: survivors recover
                        // its locks now, it fences itself when it resumes.
                        self.lvb_death(p as usize);
                    }
                    self.nodes[i].live &= !(1 << p);
                    let d = self.nodes[i].quorum.hb_down(p);
                    if self.quorum_verdict(i, d) {
                        return;
                    }
                    self.lvb_master_scan(i, p);
                    self.lvb_unheld(p);
                    self.nodes[i].dlm.handle_node_down(now, p);
                    self.pump(i);
                    self.break_conn(i as u8, p, false);
                    let ci = self.conn_ix(i as u8, p);
                    self.conns[ci].persistent = false;
                    for g in &mut self.ghosts {
                        if g.node == p {
                            g.waiting &= !(1 << i);
                        }
                    }
                    self.ghosts.retain(|g| g.waiting != 0);
                    for f in &mut self.fragile {
                        if f.node == p {
                            f.waiting &= !(1 << i);
                        }
                    }
                }
                HbEvent::WriteTimeout => {
                    self.fence(i);
                    return;
                }
                _ => {}
            }
        }
        self.try_join(i);
    }

    /// Applies a quorum decision; true when the node fenced itself.
    fn quorum_verdict(&mut self, i: usize, d: Option<Decision>) -> bool {
        match d {
            Some(d) if d.fence => {
                self.tr(|| format!("n{i} quorum: {d}: fence"));
                self.fence(i);
                true
            }
            _ => false,
        }
    }

    /// The node's own heartbeat says it may no longer be in the cluster:
    /// like the engine, it ends at once; it restarts a little later.
    fn fence(&mut self, i: usize) {
        self.tr(|| format!("n{i} fenced"));
        self.crash(i);
        let inc = self.nodes[i].inc;
        let at = self.now + 2_000 + self.net_rng.below(3_000);
        self.push_agenda(at, Agenda::Restart(i as u8, inc));
        self.drain_at = self.drain_at.max(at + 1_000);
    }

    fn try_join(&mut self, i: usize) {
        let nd = &self.nodes[i];
        if !nd.running() || nd.hb_reads < SETTLE_READS {
            return;
        }
        let me = nd.num;
        let all_linked = (0..self.n as u8)
            .filter(|&p| p != me && nd.live & (1 << p) != 0)
            .all(|p| self.conns[self.conn_ix(me, p)].up);
        if !all_linked {
            return;
        }
        let now = self.inst(self.now);
        for d in 0..self.nodes[i].doms.len() {
            if self.nodes[i].doms[d] != DomSt::Out {
                continue;
            }
            match self.nodes[i].dlm.join(now, &dom_name(d as u8)) {
                Ok(id) => {
                    self.tr(|| format!("n{i} joins d{d}"));
                    self.nodes[i].doms[d] = DomSt::Joining(id);
                }
                Err(e) => self.tr(|| format!("n{i} join d{d} refused: {e:?}")),
            }
            self.pump(i);
        }
    }

    // ----- network ----------------------------------------------------------

    fn maybe_connect(&mut self, a: u8, b: u8) {
        let ci = self.conn_ix(a, b);
        let c = self.conns[ci];
        if c.up || c.connecting || c.persistent {
            return;
        }
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        let ok = na.run != Run::Down
            && nb.run != Run::Down
            && na.live & (1 << b) != 0
            && nb.live & (1 << a) != 0;
        if !ok {
            return;
        }
        let at = (self.now + 1 + self.net_rng.below(20)).max(c.blocked_until);
        self.conns[ci].connecting = true;
        let gen = c.gen;
        self.push_agenda(at, Agenda::Connect(a.min(b), a.max(b), gen));
    }

    /// The connection between `a` and `b` breaks: bytes in flight are lost
    /// and both ends learn it at once (a paused end when it resumes). With
    /// `persistent` (a broken network, not a heartbeat verdict) o2net does
    /// not reconnect while both still heartbeat; the quorum rule decides.
    fn break_conn(&mut self, a: u8, b: u8, persistent: bool) {
        let ci = self.conn_ix(a, b);
        if !self.conns[ci].up {
            return;
        }
        self.tr(|| format!("link n{a}-n{b} down"));
        self.conns[ci].up = false;
        self.conns[ci].gen += 1;
        self.conns[ci].persistent |= persistent;
        for (x, y) in [(a, b), (b, a)] {
            let nd = &mut self.nodes[x as usize];
            if nd.run != Run::Down {
                nd.quorum.conn_err(y);
                let inc = nd.inc;
                self.push_agenda(self.now + QUORUM_DELAY_MS, Agenda::QuorumCheck(x, y, inc));
            }
        }
        let n = self.n;
        self.links[a as usize * n + b as usize].clear();
        self.links[b as usize * n + a as usize].clear();
        for (x, y) in [(a, b), (b, a)] {
            let nd = &mut self.nodes[x as usize];
            match nd.run {
                Run::Up => {
                    let now = self.inst(self.now);
                    self.nodes[x as usize].dlm.handle_link_down(now, y);
                    self.pump(x as usize);
                }
                Run::Paused { .. } => nd.pending_link_down.push(y),
                Run::Down => {}
            }
        }
    }

    fn delay(&mut self) -> u64 {
        if !self.sched.cfg.faults.delays {
            return 1;
        }
        if self.net_rng.chance(10) {
            self.net_rng.range(5, 200)
        } else {
            self.net_rng.range(0, 3)
        }
    }

    fn enqueue(&mut self, from: u8, to: u8, frame: Frame) {
        let ix = from as usize * self.n + to as usize;
        let at = (self.now + self.delay()).max(self.link_last[ix]);
        self.link_last[ix] = at;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.links[ix].push_back(Msg { at, seq, frame });
    }

    fn route(&mut self, i: usize, t: Transmit) {
        let from = i as u8;
        let now = self.inst(self.now);
        match t {
            Transmit::Request {
                id,
                to,
                msg_type,
                key,
                payload,
            } => {
                let up = (to as usize) < self.n && self.conns[self.conn_ix(from, to)].up;
                if !up {
                    self.nodes[i]
                        .dlm
                        .handle_reply(now, id, Err(TransportError::NotConnected));
                    return;
                }
                if msg_type == DLM_UNLOCK_LOCK_MSG
                    && self.sched.cfg.broken == Some(Broken::DropUnlock)
                {
                    self.tr(|| format!("BROKEN: n{from}->n{to} UNLOCK_LOCK dropped"));
                    self.nodes[i].dlm.handle_reply(now, id, Ok(DLM_NORMAL));
                    return;
                }
                self.enqueue(
                    from,
                    to,
                    Frame::Request {
                        id,
                        msg_type,
                        key,
                        payload,
                    },
                );
            }
            Transmit::Reply { token, to, status } => {
                let Some((req_from, id, msg_type, gen, dom)) = self.tokens.remove(&(from, token.0))
                else {
                    self.fail(
                        FailKind::KernelBug,
                        format!("n{from} replied with an unknown token"),
                    );
                    return;
                };
                if req_from != to {
                    self.fail(
                        FailKind::KernelBug,
                        format!("n{from} addressed a reply for n{req_from} to n{to}"),
                    );
                    return;
                }
                let c = self.conns[self.conn_ix(from, to)];
                if !c.up || c.gen != gen {
                    return;
                }
                self.enqueue(
                    from,
                    to,
                    Frame::Reply {
                        id,
                        msg_type,
                        result: Ok(status),
                        dom,
                    },
                );
            }
        }
    }

    fn deliver(&mut self, ix: usize) {
        let (from, to) = ((ix / self.n) as u8, (ix % self.n) as u8);
        let Some(m) = self.links[ix].pop_front() else {
            return;
        };
        self.stats.messages += 1;
        let now = self.inst(self.now);
        let at_ms = self.now;
        let i = to as usize;
        match m.frame {
            Frame::Request {
                id,
                msg_type,
                key,
                payload,
            } => {
                self.tr(|| format!("n{from}->n{to} request {msg_type}"));
                let token = self.next_token;
                self.next_token += 1;
                let gen = self.conns[self.conn_ix(from, to)].gen;
                let dom = msg_domain(msg_type, key, &payload);
                if msg_type == DLM_BEGIN_RECO_MSG {
                    // BEGIN_RECO runs §9.1 for a death not seen yet.
                    if let Ok(DlmMessage::BeginReco(b)) = DlmMessage::decode(msg_type, &payload) {
                        if (b.dead_node as usize) < self.n {
                            self.lvb_master_scan(i, b.dead_node);
                        }
                    }
                }
                self.tokens
                    .insert((to, token), (from, id, msg_type, gen, dom));
                let r = self.nodes[i].dlm.handle_request(
                    now,
                    from,
                    msg_type,
                    key,
                    &payload,
                    ReplyToken(token),
                );
                self.log.push((
                    dom,
                    Record::Request {
                        at_ms,
                        from,
                        to,
                        msg_type,
                        key,
                        payload,
                    },
                ));
                if r.is_err() {
                    self.tokens.remove(&(to, token));
                    self.enqueue(
                        to,
                        from,
                        Frame::Reply {
                            id,
                            msg_type,
                            result: Err(TransportError::NoHandler),
                            dom,
                        },
                    );
                }
                self.pump(i);
            }
            Frame::Reply {
                id,
                msg_type,
                result,
                dom,
            } => {
                self.tr(|| format!("n{from}->n{to} reply {msg_type} {result:?}"));
                self.log.push((
                    dom,
                    Record::Reply {
                        at_ms,
                        from,
                        to,
                        msg_type,
                        result,
                    },
                ));
                self.nodes[i].dlm.handle_reply(now, id, result);
                self.pump(i);
            }
        }
    }

    /// Drains a node's transmits and events until it has nothing more.
    fn pump(&mut self, i: usize) {
        loop {
            if self.nodes[i].run == Run::Down {
                return;
            }
            let mut progress = false;
            while let Some(t) = self.nodes[i].dlm.poll_transmit() {
                progress = true;
                self.route(i, t);
            }
            while let Some(e) = self.nodes[i].dlm.poll_event() {
                progress = true;
                self.on_event(i, e);
            }
            if !progress {
                break;
            }
        }
        if !self.ghosts.is_empty() {
            self.refresh_known(i);
        }
    }

    /// Notes which crashed nodes node `m`'s DLM now knows to be dead.
    fn refresh_known(&mut self, m: usize) {
        for d in 0..self.nodes[m].doms.len().min(2) {
            let Some(id) = self.dom_id(m, d as u8) else {
                continue;
            };
            let Some(members) = self.nodes[m].dlm.domain_members(id) else {
                continue;
            };
            for g in &mut self.ghosts {
                if !members.contains(&g.node) {
                    g.known[d] |= 1 << m;
                }
            }
        }
    }

    // ----- faults -----------------------------------------------------------

    fn apply_fault(&mut self, kind: FaultKind) {
        let f = kind;
        self.tr(|| format!("fault {f:?}"));
        match kind {
            FaultKind::Link { a, b, ms } => {
                let ci = self.conn_ix(a, b);
                let until = self.now + u64::from(ms);
                self.conns[ci].blocked_until = self.conns[ci].blocked_until.max(until);
                self.break_conn(a, b, true);
                self.push_agenda(until, Agenda::LinkRestore(a, b));
            }
            FaultKind::Isolate { node, ms } => {
                for p in 0..self.n as u8 {
                    if p != node {
                        self.apply_fault(FaultKind::Link {
                            a: node.min(p),
                            b: node.max(p),
                            ms,
                        });
                    }
                }
            }
            FaultKind::Pause { node, ms } => {
                let i = node as usize;
                // No pause while another node starts up (see Restart).
                let starting = self.nodes.iter().any(|nd| {
                    nd.num != node
                        && nd.run == Run::Up
                        && nd.doms.iter().any(|d| !matches!(d, DomSt::Joined(_)))
                });
                if starting {
                    self.tr(|| format!("pause of n{i} skipped: a node is starting"));
                } else if self.nodes[i].run == Run::Up {
                    let until = self.now + u64::from(ms);
                    self.nodes[i].run = Run::Paused { until };
                    let inc = self.nodes[i].inc;
                    self.push_agenda(until, Agenda::Resume(node, inc));
                }
            }
            FaultKind::Crash { node, ms } => {
                let i = node as usize;
                if self.nodes[i].run != Run::Down {
                    self.crash(i);
                    let inc = self.nodes[i].inc;
                    self.push_agenda(self.now + u64::from(ms), Agenda::Restart(node, inc));
                }
            }
        }
    }

    fn run_agenda(&mut self, a: Agenda) {
        match a {
            Agenda::Connect(x, y, gen) => {
                let ci = self.conn_ix(x, y);
                self.conns[ci].connecting = false;
                let (rx, ry) = (self.nodes[x as usize].run, self.nodes[y as usize].run);
                let both = self.nodes[x as usize].live & (1 << y) != 0
                    && self.nodes[y as usize].live & (1 << x) != 0;
                if self.conns[ci].up || self.conns[ci].gen != gen || !both {
                    return;
                }
                if rx != Run::Up || ry != Run::Up || self.conns[ci].blocked_until > self.now {
                    // The handshake needs both ends running; try again.
                    if rx != Run::Down && ry != Run::Down {
                        self.conns[ci].connecting = true;
                        let at = self.now.max(self.conns[ci].blocked_until) + 100;
                        self.push_agenda(at, Agenda::Connect(x, y, gen));
                    }
                    return;
                }
                self.tr(|| format!("link n{x}-n{y} up"));
                self.conns[ci].up = true;
                self.conns[ci].gen += 1;
                let d = self.nodes[x as usize].quorum.conn_up(y);
                if self.quorum_verdict(x as usize, d) {
                    return;
                }
                let d = self.nodes[y as usize].quorum.conn_up(x);
                if self.quorum_verdict(y as usize, d) {
                    return;
                }
                self.try_join(x as usize);
                self.try_join(y as usize);
            }
            Agenda::LinkRestore(x, y) => self.maybe_connect(x, y),
            Agenda::QuorumCheck(x, y, inc) => {
                let i = x as usize;
                let nd = &self.nodes[i];
                if nd.inc != inc || nd.run == Run::Down {
                    return;
                }
                if nd.live & (1 << y) != 0 {
                    let d = self.nodes[i].quorum.hb_still_up(y);
                    if self.quorum_verdict(i, d) {
                        return;
                    }
                }
                // A lone broken connection between two nodes that both
                // keep a majority (three nodes or more): o2quorum fences
                // neither and o2net never reconnects them, so the cluster
                // would stall for good (a kernel cluster too, until an
                // operator acts). The simulated operator reboots the
                // higher-numbered node, as the two-node quorum rule would.
                let ci = self.conn_ix(x, y);
                let (nx, ny) = (&self.nodes[i], &self.nodes[y as usize]);
                let stuck = !self.conns[ci].up
                    && self.conns[ci].persistent
                    && ny.run != Run::Down
                    && nx.live & (1 << y) != 0
                    && ny.live & (1 << x) != 0;
                if stuck {
                    let v = x.max(y) as usize;
                    self.tr(|| format!("n{x}-n{y} stay apart: operator reboots n{v}"));
                    self.fence(v);
                }
            }
            Agenda::Resume(node, inc) => {
                let i = node as usize;
                if self.nodes[i].inc != inc || !matches!(self.nodes[i].run, Run::Paused { .. }) {
                    return;
                }
                self.tr(|| format!("n{i} resumes"));
                self.nodes[i].run = Run::Up;
                // The heartbeat timer runs first: a node that has been
                // away too long fences itself before it uses anything.
                let now = self.inst(self.now);
                self.nodes[i].hb.handle_timeout(now);
                let mut fenced = false;
                while let Some(e) = self.nodes[i].hb.poll_event() {
                    fenced |= e == HbEvent::WriteTimeout;
                }
                if fenced {
                    self.fence(i);
                    return;
                }
                let downs = std::mem::take(&mut self.nodes[i].pending_link_down);
                for p in downs {
                    self.nodes[i].dlm.handle_link_down(now, p);
                    self.pump(i);
                }
                // Whatever it held while away, it still holds.
                let holds: Vec<(usize, (u8, u8, Mode))> = self.nodes[i]
                    .clients
                    .iter()
                    .enumerate()
                    .filter_map(|(c, cl)| cl.holding().map(|h| (c, h)))
                    .collect();
                for (c, (d, s, m)) in holds {
                    self.check_grant(i, c, d, s, m, "resumed holding");
                }
                for p in 0..self.n as u8 {
                    if p != node {
                        self.maybe_connect(node, p);
                    }
                }
            }
            Agenda::Restart(node, inc) => {
                let i = node as usize;
                if self.nodes[i].inc != inc || self.nodes[i].run != Run::Down {
                    return;
                }
                // o2cb's blind spot: a node starting up counts as live only
                // the peers it sees heartbeat, so a peer stopped during
                // its first reads is missed and it forms the domain alone
                // (split brain when the peer resumes without fencing; the
                // kernel has the same race). Starts wait for pauses to end.
                let paused_until = self
                    .nodes
                    .iter()
                    .filter_map(|nd| match nd.run {
                        Run::Paused { until } => Some(until),
                        _ => None,
                    })
                    .max();
                if let Some(u) = paused_until {
                    self.tr(|| format!("n{i} restart waits for a paused node"));
                    self.push_agenda(u + 1, Agenda::Restart(node, inc));
                    self.drain_at = self.drain_at.max(u + 1_001);
                    return;
                }
                self.tr(|| format!("n{i} restarts"));
                let first = self.now + self.net_rng.below(PERIOD.as_millis() as u64);
                let sched = self.sched.clone();
                let nd = new_node(node, self.n, &sched, inc + 1, first, &mut self.node_rng);
                self.nodes[i] = nd;
            }
        }
    }

    /// The process dies: its state is gone, its peers see the
    /// connections close; its grants count until it is declared dead.
    fn crash(&mut self, i: usize) {
        self.tr(|| format!("n{i} crashes"));
        self.stats.deaths += 1;
        let holds: Vec<(u8, u8, Mode)> = self.nodes[i]
            .clients
            .iter()
            .filter_map(Client::holding)
            .collect();
        let waiting = (0..self.n)
            .filter(|&j| {
                j != i && self.nodes[j].run != Run::Down && self.nodes[j].live & (1 << i) != 0
            })
            .fold(0u16, |m, j| m | 1 << j);
        if !holds.is_empty() && waiting != 0 {
            self.ghosts.push(Ghost {
                node: i as u8,
                holds,
                waiting,
                known: [0; 2],
            });
        }
        self.lvb_death(i);
        let names: Vec<(u8, u8)> = self.nodes[i].lock_names.values().copied().collect();
        self.nodes[i].run = Run::Down;
        self.nodes[i].live = 0;
        for p in 0..self.n as u8 {
            if p as usize != i {
                self.break_conn(i as u8, p, false);
            }
        }
        for g in &mut self.ghosts {
            g.waiting &= !(1 << i);
        }
        self.ghosts.retain(|g| g.waiting != 0);
        for f in &mut self.fragile {
            f.waiting &= !(1 << i);
        }
        for k in names {
            self.check_unused(k);
        }
    }

    // ----- the checker ------------------------------------------------------

    /// Node `i` dies (or is declared dead while paused): the LVBs it may
    /// have changed, or only it could vouch for, become unknown.
    fn lvb_death(&mut self, i: usize) {
        let nd = &self.nodes[i];
        let mut hit = Vec::new();
        for (&lk, &key) in &nd.lock_names {
            if nd.dlm.lock_mode(LockId(lk)) == Some(Mode::Ex) {
                hit.push(key);
            }
        }
        let mut mastered = Vec::new();
        for d in 0..nd.doms.len() as u8 {
            let Some(id) = self.dom_id(i, d) else {
                continue;
            };
            for s in 0..self.sched.cfg.names.max(1) {
                if nd.dlm.resource_owner(id, &lock_name(s)) == Some(nd.num) {
                    mastered.push((d, s));
                }
            }
        }
        let waiting = (0..self.n)
            .filter(|&j| {
                j != i && self.nodes[j].run != Run::Down && self.nodes[j].live & (1 << i) != 0
            })
            .fold(0u16, |m, j| m | 1 << j);
        hit.extend(mastered.iter().copied());
        if !mastered.is_empty() {
            self.fragile.push(Fragile {
                node: i as u8,
                waiting,
                keys: mastered,
            });
        }
        for k in hit {
            // No survivor holds a granted lock on it: recovery has nothing
            // to rebuild and the next master starts afresh (zero, unflagged)
            // as after a purge.
            let held = self.nodes.iter().enumerate().any(|(j, nd)| {
                j != i
                    && nd.run != Run::Down
                    && nd
                        .lock_names
                        .iter()
                        .any(|(&lk, &x)| x == k && nd.dlm.lock_mode(LockId(lk)).is_some())
            });
            let m = self.lvb.entry(k).or_default();
            m.died = true;
            m.purged |= !held;
        }
    }

    /// At a verdict on dead node `p`: a resource it mastered on which no
    /// survivor holds a granted lock any more has nothing to recover; the
    /// next master starts it afresh (zero, unflagged), as after a purge.
    fn lvb_unheld(&mut self, p: u8) {
        let keys: Vec<(u8, u8)> = self
            .fragile
            .iter()
            .filter(|f| f.node == p)
            .flat_map(|f| f.keys.iter().copied())
            .collect();
        for k in keys {
            let held = self.nodes.iter().any(|nd| {
                nd.num != p
                    && nd.run != Run::Down
                    && nd
                        .lock_names
                        .iter()
                        .any(|(&lk, &x)| x == k && nd.dlm.lock_mode(LockId(lk)).is_some())
            });
            if !held {
                if let Some(m) = self.lvb.get_mut(&k) {
                    m.purged = true;
                }
            }
        }
    }

    /// Records an LVB write under EX.
    fn lvb_written(&mut self, key: (u8, u8), v: u64) {
        let pending = |node: u8| -> bool {
            self.nodes.iter().any(|nd| {
                nd.run == Run::Up
                    && nd.doms.iter().any(|d| match d {
                        DomSt::Joined(id) => nd.dlm.recovery_pending(*id).contains(&node),
                        _ => false,
                    })
            })
        };
        let keep: Vec<bool> = self
            .fragile
            .iter()
            .map(|f| f.waiting != 0 || pending(f.node))
            .collect();
        let mut k = keep.iter();
        self.fragile.retain(|_| k.next().copied().unwrap_or(false));
        // A write while its dead master is still being recovered may be
        // lost, and its lock with it (zero, unflagged, as after a purge).
        let lost = self.fragile.iter().any(|f| f.keys.contains(&key));
        self.lvb.insert(
            key,
            LvbModel {
                last: v,
                purged: lost,
                died: lost,
            },
        );
    }

    /// Node `i` is about to learn that node `dead` died (§9.1): on the
    /// resources it masters, a granted or converting EX lock of the dead
    /// node (possibly granted after it crashed, its AST never delivered)
    /// makes the LVB zero (§9.6).
    fn lvb_master_scan(&mut self, i: usize, dead: u8) {
        let nd = &self.nodes[i];
        let mut hit = Vec::new();
        for d in 0..nd.doms.len() as u8 {
            let Some(id) = self.dom_id(i, d) else {
                continue;
            };
            if !nd.dlm.domain_members(id).is_some_and(|m| m.contains(&dead)) {
                continue;
            }
            for s in 0..self.sched.cfg.names.max(1) {
                let name = lock_name(s);
                if nd.dlm.resource_owner(id, &name) != Some(nd.num) {
                    continue;
                }
                let ex = nd.dlm.resource_locks(id, &name).is_some_and(|v| {
                    v.iter().any(|&(q, node, _, m)| {
                        node == dead && q != Queue::Blocked && m == Mode::Ex
                    })
                });
                if ex {
                    hit.push((d, s));
                }
            }
        }
        for k in hit {
            self.lvb.entry(k).or_default().died = true;
        }
    }

    /// A lock of node `i` is gone.
    fn forget_lock(&mut self, i: usize, lock: LockId) {
        self.nodes[i].by_lock.remove(&lock.0);
        if let Some(k) = self.nodes[i].lock_names.remove(&lock.0) {
            self.check_unused(k);
        }
    }

    /// No lock left on the resource anywhere: it may be purged, and its
    /// LVB with it.
    fn check_unused(&mut self, k: (u8, u8)) {
        let used = self
            .nodes
            .iter()
            .filter(|nd| nd.run != Run::Down)
            .any(|nd| nd.lock_names.values().any(|x| *x == k));
        if !used {
            if let Some(m) = self.lvb.get_mut(&k) {
                m.purged = true;
            }
        }
    }

    /// Whether the master that granted (`dom`, `name`) to node `i` has
    /// learned that node `j` died: `j` is out of its domain map (§9.1 has
    /// run there, by the heartbeat or by a BEGIN_RECO). The master is the
    /// one node `i` knows; when that one is gone too, node `i` itself.
    fn master_knows_dead(&self, i: usize, dom: u8, name: u8, j: usize) -> bool {
        let knows = |m: usize| -> bool {
            let ghost = self.ghosts.iter().any(|g| {
                g.node as usize == j && g.known.get(dom as usize).is_some_and(|k| k & 1 << m != 0)
            });
            if ghost {
                return true;
            }
            let Some(id) = self.dom_id(m, dom) else {
                return false;
            };
            self.nodes[m]
                .dlm
                .domain_members(id)
                .is_some_and(|v| !v.contains(&(j as u8)))
        };
        let master = self
            .dom_id(i, dom)
            .and_then(|id| self.nodes[i].dlm.resource_owner(id, &lock_name(name)))
            .map(usize::from)
            .filter(|&m| m < self.n && self.nodes[m].run != Run::Down)
            .unwrap_or(i);
        // A restarted node knows its former self is dead.
        master == j || knows(master)
    }

    /// Client `c` of node `i` now holds (`dom`, `name`) at `mode`: nobody
    /// else may hold it incompatibly. Holders on a paused or crashed node
    /// count until the granting master has learned of that node's death
    /// (a paused node that is not declared dead is checked again when it
    /// resumes; one that is fences itself before it uses anything).
    fn check_grant(&mut self, i: usize, c: usize, dom: u8, name: u8, mode: Mode, what: &str) {
        self.stats.grants += 1;
        let mut bad = None;
        for (j, nd) in self.nodes.iter().enumerate() {
            if nd.run == Run::Down {
                continue;
            }
            for (k, cl) in nd.clients.iter().enumerate() {
                if (j, k) == (i, c) {
                    continue;
                }
                if let Some((d, s, m)) = cl.holding() {
                    if (d, s) != (dom, name) || m.compatible(mode) {
                        continue;
                    }
                    if nd.running() {
                        bad = Some(format!(
                            "{what}: n{i} c{c} at {mode:?} on d{dom}/s{name} while n{j} c{k} holds {m:?}"
                        ));
                    } else if !self.master_knows_dead(i, dom, name, j) {
                        bad = Some(format!(
                            "{what}: n{i} c{c} at {mode:?} on d{dom}/s{name} while paused n{j} c{k} (not known dead to the master) holds {m:?}"
                        ));
                    }
                }
                if bad.is_some() {
                    break;
                }
            }
            if bad.is_some() {
                break;
            }
        }
        if bad.is_none() {
            'g: for g in &self.ghosts {
                for &(d, s, m) in &g.holds {
                    if (d, s) == (dom, name)
                        && !m.compatible(mode)
                        && !self.master_knows_dead(i, dom, name, g.node as usize)
                    {
                        bad = Some(format!(
                            "{what}: n{i} c{c} at {mode:?} on d{dom}/s{name} while crashed n{} (not known dead to the master) held {m:?}",
                            g.node
                        ));
                        break 'g;
                    }
                }
            }
        }
        if let Some(msg) = bad {
            self.fail(FailKind::Conflict, msg);
        }
    }

    /// Checks an LVB read by client `c` of node `i`; `lock` is the
    /// client's own `Dlm` lock (direct clients), whose invalid flag a
    /// zero read must carry when the resource is mastered on node `i` and
    /// only a death (not a purge) explains the zero.
    fn check_lvb_read(
        &mut self,
        i: usize,
        c: usize,
        dom: u8,
        name: u8,
        l: &Lvb,
        lock: Option<LockId>,
    ) {
        self.stats.lvb_reads += 1;
        let model = self.lvb.get(&(dom, name)).copied().unwrap_or_default();
        match lvb_value(l) {
            None => self.fail(
                FailKind::Lvb,
                format!("n{i} c{c} read a torn LVB on d{dom}/s{name}"),
            ),
            Some(v) if v == model.last => {}
            Some(0) if model.invalid() => {
                self.stats.lvb_invalid_reads += 1;
                let Some(lock) = lock else { return };
                let local_master = self
                    .dom_id(i, dom)
                    .and_then(|id| self.nodes[i].dlm.resource_owner(id, &lock_name(name)))
                    == Some(i as u8);
                if model.died
                    && !model.purged
                    && local_master
                    && !self.nodes[i].dlm.lock_lvb_invalid(lock)
                {
                    self.fail(
                        FailKind::Lvb,
                        format!(
                            "n{i} c{c} read a zero LVB on d{dom}/s{name} (last written {}, lost by a death) from its local master without the invalid flag",
                            model.last
                        ),
                    );
                }
            }
            Some(v) => self.fail(
                FailKind::Lvb,
                format!(
                    "n{i} c{c} read LVB {v} on d{dom}/s{name}; last written under EX: {}{}",
                    model.last,
                    if model.invalid() { " (or zero)" } else { "" }
                ),
            ),
        }
    }

    // ----- clients ----------------------------------------------------------

    fn dom_id(&self, i: usize, dom: u8) -> Option<DomainId> {
        match self.nodes[i].doms.get(dom as usize) {
            Some(DomSt::Joined(id)) => Some(*id),
            _ => None,
        }
    }

    fn apply_op(&mut self, i: usize, c: usize, act: Act) {
        if !self.nodes[i].running() || c >= self.nodes[i].clients.len() {
            return;
        }
        self.stats.ops_applied += 1;
        let now = self.inst(self.now);
        let cl = self.nodes[i].clients[c];
        self.tr(|| format!("op n{i} c{c} {act:?} (client {cl:?})"));
        match (cl, act) {
            (
                Client::Cache {
                    st: CacheSt::Idle, ..
                },
                Act::Lock {
                    dom,
                    name,
                    mode,
                    try_,
                },
            ) => {
                if self.dom_id(i, dom).is_none() {
                    return;
                }
                let nd = &mut self.nodes[i];
                let hid = (c as u64) << 32 | nd.next_hid;
                nd.next_hid += 1;
                nd.clients[c] = Client::Cache {
                    st: CacheSt::Waiting { dom, name, mode },
                    hid,
                };
                let e = nd.names.entry((dom, name)).or_insert_with(|| NameEntry {
                    cache: LocalLock::new(),
                    lock: None,
                });
                let acts = e.cache.request(hid, mode, try_);
                self.cache_apply(i, (dom, name), acts);
            }
            (
                Client::Cache {
                    st: CacheSt::Holding { dom, name, .. } | CacheSt::Waiting { dom, name, .. },
                    hid,
                },
                Act::Unlock,
            ) => {
                self.nodes[i].clients[c] = Client::Cache {
                    st: CacheSt::Idle,
                    hid,
                };
                self.cache_release(i, (dom, name), hid);
            }
            (
                Client::Cache {
                    st:
                        CacheSt::Holding {
                            dom,
                            name,
                            mode: Mode::Ex,
                        },
                    ..
                },
                Act::WriteLvb,
            ) => {
                let v = self.next_lvb;
                self.next_lvb += 1;
                if let Some(e) = self.nodes[i].names.get_mut(&(dom, name)) {
                    e.cache.write_lvb(&lvb_of(v));
                }
                self.lvb_written((dom, name), v);
            }
            (
                Client::Cache {
                    st: CacheSt::Holding { dom, name, mode },
                    ..
                },
                Act::ReadLvb,
            ) if mode >= Mode::Pr => {
                let l = self.nodes[i]
                    .names
                    .get(&(dom, name))
                    .map(|e| *e.cache.lvb())
                    .unwrap_or([0; 64]);
                self.check_lvb_read(i, c, dom, name, &l, None);
            }
            (
                Client::Direct(DirectSt::Idle),
                Act::Lock {
                    dom,
                    name,
                    mode,
                    try_,
                },
            ) => {
                let Some(id) = self.dom_id(i, dom) else {
                    return;
                };
                let flags = LockFlags {
                    noqueue: try_,
                    valblk: true,
                };
                let r = self.nodes[i]
                    .dlm
                    .lock(now, id, &lock_name(name), mode, flags);
                if let Ok(lock) = r {
                    let nd = &mut self.nodes[i];
                    nd.clients[c] = Client::Direct(DirectSt::Creating {
                        lock,
                        dom,
                        name,
                        mode,
                    });
                    nd.by_lock.insert(lock.0, Owner::Direct(c as u8));
                    nd.lock_names.insert(lock.0, (dom, name));
                    nd.expect.insert(
                        lock.0,
                        Expect::Grant {
                            mode,
                            cancel: false,
                        },
                    );
                }
                self.pump(i);
            }
            (
                Client::Direct(DirectSt::Held {
                    lock,
                    dom,
                    name,
                    mode: from,
                }),
                Act::Convert { mode, try_ },
            ) if mode != from => {
                let flags = LockFlags {
                    noqueue: try_ && mode > from,
                    valblk: true,
                };
                if self.nodes[i]
                    .dlm
                    .convert(now, lock, mode, flags, None)
                    .is_ok()
                {
                    let nd = &mut self.nodes[i];
                    nd.clients[c] = Client::Direct(DirectSt::Converting {
                        lock,
                        dom,
                        name,
                        from,
                        to: mode,
                        cancelling: false,
                    });
                    nd.expect.insert(
                        lock.0,
                        Expect::Grant {
                            mode,
                            cancel: false,
                        },
                    );
                }
                self.pump(i);
            }
            (Client::Direct(DirectSt::Held { lock, .. }), Act::Unlock) => {
                self.direct_unlock(i, c, lock);
            }
            (
                Client::Direct(DirectSt::Held {
                    lock,
                    dom,
                    name,
                    mode: Mode::Ex,
                }),
                Act::WriteLvb,
            ) => {
                let v = self.next_lvb;
                self.next_lvb += 1;
                if self.nodes[i].dlm.set_lvb(lock, &lvb_of(v)).is_ok() {
                    self.lvb_written((dom, name), v);
                }
            }
            (
                Client::Direct(DirectSt::Held {
                    lock,
                    dom,
                    name,
                    mode,
                }),
                Act::ReadLvb,
            ) if mode >= Mode::Pr => {
                let l = self.nodes[i].dlm.lock_lvb(lock).unwrap_or([0; 64]);
                self.check_lvb_read(i, c, dom, name, &l, Some(lock));
            }
            _ => self.stats.ops_applied -= 1,
        }
    }

    fn direct_unlock(&mut self, i: usize, c: usize, lock: LockId) {
        let now = self.inst(self.now);
        let flags = UnlockFlags {
            valblk: true,
            cancel: false,
        };
        if self.nodes[i].dlm.unlock(now, lock, flags, None).is_ok() {
            let nd = &mut self.nodes[i];
            nd.clients[c] = Client::Direct(DirectSt::Unlocking { lock });
            nd.expect.insert(lock.0, Expect::Unlock);
        }
        self.pump(i);
    }

    /// After faults stop: holders let go, pending conversions are
    /// withdrawn (a conversion deadlock is the application's), and every
    /// waiting request must then be granted.
    fn drain_kick(&mut self, i: usize) {
        if !self.nodes[i].running() {
            return;
        }
        for c in 0..self.nodes[i].clients.len() {
            match self.nodes[i].clients[c] {
                Client::Cache {
                    st: CacheSt::Holding { dom, name, .. },
                    hid,
                } => {
                    self.nodes[i].clients[c] = Client::Cache {
                        st: CacheSt::Idle,
                        hid,
                    };
                    self.cache_release(i, (dom, name), hid);
                }
                Client::Direct(DirectSt::Held { lock, .. }) => self.direct_unlock(i, c, lock),
                Client::Direct(DirectSt::Converting {
                    lock,
                    dom,
                    name,
                    from,
                    to,
                    cancelling: false,
                }) => {
                    let now = self.inst(self.now);
                    let flags = UnlockFlags {
                        valblk: false,
                        cancel: true,
                    };
                    if self.nodes[i].dlm.unlock(now, lock, flags, None).is_ok() {
                        let nd = &mut self.nodes[i];
                        nd.clients[c] = Client::Direct(DirectSt::Converting {
                            lock,
                            dom,
                            name,
                            from,
                            to,
                            cancelling: true,
                        });
                        if let Some(Expect::Grant { cancel, .. }) = nd.expect.get_mut(&lock.0) {
                            *cancel = true;
                        }
                    }
                    self.pump(i);
                }
                _ => {}
            }
        }
    }

    fn cache_release(&mut self, i: usize, key: (u8, u8), hid: HolderId) {
        let Some(e) = self.nodes[i].names.get_mut(&key) else {
            return;
        };
        let acts = e.cache.release(hid);
        self.cache_apply(i, key, acts);
    }

    /// Carries out `LocalLock` actions as the engine's runtime does.
    fn cache_apply(&mut self, i: usize, key: (u8, u8), acts: Vec<CacheAction>) {
        for a in acts {
            match a {
                CacheAction::Granted(h) => {
                    let c = (h >> 32) as usize;
                    match self.nodes[i].clients.get(c).copied() {
                        Some(Client::Cache {
                            st: CacheSt::Waiting { dom, name, mode },
                            hid,
                        }) if hid == h && (dom, name) == key => {
                            self.nodes[i].clients[c] = Client::Cache {
                                st: CacheSt::Holding { dom, name, mode },
                                hid,
                            };
                            self.check_grant(i, c, dom, name, mode, "local grant");
                        }
                        other => self.fail(
                            FailKind::DoubleGrant,
                            format!("n{i}: LocalLock granted holder {h:#x}, client is {other:?}"),
                        ),
                    }
                }
                CacheAction::TryFailed(h) | CacheAction::Failed(h) => {
                    let c = (h >> 32) as usize;
                    match self.nodes[i].clients.get(c).copied() {
                        Some(Client::Cache {
                            st: CacheSt::Waiting { .. },
                            hid,
                        }) if hid == h => {
                            self.nodes[i].clients[c] = Client::Cache {
                                st: CacheSt::Idle,
                                hid,
                            };
                        }
                        // A waiter that gave up is already idle or on to
                        // another request: like the engine, ignore it.
                        Some(Client::Cache { hid, .. }) if hid != h => {}
                        Some(Client::Cache {
                            st: CacheSt::Idle, ..
                        }) => {}
                        other => self.fail(
                            FailKind::DoubleGrant,
                            format!("n{i}: LocalLock failed holder {h:#x}, client is {other:?}"),
                        ),
                    }
                }
                CacheAction::BlockingNotice { .. } => {}
                CacheAction::Cluster(op) => self.cluster_op(i, key, op),
            }
        }
    }

    fn cluster_op(&mut self, i: usize, key: (u8, u8), op: ClusterOp) {
        let now = self.inst(self.now);
        let broken = self.sched.cfg.broken;
        let Some(dom) = self.dom_id(i, key.0) else {
            self.cluster_failed(i, key);
            return;
        };
        let nd = &mut self.nodes[i];
        let Some(entry) = nd.names.get_mut(&key) else {
            return;
        };
        let lock = entry.lock;
        let lose = broken == Some(Broken::LoseLvb);
        let r = match (op.clone(), lock) {
            (ClusterOp::Acquire { mode, noqueue }, None) => {
                let flags = LockFlags {
                    noqueue,
                    valblk: true,
                };
                match nd.dlm.lock(now, dom, &lock_name(key.1), mode, flags) {
                    Ok(id) => {
                        entry.lock = Some(id);
                        nd.by_lock.insert(id.0, Owner::Cache(key.0, key.1));
                        nd.lock_names.insert(id.0, key);
                        nd.expect.insert(
                            id.0,
                            Expect::Grant {
                                mode,
                                cancel: false,
                            },
                        );
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (ClusterOp::Acquire { mode, noqueue }, Some(id)) => {
                let flags = LockFlags {
                    noqueue,
                    valblk: true,
                };
                let r = nd.dlm.convert(now, id, mode, flags, None);
                if r.is_ok() {
                    nd.expect.insert(
                        id.0,
                        Expect::Grant {
                            mode,
                            cancel: false,
                        },
                    );
                }
                r
            }
            (ClusterOp::Downconvert { mode, lvb }, Some(id)) => {
                let flags = LockFlags {
                    noqueue: false,
                    valblk: true,
                };
                let lvb = if lose { None } else { lvb };
                let r = nd.dlm.convert(now, id, mode, flags, lvb);
                if r.is_ok() {
                    nd.expect.insert(
                        id.0,
                        Expect::Grant {
                            mode,
                            cancel: false,
                        },
                    );
                }
                r
            }
            (ClusterOp::Release { lvb }, Some(id)) => {
                let lvb = if lose { None } else { lvb };
                let flags = UnlockFlags {
                    valblk: lvb.is_some(),
                    cancel: false,
                };
                let r = nd.dlm.unlock(now, id, flags, lvb);
                if r.is_ok() {
                    nd.expect.insert(id.0, Expect::Unlock);
                }
                r
            }
            (ClusterOp::Cancel, Some(id)) => {
                let flags = UnlockFlags {
                    valblk: false,
                    cancel: true,
                };
                let r = nd.dlm.unlock(now, id, flags, None);
                if r.is_ok() {
                    if let Some(Expect::Grant { cancel, .. }) = nd.expect.get_mut(&id.0) {
                        *cancel = true;
                    }
                }
                r
            }
            (_, None) => Err(crate::dlm::ApiError::UnknownLock),
        };
        if r.is_err() {
            self.tr(|| format!("n{i} cluster op {op:?} refused: {r:?}"));
            // A refused cancel means the request it targets has completed
            // and its AST/failure event is queued: that event finishes it.
            // (The engine fails the waiter here instead; see EngineCancel.)
            if op != ClusterOp::Cancel || broken == Some(Broken::EngineCancel) {
                self.cluster_failed(i, key);
            }
        }
        self.pump(i);
    }

    fn cluster_failed(&mut self, i: usize, key: (u8, u8)) {
        if let Some(e) = self.nodes[i].names.get_mut(&key) {
            let acts = e.cache.on_failed();
            self.cache_apply(i, key, acts);
        }
    }

    fn with_cache(
        &mut self,
        i: usize,
        key: (u8, u8),
        f: impl FnOnce(&mut NameEntry) -> Vec<CacheAction>,
    ) {
        if let Some(e) = self.nodes[i].names.get_mut(&key) {
            let acts = f(e);
            self.cache_apply(i, key, acts);
        }
    }

    /// Checks the completion against what the glue asked for.
    fn expect_done(&mut self, i: usize, lock: LockId, e: &Event) -> bool {
        let exp = self.nodes[i].expect.get(&lock.0).copied();
        let ok = match (e, exp) {
            (Event::Ast { mode, .. }, Some(Expect::Grant { mode: m, .. })) => *mode == m,
            (
                Event::LockFailed { .. } | Event::ConvertFailed { .. },
                Some(Expect::Grant { .. }),
            ) => true,
            (Event::Cancelled { .. }, Some(Expect::Grant { cancel: true, .. })) => true,
            (Event::Unlocked { .. }, Some(Expect::Unlock)) => true,
            _ => false,
        };
        if !ok {
            self.fail(
                FailKind::DoubleGrant,
                format!("n{i}: {e:?} for lock {:#x}, which expected {exp:?}", lock.0),
            );
            return false;
        }
        self.nodes[i].expect.remove(&lock.0);
        true
    }

    fn on_event(&mut self, i: usize, e: Event) {
        self.tr(|| format!("n{i} event {e:?}"));
        if let Event::Ast {
            lock,
            mode: Mode::Ex,
            lvb: Some(l),
        } = &e
        {
            // An EX holder that got a zero LVB after a death writes it back
            // when it lets go (the engine's cache always does): from then
            // on the zero no longer carries the invalid flag.
            if *l == [0u8; 64] {
                if let Some(k) = self.nodes[i].lock_names.get(&lock.0).copied() {
                    if let Some(m) = self.lvb.get_mut(&k) {
                        m.purged |= m.died;
                    }
                }
            }
        }
        let lock = match &e {
            Event::JoinDone { domain, result } => {
                for d in 0..self.nodes[i].doms.len() {
                    if self.nodes[i].doms[d] == DomSt::Joining(*domain) {
                        self.nodes[i].doms[d] = if result.is_ok() {
                            DomSt::Joined(*domain)
                        } else {
                            DomSt::Out
                        };
                    }
                }
                return;
            }
            Event::LeaveDone { .. } => return,
            Event::Bast { lock, blocked } => {
                if let Some(&Owner::Cache(d, s)) = self.nodes[i].by_lock.get(&lock.0) {
                    let b = *blocked;
                    self.with_cache(i, (d, s), |en| en.cache.on_bast(b));
                }
                return;
            }
            Event::Ast { lock, .. }
            | Event::LockFailed { lock, .. }
            | Event::ConvertFailed { lock, .. }
            | Event::Unlocked { lock }
            | Event::Cancelled { lock } => *lock,
        };
        if !self.expect_done(i, lock, &e) {
            return;
        }
        let Some(owner) = self.nodes[i].by_lock.get(&lock.0).copied() else {
            return;
        };
        match owner {
            Owner::Cache(d, s) => self.cache_event(i, (d, s), lock, e),
            Owner::Direct(c) => self.direct_event(i, c as usize, lock, e),
        }
    }

    fn cache_event(&mut self, i: usize, key: (u8, u8), lock: LockId, e: Event) {
        let grant_on_refusal = self.sched.cfg.broken == Some(Broken::GrantOnRefusal);
        match e {
            Event::Ast { mode, lvb, .. } => {
                self.with_cache(i, key, |en| en.cache.on_granted(mode, lvb));
            }
            Event::LockFailed { status, .. } => {
                self.forget_lock(i, lock);
                self.with_cache(i, key, |en| {
                    en.lock = None;
                    if status == DLM_NOTQUEUED && grant_on_refusal {
                        // BROKEN on purpose: the refusal becomes a grant.
                        en.cache.on_granted(Mode::Ex, None)
                    } else if status == DLM_NOTQUEUED {
                        en.cache.on_refused()
                    } else {
                        en.cache.on_failed()
                    }
                });
            }
            Event::ConvertFailed { status, .. } => {
                self.with_cache(i, key, |en| {
                    if status == DLM_NOTQUEUED {
                        en.cache.on_refused()
                    } else {
                        en.cache.on_failed()
                    }
                });
            }
            Event::Unlocked { .. } => {
                self.forget_lock(i, lock);
                self.with_cache(i, key, |en| {
                    en.lock = None;
                    en.cache.on_released()
                });
                if self.nodes[i]
                    .names
                    .get(&key)
                    .is_some_and(|en| en.lock.is_none() && en.cache.is_idle())
                {
                    self.nodes[i].names.remove(&key);
                }
            }
            Event::Cancelled { .. } => {
                self.with_cache(i, key, |en| en.cache.on_cancelled());
            }
            _ => {}
        }
    }

    fn direct_event(&mut self, i: usize, c: usize, lock: LockId, e: Event) {
        let st = match self.nodes[i].clients[c] {
            Client::Direct(st) => st,
            Client::Cache { .. } => return,
        };
        let new = match (st, e) {
            (
                DirectSt::Creating {
                    lock: l,
                    dom,
                    name,
                    mode,
                },
                Event::Ast { .. },
            ) if l == lock => {
                self.nodes[i].clients[c] = Client::Direct(DirectSt::Held {
                    lock,
                    dom,
                    name,
                    mode,
                });
                self.check_grant(i, c, dom, name, mode, "grant");
                return;
            }
            (
                DirectSt::Creating { lock: l, .. },
                Event::LockFailed { .. } | Event::Cancelled { .. },
            ) if l == lock => {
                self.forget_lock(i, lock);
                DirectSt::Idle
            }
            (
                DirectSt::Converting {
                    lock: l,
                    dom,
                    name,
                    to,
                    ..
                },
                Event::Ast { .. },
            ) if l == lock => {
                self.nodes[i].clients[c] = Client::Direct(DirectSt::Held {
                    lock,
                    dom,
                    name,
                    mode: to,
                });
                self.check_grant(i, c, dom, name, to, "conversion");
                return;
            }
            (
                DirectSt::Converting {
                    lock: l,
                    dom,
                    name,
                    from,
                    ..
                },
                Event::ConvertFailed { .. } | Event::Cancelled { .. },
            ) if l == lock => DirectSt::Held {
                lock,
                dom,
                name,
                mode: from,
            },
            (DirectSt::Unlocking { lock: l }, Event::Unlocked { .. }) if l == lock => {
                self.forget_lock(i, lock);
                DirectSt::Idle
            }
            (st, e) => {
                self.fail(
                    FailKind::DoubleGrant,
                    format!("n{i} c{c}: {e:?} while {st:?}"),
                );
                return;
            }
        };
        self.nodes[i].clients[c] = Client::Direct(new);
    }
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Item,
    Agenda(usize),
    Drain,
    Heartbeat(usize),
    Timer(usize),
    Deliver(usize),
}
