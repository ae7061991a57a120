//! `Dlm`: one node's o2dlm, sans-IO. Inputs are heartbeat verdicts, o2net
//! requests and status replies, timer expiries and the lock API; outputs are
//! queued messages (`poll_transmit`), events (`poll_event`) and the next
//! deadline (`poll_timeout`). Time is always passed in.
//!
//! The protocol phases live in sibling files as further `impl Dlm` blocks:
//! join.rs, master.rs, lock.rs, convert.rs, unlock.rs, ast.rs, deref.rs,
//! migrate.rs.

use super::domain::{DomState, Domain, NodeSet, UserLock};
use super::lockres::Lvb;
use super::mode::Mode;
use crate::wire::crc::crc32_le;
use crate::wire::dlm::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Identifies a request this node sent, so its status reply can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Identifies a request this node received; given back with its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyToken(pub u64);

/// A domain is named by its o2net key, crc32_le(0, name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId(pub u32);

/// A lock of this node: its cookie (node << 56 | sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockId(pub u64);

/// Why a request got no status from the peer's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// sys_status O2NET_ERR_NO_HNDLR (−ENOPROTOOPT): no such (type, key).
    NoHandler,
    /// sys_status O2NET_ERR_OVERFLOW: payload longer than registered.
    Overflow,
    /// The connection died with the request outstanding (−EHOSTDOWN).
    HostDown,
    /// No connection to that node (−ENOTCONN).
    NotConnected,
    /// Any other local send failure (negative errno).
    Other(i32),
}

impl From<crate::net::NetError> for TransportError {
    fn from(e: crate::net::NetError) -> TransportError {
        use crate::net::NetError as N;
        match e {
            N::NoHandler => TransportError::NoHandler,
            N::Overflow => TransportError::Overflow,
            N::HostDown => TransportError::HostDown,
            N::NotConnected => TransportError::NotConnected,
            other => TransportError::Other(other.errno()),
        }
    }
}

/// Something to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A request; answer it with `handle_reply(id, ..)`.
    Request {
        id: RequestId,
        to: u8,
        msg_type: u16,
        key: u32,
        payload: Vec<u8>,
    },
    /// The status reply to a request received with `token` from `to`.
    Reply {
        token: ReplyToken,
        to: u8,
        status: i32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// JOIN_PROTOCOL_MISMATCH from a member (EPROTO).
    ProtocolMismatch,
    /// QUERY_NODEINFO / QUERY_REGION refused: configurations differ.
    ConfigMismatch { node: u8, status: i32 },
    /// A QUERY_JOIN could not be delivered.
    Transport { node: u8, err: TransportError },
    /// Backoff exhausted (90 s of JOIN_DISALLOW).
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    JoinDone {
        domain: DomainId,
        result: Result<(), JoinError>,
    },
    LeaveDone {
        domain: DomainId,
    },
    /// Granted at `mode`; `lvb` when the request had VALBLK and mode > NL.
    Ast {
        lock: LockId,
        mode: Mode,
        lvb: Option<Lvb>,
    },
    /// Another request is blocked at `blocked` by this lock.
    Bast {
        lock: LockId,
        blocked: Mode,
    },
    /// A new lock was refused (`status` a dlm_status, e.g. DLM_NOTQUEUED);
    /// the lock no longer exists.
    LockFailed {
        lock: LockId,
        status: i32,
    },
    /// A conversion was refused; the lock stays granted at its old mode.
    ConvertFailed {
        lock: LockId,
        status: i32,
    },
    /// The lock is gone.
    Unlocked {
        lock: LockId,
    },
    /// The pending create (lock gone) or convert (back at its granted
    /// mode) was withdrawn. When the cancel came too late (the master had
    /// granted already) there is no Cancelled: the Ast completes it.
    Cancelled {
        lock: LockId,
    },
}

