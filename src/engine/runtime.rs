//! The engine's node runtime: one per process, started by the first engine
//! context. It runs the heartbeat and o2net drivers (`driver::node`) and a
//! core thread that owns the sans-IO `Dlm` and the node-local lock caches.
//! API calls from any thread become `Command`s for the core thread and
//! wait for their answer; everything the DLM needs to send goes out
//! through the o2net driver.

use super::bast::BastSignal;
use crate::config::EngineConfig;
use crate::dlm::cache::{CacheAction, ClusterOp, HolderId, LocalLock};
use crate::dlm::{self, Dlm, DlmConfig, DomainId, Event, LockFlags, Mode, UnlockFlags};
use crate::driver::net_io::NetHandle;
use crate::driver::node::{Node, NodeEvent};
use crate::error::{Error, Result};
use crate::heartbeat::HbEvent;
use crate::net::{NetEvent, ReplyToken};
use crate::wire::dlm::{NodeInfo, DLM_NOTQUEUED};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a first context waits for the cluster view to settle: our own
/// heartbeat must be seen (by us and others) and every live node linked.
const SETTLE_PERIODS: u32 = 3;
const HB_PERIOD: Duration = Duration::from_millis(2000);
/// As the kernel's o2cb cluster check before a domain join.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long process exit waits for domains to be left cleanly.
const EXIT_LEAVE_WAIT: Duration = Duration::from_secs(10);

/// A request from an API thread, answered through `reply`.
pub(crate) enum Command {
    Join {
        domain: Vec<u8>,
        reply: mpsc::SyncSender<Result<()>>,
    },
    Leave {
        domain: Vec<u8>,
        reply: mpsc::SyncSender<Result<()>>,
    },
    Lock {
        domain: Vec<u8>,
        name: Vec<u8>,
        holder: HolderId,
        mode: Mode,
        trylock: bool,
        bast: Option<Arc<BastSignal>>,
        reply: mpsc::SyncSender<Result<()>>,
    },
    Unlock {
        domain: Vec<u8>,
        name: Vec<u8>,
        holder: HolderId,
    },
    ReadLvb {
        domain: Vec<u8>,
        name: Vec<u8>,
        reply: mpsc::SyncSender<[u8; 64]>,
    },
    WriteLvb {
        domain: Vec<u8>,
        name: Vec<u8>,
        data: Vec<u8>,
        reply: mpsc::SyncSender<()>,
    },
    Drop {
        domain: Vec<u8>,
        name: Vec<u8>,
        reply: mpsc::SyncSender<Result<()>>,
    },
    /// Process exit: leave every domain (migrating what we master) so peers
    /// need no recovery. Answers with one receiver per domain being left.
    LeaveAll {
        reply: mpsc::SyncSender<Vec<mpsc::Receiver<Result<()>>>>,
    },
}

enum Input {
    Node(NodeEvent),
    Api(Command),
}

/// Handle held by engine contexts.
pub(crate) struct Runtime {
    tx: mpsc::Sender<Input>,
    next_holder: AtomicU64,
    /// Keeps the drivers alive; taken at process exit for a clean stop, or
    /// by the core thread when it fences.
    node: Arc<Mutex<Option<Node>>>,
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);
/// Set once this node fenced itself in `refuse` mode: every call fails.
pub(crate) static FENCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// DLM messages (requests and status replies) this process has sent.
pub(crate) static MESSAGES_SENT: AtomicU64 = AtomicU64::new(0);

/// The process's runtime, started on first use.
pub(crate) fn get() -> Result<Arc<Runtime>> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref() {
        return Ok(rt.clone());
    }
    let cfg = EngineConfig::from_env().map_err(|e| {
        log::error!("engine configuration: {e}");
        Error::ServiceUnavailable
    })?;
    let rt = Arc::new(Runtime::start(cfg)?);
    crate::ffi::register_exit_hook();
    *slot = Some(rt.clone());
    Ok(rt)
}

