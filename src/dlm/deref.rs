//! Purge and dereference (§7): unused resources are forgotten after 8 s
//! (at once while leaving); a non-master first tells the master with
//! DEREF_LOCKRES. Also the DLM "thread" tick (purge and mastery re-checks).

use super::domain::{DomState, DropState, MasteryPhase};
use super::node::*;
use crate::wire::dlm::*;
use std::time::{Duration, Instant};

impl Dlm {
    /// Nothing pins the resource: no locks, no operations, no references.
    pub(crate) fn is_unused(&self, key: u32, name: &LockName) -> bool {
        let Some(r) = self.domains.get(&key).and_then(|d| d.resources.get(name)) else {
            return false;
        };
        r.q.is_empty()
            && r.waiting_ops.is_empty()
            && r.mastery.is_none()
            && r.assert_jobs == 0
            && r.deref_later.is_empty()
            && !r.migrating
            && !r.recovering
            && !r.recovery_waiting
            && r.mig_source.is_none()
            && r.mig_target.is_none()
            && r.refmap.is_empty()
            && r.drop == DropState::None
            && r.owner.is_some()
            && !self
                .locks
                .values()
                .any(|l| l.domain == key && l.name == *name)
    }

    /// Starts the purge clock of a resource that just became unused.
    pub(crate) fn note_maybe_unused(&mut self, now: Instant, key: u32, name: LockName) {
        let unused = self.is_unused(key, &name);
        if let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        {
            if !unused {
                r.unused_since = None;
            } else if r.unused_since.is_none() {
                r.unused_since = Some(now);
            }
        }
    }

    pub(crate) fn thread_tick(&mut self, now: Instant, key: u32) {
        let Some(d) = self.domains.get(&key) else {
            return;
        };
        let names: Vec<LockName> = d.resources.keys().copied().collect();
        let shutting = d.state != DomState::Joined;
        for name in names {
            self.note_maybe_unused(now, key, name);
            let due = self
                .domains
                .get(&key)
                .and_then(|d| d.resources.get(&name))
                .and_then(|r| r.unused_since)
                .is_some_and(|t| now.duration_since(t) >= Duration::from_millis(PURGE_MS));
            if due && !shutting {
                self.purge(now, key, name);
            }
            let waiting = self
                .domains
                .get(&key)
                .and_then(|d| d.resources.get(&name))
                .and_then(|r| r.mastery.as_ref())
                .is_some_and(|j| j.phase == MasteryPhase::WaitAssert);
            if waiting {
                self.mastery_step(now, key, name);
            }
        }
        self.arm(Self::after(now, THREAD_MS), Timer::Thread(key));
    }

    /// Forgets an unused resource; a non-master copy first dereferences
    /// itself at the master.
    pub(crate) fn purge(&mut self, now: Instant, key: u32, name: LockName) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(r) = d.resources.get_mut(&name) else {
            return;
        };
        match r.owner {
            Some(o) if o != me => {
                r.drop = DropState::Dropping;
                r.unused_since = None;
                self.send(
                    o,
                    key,
                    DlmMessage::DerefLockres(DerefLockres { node_idx: me, name }),
                    Pending::Deref(name),
                );
            }
            _ => {
                d.resources.remove(&name);
            }
        }
        let _ = now;
    }

    pub(crate) fn on_deref_reply(
        &mut self,
        now: Instant,
        key: u32,
        name: LockName,
        to: u8,
        r: Result<i32, TransportError>,
    ) {
        match r {
            Ok(DLM_DEREF_RESPONSE_INPROG) => {
                // DEREF_LOCKRES_DONE will follow.
            }
            Ok(DLM_DEREF_RESPONSE_DONE) | Err(_) => self.finish_drop(now, key, name),
            Ok(other) => {
                log::warn!("o2dlm: node {to} answered DEREF of {name} with {other}");
                self.finish_drop(now, key, name);
            }
        }
    }

    /// The dereference is complete: forget the resource; operations that
    /// queued meanwhile start over (new mastery).
    fn finish_drop(&mut self, now: Instant, key: u32, name: LockName) {
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(r) = d.resources.get(&name) else {
            return;
        };
        if r.drop != DropState::Dropping {
            return;
        }
        let ops = d
            .resources
            .remove(&name)
            .map(|r| r.waiting_ops)
            .unwrap_or_default();
        for c in ops {
            self.run_op(now, c);
        }
        if let Some(l) = self.domains.get(&key).and_then(|d| d.leave.as_ref()) {
            let _ = l;
            self.leave_pass(now, key);
        }
    }

    /// DEREF_LOCKRES at the master.
    pub(crate) fn handle_deref(
        &mut self,
        _now: Instant,
        key: u32,
        _from: u8,
        m: &DerefLockres,
    ) -> i32 {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return EINVAL;
        };
        let minor = d.dlm_minor;
        let Some(r) = d.resources.get_mut(&m.name) else {
            log::warn!(
                "o2dlm: DEREF of unknown {} from node {}",
                m.name,
                m.node_idx
            );
            return EINVAL;
        };
        if r.owner != Some(me) {
            log::warn!(
                "o2dlm: DEREF of {} from node {}, not ours",
                m.name,
                m.node_idx
            );
            return EINVAL;
        }
        if r.assert_jobs > 0 && minor >= 3 {
            // An assert round may put the bit back: finish after it.
            r.deref_later.insert(m.node_idx);
            return DLM_DEREF_RESPONSE_INPROG;
        }
        if !r.refmap.remove(&m.node_idx) {
            log::debug!(
                "o2dlm: DEREF of {} from node {} not in refmap",
                m.name,
                m.node_idx
            );
        }
        DLM_DEREF_RESPONSE_DONE
    }

    /// After an assert round: complete the DEREFs answered INPROG.
    pub(crate) fn deref_after_assert(&mut self, key: u32, name: LockName) {
        let me = self.me;
        let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        else {
            return;
        };
        if r.assert_jobs > 0 || r.deref_later.is_empty() {
            return;
        }
        let nodes: Vec<u8> = std::mem::take(&mut r.deref_later).into_iter().collect();
        for n in &nodes {
            r.refmap.remove(n);
        }
        for n in nodes {
            self.send(
                n,
                key,
                DlmMessage::DerefLockresDone(DerefLockresDone { node_idx: me, name }),
                Pending::Ignored,
            );
        }
    }

    pub(crate) fn handle_deref_done(
        &mut self,
        now: Instant,
        key: u32,
        _from: u8,
        m: &DerefLockresDone,
    ) -> i32 {
        let dropping = self
            .domains
            .get(&key)
            .and_then(|d| d.resources.get(&m.name))
            .is_some_and(|r| r.drop == DropState::Dropping);
        if !dropping {
            return EINVAL;
        }
        self.finish_drop(now, key, m.name);
        0
    }
}
