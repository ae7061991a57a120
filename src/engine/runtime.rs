//! The engine's node runtime: one per process, started by the first engine
//! context. It runs the heartbeat and o2net drivers (`driver::node`); the
//! sans-IO `Dlm` and the node-local lock caches live in one `Core` behind a
//! mutex that any thread may take:
//!
//! - API threads serve cached locks from the node-local cache
//!   (`dlm::cache::LocalLock`) under that mutex, with no thread hop and no
//!   allocation; when the cache needs the cluster they drive the `Dlm`
//!   themselves and only wake the o2net thread to put its messages on the
//!   wire;
//! - the o2net thread runs the core as a [`NetApp`]: a message from a peer
//!   is handled and answered on the thread that read it;
//! - the heartbeat thread reports node up/down the same way.
//!
//! Only the o2net thread touches the `Net` (sockets, request ids, reply
//! tokens): everything else leaves messages in `Core::outbox`.

use super::bast::BastSignal;
use super::fastmap::{FastMap, NameKey};
use crate::config::EngineConfig;
use crate::dlm::cache::{CacheAction, ClusterOp, HolderId, LocalLock};
use crate::dlm::{self, Dlm, DlmConfig, DomainId, Event, LockFlags, Mode, UnlockFlags};
use crate::driver::heartbeat_disk::WriteWatch;
use crate::driver::net_io::{NetApp, NetHandle};
use crate::driver::node::{Node, NodeEvent};
use crate::error::{Error, Result};
use crate::heartbeat::HbEvent;
use crate::net::{Net, NetEvent, ReplyToken};
use crate::wire::dlm::{NodeInfo, DLM_NOTQUEUED};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long a first context waits for the cluster view to settle: our own
/// heartbeat must be seen (by us and others) and every live node linked.
const SETTLE_PERIODS: u32 = 3;
const HB_PERIOD: Duration = Duration::from_millis(2000);
/// As the kernel's o2cb cluster check before a domain join.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How often a pending join re-checks the cluster view at the latest.
const JOIN_POLL: Duration = Duration::from_millis(200);
/// How long process exit waits for domains to be left cleanly.
const EXIT_LEAVE_WAIT: Duration = Duration::from_secs(10);

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);
/// Set once this node fenced itself in `refuse` mode: every call fails.
pub(crate) static FENCED: AtomicBool = AtomicBool::new(false);
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
    let rt = Runtime::start(cfg)?;
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
        let deadline = Instant::now() + EXIT_LEAVE_WAIT;
        for w in rt.leave_all() {
            let left = deadline.saturating_duration_since(Instant::now());
            if w.wait_timeout(left).is_none() {
                log::warn!("o2dlm: exit: a domain did not finish leaving in time");
            }
        }
        if let Some(node) = rt.node.lock().unwrap_or_else(|p| p.into_inner()).take() {
            node.stop();
        }
    }
}

/// One API call waiting for the cluster (a grant, a join, a leave).
pub(crate) struct Waiter {
    done: Mutex<Option<Result<()>>>,
    cv: Condvar,
}

impl Waiter {
    fn new() -> Arc<Waiter> {
        Arc::new(Waiter {
            done: Mutex::new(None),
            cv: Condvar::new(),
        })
    }

