//! Lock mastery (§5): electing or finding the master of a name, the
//! MASTER_REQUEST and ASSERT_MASTER handlers, ASSERT_MASTER rounds, and
//! MASTER_REQUERY answering.

use super::domain::{DomState, MasteryJob, MasteryPhase, Mle, MleKind, Resource};
use super::node::*;
use crate::wire::dlm::*;
use std::collections::VecDeque;
use std::time::Instant;

/// Placeholder request id while a resend to a node is scheduled.
const RESEND_PENDING: RequestId = RequestId(0);

impl Dlm {
    /// Starts finding the master of `name` (§5.1); the resource exists with
    /// owner unknown.
    pub(crate) fn start_mastery(&mut self, now: Instant, key: u32, name: LockName) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let others = d.others(me);
        let Some(r) = d.resources.get_mut(&name) else {
            return;
        };
        if r.owner.is_some() || r.mastery.is_some() {
            return;
        }
        // New masteries wait for the end of recovery (§9.4), except the
        // one of the lock that elects the recovery master.
        if !d.recovery_map.is_empty() && name.as_bytes() != DLM_RECOVERY_LOCK_NAME {
            return;
        }
        match d.mles.get(&name).map(|m| m.kind) {
            Some(MleKind::Migration) => {
                // A migration of this name is in flight: try again later.
                self.arm(
                    Self::after(now, MIGRATION_RETRY_MS),
                    Timer::MasteryRetry(key, name),
                );
                return;
            }
            Some(MleKind::Block) => {
                // Someone else is mastering it: wait for its assert.
                r.mastery = Some(MasteryJob {
                    phase: MasteryPhase::WaitAssert,
                    targets: VecDeque::new(),
                    asking: None,
                });
            }
            Some(MleKind::Master) | None => {
                let mut mle = Mle::new(MleKind::Master);
                mle.vote_map = others.iter().copied().collect();
                mle.maybe_map.insert(me);
                d.mles.insert(name, mle);
                r.mastery = Some(MasteryJob {
                    phase: MasteryPhase::Voting,
                    targets: others.into(),
                    asking: None,
                });
            }
        }
        self.mastery_step(now, key, name);
    }

    /// A BLOCK wait whose blocker went away becomes our own attempt.
    pub(crate) fn mastery_restart_if_orphaned(&mut self, now: Instant, key: u32, name: LockName) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let others = d.others(me);
        let has_mle = d.mles.contains_key(&name);
        let Some(r) = d.resources.get_mut(&name) else {
            return;
        };
        if r.owner.is_some() || has_mle {
            return;
        }
        let Some(job) = r.mastery.as_mut() else {
            return;
        };
        if job.phase == MasteryPhase::Asserting || job.asking.is_some() {
            return;
        }
        let mut mle = Mle::new(MleKind::Master);
        mle.vote_map = others.iter().copied().collect();
        mle.maybe_map.insert(me);
        d.mles.insert(name, mle);
        job.phase = MasteryPhase::Voting;
        job.targets = others.into();
        let _ = now;
    }

    /// Advances the mastery of `name` as far as it can go now.
    pub(crate) fn mastery_step(&mut self, now: Instant, key: u32, name: LockName) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let dom_others = d.others(me);
        let Some(r) = d.resources.get_mut(&name) else {
            return;
        };
        let Some(job) = r.mastery.as_mut() else {
            return;
        };
        if let Some(owner) = r.owner {
            if owner == me {
                r.mastery = None;
                d.mles.remove(&name);
                self.kick_resource(now, key, name);
                return;
            }
            match job.phase {
                MasteryPhase::Voting if job.asking.is_some() => {}
                MasteryPhase::ExtraRequest => {}
                MasteryPhase::Asserting => {}
                _ => {
                    // Ask the owner once more, so it asserts to everyone
                    // and records us in its refmap.
                    job.phase = MasteryPhase::ExtraRequest;
                    let id = self.send(
                        owner,
                        key,
                        DlmMessage::MasterRequest(MasterRequest {
                            node_idx: me,
                            flags: 0,
                            name,
                        }),
                        Pending::MasterRequest(name),
                    );
                    if let Some(job) = self.job_mut(key, name) {
                        job.asking = Some((owner, id));
                    }
                }
            }
            return;
        }
        match job.phase {
            MasteryPhase::Asserting | MasteryPhase::ExtraRequest => return,
            MasteryPhase::Voting | MasteryPhase::WaitAssert => {}
        }
        if job.asking.is_some() {
            return;
        }
        let Some(mle) = d.mles.get_mut(&name) else {
            return;
        };
        if mle.kind != MleKind::Master {
            // BLOCK: the assert will come.
            return;
        }
        // A vote goes on only once the recovery of every dead node is over
        // (§5.1, §9.4): then it asks again (see `mles_node_down`).
        if !d.recovery_map.is_empty() && name.as_bytes() != DLM_RECOVERY_LOCK_NAME {
            return;
        }
        // Ask the next node unless a master below it is already known.
        while let Some(t) = job.targets.pop_front() {
            if !dom_others.contains(&t) {
                continue;
            }
            if mle.master.is_some_and(|m| m < t) {
                job.targets.clear();
                break;
            }
            job.phase = MasteryPhase::Voting;
            let id = self.send(
                t,
                key,
                DlmMessage::MasterRequest(MasterRequest {
                    node_idx: me,
                    flags: 0,
                    name,
                }),
                Pending::MasterRequest(name),
            );
            if let Some(job) = self.job_mut(key, name) {
                job.asking = Some((t, id));
            }
            return;
        }
        job.phase = MasteryPhase::WaitAssert;
        if mle.master.is_some() {
            // Another node said YES: its assert will set the owner.
            return;
        }
        let all_voted = mle.vote_map.iter().all(|n| mle.response_map.contains(n));
        let lowest = mle.maybe_map.iter().next().copied().unwrap_or(me);
        if all_voted && me <= lowest {
            mle.master = Some(me);
            job.phase = MasteryPhase::Asserting;
            let targets: Vec<u8> = mle.vote_map.iter().copied().collect();
            log::debug!("o2dlm: node {me} masters {name}");
            self.start_assert_job(now, key, name, 0, AssertPurpose::Mastery, targets);
        }
    }

    fn job_mut(&mut self, key: u32, name: LockName) -> Option<&mut MasteryJob> {
        self.domains
            .get_mut(&key)?
            .resources
            .get_mut(&name)?
            .mastery
            .as_mut()
    }

    pub(crate) fn on_master_request_reply(
        &mut self,
        now: Instant,
        key: u32,
        name: LockName,
        id: RequestId,
        to: u8,
        r: Result<i32, TransportError>,
    ) {
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(res) = d.resources.get_mut(&name) else {
            return;
        };
        let Some(job) = res.mastery.as_mut() else {
            return;
        };
        if job.asking != Some((to, id)) {
            return;
        }
        job.asking = None;
        if job.phase == MasteryPhase::ExtraRequest {
            // Whatever the answer, the owner is known: mastery is over.
            res.mastery = None;
            self.kick_resource(now, key, name);
            return;
        }
        if let Some(mle) = d.mles.get_mut(&name) {
            match r {
                Ok(DLM_MASTER_RESP_YES) => {
                    mle.response_map.insert(to);
                    if mle.master.is_none() {
                        mle.master = Some(to);
                    }
                }
                Ok(DLM_MASTER_RESP_MAYBE) => {
                    mle.response_map.insert(to);
                    mle.maybe_map.insert(to);
                }
                Ok(DLM_MASTER_RESP_ERROR) => {
                    // The node is busy (recovering/migrating): ask again.
                    job.asking = Some((to, RESEND_PENDING));
                    self.arm(
                        Self::after(now, MASTER_ERROR_RESEND_MS),
                        Timer::MasterResend(key, name, to),
                    );
                    return;
                }
                Ok(DLM_MASTER_RESP_NO) | Err(TransportError::NoHandler) => {
                    mle.response_map.insert(to);
                }
                Ok(other) => {
                    log::warn!("o2dlm: MASTER_REQUEST reply {other} from node {to}");
                    mle.response_map.insert(to);
                }
                Err(e) => {
                    // Probably dying; the heartbeat will tell. Ask again
                    // later if it stays.
                    log::info!("o2dlm: MASTER_REQUEST to node {to} failed: {e:?}");
                    job.asking = Some((to, RESEND_PENDING));
                    self.arm(
                        Self::after(now, MASTERY_RECHECK_MS),
                        Timer::MasterResend(key, name, to),
                    );
                    return;
                }
            }
        }
        self.mastery_step(now, key, name);
    }

    pub(crate) fn resend_master_request(
        &mut self,
        now: Instant,
        key: u32,
        name: LockName,
        node: u8,
    ) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let member = d.domain_map.contains(&node);
        let Some(job) = d.resources.get_mut(&name).and_then(|r| r.mastery.as_mut()) else {
            return;
        };
        if job.asking != Some((node, RESEND_PENDING)) {
            return;
        }
        job.asking = None;
        if member && self.live.contains(&node) {
            let id = self.send(
                node,
                key,
                DlmMessage::MasterRequest(MasterRequest {
                    node_idx: me,
                    flags: 0,
                    name,
                }),
                Pending::MasterRequest(name),
            );
            if let Some(job) = self.job_mut(key, name) {
                job.asking = Some((node, id));
            }
        } else {
            self.mastery_step(now, key, name);
        }
    }

    // ===== ASSERT_MASTER rounds ==============================================

    pub(crate) fn start_assert_job(
        &mut self,
        now: Instant,
        key: u32,
        name: LockName,
        flags: u32,
        purpose: AssertPurpose,
        targets: Vec<u8>,
    ) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        if let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        {
            r.assert_jobs += 1;
        }
        let migrate_requests = matches!(purpose, AssertPurpose::FinishMigration { .. });
        self.jobs.insert(
            id,
            AssertJob {
                domain: key,
                name,
                flags,
                purpose,
                targets: targets.iter().copied().collect(),
                all: targets,
                reassert: false,
                migrate_requests,
            },
        );
        self.assert_job_next(now, id);
        id
    }

    fn assert_job_next(&mut self, now: Instant, id: u64) {
        let me = self.me;
        loop {
            let Some(job) = self.jobs.get_mut(&id) else {
                return;
            };
            let members = self
                .domains
                .get(&job.domain)
                .map(|d| d.domain_map.clone())
                .unwrap_or_default();
            if let Some(t) = job.targets.pop_front() {
                let old = match job.purpose {
                    AssertPurpose::FinishMigration { old } => Some(old),
                    _ => None,
                };
                if !members.contains(&t) && Some(t) != old {
                    continue;
                }
                let (key, name, flags) = (job.domain, job.name, job.flags);
                if job.migrate_requests {
                    let old = old.unwrap_or(DLM_LOCK_RES_OWNER_UNKNOWN);
                    self.send(
                        t,
                        key,
                        DlmMessage::MigrateRequest(MigrateRequest {
                            master: old,
                            new_master: me,
                            name,
                        }),
                        Pending::MigrateRequest(id),
                    );
                } else {
                    self.send(
                        t,
                        key,
                        DlmMessage::AssertMaster(AssertMaster {
                            node_idx: me,
                            flags,
                            name,
                        }),
                        Pending::AssertMaster(id),
                    );
                }
                return;
            }
            if job.migrate_requests {
                // Third nodes know; now the asserts: third nodes, then the
                // old master.
                job.migrate_requests = false;
                let mut t: VecDeque<u8> = job.all.iter().copied().collect();
                if let AssertPurpose::FinishMigration { old } = job.purpose {
                    t.push_back(old);
                }
                job.targets = t;
                continue;
            }
            if job.reassert {
                job.reassert = false;
                job.targets = job.all.iter().copied().collect();
                continue;
            }
            let job = self.jobs.remove(&id);
            if let Some(job) = job {
                self.assert_job_done(now, job);
            }
            return;
        }
    }

    pub(crate) fn on_assert_reply(
        &mut self,
        now: Instant,
        id: u64,
        to: u8,
        r: Result<i32, TransportError>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let (key, name) = (job.domain, job.name);
        match r {
            Ok(v) if v < 0 => {
                log::error!("o2dlm: node {to} rejected our ASSERT_MASTER for {name}: {v}");
            }
            Ok(v) => {
                if v & DLM_ASSERT_RESPONSE_REASSERT != 0
                    && !matches!(job.purpose, AssertPurpose::FinishMigration { .. })
                {
                    job.reassert = true;
                }
                if v & DLM_ASSERT_RESPONSE_MASTERY_REF != 0 {
                    if let Some(r) = self
                        .domains
                        .get_mut(&key)
                        .and_then(|d| d.resources.get_mut(&name))
                    {
                        r.refmap.insert(to);
                    }
                }
            }
            Err(_) => {}
        }
        self.assert_job_next(now, id);
    }

    pub(crate) fn on_migrate_request_reply(
        &mut self,
        now: Instant,
        id: u64,
        to: u8,
        r: Result<i32, TransportError>,
    ) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let (key, name) = (job.domain, job.name);
        if let Ok(v) = r {
            if v > 0 && v & DLM_MIGRATE_RESPONSE_MASTERY_REF != 0 {
                if let Some(r) = self
                    .domains
                    .get_mut(&key)
                    .and_then(|d| d.resources.get_mut(&name))
                {
                    r.refmap.insert(to);
                }
            }
        }
        self.assert_job_next(now, id);
    }

    fn assert_job_done(&mut self, now: Instant, job: AssertJob) {
        let me = self.me;
        let (key, name) = (job.domain, job.name);
        if let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        {
            r.assert_jobs = r.assert_jobs.saturating_sub(1);
        }
        match job.purpose {
            AssertPurpose::Mastery => {
                let Some(d) = self.domains.get_mut(&key) else {
                    return;
                };
                d.mles.remove(&name);
                if let Some(r) = d.resources.get_mut(&name) {
                    r.owner = Some(me);
                    r.mastery = None;
                }
                self.kick_resource(now, key, name);
                self.after_change(now, key, name);
            }
            AssertPurpose::Cleanup | AssertPurpose::Requery => {}
            AssertPurpose::FinishMigration { .. } => self.migration_target_done(now, key, name),
        }
        self.deref_after_assert(key, name);
    }

    // ===== handlers ==========================================================

    pub(crate) fn handle_master_request(
        &mut self,
        now: Instant,
        key: u32,
        from: u8,
        m: &MasterRequest,
        token: ReplyToken,
    ) {
        let me = self.me;
        let requester = m.node_idx;
        let name = m.name;
        let Some(d) = self.domains.get_mut(&key) else {
            self.reply(token, from, DLM_MASTER_RESP_NO);
            return;
        };
        if d.state == DomState::Joining {
            self.reply(token, from, DLM_MASTER_RESP_NO);
            return;
        }
        let mut assert = false;
        let resp = if let Some(r) = d.resources.get_mut(&name) {
            if r.recovering || r.migrating {
                DLM_MASTER_RESP_ERROR
            } else if r.owner == Some(me) {
                r.refmap.insert(requester);
                assert = true;
                DLM_MASTER_RESP_YES
            } else if r.owner.is_some() {
                DLM_MASTER_RESP_NO
            } else {
                match d.mles.get_mut(&name) {
                    Some(mle) => match mle.kind {
                        MleKind::Block | MleKind::Migration => {
                            mle.maybe_map.insert(requester);
                            DLM_MASTER_RESP_NO
                        }
                        MleKind::Master => {
                            if mle.master == Some(me) {
                                r.refmap.insert(requester);
                                assert = true;
                                DLM_MASTER_RESP_YES
                            } else if mle.master.is_some() {
                                DLM_MASTER_RESP_NO
                            } else {
                                mle.maybe_map.insert(requester);
                                DLM_MASTER_RESP_MAYBE
                            }
                        }
                    },
                    None => DLM_MASTER_RESP_NO,
                }
            }
        } else {
            match d.mles.get_mut(&name) {
                None => {
                    let mut mle = Mle::new(MleKind::Block);
                    mle.maybe_map.insert(requester);
                    d.mles.insert(name, mle);
                    DLM_MASTER_RESP_NO
                }
                Some(mle) => {
                    mle.maybe_map.insert(requester);
                    if mle.kind == MleKind::Master {
                        DLM_MASTER_RESP_MAYBE
                    } else {
                        DLM_MASTER_RESP_NO
                    }
                }
            }
        };
        debug_assert!((0..=3).contains(&resp), "MASTER_REQUEST reply must be 0..3");
        self.reply(token, from, resp);
        if assert {
            let targets = self
                .domains
                .get(&key)
                .map(|d| d.others(me))
                .unwrap_or_default();
            self.start_assert_job(
                now,
                key,
                name,
                DLM_ASSERT_MASTER_MLE_CLEANUP,
                AssertPurpose::Cleanup,
                targets,
            );
        }
        let _ = now;
    }

    /// ASSERT_MASTER (§5.3). Never answers with a negative value: a Linux
    /// sender BUGs on it; inconsistencies are logged instead.
    pub(crate) fn handle_assert_master(
        &mut self,
        now: Instant,
        key: u32,
        _from: u8,
        m: &AssertMaster,
    ) -> i32 {
        let me = self.me;
        let master = m.node_idx;
        let name = m.name;
        let Some(d) = self.domains.get_mut(&key) else {
            return 0;
        };
        let mle_kind = d.mles.get(&name).map(|x| x.kind);
        if mle_kind == Some(MleKind::Migration)
            && m.flags & (DLM_ASSERT_MASTER_MLE_CLEANUP | DLM_ASSERT_MASTER_FINISH_MIGRATION) == 0
        {
            return 0;
        }
        if let Some(r) = d.resources.get(&name) {
            if r.recovering {
                log::error!("o2dlm: assert of {name} by {master} while recovering it");
                return 0;
            }
            match (mle_kind, r.owner) {
                (None, Some(o)) if o != master => {
                    log::error!("o2dlm: node {master} asserts {name}, owned by {o} here");
                    if o == me {
                        return 0;
                    }
                }
                (Some(MleKind::Master | MleKind::Block), Some(o)) if o != master => {
                    log::error!("o2dlm: node {master} asserts {name}, owned by {o} here");
                    return 0;
                }
                _ => {}
            }
        }
        if mle_kind == Some(MleKind::Migration) {
            let nm = d.mles.get(&name).and_then(|x| x.new_master);
            if nm != Some(master) {
                log::error!("o2dlm: node {master} asserts {name} during a migration to {nm:?}");
                return 0;
            }
        }
        let mut ret = 0;
        let mle = d.mles.remove(&name);
        if let Some(mle) = &mle {
            if mle.kind == MleKind::Master
                && mle.response_map.iter().any(|&n| n != me && n != master)
            {
                ret |= DLM_ASSERT_RESPONSE_REASSERT;
            }
        }
        if let Some(r) = d.resources.get_mut(&name) {
            let new_owner = match &mle {
                Some(x) if x.kind == MleKind::Migration => x.new_master.unwrap_or(master),
                _ => master,
            };
            if r.owner == Some(me) && new_owner != me && r.mig_source.is_none() {
                log::error!("o2dlm: node {master} asserts {name} which we master; ignored");
                return 0;
            }
            r.owner = Some(new_owner);
            r.migrating = false;
            if let Some(ms) = r.mig_source.as_mut() {
                if ms.target == new_owner {
                    ms.finished = true;
                }
            }
            if mle.is_some() {
                ret |= DLM_ASSERT_RESPONSE_MASTERY_REF;
            }
        }
        debug_assert!(ret >= 0);
        let _ = now;
        ret
    }

    /// Work an ASSERT_MASTER unblocked, done after its reply is queued.
    pub(crate) fn after_assert_master(&mut self, now: Instant, key: u32, name: LockName) {
        self.migration_source_step(now, key, name);
        self.mastery_step(now, key, name);
        self.kick_resource(now, key, name);
    }

    pub(crate) fn handle_master_requery(
        &mut self,
        now: Instant,
        key: u32,
        from: u8,
        m: &MasterRequery,
        token: ReplyToken,
    ) {
        let me = self.me;
        let owner = self
            .domains
            .get(&key)
            .and_then(|d| d.resources.get(&m.name))
            .and_then(|r| r.owner);
        self.reply(
            token,
            from,
            i32::from(owner.unwrap_or(DLM_LOCK_RES_OWNER_UNKNOWN)),
        );
        if owner == Some(me) {
            let targets = self
                .domains
                .get(&key)
                .map(|d| d.others(me))
                .unwrap_or_default();
            self.start_assert_job(
                now,
                key,
                m.name,
                DLM_ASSERT_MASTER_REQUERY,
                AssertPurpose::Requery,
                targets,
            );
        }
    }

    /// Creates the resource (owner unknown) if needed.
    pub(crate) fn resource_entry(&mut self, key: u32, name: LockName) -> Option<&mut Resource> {
        let d = self.domains.get_mut(&key)?;
        Some(
            d.resources
                .entry(name)
                .or_insert_with(|| Resource::new(name, None)),
        )
    }
}