/// A lock API call the DLM refuses at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// No such domain here.
    UnknownDomain,
    /// The domain is not (or no longer) joined.
    NotJoined,
    /// Already joined or joining that domain.
    AlreadyJoined,
    /// Name empty or longer than 32 bytes (domain: 64).
    BadName,
    /// No such lock.
    UnknownLock,
    /// Another operation on this lock is still in flight.
    Busy,
    /// The lock is not in a state that allows this (e.g. not granted).
    Denied,
    /// Locks remain in the domain (leave).
    LocksHeld,
}

impl ApiError {
    /// The closest kernel dlm_status.
    pub fn status(self) -> i32 {
        match self {
            ApiError::UnknownDomain | ApiError::NotJoined => DLM_REJECTED,
            ApiError::AlreadyJoined => DLM_BADARGS,
            ApiError::BadName => DLM_IVBUFLEN,
            ApiError::UnknownLock => DLM_IVLOCKID,
            ApiError::Busy | ApiError::Denied | ApiError::LocksHeld => DLM_DENIED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockFlags {
    /// Trylock: refuse with DLM_NOTQUEUED instead of waiting.
    pub noqueue: bool,
    /// Get the LVB with the grant / write it back when leaving EX.
    pub valblk: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnlockFlags {
    pub valblk: bool,
    /// Withdraw the pending create/convert instead of unlocking.
    pub cancel: bool,
}

/// The handler for (msg_type, key) is not registered on this node; the
/// transport must answer with sys_status NO_HNDLR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotHandled;

#[derive(Debug, Clone)]
pub struct DlmConfig {
    pub node: u8,
    /// Every configured cluster node (sent in QUERY_NODEINFO, compared in
    /// its handler).
    pub nodes: Vec<NodeInfo>,
    /// Global heartbeat regions; empty in local heartbeat mode.
    pub regions: Vec<RegionName>,
    pub fs_proto: ProtocolVersion,
    /// Seeds the join backoff randomness.
    pub seed: u64,
}

impl DlmConfig {
    pub fn new(node: u8, nodes: Vec<NodeInfo>) -> DlmConfig {
        DlmConfig {
            node,
            nodes,
            regions: Vec::new(),
            fs_proto: FS_LOCKING_PROTOCOL,
            seed: u64::from(node) + 1,
        }
    }
}

// Timers and constants of §11.
pub(crate) const BACKOFF_MS: u64 = 200;
pub(crate) const JOIN_TIMEOUT_MS: u64 = 90_000;
pub(crate) const MASTERY_RECHECK_MS: u64 = 5_000;
pub(crate) const MASTER_ERROR_RESEND_MS: u64 = 50;
pub(crate) const LOCK_RETRY_MS: u64 = 100;
pub(crate) const UNLOCK_RETRY_MS: u64 = 50;
pub(crate) const PURGE_MS: u64 = 8_000;
pub(crate) const THREAD_MS: u64 = 4_000;
pub(crate) const LEAVE_PASS_MS: u64 = 500;
pub(crate) const MIGRATION_RETRY_MS: u64 = 100;

pub(crate) const EINVAL: i32 = -22;
pub(crate) const EAGAIN: i32 = -11;
pub(crate) const ENOMEM: i32 = -12;
pub(crate) const RECO_TICK_MS: u64 = 5_000;
pub(crate) const RECO_RETRY_MS: u64 = 100;
pub(crate) const RECO_PRE_MASTER_WAIT_MS: u64 = 500;
pub(crate) const RECO_WAIT_MASTER_MS: u64 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timer {
    JoinRetry(u32),
    AssertJoinedRetry(u32, u8),
    ExitRetry(u32, u8),
    LeavePass(u32),
    /// Periodic DLM thread work: purge, mastery re-checks.
    Thread(u32),
    MasterResend(u32, LockName, u8),
    /// Re-run the pending operation of a lock.
    OpRetry(u64),
    /// Start mastery again (e.g. after a MIGRATION mle went away).
    MasteryRetry(u32, LockName),
    /// The recovery thread's short waits (retries, 500 ms / 1 s waits).
    RecoRetry(u32),
    /// The recovery thread's periodic wake-up while recovery is pending.
    RecoTick(u32),
}

/// What an outstanding request was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    QueryJoin,
    QueryNodeinfo,
    QueryRegion,
    AssertJoined,
    Ignored,
    BeginExit,
    Exit,
    MasterRequest(LockName),
    AssertMaster(u64),
    Create(u64),
    Convert(u64),
    Unlock(u64),
    Cancel(u64),
    Deref(LockName),
    MigLockres(LockName),
    MigrateRequest(u64),
    /// MASTER_REQUERY of `$RECOVERY` before mastering it.
    RecoPreRequery,
    BeginReco,
    LockRequest,
    /// Recovery data (MIG_LOCKRES, RECO_DATA_DONE) sent as a participant.
    RecoData,
    FinalizeReco,
    /// MASTER_REQUERY for recovery data that named no master.
    RecoRequery(LockName),
}

#[derive(Debug, Clone)]
pub(crate) struct Outstanding {
    pub to: u8,
    pub domain: u32,
    pub what: Pending,
}

/// Why an ASSERT_MASTER round is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssertPurpose {
    /// We won mastery (flags 0).
    Mastery,
    /// Answering a MASTER_REQUEST while master (MLE_CLEANUP).
    Cleanup,
    /// New master after migration, to third nodes then the old master.
    FinishMigration { old: u8 },
    /// Answer to MASTER_REQUERY.
    Requery,
}

/// A round of one message to several nodes, one at a time (the kernel sends
/// these synchronously, so the order on the wire is ascending node number).
#[derive(Debug, Clone)]
pub(crate) struct AssertJob {
    pub domain: u32,
    pub name: LockName,
    pub flags: u32,
    pub purpose: AssertPurpose,
    pub targets: VecDeque<u8>,
    pub all: Vec<u8>,
    pub reassert: bool,
    /// MIGRATE_REQUEST phase of a migration target (before the asserts).
    pub migrate_requests: bool,
}

pub struct Dlm {
    pub(crate) cfg: DlmConfig,
    pub(crate) me: u8,
    pub(crate) live: NodeSet,
    pub(crate) domains: BTreeMap<u32, Domain>,
    pub(crate) locks: BTreeMap<u64, UserLock>,
    pub(crate) next_seq: u64,
    next_request: u64,
    pub(crate) next_job: u64,
    pub(crate) next_mig_cookie: u64,
    pub(crate) outstanding: HashMap<RequestId, Outstanding>,
    pub(crate) jobs: HashMap<u64, AssertJob>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    pub(crate) timers: Vec<(Instant, Timer)>,
    rng: u64,
}

impl Dlm {
    pub fn new(cfg: DlmConfig) -> Dlm {
        let me = cfg.node;
        let mut live = NodeSet::new();
        live.insert(me);
        let rng = cfg.seed | 1;
        Dlm {
            cfg,
            me,
            live,
            domains: BTreeMap::new(),
            locks: BTreeMap::new(),
            next_seq: 1,
            next_request: 1,
            next_job: 1,
            next_mig_cookie: 1,
            outstanding: HashMap::new(),
            jobs: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timers: Vec::new(),
            rng,
        }
    }

    pub fn node(&self) -> u8 {
        self.me
    }

    /// The o2net key of a domain name.
    pub fn domain_key(name: &[u8]) -> u32 {
        crc32_le(0, name)
    }

    // ----- outputs ---------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().map(|(t, _)| *t).min()
    }

    // ----- queries (for the engine and tests) ------------------------------

    /// The o2net handlers to register while the DLM runs: (msg_type,
    /// DLM_MOD_KEY, max_len) for the join-time messages.
    pub fn mod_key_handlers() -> Vec<(u16, u32, u32)> {
        (500..=522u16)
            .filter(|&t| uses_mod_key(t))
            .filter_map(|t| registered_max_len(t).map(|l| (t, DLM_MOD_KEY, l as u32)))
            .collect()
    }

    /// The o2net handlers of one domain: register them right after `join`
    /// (before sending its first transmit), unregister after `LeaveDone` or
    /// a failed `JoinDone`.
    pub fn domain_handlers(domain: DomainId) -> Vec<(u16, u32, u32)> {
        (500..=522u16)
            .filter(|&t| !uses_mod_key(t))
            .filter_map(|t| registered_max_len(t).map(|l| (t, domain.0, l as u32)))
            .collect()
    }

    /// Whether a handler for (msg_type, key) is registered here: the
    /// DLM_MOD_KEY ones always, domain ones from join start to leave end.
    pub fn is_registered(&self, msg_type: u16, key: u32) -> bool {
        if registered_max_len(msg_type).is_none() {
            return false;
        }
        if uses_mod_key(msg_type) {
            return key == DLM_MOD_KEY;
        }
        self.domains.contains_key(&key)
    }

    /// Members of a domain as this node sees them (incl. itself once joined).
    pub fn domain_members(&self, domain: DomainId) -> Option<Vec<u8>> {
        self.domains
            .get(&domain.0)
            .map(|d| d.domain_map.iter().copied().collect())
    }

    pub fn is_joined(&self, domain: DomainId) -> bool {
        self.domains
            .get(&domain.0)
            .is_some_and(|d| d.state == DomState::Joined)
    }

    /// The master of a resource as known here (None: unknown / no copy).
    pub fn resource_owner(&self, domain: DomainId, name: &[u8]) -> Option<u8> {
        let n = LockName::new(name).ok()?;
        self.domains.get(&domain.0)?.resources.get(&n)?.owner
    }

    /// Names of the lock resources this node has a copy of.
    pub fn resource_names(&self, domain: DomainId) -> Vec<Vec<u8>> {
        self.domains.get(&domain.0).map_or(Vec::new(), |d| {
            d.resources.keys().map(|n| n.as_bytes().to_vec()).collect()
        })
    }

    /// The refmap of a resource this node masters.
    pub fn resource_refmap(&self, domain: DomainId, name: &[u8]) -> Option<Vec<u8>> {
        let n = LockName::new(name).ok()?;
        let r = self.domains.get(&domain.0)?.resources.get(&n)?;
        Some(r.refmap.iter().copied().collect())
    }

    /// The resource LVB held here (authoritative on the master).
    pub fn resource_lvb(&self, domain: DomainId, name: &[u8]) -> Option<Lvb> {
        let n = LockName::new(name).ok()?;
        Some(self.domains.get(&domain.0)?.resources.get(&n)?.q.lvb.0)
    }

    /// The queues of a resource as held here (on its master: every lock),
    /// in order: (queue, owner node, cookie, mode; for a conversion the
    /// granted mode).
    pub fn resource_locks(
        &self,
        domain: DomainId,
        name: &[u8],
    ) -> Option<Vec<(super::lockres::Queue, u8, u64, Mode)>> {
        use super::lockres::Queue;
        let n = LockName::new(name).ok()?;
        let r = self.domains.get(&domain.0)?.resources.get(&n)?;
        let mut out = Vec::new();
        for (q, list) in [
            (Queue::Granted, &r.q.granted),
            (Queue::Converting, &r.q.converting),
            (Queue::Blocked, &r.q.blocked),
        ] {
            out.extend(list.iter().map(|l| (q, l.key.node, l.key.cookie, l.mode)));
        }
        Some(out)
    }

    /// Granted mode of one of our locks.
    pub fn lock_mode(&self, lock: LockId) -> Option<Mode> {
        self.locks.get(&lock.0)?.granted
    }

    /// The LVB copy of one of our locks (as of its last grant).
    pub fn lock_lvb(&self, lock: LockId) -> Option<Lvb> {
        self.locks.get(&lock.0).map(|l| l.lvb)
    }

    /// Whether the LVB of one of our locks is known to be lost: its last
    /// grant came from a resource whose LVB a node death invalidated (the
    /// dead node held EX, or recovery found no surviving copy), or the
    /// death of the master zeroed this NL lock's copy (§9.6). Cleared when
    /// the lock's holder writes the LVB. Only grants from a master on this
    /// node can say so: the wire has no such flag, so an LVB lost at a
    /// remote master arrives as zeros.
    pub fn lock_lvb_invalid(&self, lock: LockId) -> bool {
        self.locks.get(&lock.0).is_some_and(|l| l.lvb_invalid)
    }

    /// Dead members of a domain whose recovery has not finished (the
    /// kernel's recovery_map), ascending.
    pub fn recovery_pending(&self, domain: DomainId) -> Vec<u8> {
        self.domains
            .get(&domain.0)
            .map_or(Vec::new(), |d| d.recovery_map.iter().copied().collect())
    }

    /// The recovery master this node follows in the current recovery (the
    /// kernel's reco.new_master), if one is known.
    pub fn recovery_master(&self, domain: DomainId) -> Option<u8> {
        self.domains.get(&domain.0)?.reco.new_master
    }

    /// Number of requests sent and not yet answered.
    pub fn outstanding_requests(&self) -> usize {
        self.outstanding.len()
    }

    // ----- heartbeat and transport inputs ----------------------------------

    pub fn handle_node_up(&mut self, _now: Instant, node: u8) {
        if node == self.me || !self.live.insert(node) {
            return;
        }
        for d in self.domains.values_mut() {
            if let Some(j) = d.join.as_mut() {
                j.live_changed = true;
            }
        }
    }

    /// The connection to `node` broke: requests in flight to it fail as
    /// host-down. Nothing else changes until the heartbeat decides.
    pub fn handle_link_down(&mut self, now: Instant, node: u8) {
        let ids: Vec<RequestId> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.to == node)
            .map(|(id, _)| *id)
            .collect();
        let mut ids = ids;
        ids.sort();
        for id in ids {
            self.handle_reply(now, id, Err(TransportError::HostDown));
        }
    }

