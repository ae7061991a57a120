//! An in-memory cluster of `Dlm` nodes for tests (and the seed of a
//! simulator): per-link FIFO queues carrying requests and status replies
//! like one o2net TCP connection per direction, a simulated clock, a seeded
//! choice of which link delivers next, crash/restart hooks, and a log of
//! every delivered message.

use super::node::{Dlm, DlmConfig, Event, ReplyToken, RequestId, Transmit, TransportError};
use crate::wire::dlm::{DlmMessage, NodeInfo};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

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
    },
}

/// One delivered message, as a capture would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Request {
        at_ms: u64,
        from: u8,
        to: u8,
        msg_type: u16,
        key: u32,
        payload: Vec<u8>,
    },
    Reply {
        at_ms: u64,
        from: u8,
        to: u8,
        msg_type: u16,
        result: Result<i32, TransportError>,
    },
}

impl Record {
    /// The decoded request, if this is one.
    pub fn message(&self) -> Option<DlmMessage> {
        match self {
            Record::Request {
                msg_type, payload, ..
            } => DlmMessage::decode(*msg_type, payload).ok(),
            Record::Reply { .. } => None,
        }
    }
}

/// The cluster. Node n has number n and address 127.0.0.(n+1).
pub struct Cluster {
    nodes: Vec<Option<Dlm>>,
    links: BTreeMap<(u8, u8), VecDeque<(u64, Frame)>>,
    tokens: HashMap<(u8, u64), (u8, RequestId, u16)>,
    next_token: u64,
    next_seq: u64,
    start: Instant,
    now: Instant,
    rng: u64,
    /// Deliver from a random non-empty link instead of global send order.
    pub shuffle_links: bool,
    pub log: Vec<Record>,
    events: Vec<Vec<Event>>,
}

/// The node table every simulated node is configured with.
pub fn node_table(n: usize) -> Vec<NodeInfo> {
    (0..n)
        .map(|i| NodeInfo {
            num: i as u8,
            port: 7777,
            addr: Ipv4Addr::new(127, 0, 0, i as u8 + 1),
        })
        .collect()
}