    fn finish(&self, r: Result<()>) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(r);
            self.cv.notify_one();
        }
    }

    /// None when `limit` passed first.
    fn wait_timeout(&self, limit: Duration) -> Option<Result<()>> {
        let deadline = Instant::now() + limit;
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = d.take() {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            d = self
                .cv
                .wait_timeout(d, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wait(&self) -> Result<()> {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = d.take() {
                return r;
            }
            d = self.cv.wait(d).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Handle held by engine contexts.
pub(crate) struct Runtime {
    core: Mutex<Core>,
    /// To wake the o2net thread; set once the node runs.
    net: OnceLock<NetHandle>,
    /// Whether our heartbeat writes are current; set once the node runs.
    watch: OnceLock<WriteWatch>,
    /// Keeps the drivers alive; taken at process exit for a clean stop, or
    /// when this node fences itself.
    node: Mutex<Option<Node>>,
}

impl Runtime {
    fn start(cfg: EngineConfig) -> Result<Arc<Runtime>> {
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
        let rt = Arc::new(Runtime {
            core: Mutex::new(Core {
                fence_mode: FenceMode::from_env(),
                dlm: Dlm::new(dlm_cfg),
                me,
                started: Instant::now(),
                live: BTreeSet::new(),
                linked: BTreeSet::new(),
                next_holder: 1,
                dom_index: HashMap::new(),
                domains: FastMap::default(),
                names: FastMap::default(),
                by_lock: FastMap::default(),
                waiting: FastMap::default(),
                basts: FastMap::default(),
                pending_joins: Vec::new(),
                outbox: VecDeque::new(),
                unregister: Vec::new(),
                armed: None,
            }),
            net: OnceLock::new(),
            watch: OnceLock::new(),
            node: Mutex::new(None),
        });
        let hb_rt = rt.clone();
        let app = NetSide {
            rt: rt.clone(),
            requests: FastMap::default(),
            tokens: FastMap::default(),
            next_token: 1,
        };
        let node = Node::start_with_app(
            &cfg,
            Arc::new(move |e| hb_rt.heartbeat_event(e)),
            Box::new(app),
        )
        .map_err(|e| {
            log::error!("engine node start: {e}");
            Error::ServiceUnavailable
        })?;
        let net = node.net().ok_or(Error::ServiceUnavailable)?;
        for (t, key, max) in Dlm::mod_key_handlers() {
            if let Err(e) = net.register_handler(t, key, max) {
                log::error!("o2dlm: cannot register handler {t}: {e:?}");
                return Err(Error::ServiceUnavailable);
            }
        }
        // The settle time counts from when our heartbeat is being written.
        rt.core().started = Instant::now();
        let _ = rt.net.set(net);
        if let Some(w) = node.write_watch() {
            let _ = rt.watch.set(w);
        }
        *rt.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(node);
        Ok(rt)
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_net(&self) {
        if let Some(n) = self.net.get() {
            n.wake();
        }
    }

    /// Lets the core catch up after an API call changed it; wakes the
    /// o2net thread only when it has something to send.
    fn settle(&self, mut core: MutexGuard<'_, Core>, now: Instant) {
        let mut wake = core.drive(now);
        // A DLM timer earlier than the one the o2net thread sleeps until.
        if let Some(t) = core.dlm.poll_timeout() {
            wake |= core.armed.is_none_or(|a| t < a);
        }
        drop(core);
        if wake {
            self.wake_net();
        }
    }

    /// Fails every call once fenced, and fences first when our heartbeat
    /// writes are older than the write timeout: after a stall (SIGSTOP, a
    /// frozen machine) this thread may run before the heartbeat thread
    /// notices, and the other nodes may already have taken our locks.
    fn refuse_if_fenced(&self) -> Result<()> {
        if FENCED.load(Ordering::Acquire) {
            return Err(Error::ServiceUnavailable);
        }
        if self.watch.get().is_some_and(|w| w.expired(Instant::now())) {
            self.fence(&NodeEvent::Heartbeat(HbEvent::WriteTimeout));
            return Err(Error::ServiceUnavailable);
        }
        Ok(())
    }

    /// Joins `domain` (or takes one more reference on it); returns the
    /// process-local domain index names are keyed by.
    pub(crate) fn join(&self, domain: &[u8]) -> Result<u32> {
        self.refuse_if_fenced()?;
        let w = Waiter::new();
        let idx = {
            let mut core = self.core();
            let idx = core.intern(domain);
            let d = core.domains.entry(idx).or_default();
            d.users += 1;
            if d.joined && !d.leaving {
                return Ok(idx);
            }
            let first = d.join_waiters.is_empty() && d.id.is_none();
            d.join_waiters.push(w.clone());
            if first && !core.pending_joins.contains(&idx) {
                core.pending_joins.push(idx);
            }
            idx
        };
        // The o2net thread starts joins once the cluster view settled.
        self.wake_net();
        w.wait().map(|()| idx)
    }

    /// Drops a context's reference on the domain; the last one leaves.
    pub(crate) fn leave(&self, dom: u32) -> Result<()> {
        self.refuse_if_fenced()?;
        let w = Waiter::new();
        {
            let mut core = self.core();
            let Some(d) = core.domains.get_mut(&dom) else {
                return Ok(());
            };
            d.users = d.users.saturating_sub(1);
            if d.users > 0 {
                return Ok(());
            }
            d.leaving = true;
            d.leave_waiters.push(w.clone());
            let now = Instant::now();
            core.try_leave(now, dom);
            self.settle(core, now);
        }
        w.wait()
    }

    /// Process exit: leave every domain (migrating what we master) so
    /// peers need no recovery; every holder of this process goes too.
    fn leave_all(&self) -> Vec<Arc<Waiter>> {
        if FENCED.load(Ordering::Acquire) {
            return Vec::new();
        }
        let now = Instant::now();
        let mut core = self.core();
        let mut waits = Vec::new();
        let doms: Vec<u32> = core.domains.keys().copied().collect();
        for dom in doms {
            let Some(d) = core.domains.get_mut(&dom) else {
                continue;
            };
            let w = Waiter::new();
            d.users = 0;
            d.leaving = true;
            d.leave_waiters.push(w.clone());
            waits.push(w);
            let keys: Vec<NameKey> = core
                .names
                .keys()
                .filter(|k| k.dom() == dom)
                .copied()
                .collect();
            for key in keys {
                if let Some(e) = core.names.get_mut(&key) {
                    let holders: Vec<HolderId> = e.cache.holders().map(|(h, _)| *h).collect();
                    let mut acts = Vec::new();
                    for h in holders {
                        acts.extend(e.cache.release(h));
                    }
                    core.apply(now, &key, acts);
                }
            }
            core.try_leave(now, dom);
        }
        self.settle(core, now);
        waits
    }

    /// Takes `key` at `mode` for a new local holder, whose id is returned.
    /// A lock the node already holds at a sufficient level is granted here
    /// and now, under the core mutex, without allocating.
    pub(crate) fn lock(
        &self,
        key: &NameKey,
        mode: Mode,
        trylock: bool,
        bast: Option<Arc<BastSignal>>,
    ) -> Result<HolderId> {
        self.refuse_if_fenced()?;
        let mut core = self.core();
        if !core.domain_ready(key.dom()) {
            return Err(Error::Locking);
        }
        let holder = core.next_holder;
        core.next_holder += 1;
        let entry = core.names.entry(*key).or_insert_with(NameEntry::new);
        let acts = entry.cache.request(holder, mode, trylock);
        if matches!(acts.as_slice(), [CacheAction::Granted(h)] if *h == holder) {
            if let Some(b) = bast {
                core.basts.insert(holder, b);
            }
            return Ok(holder);
        }
        let w = Waiter::new();
        core.waiting.insert(holder, w.clone());
        if let Some(b) = bast {
            core.basts.insert(holder, b);
        }
        let now = Instant::now();
        core.apply(now, key, acts);
        self.settle(core, now);
        w.wait().map(|()| holder)
    }

    /// The local holder lets go; the cluster lock stays cached unless
    /// another node waits for it.
    pub(crate) fn unlock(&self, key: &NameKey, holder: HolderId, had_bast: bool) -> Result<()> {
        self.refuse_if_fenced()?;
        let mut core = self.core();
        if had_bast {
            core.basts.remove(&holder);
        }
        let Some(entry) = core.names.get_mut(key) else {
            return Ok(());
        };
        let acts = entry.cache.release(holder);
        if acts.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        core.apply(now, key, acts);
        self.settle(core, now);
        Ok(())
    }

    pub(crate) fn read_lvb(&self, key: &NameKey) -> Result<[u8; 64]> {
        self.refuse_if_fenced()?;
        Ok(self
            .core()
            .names
            .get(key)
            .map(|e| *e.cache.lvb())
            .unwrap_or([0; 64]))
    }

    pub(crate) fn write_lvb(&self, key: &NameKey, data: &[u8]) -> Result<()> {
        self.refuse_if_fenced()?;
        if let Some(e) = self.core().names.get_mut(key) {
            e.cache.write_lvb(data);
        }
        Ok(())
    }

    /// Gives up the cached cluster lock of an unused name, waiting for a
    /// request in flight and for the release to complete, as a dlmfs
    /// unlink does.
    pub(crate) fn drop_name(&self, key: &NameKey) -> Result<()> {
        self.refuse_if_fenced()?;
        let mut core = self.core();
        let Some(e) = core.names.get_mut(key) else {
            return Ok(());
        };
        if e.cache.holders().next().is_some() {
            return Err(Error::BusyLock);
        }
        let w = Waiter::new();
        e.drop_waiters.push(w.clone());
        let now = Instant::now();
        core.progress_drop(now, key);
        self.settle(core, now);
        w.wait()
    }

    /// Heartbeat events, on the heartbeat thread.
    fn heartbeat_event(&self, e: NodeEvent) {
        if FENCED.load(Ordering::Acquire) {
            return;
        }
        if e.is_fence() {
            self.fence(&e);
            return;
        }
        let now = Instant::now();
        let mut core = self.core();
        match e {
            NodeEvent::NodeUp(n) if n != core.me => {
                core.live.insert(n);
                core.dlm.handle_node_up(now, n);
            }
            NodeEvent::NodeDown(n) => {
                core.live.remove(&n);
                core.linked.remove(&n);
                core.dlm.handle_node_down(now, n);
            }
            _ => {}
        }
        self.settle(core, now);
    }
}

#[derive(Default)]
struct DomainEntry {
    id: Option<DomainId>,
    joined: bool,
    users: usize,
    join_waiters: Vec<Arc<Waiter>>,
    leave_waiters: Vec<Arc<Waiter>>,
    leaving: bool,
}

struct NameEntry {
    cache: LocalLock,
    lock: Option<dlm::LockId>,
    /// `o2dlm_drop_lock` calls waiting for the cluster lock to be gone
    /// (as a dlmfs unlink waits for its unlock to complete).
    drop_waiters: Vec<Arc<Waiter>>,
    /// The release for those waiters was issued.
    drop_issued: bool,
}

impl NameEntry {
    fn new() -> NameEntry {
        NameEntry {
            cache: LocalLock::new(),
            lock: None,
            drop_waiters: Vec::new(),
            drop_issued: false,
        }
    }
}

/// Everything the DLM side of the node knows, shared by all threads.
struct Core {
    fence_mode: FenceMode,
    dlm: Dlm,
    me: u8,
    started: Instant,
    live: BTreeSet<u8>,
    linked: BTreeSet<u8>,
    next_holder: HolderId,
    /// Domain names ever used in this process → their index (kept for the
    /// process's life, so keys stay valid across leave and re-join).
    dom_index: HashMap<Vec<u8>, u32>,
    domains: FastMap<u32, DomainEntry>,
    names: FastMap<NameKey, NameEntry>,
    by_lock: FastMap<dlm::LockId, NameKey>,
    waiting: FastMap<HolderId, Arc<Waiter>>,
    basts: FastMap<HolderId, Arc<BastSignal>>,
    /// Joins waiting for the cluster view to settle.
    pending_joins: Vec<u32>,
    /// What the DLM wants sent, for the o2net thread.
    outbox: VecDeque<dlm::Transmit>,
    /// Domain keys whose o2net handlers the o2net thread must drop.
    unregister: Vec<u32>,
    /// The deadline the o2net thread sleeps until (None: its default).
    armed: Option<Instant>,
}

impl Core {
    fn intern(&mut self, domain: &[u8]) -> u32 {
        if let Some(i) = self.dom_index.get(domain) {
            return *i;
        }
        let i = self.dom_index.len() as u32;
        self.dom_index.insert(domain.to_vec(), i);
        i
    }

    fn domain_label(&self, dom: u32) -> String {
        self.dom_index
            .iter()
            .find(|(_, i)| **i == dom)
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default()
    }

    fn domain_name(&self, dom: u32) -> Option<Vec<u8>> {
        self.dom_index
            .iter()
            .find(|(_, i)| **i == dom)
            .map(|(n, _)| n.clone())
    }

    fn domain_ready(&self, dom: u32) -> bool {
        self.domains
            .get(&dom)
            .is_some_and(|d| d.joined && !d.leaving)
    }

    /// Runs the DLM's pending events and collects its messages for the
    /// o2net thread. True when that thread has work.
    fn drive(&mut self, now: Instant) -> bool {
        loop {
            let mut progress = false;
            while let Some(t) = self.dlm.poll_transmit() {
                progress = true;
                self.outbox.push_back(t);
            }
            while let Some(e) = self.dlm.poll_event() {
                progress = true;
                self.dlm_event(now, e);
            }
            if !progress {
                break;
            }
        }
        !self.outbox.is_empty() || !self.unregister.is_empty()
    }

    /// True once our heartbeat has run long enough for every live node to
    /// have been seen, and every live node has a valid link.
    fn settled(&self, now: Instant) -> bool {
        let hb_ok = now.duration_since(self.started) >= HB_PERIOD * SETTLE_PERIODS;
        let links_ok = self.live.iter().all(|n| self.linked.contains(n));
        hb_ok && (links_ok || now.duration_since(self.started) >= CONNECT_WAIT)
    }

    /// On the o2net thread (it registers the domain's handlers).
    fn start_settled_joins(&mut self, now: Instant, net: &mut Net) {
        if self.pending_joins.is_empty() || !self.settled(now) {
            return;
        }
        for dom in std::mem::take(&mut self.pending_joins) {
            let Some(name) = self.domain_name(dom) else {
                continue;
            };
            let missing: Vec<u8> = self
                .live
                .iter()
                .filter(|n| !self.linked.contains(n))
                .copied()
                .collect();
            if !missing.is_empty() {
                log::error!("o2dlm: cannot join: not connected to nodes {missing:?}");
                self.finish_join(dom, Err(Error::ServiceUnavailable));
                continue;
            }
            let key = Dlm::domain_key(&name);
            for (t, k, max) in Dlm::domain_handlers(DomainId(key)) {
                let _ = net.register_handler(t, k, max);
            }
            match self.dlm.join(now, &name) {
                Ok(id) => {
                    if let Some(d) = self.domains.get_mut(&dom) {
                        d.id = Some(id);
                    }
                }
                Err(e) => {
                    log::error!("o2dlm: join refused: {e:?}");
                    self.unregister.push(key);
                    self.finish_join(dom, Err(Error::ServiceUnavailable));
                }
            }
        }
    }

    fn finish_join(&mut self, dom: u32, r: Result<()>) {
        let Some(d) = self.domains.get_mut(&dom) else {
            return;
        };
        let waiters = std::mem::take(&mut d.join_waiters);
        match r {
            Ok(()) => d.joined = true,
            Err(_) => {
                self.domains.remove(&dom);
            }
        }
        for w in waiters {
            w.finish(r);
        }
    }

    /// Leaves `dom` once no cluster lock of ours remains in it: idle
    /// cached locks are released first.
    fn try_leave(&mut self, now: Instant, dom: u32) {
        let keys: Vec<NameKey> = self
            .names
            .keys()
            .filter(|k| k.dom() == dom)
            .copied()
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
        let Some(id) = self.domains.get(&dom).and_then(|d| d.id) else {
            self.finish_leave(dom);
            return;
        };
        if let Err(e) = self.dlm.leave(now, id) {
            log::warn!("o2dlm: leave: {e:?}");
            self.finish_leave(dom);
        }
    }

    fn finish_leave(&mut self, dom: u32) {
        if let Some(d) = self.domains.remove(&dom) {
            if let Some(id) = d.id {
                self.unregister.push(id.0);
            }
            for w in d.leave_waiters {
                w.finish(Ok(()));
            }
            // A context that joined meanwhile starts over.
            if !d.join_waiters.is_empty() {
                let entry = self.domains.entry(dom).or_default();
                entry.users = d.join_waiters.len();
                entry.join_waiters = d.join_waiters;
                self.pending_joins.push(dom);
            }
        }
    }

    fn apply(&mut self, now: Instant, key: &NameKey, acts: Vec<CacheAction>) {
        for a in acts {
            match a {
                CacheAction::Granted(h) => {
                    if let Some(w) = self.waiting.remove(&h) {
                        w.finish(Ok(()));
                    }
                }
                CacheAction::TryFailed(h) => {
                    self.basts.remove(&h);
                    if let Some(w) = self.waiting.remove(&h) {
                        w.finish(Err(Error::TrylockFailed));
                    }
                }
                CacheAction::Failed(h) => {
                    self.basts.remove(&h);
                    if let Some(w) = self.waiting.remove(&h) {
                        w.finish(Err(Error::Locking));
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
        self.progress_drop(now, key);
    }

    /// Moves pending drops of `key` along: once no request is in flight,
    /// release the cached cluster lock; answer when it is gone, or with
    /// BUSY_LOCK when a local holder took the name meanwhile.
    fn progress_drop(&mut self, now: Instant, key: &NameKey) {
        let Some(e) = self.names.get_mut(key) else {
            return;
        };
        if e.drop_waiters.is_empty() {
            return;
        }
        let outcome = if e.cache.holders().next().is_some() {
            Some(Err(Error::BusyLock))
        } else if e.lock.is_none() && e.cache.is_idle() {
            Some(Ok(()))
        } else if e.cache.is_idle() && e.drop_issued {
            // The release was refused.
            Some(Err(Error::BusyLock))
        } else {
            None
        };
        if let Some(r) = outcome {
            for w in std::mem::take(&mut e.drop_waiters) {
                w.finish(r);
            }
            e.drop_issued = false;
            if r.is_ok() {
                self.names.remove(key);
            }
            return;
        }
        if !e.drop_issued && e.cache.is_idle() {
            if let Some(op) = e.cache.release_cluster() {
                e.drop_issued = true;
                self.cluster_op(now, key, op);
            }
        }
    }

    fn cluster_op(&mut self, now: Instant, key: &NameKey, op: ClusterOp) {
        let Some(dom) = self.domains.get(&key.dom()).and_then(|d| d.id) else {
            self.cluster_failed(now, key);
            return;
        };
        let Some(entry) = self.names.get_mut(key) else {
            return;
        };
        let lock = entry.lock;
        let name = key.name();
        let cancelling = matches!(op, ClusterOp::Cancel);
        let r = match (op, lock) {
            (ClusterOp::Acquire { mode, noqueue }, None) => {
                let flags = LockFlags {
                    noqueue,
                    valblk: true,
                };
                match self.dlm.lock(now, dom, name, mode, flags) {
                    Ok(id) => {
                        entry.lock = Some(id);
                        self.by_lock.insert(id, *key);
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
                "o2dlm: cluster request on {:?} in {} refused: {e:?}",
                String::from_utf8_lossy(key.name()),
                self.domain_label(key.dom())
            );
            self.cluster_failed(now, key);
        }
    }

    fn cluster_failed(&mut self, now: Instant, key: &NameKey) {
        if let Some(e) = self.names.get_mut(key) {
            let acts = e.cache.on_failed();
            self.apply(now, key, acts);
        }
    }

    fn dom_of(&self, id: DomainId) -> Option<u32> {
        self.domains
            .iter()
            .find(|(_, d)| d.id == Some(id))
            .map(|(i, _)| *i)
    }

    fn dlm_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::JoinDone { domain, result } => {
                if let Some(dom) = self.dom_of(domain) {
                    if let Err(err) = &result {
                        log::error!("o2dlm: joining {} failed: {err:?}", self.domain_label(dom));
                        self.unregister.push(domain.0);
                    }
                    self.finish_join(dom, result.map_err(|_| Error::ServiceUnavailable));
                }
            }
            Event::LeaveDone { domain } => {
                if let Some(dom) = self.dom_of(domain) {
                    self.finish_leave(dom);
                }
            }
            Event::Ast { lock, mode, lvb } => {
                self.with_lock(now, lock, |c| c.on_granted(mode, lvb));
            }
            Event::Bast { lock, blocked } => {
                self.with_lock(now, lock, |c| c.on_bast(blocked));
            }
            Event::LockFailed { lock, status } => {
                if let Some(key) = self.by_lock.remove(&lock) {
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
    fn after_release(&mut self, now: Instant, key: &NameKey) {
        if self
            .names
            .get(key)
            .is_some_and(|e| e.lock.is_none() && e.cache.is_idle())
        {
            self.names.remove(key);
        }
        if self.domains.get(&key.dom()).is_some_and(|d| d.leaving) {
            self.try_leave(now, key.dom());
        }
    }

    fn with_lock(
        &mut self,
        now: Instant,
        lock: dlm::LockId,
        f: impl FnOnce(&mut LocalLock) -> Vec<CacheAction>,
    ) {
        let Some(key) = self.by_lock.get(&lock).copied() else {
            return;
        };
        let Some(entry) = self.names.get_mut(&key) else {
            return;
        };
        let acts = f(&mut entry.cache);
        self.apply(now, &key, acts);
    }
}

/// The core's o2net side, run on the o2net thread: peers' requests and
/// replies are handled there, and the outbox is put on the wire.
struct NetSide {
    rt: Arc<Runtime>,
    /// o2net request id → the DLM's.
    requests: FastMap<crate::net::RequestId, dlm::RequestId>,
    /// The DLM's reply token → o2net's (which is not Clone).
    tokens: FastMap<u64, ReplyToken>,
    next_token: u64,
}

impl NetSide {
    /// Sends what the core queued, until the DLM has nothing more to say.
    fn pump(&mut self, core: &mut Core, net: &mut Net, now: Instant) {
        loop {
            core.drive(now);
            for key in core.unregister.drain(..) {
                for (t, k, _) in Dlm::domain_handlers(DomainId(key)) {
                    net.unregister_handler(t, k);
                }
            }
            if core.outbox.is_empty() {
                return;
            }
            while let Some(t) = core.outbox.pop_front() {
                MESSAGES_SENT.fetch_add(1, Ordering::Relaxed);
                match t {
                    dlm::Transmit::Request {
                        id,
                        to,
                        msg_type,
                        key,
                        payload,
                    } => match net.send_request(to, msg_type, key, &payload) {
                        Ok(nid) => {
                            self.requests.insert(nid, id);
                        }
                        Err(e) => {
                            let err = match e.errno() {
                                e if e == -libc::ENOTCONN => dlm::TransportError::NotConnected,
                                e if e == -libc::EHOSTDOWN => dlm::TransportError::HostDown,
                                e => dlm::TransportError::Other(e),
                            };
                            core.dlm.handle_reply(now, id, Err(err));
                        }
                    },
                    dlm::Transmit::Reply { token, status, .. } => {
                        if let Some(tok) = self.tokens.remove(&token.0) {
                            net.reply(tok, status);
                        }
                    }
                }
            }
        }
    }
}

impl NetApp for NetSide {
    fn on_event(&mut self, net: &mut Net, e: NetEvent) {
        if FENCED.load(Ordering::Acquire) {
            return;
        }
        if let NetEvent::Fence(_) = e {
            self.rt.fence(&NodeEvent::Net(e));
            return;
        }
        let now = Instant::now();
        let rt = self.rt.clone();
        let mut core = rt.core();
        match e {
            NetEvent::LinkUp { node, .. } => {
                core.linked.insert(node);
            }
            NetEvent::LinkDown { node, .. } => {
                core.linked.remove(&node);
                core.dlm.handle_link_down(now, node);
            }
            NetEvent::Request(req) => {
                let token = dlm::ReplyToken(self.next_token);
                self.next_token += 1;
                let (from, t, key) = (req.node, req.header.msg_type, req.header.key);
                self.tokens.insert(token.0, req.token);
                if core
                    .dlm
                    .handle_request(now, from, t, key, &req.payload, token)
                    .is_err()
                {
                    // Unknown (type, key): o2net answers "no handler" for
                    // unregistered pairs; a registered one we do not serve
                    // gets the same meaning.
                    if let Some(tok) = self.tokens.remove(&token.0) {
                        net.reply(tok, -(libc::ENOPROTOOPT));
                    }
                }
            }
            NetEvent::Response { id, result, .. } => {
                if let Some(did) = self.requests.remove(&id) {
                    let r = result.map_err(dlm::TransportError::from);
                    core.dlm.handle_reply(now, did, r);
                }
            }
            _ => {}
        }
        self.pump(&mut core, net, now);
    }

    fn on_wake(&mut self, net: &mut Net, now: Instant) {
        if FENCED.load(Ordering::Acquire) {
            return;
        }
        let rt = self.rt.clone();
        let mut core = rt.core();
        // Every turn, as the DLM expects (it checks its own deadlines).
        core.dlm.handle_timeout(now);
        core.start_settled_joins(now, net);
        self.pump(&mut core, net, now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let mut core = self.rt.core();
        let joins = (!core.pending_joins.is_empty()).then(|| Instant::now() + JOIN_POLL);
        let t = match (core.dlm.poll_timeout(), joins) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        core.armed = t;
        t
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

impl Runtime {
    /// The quorum rule or our own heartbeat says this node must stop
    /// believing it holds anything. Runs on the o2net or heartbeat thread.
    fn fence(&self, e: &NodeEvent) {
        let why = match e {
            NodeEvent::Net(NetEvent::Fence(d)) => format!("{d:?}"),
            NodeEvent::Heartbeat(HbEvent::WriteTimeout) => "heartbeat writes timed out".into(),
            other => format!("{other:?}"),
        };
        let mut core = self.core();
        if core.fence_mode == FenceMode::Terminate {
            eprintln!(
                "o2dlm[{}]: FENCED: this node lost its place in the cluster ({why}); \
                 terminating so no lock it held can be trusted",
                std::process::id()
            );
            // SAFETY: _exit ends the process without running any more of
            // our code (no destructor writes the clean-leave block).
            unsafe { libc::_exit(70) }
        }
        if FENCED.swap(true, Ordering::AcqRel) {
            return;
        }
        eprintln!(
            "o2dlm[{}]: FENCED: this node lost its place in the cluster ({why}); \
             every o2dlm call now fails with O2DLM_ET_SERVICE_UNAVAILABLE",
            std::process::id()
        );
        for (_, w) in core.waiting.drain() {
            w.finish(Err(Error::ServiceUnavailable));
        }
        for (_, d) in core.domains.drain() {
            for w in d.join_waiters.into_iter().chain(d.leave_waiters) {
                w.finish(Err(Error::ServiceUnavailable));
            }
        }
        core.basts.clear();
        drop(core);
        // Stop heartbeating without the leaving block (peers treat us as
        // dead and recover) and drop every link — from another thread,
        // since stopping joins the very threads this may run on.
        if let Some(node) = self.node.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = std::thread::Builder::new()
                .name("o2dlm-fence".into())
                .spawn(move || node.fence());
        }
    }
}