    pub fn handle_reply(
        &mut self,
        now: Instant,
        id: RequestId,
        result: Result<i32, TransportError>,
    ) {
        let Some(o) = self.outstanding.remove(&id) else {
            log::debug!("o2dlm: reply for unknown request {id:?}");
            return;
        };
        self.dispatch_reply(now, id, o, result);
    }

    fn dispatch_reply(
        &mut self,
        now: Instant,
        id: RequestId,
        o: Outstanding,
        r: Result<i32, TransportError>,
    ) {
        let (to, dom) = (o.to, o.domain);
        match o.what {
            Pending::QueryJoin => self.on_query_join_reply(now, dom, id, to, r),
            Pending::QueryNodeinfo | Pending::QueryRegion => {
                self.on_query_info_reply(now, dom, id, to, r)
            }
            Pending::AssertJoined => self.on_assert_joined_reply(now, dom, id, to, r),
            Pending::Ignored => {}
            Pending::BeginExit => self.on_begin_exit_reply(now, dom, id),
            Pending::Exit => self.on_exit_reply(now, dom, id, to, r),
            Pending::MasterRequest(name) => self.on_master_request_reply(now, dom, name, id, to, r),
            Pending::AssertMaster(job) => self.on_assert_reply(now, job, to, r),
            Pending::MigrateRequest(job) => self.on_migrate_request_reply(now, job, to, r),
            Pending::Create(c) => self.on_create_reply(now, c, id, r),
            Pending::Convert(c) => self.on_convert_reply(now, c, id, r),
            Pending::Unlock(c) => self.on_unlock_reply(now, c, id, r),
            Pending::Cancel(c) => self.on_cancel_reply(now, c, id, r),
            Pending::Deref(name) => self.on_deref_reply(now, dom, name, to, r),
            Pending::MigLockres(name) => self.on_mig_lockres_reply(now, dom, name, to, r),
            Pending::RecoPreRequery => self.on_reco_pre_requery_reply(now, dom, id, r),
            Pending::BeginReco => self.on_begin_reco_reply(now, dom, id, to, r),
            Pending::LockRequest => self.on_lock_request_reply(now, dom, id, to, r),
            Pending::RecoData => self.on_reco_data_reply(now, dom, id, to, r),
            Pending::FinalizeReco => self.on_finalize_reply(now, dom, id, to, r),
            Pending::RecoRequery(name) => self.on_reco_requery_reply(now, dom, name, id, to, r),
        }
    }