/// Clean stop at process exit: leave the heartbeat region with the
/// generation-0 block so peers see us go at once.
pub(crate) fn shutdown() {
    let rt = RUNTIME.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(rt) = rt {
        // Leave domains first (bounded), as o2dlm_destroy would, so peers
        // see a clean exit instead of a death that needs recovery.
        if let Ok(waits) = rt.call(|reply| Command::LeaveAll { reply }) {
            let deadline = Instant::now() + EXIT_LEAVE_WAIT;
            for w in waits {
                let left = deadline.saturating_duration_since(Instant::now());
                if w.recv_timeout(left).is_err() {
                    log::warn!("o2dlm: exit: a domain did not finish leaving in time");
                }
            }
        }
        if let Some(node) = rt.node.lock().unwrap_or_else(|p| p.into_inner()).take() {
            node.stop();
        }
    }
}

impl Runtime {
    fn start(cfg: EngineConfig) -> Result<Runtime> {
        let (tx, rx) = mpsc::channel::<Input>();
        let sink_tx = Mutex::new(tx.clone());
        let node = Node::start_with_sink(
            &cfg,
            Arc::new(move |e| {
                if let Ok(tx) = sink_tx.lock() {
                    let _ = tx.send(Input::Node(e));
                }
            }),
        )
        .map_err(|e| {
            log::error!("engine node start: {e}");
            Error::ServiceUnavailable
        })?;
        let net = node.net().ok_or(Error::ServiceUnavailable)?;
        let nodes = cfg
            .advertised
            .iter()
            .map(|n| NodeInfo {
                num: n.number,
                port: n.port,
                addr: n.ip,
            })
            .collect();
        let me = cfg.local.number;
        let mut dlm_cfg = DlmConfig::new(me, nodes);
        dlm_cfg.seed = std::process::id() as u64 ^ (me as u64) << 32;
        for (t, key, max) in Dlm::mod_key_handlers() {
            if let Err(e) = net.register_handler(t, key, max) {
                log::error!("o2dlm: cannot register handler {t}: {e:?}");
                return Err(Error::ServiceUnavailable);
            }
        }
        let node_slot = Arc::new(Mutex::new(Some(node)));
        let core = Core {
            node_slot: node_slot.clone(),
            fence_mode: FenceMode::from_env(),
            dlm: Dlm::new(dlm_cfg),
            net,
            me,
            started: Instant::now(),
            live: BTreeSet::new(),
            linked: BTreeSet::new(),
            requests: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 1,
            domains: HashMap::new(),
            names: HashMap::new(),
            by_lock: HashMap::new(),
            waiting: HashMap::new(),
            basts: HashMap::new(),
            pending_joins: Vec::new(),
        };
        std::thread::Builder::new()
            .name("o2dlm-core".into())
            .spawn(move || core.run(rx))
            .map_err(|_| Error::NoMemory)?;
        Ok(Runtime {
            tx,
            next_holder: AtomicU64::new(1),
            node: node_slot,
        })
    }

    pub(crate) fn new_holder(&self) -> HolderId {
        self.next_holder.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn send(&self, cmd: Command) -> Result<()> {
        if FENCED.load(Ordering::SeqCst) {
            return Err(Error::ServiceUnavailable);
        }
        self.tx
            .send(Input::Api(cmd))
            .map_err(|_| Error::ServiceUnavailable)
    }

    /// Sends a command built around a reply channel and waits for it.
    pub(crate) fn call<T>(&self, build: impl FnOnce(mpsc::SyncSender<T>) -> Command) -> Result<T> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(build(reply))?;
        rx.recv().map_err(|_| Error::ServiceUnavailable)
    }
}

#[derive(Default)]
struct DomainEntry {
    id: Option<DomainId>,
    joined: bool,
    users: usize,
    join_waiters: Vec<mpsc::SyncSender<Result<()>>>,
    leave_waiters: Vec<mpsc::SyncSender<Result<()>>>,
    leaving: bool,
}

struct NameEntry {
    cache: LocalLock,
    lock: Option<dlm::LockId>,
}

struct Core {
    node_slot: Arc<Mutex<Option<Node>>>,
    fence_mode: FenceMode,
    dlm: Dlm,
    net: NetHandle,
    me: u8,
    started: Instant,
    live: BTreeSet<u8>,
    linked: BTreeSet<u8>,
    /// o2net request id → the DLM's.
    requests: HashMap<crate::net::RequestId, dlm::RequestId>,
    /// The DLM's reply token → o2net's (which is not Clone).
    tokens: HashMap<u64, ReplyToken>,
    next_token: u64,
    domains: HashMap<Vec<u8>, DomainEntry>,
    names: HashMap<(Vec<u8>, Vec<u8>), NameEntry>,
    by_lock: HashMap<dlm::LockId, (Vec<u8>, Vec<u8>)>,
    waiting: HashMap<HolderId, mpsc::SyncSender<Result<()>>>,
    basts: HashMap<HolderId, Arc<BastSignal>>,
    /// Joins waiting for the cluster view to settle.
    pending_joins: Vec<Vec<u8>>,
}

