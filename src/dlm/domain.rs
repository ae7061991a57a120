//! Per-domain state a node keeps: membership maps, lock resources, master
//! list entries (mles) and this node's own locks. Plain data; the protocol
//! phases (join.rs, master.rs, ...) drive it.

use super::lockres::{LockRes, Lvb};
use super::mode::Mode;
use super::node::RequestId;
use crate::wire::dlm::{DomainName, LockName, MigratableLock};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

pub type NodeSet = BTreeSet<u8>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DomState {
    /// Handlers registered, join in progress (the kernel's DLM_CTXT_NEW).
    Joining,
    Joined,
    /// Leaving: still answering everything, migrating and purging.
    InShutdown,
    /// EXIT_DOMAIN being sent; QUERY_JOIN from others gets JOIN_OK_NO_MAP.
    Leaving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinPhase {
    Query,
    NodeInfo,
    Region,
    AssertJoined,
    Backoff,
}

/// The joiner side of one join (§3.1): a sequence of attempts.
#[derive(Debug)]
pub(crate) struct JoinJob {
    pub phase: JoinPhase,
    /// Heartbeat live map when this attempt began.
    pub live_snapshot: NodeSet,
    pub live_changed: bool,
    /// Nodes still to ask in the current phase, ascending.
    pub targets: VecDeque<u8>,
    /// Nodes that answered JOIN_OK in this attempt.
    pub yes: NodeSet,
    pub backoff_total_ms: u64,
    pub inflight: Option<RequestId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeavePhase {
    /// BEGIN_EXIT_DOMAIN to each member, one at a time.
    BeginExit,
    /// Migrate what others use, purge the rest; passes every 500 ms.
    Drain,
    /// EXIT_DOMAIN to each member, one at a time.
    Exit,
}

#[derive(Debug)]
pub(crate) struct LeaveJob {
    pub phase: LeavePhase,
    pub targets: VecDeque<u8>,
    pub inflight: Option<RequestId>,
    /// A drain pass is scheduled (timer armed).
    pub pass_armed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MleKind {
    /// This node itself is trying to become master.
    Master,
    /// Another node asked first; wait for its assert.
    Block,
    /// Migration from `master` to `new_master` in flight.
    Migration,
}

/// A master list entry: exists only while mastery or migration of a name is
/// in flight (§1).
#[derive(Debug, Clone)]
pub(crate) struct Mle {
    pub kind: MleKind,
    /// Decided master (MASTER/BLOCK), or old master (MIGRATION).
    pub master: Option<u8>,
    pub new_master: Option<u8>,
    pub vote_map: NodeSet,
    pub response_map: NodeSet,
    pub maybe_map: NodeSet,
}

impl Mle {
    pub fn new(kind: MleKind) -> Mle {
        Mle {
            kind,
            master: None,
            new_master: None,
            vote_map: NodeSet::new(),
            response_map: NodeSet::new(),
            maybe_map: NodeSet::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MasteryPhase {
    /// Sending MASTER_REQUEST to `targets`, one at a time.
    Voting,
    /// Waiting for some node's ASSERT_MASTER.
    WaitAssert,
    /// The owner is another node: one more MASTER_REQUEST to it so it
    /// re-asserts to everybody and records us in its refmap (§5.1 step 5).
    ExtraRequest,
    /// We won: ASSERT_MASTER round in flight (an assert job).
    Asserting,
}

/// The requester side of mastery for one resource (§5.1).
#[derive(Debug, Clone)]
pub(crate) struct MasteryJob {
    pub phase: MasteryPhase,
    pub targets: VecDeque<u8>,
    pub asking: Option<(u8, RequestId)>,
}

/// A non-master's wait for a DEREF answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropState {
    None,
    /// DEREF_LOCKRES sent (or INPROG answered): forget when done.
    Dropping,
}

/// Old-master side of a migration (§8).
#[derive(Debug, Clone)]
pub(crate) struct MigSource {
    pub target: u8,
    /// MIG_LOCKRES messages still waiting for their reply.
    pub unanswered: usize,
    /// The target's FINISH_MIGRATION assert arrived.
    pub finished: bool,
    pub failed: bool,
}

/// New-master side of a migration still collecting records.
#[derive(Debug, Clone)]
pub(crate) struct MigTarget {
    pub from: u8,
    pub mig_cookie: u64,
    #[allow(dead_code)] // kept for diagnostics and recovery
    pub total: u32,
    pub received: u32,
}

#[derive(Debug)]
pub(crate) struct Resource {
    pub name: LockName,
    /// None while the master is unknown (mastery in progress).
    pub owner: Option<u8>,
    /// On the master: every lock. On a non-master: unused (own locks live in
    /// `Dlm::locks`).
    pub q: LockRes,
    /// Master only: other nodes holding a reference (§5.4).
    pub refmap: NodeSet,
    pub mastery: Option<MasteryJob>,
    pub migrating: bool,
    /// Mastered by a dead node: frozen until recovery gives it a master
    /// (the kernel's RECOVERING).
    pub recovering: bool,
    /// Mastered here and a dead node had locks on it: no grants until the
    /// recovery of that node finished (the kernel's RECOVERY_WAITING).
    pub recovery_waiting: bool,
    pub drop: DropState,
    pub mig_source: Option<MigSource>,
    pub mig_target: Option<MigTarget>,
    /// Own locks whose operation waits for mastery/purge/migration to end.
    pub waiting_ops: Vec<u64>,
    /// ASSERT_MASTER rounds in flight for this resource (the kernel's
    /// SETREF_INPROG): a DEREF arriving meanwhile is answered INPROG.
    pub assert_jobs: u32,
    /// Nodes whose DEREF was answered INPROG.
    pub deref_later: NodeSet,
    /// When the resource last became unused (purge after 8 s).
    pub unused_since: Option<Instant>,
}

impl Resource {
    pub fn new(name: LockName, owner: Option<u8>) -> Resource {
        Resource {
            name,
            owner,
            q: LockRes::new(),
            refmap: NodeSet::new(),
            mastery: None,
            migrating: false,
            recovering: false,
            recovery_waiting: false,
            drop: DropState::None,
            mig_source: None,
            mig_target: None,
            waiting_ops: Vec::new(),
            assert_jobs: 0,
            deref_later: NodeSet::new(),
            unused_since: None,
        }
    }
}

/// What a lock operation in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Create {
        mode: Mode,
        noqueue: bool,
        valblk: bool,
    },
    Convert {
        target: Mode,
        noqueue: bool,
        valblk: bool,
    },
    Unlock {
        valblk: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Waiting for the resource (mastery, purge, migration) or a retry timer.
    Waiting,
    /// Request sent to the master.
    Sent(RequestId),
    /// The master accepted (NORMAL); the AST will complete it.
    Accepted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    pub kind: OpKind,
    pub stage: Stage,
}

/// One of this node's own locks (the kernel's lock + lksb).
#[derive(Debug, Clone)]
pub(crate) struct UserLock {
    pub cookie: u64,
    pub domain: u32,
    pub name: LockName,
    /// Granted mode; None until the first grant.
    pub granted: Option<Mode>,
    pub op: Option<Op>,
    /// Cancel of `op` in flight.
    pub cancel: Option<Stage>,
    /// The lksb's LVB copy.
    pub lvb: Lvb,
    /// The AST completed a request whose reply has not arrived: like a
    /// kernel caller (blocked in dlmlock until the reply), send nothing
    /// new for this lock before it does.
    pub reply_pending: Option<RequestId>,
    /// The recovery thread's own `$RECOVERY` lock: no API events.
    pub internal: bool,
    /// `lvb` is not the cluster's value: a node death invalidated it
    /// (§9.6) or recovery could not rebuild it (§9.5).
    pub lvb_invalid: bool,
}

#[derive(Debug)]
pub(crate) struct Domain {
    pub name: DomainName,
    #[allow(dead_code)] // the map key; kept for diagnostics
    pub key: u32,
    pub state: DomState,
    pub domain_map: NodeSet,
    pub exit_map: NodeSet,
    pub recovery_map: NodeSet,
    pub joining_node: Option<u8>,
    pub dlm_minor: u8,
    pub fs_minor: u8,
    pub join: Option<JoinJob>,
    pub leave: Option<LeaveJob>,
    pub resources: BTreeMap<LockName, Resource>,
    pub mles: BTreeMap<LockName, Mle>,
    pub reco: super::recovery::RecoState,
}

impl Domain {
    pub fn new(name: DomainName, key: u32, fs_minor: u8) -> Domain {
        Domain {
            name,
            key,
            state: DomState::Joining,
            domain_map: NodeSet::new(),
            exit_map: NodeSet::new(),
            recovery_map: NodeSet::new(),
            joining_node: None,
            dlm_minor: 3,
            fs_minor,
            join: None,
            leave: None,
            resources: BTreeMap::new(),
            mles: BTreeMap::new(),
            reco: super::recovery::RecoState::default(),
        }
    }

    /// Other members, ascending.
    pub fn others(&self, me: u8) -> Vec<u8> {
        self.domain_map
            .iter()
            .copied()
            .filter(|&n| n != me)
            .collect()
    }
}

/// A migration record built from a master's queues.
pub(crate) fn lock_record(lock: &super::lockres::Lock, list: u8) -> MigratableLock {
    use crate::wire::dlm::{DLM_LKSB_GET_LVB, DLM_LKSB_PUT_LVB, LKM_IVMODE};
    let mut flags = 0;
    if lock.get_lvb {
        flags |= DLM_LKSB_GET_LVB;
    }
    if lock.put_lvb.is_some() {
        flags |= DLM_LKSB_PUT_LVB;
    }
    MigratableLock {
        cookie: lock.key.cookie,
        list,
        flags,
        lock_type: lock.mode.to_wire(),
        convert_type: lock.convert_to.map_or(LKM_IVMODE, |m| m.to_wire()),
        // A Linux receiver BUGs on anything else.
        highest_blocked: LKM_IVMODE,
        node: lock.key.node,
    }
}