    /// An o2net request for a DLM message type. Answers are queued as
    /// `Transmit::Reply` with `token` (possibly after other transmits: like
    /// the kernel, a grant AST may go out before the reply to the request
    /// that caused it). `Err(NotHandled)`: answer NO_HNDLR instead.
    pub fn handle_request(
        &mut self,
        now: Instant,
        from: u8,
        msg_type: u16,
        key: u32,
        payload: &[u8],
        token: ReplyToken,
    ) -> Result<(), NotHandled> {
        if !self.is_registered(msg_type, key) {
            return Err(NotHandled);
        }
        let msg = match DlmMessage::decode(msg_type, payload) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("o2dlm: bad message {msg_type} from node {from}: {e}");
                let status = bad_input_status(msg_type);
                self.reply(token, from, status);
                return Ok(());
            }
        };
        let status = match msg {
            DlmMessage::QueryJoin(m) => Some(self.handle_query_join(now, from, &m)),
            DlmMessage::AssertJoined(m) => Some(self.handle_assert_joined(now, from, &m)),
            DlmMessage::CancelJoin(m) => Some(self.handle_cancel_join(from, &m)),
            DlmMessage::QueryNodeinfo(m) => Some(self.handle_query_nodeinfo(from, &m)),
            DlmMessage::QueryRegion(m) => Some(self.handle_query_region(from, &m)),
            DlmMessage::BeginExitDomain(m) => Some(self.handle_begin_exit(key, from, &m)),
            DlmMessage::ExitDomain(m) => Some(self.handle_exit_domain(now, key, from, &m)),
            DlmMessage::MasterRequest(m) => {
                self.handle_master_request(now, key, from, &m, token);
                None
            }
            DlmMessage::AssertMaster(m) => {
                // The reply goes first; what the new owner unblocks (our
                // extra MASTER_REQUEST, waiting operations) follows it, as
                // from the kernel's waiting thread.
                let s = self.handle_assert_master(now, key, from, &m);
                self.reply(token, from, s);
                self.after_assert_master(now, key, m.name);
                None
            }
            DlmMessage::CreateLock(m) => {
                self.handle_create(now, key, from, &m, token);
                None
            }
            DlmMessage::ConvertLock(m) => {
                self.handle_convert(now, key, from, &m, token);
                None
            }
            DlmMessage::UnlockLock(m) => {
                self.handle_unlock(now, key, from, &m, token);
                None
            }
            DlmMessage::ProxyAst(m) => Some(self.handle_proxy_ast(now, key, from, &m)),
            DlmMessage::DerefLockres(m) => Some(self.handle_deref(now, key, from, &m)),
            DlmMessage::DerefLockresDone(m) => Some(self.handle_deref_done(now, key, from, &m)),
            DlmMessage::MigLockres(m) if m.flags & DLM_MRES_RECOVERY != 0 => {
                self.handle_reco_mig_lockres(now, key, from, m, token);
                None
            }
            DlmMessage::MigLockres(m) => {
                self.handle_mig_lockres(now, key, from, m, token);
                None
            }
            DlmMessage::MigrateRequest(m) => Some(self.handle_migrate_request(now, key, from, &m)),
            DlmMessage::MasterRequery(m) => {
                self.handle_master_requery(now, key, from, &m, token);
                None
            }
            // Recovery (recovery.rs): each handler queues its own reply
            // before the work it triggers, as the kernel answers first and
            // works on asynchronously.
            DlmMessage::LockRequest(m) => {
                self.handle_lock_request(now, key, from, &m, token);
                None
            }
            DlmMessage::BeginReco(m) => {
                self.handle_begin_reco(now, key, from, &m, token);
                None
            }
            DlmMessage::RecoDataDone(m) => {
                self.handle_reco_data_done(now, key, from, &m, token);
                None
            }
            DlmMessage::FinalizeReco(m) => {
                self.handle_finalize_reco(now, key, from, &m, token);
                None
            }
        };
        if let Some(s) = status {
            self.reply(token, from, s);
        }
        Ok(())
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(i) = self.timers.iter().position(|(t, _)| *t <= now) {
            let (_, timer) = self.timers.remove(i);
            self.fire(now, timer);
        }
    }

    fn fire(&mut self, now: Instant, t: Timer) {
        match t {
            Timer::JoinRetry(d) => self.start_join_attempt(now, d),
            Timer::AssertJoinedRetry(d, n) => self.retry_assert_joined(now, d, n),
            Timer::ExitRetry(d, n) => self.retry_exit(now, d, n),
            Timer::LeavePass(d) => self.leave_pass(now, d),
            Timer::Thread(d) => self.thread_tick(now, d),
            Timer::MasterResend(d, name, n) => self.resend_master_request(now, d, name, n),
            Timer::OpRetry(c) => self.retry_op(now, c),
            Timer::MasteryRetry(d, name) => self.kick_resource(now, d, name),
            Timer::RecoRetry(d) => self.reco_timer(now, d),
            Timer::RecoTick(d) => self.reco_tick(now, d),
        }
    }

    // ----- helpers for the phase files -------------------------------------

    pub(crate) fn send(
        &mut self,
        to: u8,
        domain: u32,
        msg: DlmMessage,
        what: Pending,
    ) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let key = if msg.uses_mod_key() {
            DLM_MOD_KEY
        } else {
            domain
        };
        log::trace!("o2dlm: node {} -> {to}: {msg:?}", self.me);
        self.outstanding
            .insert(id, Outstanding { to, domain, what });
        self.transmits.push_back(Transmit::Request {
            id,
            to,
            msg_type: msg.msg_type(),
            key,
            payload: msg.encode(),
        });
        id
    }

    pub(crate) fn reply(&mut self, token: ReplyToken, to: u8, status: i32) {
        self.transmits
            .push_back(Transmit::Reply { token, to, status });
    }

    pub(crate) fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    pub(crate) fn arm(&mut self, at: Instant, t: Timer) {
        if !self.timers.iter().any(|(_, x)| *x == t) {
            self.timers.push((at, t));
        }
    }

    pub(crate) fn after(now: Instant, ms: u64) -> Instant {
        now + Duration::from_millis(ms)
    }

    pub(crate) fn disarm(&mut self, pred: impl Fn(&Timer) -> bool) {
        self.timers.retain(|(_, t)| !pred(t));
    }

    pub(crate) fn random(&mut self) -> u64 {
        // xorshift64: deterministic per seed, good enough for a backoff.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    pub(crate) fn new_cookie(&mut self) -> u64 {
        let c = make_cookie(self.me, self.next_seq);
        self.next_seq += 1;
        if self.next_seq > COOKIE_SEQ_MASK {
            self.next_seq = 1;
        }
        c
    }

    pub(crate) fn is_live(&self, n: u8) -> bool {
        self.live.contains(&n)
    }
}

/// Reply to an undecodable request, chosen so that no kernel peer can be
/// made to BUG by it (§10): lock messages get a dlm_status, mastery ones a
/// value their senders accept.
fn bad_input_status(msg_type: u16) -> i32 {
    match msg_type {
        DLM_MASTER_REQUEST_MSG => DLM_MASTER_RESP_NO,
        DLM_ASSERT_MASTER_MSG => 0,
        DLM_CREATE_LOCK_MSG | DLM_CONVERT_LOCK_MSG | DLM_UNLOCK_LOCK_MSG => DLM_IVBUFLEN,
        DLM_PROXY_AST_MSG => DLM_IVLOCKID,
        DLM_QUERY_JOIN_MSG => QueryJoinResponse::new(JOIN_DISALLOW, 0, 0).to_status(),
        DLM_MASTER_REQUERY_MSG => i32::from(DLM_LOCK_RES_OWNER_UNKNOWN),
        DLM_CANCEL_JOIN_MSG | DLM_EXIT_DOMAIN_MSG | DLM_BEGIN_EXIT_DOMAIN_MSG => 0,
        DLM_FINALIZE_RECO_MSG | DLM_RECO_DATA_DONE_MSG => 0,
        _ => EINVAL,
    }
}
