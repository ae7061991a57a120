//! Domain membership: join (joiner and responder sides, §3), leave (§4),
//! and the entry of heartbeat node-down verdicts (the cleanup and the
//! recovery protocol of §9 are in recovery.rs).

use super::domain::{
    DomState, Domain, JoinJob, JoinPhase, LeaveJob, LeavePhase, MasteryPhase, MleKind, NodeSet,
};
use super::node::*;
use crate::wire::dlm::*;
use std::collections::VecDeque;
use std::time::Instant;

fn join_status(code: u8) -> i32 {
    QueryJoinResponse::new(code, 0, 0).to_status()
}

impl Dlm {
    // ===== joiner ============================================================

    /// Starts joining `name` (the kernel's dlm_register_domain). The domain's
    /// handlers answer from now on; `Event::JoinDone` reports the result.
    pub fn join(&mut self, now: Instant, name: &[u8]) -> Result<DomainId, ApiError> {
        if name.is_empty() || name.len() >= DLM_DOMAIN_NAME_LIMIT {
            return Err(ApiError::BadName);
        }
        let dname = DomainName::new(name).map_err(|_| ApiError::BadName)?;
        let key = Self::domain_key(name);
        if self.domains.contains_key(&key) {
            return Err(ApiError::AlreadyJoined);
        }
        let mut d = Domain::new(dname, key, self.cfg.fs_proto.minor);
        d.domain_map.insert(self.me);
        d.join = Some(JoinJob {
            phase: JoinPhase::Backoff,
            live_snapshot: NodeSet::new(),
            live_changed: false,
            targets: VecDeque::new(),
            yes: NodeSet::new(),
            backoff_total_ms: 0,
            inflight: None,
        });
        self.domains.insert(key, d);
        log::info!("o2dlm: node {} joining domain {}", self.me, dname);
        self.start_join_attempt(now, key);
        Ok(DomainId(key))
    }

    pub(crate) fn start_join_attempt(&mut self, now: Instant, key: u32) {
        let me = self.me;
        let live = self.live.clone();
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(j) = d.join.as_mut() else { return };
        if d.joining_node.is_some_and(|n| n != me) {
            // Someone else is joining through us; wait for it to finish.
            self.arm(Self::after(now, BACKOFF_MS), Timer::JoinRetry(key));
            return;
        }
        d.joining_node = Some(me);
        d.dlm_minor = DLM_PROTOCOL.minor;
        d.fs_minor = self.cfg.fs_proto.minor;
        j.phase = JoinPhase::Query;
        j.live_changed = false;
        j.targets = live.iter().copied().filter(|&n| n != me).collect();
        j.live_snapshot = live;
        j.yes.clear();
        self.join_send_next(now, key);
    }