impl Core {
    fn run(mut self, rx: mpsc::Receiver<Input>) {
        loop {
            let now = Instant::now();
            self.dlm.handle_timeout(now);
            self.start_settled_joins(now);
            self.flush(now);
            let wait = self
                .dlm
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(500))
                .min(Duration::from_millis(500));
            match rx.recv_timeout(wait) {
                Ok(_) if FENCED.load(Ordering::SeqCst) => {}
                Ok(Input::Node(e)) => self.node_event(e),
                Ok(Input::Api(c)) => self.command(c),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn node_event(&mut self, e: NodeEvent) {
        let now = Instant::now();
        if e.is_fence() {
            self.fence(&e);
            return;
        }
        match e {
            NodeEvent::NodeUp(n) => {
                if n != self.me {
                    self.live.insert(n);
                    self.dlm.handle_node_up(now, n);
                }
            }
            NodeEvent::NodeDown(n) => {
                self.live.remove(&n);
                self.linked.remove(&n);
                self.dlm.handle_node_down(now, n);
            }
            NodeEvent::Net(NetEvent::LinkUp { node, .. }) => {
                self.linked.insert(node);
            }
            NodeEvent::Net(NetEvent::LinkDown { node, .. }) => {
                self.linked.remove(&node);
                self.dlm.handle_link_down(now, node);
            }
            NodeEvent::Net(NetEvent::Request(req)) => {
                let token = dlm::ReplyToken(self.next_token);
                self.next_token += 1;
                let (from, t, key) = (req.node, req.header.msg_type, req.header.key);
                self.tokens.insert(token.0, req.token);
                if self
                    .dlm
                    .handle_request(now, from, t, key, &req.payload, token)
                    .is_err()
                {
                    // Unknown (type, key): o2net answers "no handler" for
                    // unregistered pairs; a registered one we do not serve
                    // gets the same meaning.
                    if let Some(tok) = self.tokens.remove(&token.0) {
                        self.net.reply(tok, -(libc::ENOPROTOOPT));
                    }
                }
            }
            NodeEvent::Net(NetEvent::Response { id, result, .. }) => {
                if let Some(did) = self.requests.remove(&id) {
                    let r = result.map_err(dlm::TransportError::from);
                    self.dlm.handle_reply(now, did, r);
                }
            }
            NodeEvent::Net(_) | NodeEvent::Heartbeat(_) => {}
        }
    }

    /// True once our heartbeat has run long enough for every live node to
    /// have been seen, and every live node has a valid link.
    fn settled(&self, now: Instant) -> bool {
        let hb_ok = now.duration_since(self.started) >= HB_PERIOD * SETTLE_PERIODS;
        let links_ok = self.live.iter().all(|n| self.linked.contains(n));
        hb_ok && (links_ok || now.duration_since(self.started) >= CONNECT_WAIT)
    }

    fn start_settled_joins(&mut self, now: Instant) {
        if self.pending_joins.is_empty() || !self.settled(now) {
            return;
        }
        for name in std::mem::take(&mut self.pending_joins) {
            let missing: Vec<u8> = self
                .live
                .iter()
                .filter(|n| !self.linked.contains(n))
                .copied()
                .collect();
            if !missing.is_empty() {
                log::error!("o2dlm: cannot join: not connected to nodes {missing:?}");
                self.finish_join(&name, Err(Error::ServiceUnavailable));
                continue;
            }
            let key = Dlm::domain_key(&name);
            for (t, k, max) in Dlm::domain_handlers(DomainId(key)) {
                let _ = self.net.register_handler(t, k, max);
            }
            match self.dlm.join(now, &name) {
                Ok(id) => {
                    if let Some(d) = self.domains.get_mut(&name) {
                        d.id = Some(id);
                    }
                }
                Err(e) => {
                    log::error!("o2dlm: join refused: {e:?}");
                    self.unregister_domain(key);
                    self.finish_join(&name, Err(Error::ServiceUnavailable));
                }
            }
        }
    }

    fn unregister_domain(&mut self, key: u32) {
        for (t, k, _) in Dlm::domain_handlers(DomainId(key)) {
            self.net.unregister_handler(t, k);
        }
    }

    fn finish_join(&mut self, name: &[u8], r: Result<()>) {
        let Some(d) = self.domains.get_mut(name) else {
            return;
        };
        let waiters = std::mem::take(&mut d.join_waiters);
        match r {
            Ok(()) => d.joined = true,
            Err(_) => {
                self.domains.remove(name);
            }
        }
        for w in waiters {
            let _ = w.send(r);
        }
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Join { domain, reply } => {
                let d = self.domains.entry(domain.clone()).or_default();
                d.users += 1;
                if d.joined && !d.leaving {
                    let _ = reply.send(Ok(()));
                } else {
                    let first = d.join_waiters.is_empty() && d.id.is_none();
                    d.join_waiters.push(reply);
                    if first && !self.pending_joins.contains(&domain) {
                        self.pending_joins.push(domain);
                    }
                    self.start_settled_joins(now);
                }
            }
            Command::Leave { domain, reply } => {
                let Some(d) = self.domains.get_mut(&domain) else {
                    let _ = reply.send(Ok(()));
                    return;
                };
                d.users = d.users.saturating_sub(1);
                if d.users > 0 {
                    let _ = reply.send(Ok(()));
                    return;
                }
                d.leaving = true;
                d.leave_waiters.push(reply);
                self.try_leave(now, &domain);
            }
            Command::Lock {
                domain,
                name,
                holder,
                mode,
                trylock,
                bast,
                reply,
            } => {
                if !self
                    .domains
                    .get(&domain)
                    .is_some_and(|d| d.joined && !d.leaving)
                {
                    let _ = reply.send(Err(Error::Locking));
                    return;
                }
                self.waiting.insert(holder, reply);
                if let Some(b) = bast {
                    self.basts.insert(holder, b);
                }
                let key = (domain, name);
                let entry = self.names.entry(key.clone()).or_insert_with(|| NameEntry {
                    cache: LocalLock::new(),
                    lock: None,
                });
                let acts = entry.cache.request(holder, mode, trylock);
                self.apply(now, &key, acts);
            }
            Command::Unlock {
                domain,
                name,
                holder,
            } => {
                self.basts.remove(&holder);
                self.waiting.remove(&holder);
                let key = (domain, name);
                if let Some(entry) = self.names.get_mut(&key) {
                    let acts = entry.cache.release(holder);
                    self.apply(now, &key, acts);
                }
            }
            Command::ReadLvb {
                domain,
                name,
                reply,
            } => {
                let lvb = self
                    .names
                    .get(&(domain, name))
                    .map(|e| *e.cache.lvb())
                    .unwrap_or([0; 64]);
                let _ = reply.send(lvb);
            }
            Command::WriteLvb {
                domain,
                name,
                data,
                reply,
            } => {
                if let Some(e) = self.names.get_mut(&(domain, name)) {
                    e.cache.write_lvb(&data);
                }
                let _ = reply.send(());
            }
            Command::LeaveAll { reply } => {
                let names: Vec<Vec<u8>> = self.domains.keys().cloned().collect();
                let mut waits = Vec::new();
                for name in names {
                    let Some(d) = self.domains.get_mut(&name) else {
                        continue;
                    };
                    let (tx, rx) = mpsc::sync_channel(1);
                    d.users = 0;
                    d.leaving = true;
                    d.leave_waiters.push(tx);
                    waits.push(rx);
                    // Every holder of this process is going away too.
                    let keys: Vec<(Vec<u8>, Vec<u8>)> = self
                        .names
                        .keys()
                        .filter(|(dn, _)| *dn == name)
                        .cloned()
                        .collect();
                    for key in keys {
                        if let Some(e) = self.names.get_mut(&key) {
                            let holders: Vec<HolderId> =
                                e.cache.holders().map(|(h, _)| *h).collect();
                            let mut acts = Vec::new();
                            for h in holders {
                                acts.extend(e.cache.release(h));
                            }
                            self.apply(now, &key, acts);
                        }
                    }
                    self.try_leave(now, &name);
                }
                let _ = reply.send(waits);
            }
            Command::Drop {
                domain,
                name,
                reply,
            } => {
                let key = (domain, name);
                let r = match self.names.get_mut(&key) {
                    None => Ok(()),
                    Some(e) if e.cache.holders().next().is_some() => Err(Error::BusyLock),
                    Some(e) => match e.cache.release_cluster() {
                        Some(op) => {
                            self.cluster_op(now, &key, op);
                            Ok(())
                        }
                        None if e.lock.is_none() => {
                            self.names.remove(&key);
                            Ok(())
                        }
                        None => Err(Error::BusyLock),
                    },
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Leaves `domain` once no cluster lock of ours remains in it: idle
    /// cached locks are released first.
    fn try_leave(&mut self, now: Instant, domain: &[u8]) {
        let keys: Vec<(Vec<u8>, Vec<u8>)> = self
            .names
            .keys()
            .filter(|(d, _)| d == domain)
            .cloned()
            .collect();
        let mut remaining = 0;
        for key in keys {
            let Some(e) = self.names.get_mut(&key) else {
                continue;
            };
            if e.lock.is_none() && e.cache.is_idle() {
                self.names.remove(&key);
                continue;
            }
            remaining += 1;
            if let Some(op) = e.cache.release_cluster() {
                self.cluster_op(now, &key, op);
            }
        }
        if remaining > 0 {
            return;
        }
        let Some(id) = self.domains.get(domain).and_then(|d| d.id) else {
            self.finish_leave(domain);
            return;
        };
        if let Err(e) = self.dlm.leave(now, id) {
            log::warn!("o2dlm: leave: {e:?}");
            self.finish_leave(domain);
        }
    }

    fn finish_leave(&mut self, domain: &[u8]) {
        if let Some(d) = self.domains.remove(domain) {
            if let Some(id) = d.id {
                self.unregister_domain(id.0);
            }
            for w in d.leave_waiters {
                let _ = w.send(Ok(()));
            }
            // A context that joined meanwhile starts over.
            if !d.join_waiters.is_empty() {
                let entry = self.domains.entry(domain.to_vec()).or_default();
                entry.users = d.join_waiters.len();
                entry.join_waiters = d.join_waiters;
                self.pending_joins.push(domain.to_vec());
            }
        }
    }

    fn apply(&mut self, now: Instant, key: &(Vec<u8>, Vec<u8>), acts: Vec<CacheAction>) {
        for a in acts {
            match a {
                CacheAction::Granted(h) => {
                    if let Some(r) = self.waiting.remove(&h) {
                        let _ = r.send(Ok(()));
                    }
                }
                CacheAction::TryFailed(h) => {
                    self.basts.remove(&h);
                    if let Some(r) = self.waiting.remove(&h) {
                        let _ = r.send(Err(Error::TrylockFailed));
                    }
                }
                CacheAction::Failed(h) => {
                    self.basts.remove(&h);
                    if let Some(r) = self.waiting.remove(&h) {
                        let _ = r.send(Err(Error::Locking));
                    }
                }
                CacheAction::BlockingNotice { holders, .. } => {
                    for h in holders {
                        if let Some(b) = self.basts.get(&h) {
                            b.raise();
                        }
                    }
                }
                CacheAction::Cluster(op) => self.cluster_op(now, key, op),
            }
        }
    }

    fn cluster_op(&mut self, now: Instant, key: &(Vec<u8>, Vec<u8>), op: ClusterOp) {
        let Some(dom) = self.domains.get(&key.0).and_then(|d| d.id) else {
            self.cluster_failed(now, key);
            return;
        };
        let Some(entry) = self.names.get_mut(key) else {
            return;
        };
        let lock = entry.lock;
        let cancelling = matches!(op, ClusterOp::Cancel);
        let r = match (op, lock) {
            (ClusterOp::Acquire { mode, noqueue }, None) => {
                let flags = LockFlags {
                    noqueue,
                    valblk: true,
                };
                match self.dlm.lock(now, dom, &key.1, mode, flags) {
                    Ok(id) => {
                        entry.lock = Some(id);
                        self.by_lock.insert(id, key.clone());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (ClusterOp::Acquire { mode, noqueue }, Some(id)) => self.dlm.convert(
                now,
                id,
                mode,
                LockFlags {
                    noqueue,
                    valblk: true,
                },
                None,
            ),
            (ClusterOp::Downconvert { mode, lvb }, Some(id)) => self.dlm.convert(
                now,
                id,
                mode,
                LockFlags {
                    noqueue: false,
                    valblk: true,
                },
                lvb,
            ),
            (ClusterOp::Release { lvb }, Some(id)) => self.dlm.unlock(
                now,
                id,
                UnlockFlags {
                    valblk: lvb.is_some(),
                    cancel: false,
                },
                lvb,
            ),
            (ClusterOp::Cancel, Some(id)) => self.dlm.unlock(
                now,
                id,
                UnlockFlags {
                    valblk: false,
                    cancel: true,
                },
                None,
            ),
            (op, None) => {
                log::error!("o2dlm: {op:?} without a cluster lock");
                Err(dlm::ApiError::UnknownLock)
            }
        };
        if cancelling && r == Err(dlm::ApiError::Denied) {
            // The conversion was granted already and its AST is queued: the
            // AST completes the request (found by the simulator).
            log::debug!("o2dlm: cancel came after the grant; the AST completes it");
            return;
        }
        if let Err(e) = r {
            log::warn!(
                "o2dlm: cluster request on {:?} refused: {e:?}",
                String::from_utf8_lossy(&key.1)
            );
            self.cluster_failed(now, key);
        }
    }

    fn cluster_failed(&mut self, now: Instant, key: &(Vec<u8>, Vec<u8>)) {
        if let Some(e) = self.names.get_mut(key) {
            let acts = e.cache.on_failed();
            self.apply(now, key, acts);
        }
    }

    fn flush(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(t) = self.dlm.poll_transmit() {
                progress = true;
                MESSAGES_SENT.fetch_add(1, Ordering::Relaxed);
                match t {
                    dlm::Transmit::Request {
                        id,
                        to,
                        msg_type,
                        key,
                        payload,
                    } => match self.net.send_request(to, msg_type, key, &payload) {
                        Ok(nid) => {
                            self.requests.insert(nid, id);
                        }
                        Err(e) => {
                            let err = match e.errno() {
                                e if e == -libc::ENOTCONN => dlm::TransportError::NotConnected,
                                e if e == -libc::EHOSTDOWN => dlm::TransportError::HostDown,
                                e => dlm::TransportError::Other(e),
                            };
                            self.dlm.handle_reply(now, id, Err(err));
                        }
                    },
                    dlm::Transmit::Reply { token, status, .. } => {
                        if let Some(tok) = self.tokens.remove(&token.0) {
                            self.net.reply(tok, status);
                        }
                    }
                }
            }
            while let Some(e) = self.dlm.poll_event() {
                progress = true;
                self.dlm_event(now, e);
            }
            if !progress {
                break;
            }
        }
    }

    fn domain_name(&self, id: DomainId) -> Option<Vec<u8>> {
        self.domains
            .iter()
            .find(|(_, d)| d.id == Some(id))
            .map(|(n, _)| n.clone())
    }

    fn dlm_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::JoinDone { domain, result } => {
                if let Some(name) = self.domain_name(domain) {
                    if let Err(err) = &result {
                        log::error!(
                            "o2dlm: joining {} failed: {err:?}",
                            String::from_utf8_lossy(&name)
                        );
                        self.unregister_domain(domain.0);
                    }
                    self.finish_join(&name, result.map_err(|_| Error::ServiceUnavailable));
                }
            }
            Event::LeaveDone { domain } => {
                if let Some(name) = self.domain_name(domain) {
                    self.finish_leave(&name);
                }
            }
            Event::Ast { lock, mode, lvb } => {
                self.with_lock(now, lock, |c| c.on_granted(mode, lvb));
            }
            Event::Bast { lock, blocked } => {
                self.with_lock(now, lock, |c| c.on_bast(blocked));
            }
            Event::LockFailed { lock, status } => {
                let key = self.by_lock.remove(&lock);
                if let Some(key) = key {
                    if let Some(entry) = self.names.get_mut(&key) {
                        entry.lock = None;
                        let acts = if status == DLM_NOTQUEUED {
                            entry.cache.on_refused()
                        } else {
                            entry.cache.on_failed()
                        };
                        self.apply(now, &key, acts);
                    }
                }
            }
            Event::ConvertFailed { lock, status } => {
                if status == DLM_NOTQUEUED {
                    self.with_lock(now, lock, |c| c.on_refused());
                } else {
                    self.with_lock(now, lock, |c| c.on_failed());
                }
            }
            Event::Unlocked { lock } => {
                if let Some(key) = self.by_lock.remove(&lock) {
                    if let Some(entry) = self.names.get_mut(&key) {
                        entry.lock = None;
                        let acts = entry.cache.on_released();
                        self.apply(now, &key, acts);
                    }
                    self.after_release(now, &key);
                }
            }
            Event::Cancelled { lock } => {
                self.with_lock(now, lock, |c| c.on_cancelled());
            }
        }
    }

    /// A cluster lock went away: finish a pending leave, forget idle names.
    fn after_release(&mut self, now: Instant, key: &(Vec<u8>, Vec<u8>)) {
        if self
            .names
            .get(key)
            .is_some_and(|e| e.lock.is_none() && e.cache.is_idle())
        {
            self.names.remove(key);
        }
        if self.domains.get(&key.0).is_some_and(|d| d.leaving) {
            self.try_leave(now, &key.0.clone());
        }
    }

    fn with_lock(
        &mut self,
        now: Instant,
        lock: dlm::LockId,
        f: impl FnOnce(&mut LocalLock) -> Vec<CacheAction>,
    ) {
        let Some(key) = self.by_lock.get(&lock).cloned() else {
            return;
        };
        let Some(entry) = self.names.get_mut(&key) else {
            return;
        };
        let acts = f(&mut entry.cache);
        self.apply(now, &key, acts);
    }
}

/// What this node does when it must fence itself (`O2DLM_FENCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FenceMode {
    /// End the process at once (default): like the kernel, which resets
    /// the machine, nothing that believed it held a lock keeps running.
    Terminate,
    /// Stay alive but fail every call of every context with
    /// SERVICE_UNAVAILABLE and never grant again.
    Refuse,
}

impl FenceMode {
    fn from_env() -> FenceMode {
        match std::env::var("O2DLM_FENCE").ok().as_deref() {
            None | Some("") | Some("terminate") => FenceMode::Terminate,
            Some("refuse") => FenceMode::Refuse,
            Some(other) => {
                log::error!("O2DLM_FENCE={other:?} is not terminate or refuse; using terminate");
                FenceMode::Terminate
            }
        }
    }
}

impl Core {
    /// The quorum rule or our own heartbeat says this node must stop
    /// believing it holds anything.
    fn fence(&mut self, e: &NodeEvent) {
        let why = match e {
            NodeEvent::Net(NetEvent::Fence(d)) => format!("{d:?}"),
            NodeEvent::Heartbeat(HbEvent::WriteTimeout) => "heartbeat writes timed out".into(),
            other => format!("{other:?}"),
        };
        if self.fence_mode == FenceMode::Terminate {
            eprintln!(
                "o2dlm[{}]: FENCED: this node lost its place in the cluster ({why}); \
                 terminating so no lock it held can be trusted",
                std::process::id()
            );
            // SAFETY: _exit ends the process without running any more of
            // our code (no destructor writes the clean-leave block).
            unsafe { libc::_exit(70) }
        }
        eprintln!(
            "o2dlm[{}]: FENCED: this node lost its place in the cluster ({why}); \
             every o2dlm call now fails with O2DLM_ET_SERVICE_UNAVAILABLE",
            std::process::id()
        );
        FENCED.store(true, Ordering::SeqCst);
        // Stop heartbeating without the leaving block (peers treat us as
        // dead and recover) and drop every link.
        if let Some(node) = self
            .node_slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            node.fence();
        }
        for (_, w) in self.waiting.drain() {
            let _ = w.send(Err(Error::ServiceUnavailable));
        }
        for (_, d) in self.domains.drain() {
            for w in d.join_waiters.into_iter().chain(d.leave_waiters) {
                let _ = w.send(Err(Error::ServiceUnavailable));
            }
        }
        self.basts.clear();
    }
}