impl Cluster {
    /// `n` nodes that all see each other live (heartbeat and o2net up).
    pub fn new(n: usize, seed: u64) -> Cluster {
        let start = Instant::now();
        let mut c = Cluster {
            nodes: Vec::new(),
            links: BTreeMap::new(),
            tokens: HashMap::new(),
            next_token: 1,
            next_seq: 1,
            start,
            now: start,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            shuffle_links: false,
            log: Vec::new(),
            events: vec![Vec::new(); n],
        };
        for i in 0..n {
            let mut cfg = DlmConfig::new(i as u8, node_table(n));
            cfg.seed = seed ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            c.nodes.push(Some(Dlm::new(cfg)));
        }
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let now = c.now;
                    c.nodes[i].as_mut().unwrap().handle_node_up(now, j as u8);
                }
            }
        }
        c
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.now.duration_since(self.start).as_millis() as u64
    }

    /// The node's DLM (panics if it is crashed: a test bug).
    pub fn dlm(&mut self, n: u8) -> &mut Dlm {
        self.nodes[n as usize].as_mut().expect("node is down")
    }

    pub fn is_up(&self, n: u8) -> bool {
        self.nodes[n as usize].is_some()
    }

    /// Runs `f` on node `n`'s DLM with the current time, then collects its
    /// output.
    pub fn with<R>(&mut self, n: u8, f: impl FnOnce(&mut Dlm, Instant) -> R) -> R {
        let now = self.now;
        let r = f(self.dlm(n), now);
        self.pump(n);
        r
    }

    /// Events node `n` produced since the last call.
    pub fn take_events(&mut self, n: u8) -> Vec<Event> {
        std::mem::take(&mut self.events[n as usize])
    }

    /// Events still unread, without taking them.
    pub fn events(&self, n: u8) -> &[Event] {
        &self.events[n as usize]
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn pump(&mut self, n: u8) {
        loop {
            let Some(d) = self.nodes[n as usize].as_mut() else {
                return;
            };
            let mut out = Vec::new();
            while let Some(t) = d.poll_transmit() {
                out.push(t);
            }
            while let Some(e) = d.poll_event() {
                self.events[n as usize].push(e);
            }
            if out.is_empty() {
                return;
            }
            for t in out {
                self.route(n, t);
            }
        }
    }

    fn route(&mut self, n: u8, t: Transmit) {
        match t {
            Transmit::Request {
                id,
                to,
                msg_type,
                key,
                payload,
            } => {
                if self.nodes.get(to as usize).is_none_or(|x| x.is_none()) {
                    // No connection: the send fails at once.
                    let now = self.now;
                    if let Some(d) = self.nodes[n as usize].as_mut() {
                        d.handle_reply(now, id, Err(TransportError::NotConnected));
                    }
                    return;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.links.entry((n, to)).or_default().push_back((
                    seq,
                    Frame::Request {
                        id,
                        msg_type,
                        key,
                        payload,
                    },
                ));
            }
            Transmit::Reply { token, to, status } => {
                let Some((req_from, id, msg_type)) = self.tokens.remove(&(n, token.0)) else {
                    panic!("node {n} replied with an unknown token {token:?}");
                };
                assert_eq!(req_from, to, "reply addressed to the wrong node");
                let seq = self.next_seq;
                self.next_seq += 1;
                self.links.entry((n, to)).or_default().push_back((
                    seq,
                    Frame::Reply {
                        id,
                        msg_type,
                        result: Ok(status),
                    },
                ));
            }
        }
    }

    /// Delivers one message; false when every link is empty.
    pub fn step(&mut self) -> bool {
        let keys: Vec<(u8, u8)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return false;
        }
        let link = if self.shuffle_links {
            keys[(self.random() % keys.len() as u64) as usize]
        } else {
            *keys
                .iter()
                .min_by_key(|k| self.links[k].front().map(|(s, _)| *s))
                .unwrap()
        };
        let (from, to) = link;
        let (_, frame) = self.links.get_mut(&link).unwrap().pop_front().unwrap();
        let now = self.now;
        let at_ms = self.elapsed_ms();
        match frame {
            Frame::Request {
                id,
                msg_type,
                key,
                payload,
            } => {
                self.log.push(Record::Request {
                    at_ms,
                    from,
                    to,
                    msg_type,
                    key,
                    payload: payload.clone(),
                });
                let token = self.next_token;
                self.next_token += 1;
                self.tokens.insert((to, token), (from, id, msg_type));
                let handled = match self.nodes[to as usize].as_mut() {
                    Some(d) => d
                        .handle_request(now, from, msg_type, key, &payload, ReplyToken(token))
                        .is_ok(),
                    None => false,
                };
                if !handled {
                    self.tokens.remove(&(to, token));
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.links.entry((to, from)).or_default().push_back((
                        seq,
                        Frame::Reply {
                            id,
                            msg_type,
                            result: Err(TransportError::NoHandler),
                        },
                    ));
                }
                self.pump(to);
            }
            Frame::Reply {
                id,
                msg_type,
                result,
            } => {
                self.log.push(Record::Reply {
                    at_ms,
                    from,
                    to,
                    msg_type,
                    result,
                });
                if let Some(d) = self.nodes[to as usize].as_mut() {
                    d.handle_reply(now, id, result);
                }
                self.pump(to);
            }
        }
        true
    }

    /// Delivers messages until the links are empty (no time passes).
    pub fn settle(&mut self) {
        let mut guard = 0u64;
        while self.step() {
            guard += 1;
            assert!(guard < 1_000_000, "message storm");
        }
    }

    /// Lets `ms` of simulated time pass, delivering every message and
    /// firing every timer on the way.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + Duration::from_millis(ms);
        loop {
            self.settle();
            let next = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|d| d.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    if t > self.now {
                        self.now = t;
                    }
                    let now = self.now;
                    for i in 0..self.nodes.len() {
                        if let Some(d) = self.nodes[i].as_mut() {
                            if d.poll_timeout().is_some_and(|x| x <= now) {
                                d.handle_timeout(now);
                            }
                        }
                        self.pump(i as u8);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Runs until `pred` holds (checked after every delivery and timer),
    /// at most `max_ms` of simulated time. Returns whether it held.
    pub fn run_until(&mut self, max_ms: u64, mut pred: impl FnMut(&mut Cluster) -> bool) -> bool {
        let end = self.now + Duration::from_millis(max_ms);
        loop {
            if pred(self) {
                return true;
            }
            if self.step() {
                continue;
            }
            let next = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|d| d.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    if t > self.now {
                        self.now = t;
                    }
                    let now = self.now;
                    for i in 0..self.nodes.len() {
                        if let Some(d) = self.nodes[i].as_mut() {
                            if d.poll_timeout().is_some_and(|x| x <= now) {
                                d.handle_timeout(now);
                            }
                        }
                        self.pump(i as u8);
                    }
                }
                _ => {
                    self.now = end;
                    return pred(self);
                }
            }
        }
    }

    /// Kills node `n`: its queues vanish, peers see the link drop at once;
    /// the heartbeat verdict comes with `declare_dead`.
    pub fn crash(&mut self, n: u8) {
        self.nodes[n as usize] = None;
        self.events[n as usize].clear();
        self.links.retain(|(a, b), _| *a != n && *b != n);
        self.tokens
            .retain(|(recv, _), (req, _, _)| *recv != n && *req != n);
        let now = self.now;
        for i in 0..self.nodes.len() {
            if let Some(d) = self.nodes[i].as_mut() {
                d.handle_link_down(now, n);
            }
            self.pump(i as u8);
        }
    }

    /// The heartbeat of every survivor declares `n` dead.
    pub fn declare_dead(&mut self, n: u8) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            if let Some(d) = self.nodes[i].as_mut() {
                d.handle_node_down(now, n);
            }
            self.pump(i as u8);
        }
    }

    /// Starts a fresh `Dlm` as node `n` (after a crash) and makes it and its
    /// peers see each other live.
    pub fn restart(&mut self, n: u8, seed: u64) {
        let count = self.nodes.len();
        let mut cfg = DlmConfig::new(n, node_table(count));
        cfg.seed = seed;
        let mut d = Dlm::new(cfg);
        let now = self.now;
        for j in 0..count {
            if j != n as usize && self.nodes[j].is_some() {
                d.handle_node_up(now, j as u8);
            }
        }
        self.nodes[n as usize] = Some(d);
        for j in 0..count {
            if j != n as usize {
                if let Some(p) = self.nodes[j].as_mut() {
                    p.handle_node_up(now, n);
                }
            }
        }
    }

    /// Requests delivered so far, as (from, to, msg_type).
    pub fn request_types(&self) -> Vec<(u8, u8, u16)> {
        self.log
            .iter()
            .filter_map(|r| match r {
                Record::Request {
                    from, to, msg_type, ..
                } => Some((*from, *to, *msg_type)),
                _ => None,
            })
            .collect()
    }
}