    /// Sends the next message of the current join phase, or moves on.
    fn join_send_next(&mut self, now: Instant, key: u32) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let dname = d.name;
        let Some(j) = d.join.as_mut() else { return };
        if let Some(n) = j.targets.pop_front() {
            let (msg, what) = match j.phase {
                JoinPhase::Query => (
                    DlmMessage::QueryJoin(QueryJoin {
                        node_idx: me,
                        dlm_proto: DLM_PROTOCOL,
                        fs_proto: self.cfg.fs_proto,
                        domain: dname,
                        node_map: NodeMap::from_nodes(j.live_snapshot.iter().copied()),
                    }),
                    Pending::QueryJoin,
                ),
                JoinPhase::NodeInfo => {
                    let mut nodes = self.cfg.nodes.clone();
                    nodes.sort_by_key(|n| n.num);
                    (
                        DlmMessage::QueryNodeinfo(QueryNodeinfo {
                            node: me,
                            domain: dname,
                            nodes,
                        }),
                        Pending::QueryNodeinfo,
                    )
                }
                JoinPhase::Region => (
                    DlmMessage::QueryRegion(QueryRegion {
                        node: me,
                        domain: dname,
                        regions: self.cfg.regions.clone(),
                    }),
                    Pending::QueryRegion,
                ),
                JoinPhase::AssertJoined => (
                    DlmMessage::AssertJoined(AssertJoined {
                        node_idx: me,
                        domain: dname,
                    }),
                    Pending::AssertJoined,
                ),
                JoinPhase::Backoff => return,
            };
            let id = self.send(n, key, msg, what);
            if let Some(j) = self.domains.get_mut(&key).and_then(|d| d.join.as_mut()) {
                j.inflight = Some(id);
            }
            return;
        }
        // Phase complete.
        j.inflight = None;
        match j.phase {
            JoinPhase::Query => {
                if j.live_changed || j.live_snapshot != self.live {
                    self.join_again(now, key);
                    return;
                }
                let yes = j.yes.clone();
                d.domain_map = yes.iter().copied().chain([me]).collect();
                if d.dlm_minor >= 1 && !yes.is_empty() {
                    j.phase = JoinPhase::NodeInfo;
                    j.targets = yes.iter().copied().collect();
                } else {
                    j.phase = JoinPhase::AssertJoined;
                    j.targets = yes.iter().copied().collect();
                }
                self.join_send_next(now, key);
            }
            JoinPhase::NodeInfo => {
                j.phase = JoinPhase::Region;
                j.targets = j.yes.iter().copied().collect();
                self.join_send_next(now, key);
            }
            JoinPhase::Region => {
                j.phase = JoinPhase::AssertJoined;
                j.targets = j.yes.iter().copied().collect();
                self.join_send_next(now, key);
            }
            JoinPhase::AssertJoined => {
                d.join = None;
                d.state = DomState::Joined;
                d.joining_node = None;
                log::info!(
                    "o2dlm: node {me} joined domain {} ( {:?} )",
                    d.name,
                    d.domain_map
                );
                self.event(Event::JoinDone {
                    domain: DomainId(key),
                    result: Ok(()),
                });
                self.arm(Self::after(now, THREAD_MS), Timer::Thread(key));
            }
            JoinPhase::Backoff => {}
        }
    }

    fn join_current(&self, key: u32, id: RequestId) -> bool {
        self.domains
            .get(&key)
            .and_then(|d| d.join.as_ref())
            .is_some_and(|j| j.inflight == Some(id))
    }

    /// This attempt lost a race: cancel it at the nodes that said yes and
    /// try again after a random backoff of 0..3 × 200 ms.
    fn join_again(&mut self, now: Instant, key: u32) {
        self.join_again_after(now, key, 0);
    }

    /// A member could not be reached (its link closed: it is exiting or
    /// dying, and the heartbeat will say so shortly). Like a change of the
    /// live map, this is a reason to try again, not to fail the join.
    fn join_peer_unreachable(&mut self, now: Instant, key: u32, from: u8, err: TransportError) {
        log::info!(
            "o2dlm: node {} join: node {from} unreachable ({err:?}); trying again",
            self.me
        );
        self.join_again_after(now, key, BACKOFF_MS);
    }

    fn join_again_after(&mut self, now: Instant, key: u32, min_wait_ms: u64) {
        let r = self.random();
        self.cancel_join_at_yes_nodes(key);
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(j) = d.join.as_mut() else { return };
        d.joining_node = None;
        d.domain_map = [self.me].into_iter().collect();
        j.phase = JoinPhase::Backoff;
        j.targets.clear();
        let wait = ((r % 4) * BACKOFF_MS).max(min_wait_ms);
        j.backoff_total_ms += wait;
        if j.backoff_total_ms > JOIN_TIMEOUT_MS {
            self.join_failed(key, JoinError::Timeout);
            return;
        }
        log::debug!(
            "o2dlm: node {} join of {} backs off {wait} ms",
            self.me,
            d.name
        );
        self.arm(Self::after(now, wait), Timer::JoinRetry(key));
    }

    fn cancel_join_at_yes_nodes(&mut self, key: u32) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(j) = d.join.as_mut() else { return };
        let yes: Vec<u8> = std::mem::take(&mut j.yes).into_iter().collect();
        let dname = d.name;
        for n in yes {
            self.send(
                n,
                key,
                DlmMessage::CancelJoin(CancelJoin {
                    node_idx: me,
                    domain: dname,
                }),
                Pending::Ignored,
            );
        }
    }

    fn join_failed(&mut self, key: u32, err: JoinError) {
        self.cancel_join_at_yes_nodes(key);
        if let Some(d) = self.domains.remove(&key) {
            log::warn!("o2dlm: node {} failed to join {}: {err:?}", self.me, d.name);
        }
        self.forget_domain(key);
        self.event(Event::JoinDone {
            domain: DomainId(key),
            result: Err(err),
        });
    }

    /// Drops timers and outstanding requests of a domain that is gone.
    fn forget_domain(&mut self, key: u32) {
        self.disarm(|t| match t {
            Timer::JoinRetry(d)
            | Timer::AssertJoinedRetry(d, _)
            | Timer::ExitRetry(d, _)
            | Timer::LeavePass(d)
            | Timer::Thread(d)
            | Timer::MasterResend(d, _, _)
            | Timer::MasteryRetry(d, _)
            | Timer::RecoRetry(d)
            | Timer::RecoTick(d) => *d == key,
            Timer::OpRetry(_) => false,
        });
        for o in self.outstanding.values_mut() {
            if o.domain == key {
                o.what = Pending::Ignored;
            }
        }
        self.jobs.retain(|_, j| j.domain != key);
    }

    pub(crate) fn on_query_join_reply(
        &mut self,
        now: Instant,
        key: u32,
        id: RequestId,
        from: u8,
        r: Result<i32, TransportError>,
    ) {
        if !self.join_current(key, id) {
            return;
        }
        let code = match r {
            Err(TransportError::NoHandler) => QueryJoinResponse::new(JOIN_OK_NO_MAP, 0, 0),
            Err(err @ (TransportError::HostDown | TransportError::NotConnected)) => {
                self.join_peer_unreachable(now, key, from, err);
                return;
            }
            Err(err) => {
                self.join_failed(key, JoinError::Transport { node: from, err });
                return;
            }
            Ok(s) => QueryJoinResponse::from_status(s),
        };
        match code.code {
            JOIN_OK => {
                let Some(d) = self.domains.get_mut(&key) else {
                    return;
                };
                d.dlm_minor = code.dlm_minor;
                d.fs_minor = code.fs_minor;
                if let Some(j) = d.join.as_mut() {
                    j.yes.insert(from);
                }
                self.join_send_next(now, key);
            }
            JOIN_OK_NO_MAP => self.join_send_next(now, key),
            JOIN_PROTOCOL_MISMATCH => self.join_failed(key, JoinError::ProtocolMismatch),
            _ => self.join_again(now, key),
        }
    }

    pub(crate) fn on_query_info_reply(
        &mut self,
        now: Instant,
        key: u32,
        id: RequestId,
        from: u8,
        r: Result<i32, TransportError>,
    ) {
        if !self.join_current(key, id) {
            return;
        }
        match r {
            Ok(0) => self.join_send_next(now, key),
            Ok(status) => self.join_failed(key, JoinError::ConfigMismatch { node: from, status }),
            Err(TransportError::NoHandler) => self.join_failed(
                key,
                JoinError::ConfigMismatch {
                    node: from,
                    status: -92,
                },
            ),
            Err(err @ (TransportError::HostDown | TransportError::NotConnected)) => {
                self.join_peer_unreachable(now, key, from, err)
            }
            Err(err) => self.join_failed(key, JoinError::Transport { node: from, err }),
        }
    }

    pub(crate) fn on_assert_joined_reply(
        &mut self,
        now: Instant,
        key: u32,
        id: RequestId,
        from: u8,
        r: Result<i32, TransportError>,
    ) {
        if !self.join_current(key, id) {
            return;
        }
        if r != Ok(0) && self.is_live(from) {
            // Recovery in progress there (−EAGAIN) or a transient error:
            // ask the same node again in 200 ms.
            if let Some(j) = self.domains.get_mut(&key).and_then(|d| d.join.as_mut()) {
                j.inflight = None;
            }
            self.arm(
                Self::after(now, BACKOFF_MS),
                Timer::AssertJoinedRetry(key, from),
            );
            return;
        }
        self.join_send_next(now, key);
    }

    pub(crate) fn retry_assert_joined(&mut self, now: Instant, key: u32, node: u8) {
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(j) = d.join.as_mut() else { return };
        if j.phase != JoinPhase::AssertJoined {
            return;
        }
        if self.live.contains(&node) {
            j.targets.push_front(node);
        }
        self.join_send_next(now, key);
    }

    // ===== responder =========================================================

    fn domain_by_name(&self, name: &DomainName) -> Option<u32> {
        let key = Self::domain_key(name.as_bytes());
        self.domains
            .get(&key)
            .filter(|d| d.name == *name)
            .map(|_| key)
    }

    pub(crate) fn handle_query_join(&mut self, _now: Instant, _from: u8, m: &QueryJoin) -> i32 {
        let joiner = m.node_idx;
        if !self.is_live(joiner) {
            return join_status(JOIN_DISALLOW);
        }
        let Some(key) = self.domain_by_name(&m.domain) else {
            return join_status(JOIN_OK_NO_MAP);
        };
        let me = self.me;
        let fs = self.cfg.fs_proto;
        let Some(d) = self.domains.get_mut(&key) else {
            return join_status(JOIN_OK_NO_MAP);
        };
        if d.domain_map.iter().any(|&n| !m.node_map.test(n)) {
            return join_status(JOIN_DISALLOW);
        }
        if d.state == DomState::Leaving {
            return join_status(JOIN_OK_NO_MAP);
        }
        if d.state == DomState::Joining && d.joining_node.is_none() {
            return join_status(JOIN_OK_NO_MAP);
        }
        if d.joining_node.is_some() {
            return join_status(JOIN_DISALLOW);
        }
        if !d.recovery_map.is_empty() || d.domain_map.contains(&joiner) || joiner == me {
            return join_status(JOIN_DISALLOW);
        }
        if m.dlm_proto.major != DLM_PROTOCOL.major
            || d.dlm_minor > m.dlm_proto.minor
            || m.fs_proto.major != fs.major
            || d.fs_minor > m.fs_proto.minor
        {
            return join_status(JOIN_PROTOCOL_MISMATCH);
        }
        d.joining_node = Some(joiner);
        QueryJoinResponse::new(JOIN_OK, d.dlm_minor, d.fs_minor).to_status()
    }

    pub(crate) fn handle_assert_joined(
        &mut self,
        now: Instant,
        _from: u8,
        m: &AssertJoined,
    ) -> i32 {
        let Some(key) = self.domain_by_name(&m.domain) else {
            return 0;
        };
        let Some(d) = self.domains.get_mut(&key) else {
            return 0;
        };
        if !d.recovery_map.is_empty() {
            return EAGAIN;
        }
        let n = m.node_idx;
        if d.joining_node != Some(n) {
            log::warn!("o2dlm: ASSERT_JOINED from node {n}, which is not joining");
        }
        d.domain_map.insert(n);
        d.exit_map.remove(&n);
        if d.joining_node == Some(n) {
            d.joining_node = None;
        }
        log::info!(
            "o2dlm: node {n} joins domain {} ( {:?} )",
            d.name,
            d.domain_map
        );
        self.mles_node_up(now, key, n);
        0
    }

    pub(crate) fn handle_cancel_join(&mut self, _from: u8, m: &CancelJoin) -> i32 {
        if let Some(key) = self.domain_by_name(&m.domain) {
            if let Some(d) = self.domains.get_mut(&key) {
                if d.joining_node == Some(m.node_idx) {
                    d.joining_node = None;
                }
            }
        }
        0
    }

    fn joiner_ok(&self, domain: &DomainName, joiner: u8) -> bool {
        self.domain_by_name(domain)
            .and_then(|k| self.domains.get(&k))
            .is_some_and(|d| d.joining_node == Some(joiner) && d.dlm_minor >= 1)
    }

    pub(crate) fn handle_query_nodeinfo(&mut self, _from: u8, m: &QueryNodeinfo) -> i32 {
        if !self.joiner_ok(&m.domain, m.node) {
            return EINVAL;
        }
        for num in 0..=254u8 {
            let ours = self.cfg.nodes.iter().find(|n| n.num == num);
            let theirs = m.nodes.iter().find(|n| n.num == num);
            let same = match (ours, theirs) {
                (None, None) => true,
                (Some(a), Some(b)) => a.port == b.port && a.addr == b.addr,
                _ => false,
            };
            if !same {
                log::warn!(
                    "o2dlm: node {} has a different configuration for node {num}",
                    m.node
                );
                return EINVAL;
            }
        }
        0
    }

    pub(crate) fn handle_query_region(&mut self, _from: u8, m: &QueryRegion) -> i32 {
        if !self.joiner_ok(&m.domain, m.node) {
            return EINVAL;
        }
        if self.cfg.regions.is_empty() {
            return if m.regions.is_empty() { 0 } else { EINVAL };
        }
        let mut a = self.cfg.regions.clone();
        let mut b = m.regions.clone();
        a.sort();
        b.sort();
        if a == b {
            0
        } else {
            EINVAL
        }
    }

    pub(crate) fn handle_begin_exit(&mut self, key: u32, from: u8, m: &BeginExitDomain) -> i32 {
        if let Some(d) = self.domains.get_mut(&key) {
            let _ = from;
            d.exit_map.insert(m.node_idx);
        }
        0
    }

    pub(crate) fn handle_exit_domain(
        &mut self,
        now: Instant,
        key: u32,
        _from: u8,
        m: &ExitDomain,
    ) -> i32 {
        let n = m.node_idx;
        let Some(d) = self.domains.get_mut(&key) else {
            return 0;
        };
        if !d.domain_map.remove(&n) {
            return 0;
        }
        d.exit_map.remove(&n);
        log::info!(
            "o2dlm: node {n} leaves domain {} ( {:?} )",
            d.name,
            d.domain_map
        );
        // A clean leaver has dereferenced everything; drop leftovers anyway
        // so they cannot pin our resources forever.
        let mut dirty = Vec::new();
        for r in d.resources.values_mut() {
            if r.owner == Some(self.me) {
                let had = r.refmap.remove(&n);
                let held = r.q.remove_node_locks(n);
                if had || held {
                    dirty.push(r.name);
                }
            }
        }
        self.mles_node_down(now, key, n);
        for name in dirty {
            self.after_change(now, key, name);
        }
        0
    }

    // ===== heartbeat node down ===============================================

    /// The heartbeat declared `node` dead (§9.1): requests in flight to it
    /// fail, and in every domain it was a member of, the local cleanup
    /// runs and recovery starts (recovery.rs).
    pub fn handle_node_down(&mut self, now: Instant, node: u8) {
        if node == self.me {
            return;
        }
        self.live.remove(&node);
        self.handle_link_down(now, node);
        let keys: Vec<u32> = self.domains.keys().copied().collect();
        for key in keys {
            let Some(d) = self.domains.get_mut(&key) else {
                continue;
            };
            if let Some(j) = d.join.as_mut() {
                j.live_changed = true;
            }
            if d.joining_node == Some(node) {
                d.joining_node = None;
            }
            self.domain_node_down(now, key, node);
        }
    }

    // ===== leave =============================================================

    /// Leaves a domain (the kernel's dlm_unregister_domain). Every lock must
    /// have been unlocked first. `Event::LeaveDone` follows.
    pub fn leave(&mut self, now: Instant, domain: DomainId) -> Result<(), ApiError> {
        let key = domain.0;
        let me = self.me;
        if self.locks.values().any(|l| l.domain == key) {
            return Err(ApiError::LocksHeld);
        }
        let Some(d) = self.domains.get_mut(&key) else {
            return Err(ApiError::UnknownDomain);
        };
        if d.state != DomState::Joined {
            return Err(ApiError::NotJoined);
        }
        d.state = DomState::InShutdown;
        let begin = d.dlm_minor >= 2;
        d.leave = Some(LeaveJob {
            phase: if begin {
                LeavePhase::BeginExit
            } else {
                LeavePhase::Drain
            },
            targets: d.others(me).into(),
            inflight: None,
            pass_armed: false,
        });
        log::info!("o2dlm: node {me} leaving domain {}", d.name);
        if begin {
            self.leave_send_next(now, key);
        } else {
            self.leave_pass(now, key);
        }
        Ok(())
    }

    fn leave_send_next(&mut self, now: Instant, key: u32) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(l) = d.leave.as_mut() else { return };
        l.inflight = None;
        while let Some(n) = l.targets.pop_front() {
            if !d.domain_map.contains(&n) {
                continue;
            }
            let (msg, what) = match l.phase {
                LeavePhase::BeginExit => (
                    DlmMessage::BeginExitDomain(BeginExitDomain { node_idx: me }),
                    Pending::BeginExit,
                ),
                LeavePhase::Exit => (
                    DlmMessage::ExitDomain(ExitDomain { node_idx: me }),
                    Pending::Exit,
                ),
                LeavePhase::Drain => return,
            };
            let id = self.send(n, key, msg, what);
            if let Some(l) = self.domains.get_mut(&key).and_then(|d| d.leave.as_mut()) {
                l.inflight = Some(id);
            }
            return;
        }
        match l.phase {
            LeavePhase::BeginExit => {
                l.phase = LeavePhase::Drain;
                self.leave_pass(now, key);
            }
            LeavePhase::Exit => self.leave_finished(key),
            LeavePhase::Drain => {}
        }
    }

    pub(crate) fn on_begin_exit_reply(&mut self, now: Instant, key: u32, id: RequestId) {
        let cur = self
            .domains
            .get(&key)
            .and_then(|d| d.leave.as_ref())
            .is_some_and(|l| l.inflight == Some(id));
        if cur {
            self.leave_send_next(now, key);
        }
    }

    /// One pass of the shutdown loop: migrate or purge what is left; once
    /// nothing is left, announce the exit.
    pub(crate) fn leave_pass(&mut self, now: Instant, key: u32) {
        let me = self.me;
        let phase = self
            .domains
            .get(&key)
            .and_then(|d| d.leave.as_ref())
            .map(|l| l.phase);
        if phase != Some(LeavePhase::Drain) {
            return;
        }
        if let Some(l) = self.domains.get_mut(&key).and_then(|d| d.leave.as_mut()) {
            l.pass_armed = false;
        }
        let empty = self.drain_domain(now, key);
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let other_joining = d.joining_node.is_some_and(|n| n != me);
        let Some(l) = d.leave.as_mut() else { return };
        if !empty || other_joining {
            if !l.pass_armed {
                l.pass_armed = true;
                self.arm(Self::after(now, LEAVE_PASS_MS), Timer::LeavePass(key));
            }
            return;
        }
        d.state = DomState::Leaving;
        l.phase = LeavePhase::Exit;
        l.targets = d.domain_map.iter().copied().filter(|&n| n != me).collect();
        self.leave_send_next(now, key);
    }

    pub(crate) fn on_exit_reply(
        &mut self,
        now: Instant,
        key: u32,
        id: RequestId,
        to: u8,
        r: Result<i32, TransportError>,
    ) {
        let cur = self
            .domains
            .get(&key)
            .and_then(|d| d.leave.as_ref())
            .is_some_and(|l| l.inflight == Some(id));
        if !cur {
            return;
        }
        let retry = match r {
            Ok(_) | Err(TransportError::NoHandler) | Err(TransportError::NotConnected) => false,
            Err(_) => self.is_live(to),
        };
        if retry {
            if let Some(l) = self.domains.get_mut(&key).and_then(|d| d.leave.as_mut()) {
                l.inflight = None;
            }
            self.arm(Self::after(now, BACKOFF_MS), Timer::ExitRetry(key, to));
            return;
        }
        self.leave_send_next(now, key);
    }

    pub(crate) fn retry_exit(&mut self, now: Instant, key: u32, node: u8) {
        if let Some(l) = self.domains.get_mut(&key).and_then(|d| d.leave.as_mut()) {
            l.targets.push_front(node);
        }
        self.leave_send_next(now, key);
    }

    fn leave_finished(&mut self, key: u32) {
        if let Some(d) = self.domains.remove(&key) {
            log::info!("o2dlm: node {} left domain {}", self.me, d.name);
        }
        self.forget_domain(key);
        self.event(Event::LeaveDone {
            domain: DomainId(key),
        });
    }

    // ===== masteries hearing about membership changes ========================

    /// A node joined the domain: MASTER mles still voting ask it too.
    pub(crate) fn mles_node_up(&mut self, now: Instant, key: u32, node: u8) {
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let mut kick = Vec::new();
        for (name, mle) in d.mles.iter_mut() {
            if mle.kind == MleKind::Master && mle.master.is_none() && mle.vote_map.insert(node) {
                if let Some(r) = d.resources.get_mut(name) {
                    if let Some(job) = r.mastery.as_mut() {
                        if job.phase == MasteryPhase::Voting
                            || job.phase == MasteryPhase::WaitAssert
                        {
                            job.phase = MasteryPhase::Voting;
                            job.targets.push_back(node);
                            kick.push(*name);
                        }
                    }
                }
            }
        }
        for name in kick {
            self.mastery_step(now, key, name);
        }
    }

    /// A member left or died: masteries stop waiting for it.
    pub(crate) fn mles_node_down(&mut self, now: Instant, key: u32, node: u8) {
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let me = self.me;
        // A death (not a clean exit): the answers taken so far may be out
        // of date once recovery moves the dead node's resources, so a vote
        // still open starts again from scratch, after the recovery (the
        // kernel's restart of the master request on a node map change).
        let died = d.recovery_map.contains(&node);
        let others = d.others(me);
        let mut kick = Vec::new();
        let mut drop_mles = Vec::new();
        for (name, mle) in d.mles.iter_mut() {
            mle.vote_map.remove(&node);
            mle.response_map.remove(&node);
            mle.maybe_map.remove(&node);
            match mle.kind {
                MleKind::Master => {
                    if mle.master == Some(node) {
                        mle.master = None;
                    }
                    let job = d.resources.get_mut(name).and_then(|r| r.mastery.as_mut());
                    let open = job.as_ref().is_some_and(|j| {
                        matches!(j.phase, MasteryPhase::Voting | MasteryPhase::WaitAssert)
                    });
                    if died
                        && mle.master.is_none()
                        && open
                        && name.as_bytes() != DLM_RECOVERY_LOCK_NAME
                    {
                        mle.vote_map = others.iter().copied().collect();
                        mle.response_map.clear();
                        mle.maybe_map.clear();
                        mle.maybe_map.insert(me);
                        if let Some(j) = job {
                            j.phase = MasteryPhase::Voting;
                            j.targets = others.iter().copied().collect();
                            j.asking = None;
                        }
                    }
                    kick.push(*name);
                }
                MleKind::Block => {
                    // Our own wait on another node's mastery after a death:
                    // that node may have learnt of an owner that is now
                    // dead and will never assert, so ask again ourselves
                    // (after the recovery, as above).
                    let waiting = died
                        && d.resources.get(name).is_some_and(|r| {
                            r.mastery
                                .as_ref()
                                .is_some_and(|j| j.phase == MasteryPhase::WaitAssert)
                        });
                    // Nobody waits on it here: forget it, as if it had
                    // never been there (the kernel blanks a blocked mle's
                    // maybe map on a death). Its node may never assert:
                    // recovery can make it the owner without a mastery.
                    let unwatched = died && name.as_bytes() != DLM_RECOVERY_LOCK_NAME;
                    if mle.maybe_map.is_empty() || mle.master == Some(node) || waiting || unwatched
                    {
                        drop_mles.push(*name);
                        kick.push(*name);
                    }
                }
                MleKind::Migration => {
                    if mle.master == Some(node) || mle.new_master == Some(node) {
                        drop_mles.push(*name);
                        kick.push(*name);
                    }
                }
            }
        }
        for name in &drop_mles {
            d.mles.remove(name);
            if let Some(r) = d.resources.get_mut(name) {
                if r.migrating && r.mig_source.is_none() {
                    r.migrating = false;
                }
            }
        }
        for name in kick {
            if let Some(job) = self
                .domains
                .get_mut(&key)
                .and_then(|d| d.resources.get_mut(&name))
                .and_then(|r| r.mastery.as_mut())
            {
                if job.asking.is_some_and(|(n, _)| n == node) {
                    job.asking = None;
                }
                if job.phase == MasteryPhase::ExtraRequest || job.phase == MasteryPhase::WaitAssert
                {
                    job.phase = MasteryPhase::Voting;
                }
            }
            self.mastery_restart_if_orphaned(now, key, name);
            self.mastery_step(now, key, name);
        }
    }
}