/// Checks a delivered-message log against §10 of o2dlm-protocol.md: the
/// replies and requests that make a Linux kernel node BUG. Returns one line
/// per violation (empty: a kernel peer would have survived this traffic).
pub fn kernel_safety_violations(log: &[Record]) -> Vec<String> {
    use crate::wire::dlm::*;
    use std::collections::{HashMap, HashSet};
    let mut bad = Vec::new();
    // (joiner, responder) pairs where the responder said JOIN_OK and the
    // joiner has not finished (ASSERT_JOINED answered 0) or cancelled.
    let mut join_ok: HashSet<(u8, u8)> = HashSet::new();
    // Lock cookies whose last create/convert asked for the LVB.
    let mut wants_lvb: HashMap<(LockName, u64), bool> = HashMap::new();
    // Last asserted master of each name.
    let mut owner: HashMap<LockName, u8> = HashMap::new();
    // Converts in flight per (owner, master), oldest first.
    let mut converts: HashMap<(u8, u8), VecDeque<u64>> = HashMap::new();
    for r in log {
        match r {
            Record::Reply {
                from,
                to,
                msg_type,
                result: Ok(s),
                ..
            } => {
                let s = *s;
                let ok = match *msg_type {
                    DLM_MASTER_REQUEST_MSG => (0..=3).contains(&s),
                    DLM_ASSERT_MASTER_MSG => s >= 0,
                    DLM_CREATE_LOCK_MSG => s != DLM_REJECTED,
                    DLM_PROXY_AST_MSG => s != DLM_RECOVERING && s != DLM_MIGRATING,
                    DLM_MIG_LOCKRES_MSG => s != -14,
                    _ => true,
                };
                if !ok {
                    bad.push(format!(
                        "node {from} answered {msg_type} from {to} with {s}"
                    ));
                }
                match *msg_type {
                    DLM_QUERY_JOIN_MSG if QueryJoinResponse::from_status(s).code == JOIN_OK => {
                        join_ok.insert((*to, *from));
                    }
                    DLM_ASSERT_JOINED_MSG if s == 0 => {
                        join_ok.remove(&(*to, *from));
                    }
                    DLM_CONVERT_LOCK_MSG => {
                        if let Some(q) = converts.get_mut(&(*to, *from)) {
                            q.pop_front();
                        }
                    }
                    _ => {}
                }
            }
            Record::Reply { .. } => {}
            Record::Request { from, to, .. } => {
                let Some(m) = r.message() else {
                    bad.push(format!("node {from} sent an undecodable request to {to}"));
                    continue;
                };
                match m {
                    DlmMessage::AssertJoined(_) | DlmMessage::CancelJoin(_) => {
                        if !join_ok.contains(&(*from, *to)) {
                            bad.push(format!(
                                "node {from} sent {m:?} to {to}, which is not letting it join"
                            ));
                        }
                        if matches!(m, DlmMessage::CancelJoin(_)) {
                            join_ok.remove(&(*from, *to));
                        }
                    }
                    DlmMessage::CreateLock(c) => {
                        wants_lvb.insert((c.name, c.cookie), c.flags & LKM_GET_LVB != 0);
                    }
                    DlmMessage::ConvertLock(c) => {
                        wants_lvb.insert((c.name, c.cookie), c.flags & LKM_GET_LVB != 0);
                        let q = converts.entry((*from, *to)).or_default();
                        if q.contains(&c.cookie) {
                            bad.push(format!(
                                "node {from}: two converts in flight for {:#x}",
                                c.cookie
                            ));
                        }
                        q.push_back(c.cookie);
                    }
                    DlmMessage::AssertMaster(a) => {
                        owner.insert(a.name, a.node_idx);
                    }
                    DlmMessage::ProxyAst(p) => {
                        if owner.get(&p.name) == Some(to) {
                            bad.push(format!(
                                "node {from} sent PROXY_AST for {} to its master {to}",
                                p.name
                            ));
                        }
                        if p.flags & LKM_GET_LVB != 0
                            && wants_lvb.get(&(p.name, p.cookie)) == Some(&false)
                        {
                            bad.push(format!(
                                "PROXY_AST with LVB for {:#x}, which did not ask",
                                p.cookie
                            ));
                        }
                    }
                    DlmMessage::MigLockres(mr) => {
                        if mr.flags & (DLM_MRES_RECOVERY | DLM_MRES_MIGRATION) == 0 {
                            bad.push("MIG_LOCKRES without RECOVERY/MIGRATION".into());
                        }
                        if mr.master == DLM_LOCK_RES_OWNER_UNKNOWN
                            && mr.flags & DLM_MRES_RECOVERY == 0
                        {
                            bad.push("MIG_LOCKRES master 255 without RECOVERY".into());
                        }
                        if mr.locks.iter().any(|l| l.highest_blocked != LKM_IVMODE) {
                            bad.push("MIG_LOCKRES record with highest_blocked set".into());
                        }
                        let dummies = mr.locks.iter().filter(|l| l.cookie == 0).count();
                        if dummies > 0 && mr.locks.len() > 1 {
                            bad.push("MIG_LOCKRES dummy lock not alone".into());
                        }
                        if mr.flags & DLM_MRES_RECOVERY != 0
                            && mr.locks.iter().any(|l| l.node == *to)
                        {
                            bad.push("recovery data holds the receiver's own lock".into());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    bad
}
