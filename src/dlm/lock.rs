//! New locks (§6.2 "new lock", §6.3 "create"): the lock API entry, the
//! operation dispatcher shared by create/convert/unlock (wait for the
//! resource, then run at the local master or send to the remote one), and
//! the CREATE_LOCK handler.

use super::domain::{DomState, DropState, Op, OpKind, Stage, UserLock};
use super::lockres::{Lock, LockKey, Refusal};
use super::mode::Mode;
use super::node::*;
use crate::wire::dlm::*;
use std::time::Instant;

/// Statuses after which a requester waits and tries again.
pub(crate) fn is_retry_status(s: i32) -> bool {
    matches!(s, DLM_RECOVERING | DLM_MIGRATING | DLM_FORWARD)
}

impl Dlm {
    /// Requests a new lock on `name` at `mode` (the kernel's dlmlock without
    /// LKM_CONVERT). Completion: `Event::Ast`, or `Event::LockFailed`.
    pub fn lock(
        &mut self,
        now: Instant,
        domain: DomainId,
        name: &[u8],
        mode: Mode,
        flags: LockFlags,
    ) -> Result<LockId, ApiError> {
        let key = domain.0;
        let d = self.domains.get(&key).ok_or(ApiError::UnknownDomain)?;
        if d.state != DomState::Joined {
            return Err(ApiError::NotJoined);
        }
        if name.is_empty() || name.len() > DLM_LOCKID_NAME_MAX {
            return Err(ApiError::BadName);
        }
        let lname = LockName::new(name).map_err(|_| ApiError::BadName)?;
        let cookie = self.new_cookie();
        self.locks.insert(
            cookie,
            UserLock {
                cookie,
                domain: key,
                name: lname,
                granted: None,
                op: Some(Op {
                    kind: OpKind::Create {
                        mode,
                        noqueue: flags.noqueue,
                        valblk: flags.valblk,
                    },
                    stage: Stage::Waiting,
                }),
                cancel: None,
                lvb: [0; 64],
                reply_pending: None,
                internal: false,
                lvb_invalid: false,
            },
        );
        self.run_op(now, cookie);
        Ok(LockId(cookie))
    }

    /// Sets the LVB a lock writes back with its next down-convert or
    /// unlock from EX (the kernel's lksb LVB).
    pub fn set_lvb(&mut self, lock: LockId, lvb: &[u8]) -> Result<(), ApiError> {
        let l = self.locks.get_mut(&lock.0).ok_or(ApiError::UnknownLock)?;
        let n = lvb.len().min(64);
        l.lvb_invalid = false;
        l.lvb = [0; 64];
        l.lvb[..n].copy_from_slice(&lvb[..n]);
        Ok(())
    }

    /// Runs the waiting operation of a lock: at once if the master is
    /// known and the resource is stable, else once it is.
    pub(crate) fn run_op(&mut self, now: Instant, cookie: u64) {
        let me = self.me;
        let Some(l) = self.locks.get(&cookie) else {
            return;
        };
        let Some(op) = l.op else { return };
        if op.stage != Stage::Waiting || l.reply_pending.is_some() {
            return;
        }
        let (key, name, internal) = (l.domain, l.name, l.internal);
        let Some(d) = self.domains.get_mut(&key) else {
            self.locks.remove(&cookie);
            return;
        };
        // While this node runs a recovery, new requests wait for its end
        // (the kernel's dlm_wait_for_recovery in dlmlock); unlocks go on.
        let parks = matches!(op.kind, OpKind::Create { .. } | OpKind::Convert { .. });
        if d.reco.active && parks && !internal {
            if !d.reco.parked.contains(&cookie) {
                d.reco.parked.push(cookie);
            }
            return;
        }
        let Some(r) = self.resource_entry(key, name) else {
            return;
        };
        let ready = r.owner.is_some()
            && r.mastery.is_none()
            && !r.migrating
            && !r.recovering
            && !r.recovery_waiting
            && r.drop == DropState::None
            && r.mig_target.is_none();
        if !ready {
            if !r.waiting_ops.contains(&cookie) {
                r.waiting_ops.push(cookie);
            }
            let start = r.owner.is_none() && r.mastery.is_none() && r.drop == DropState::None;
            if start {
                self.start_mastery(now, key, name);
            }
            return;
        }
        r.unused_since = None;
        let Some(owner) = r.owner else { return };
        if owner == me {
            self.local_op(now, cookie);
        } else {
            self.remote_op(now, cookie, owner);
        }
    }

    /// The operation at the master, which is this node.
    fn local_op(&mut self, now: Instant, cookie: u64) {
        let me = self.me;
        let Some(l) = self.locks.get(&cookie) else {
            return;
        };
        let Some(op) = l.op else { return };
        let (key, name, granted, lvb) = (l.domain, l.name, l.granted, l.lvb);
        let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        else {
            return;
        };
        let lk = LockKey { node: me, cookie };
        match op.kind {
            OpKind::Create {
                mode,
                noqueue,
                valblk,
            } => {
                let mut lock = Lock::new(lk, mode);
                lock.get_lvb = valblk && mode > Mode::Nl;
                match r.q.create(lock, noqueue) {
                    Ok(()) => {
                        self.set_stage(cookie, Stage::Accepted);
                        self.after_change(now, key, name);
                    }
                    Err(e) => self.lock_failed(now, cookie, refusal_status(e)),
                }
            }
            OpKind::Convert {
                target,
                noqueue,
                valblk,
            } => {
                let put = (valblk && granted == Some(Mode::Ex)).then_some(lvb);
                match r.q.convert(lk, target, valblk, put, noqueue) {
                    Ok(()) => {
                        self.set_stage(cookie, Stage::Accepted);
                        self.after_change(now, key, name);
                    }
                    Err(e) => {
                        if let Some(l) = self.locks.get_mut(&cookie) {
                            l.op = None;
                        }
                        self.event(Event::ConvertFailed {
                            lock: LockId(cookie),
                            status: refusal_status(e),
                        });
                    }
                }
            }
            OpKind::Unlock { valblk } => {
                let put = (valblk && granted == Some(Mode::Ex)).then_some(lvb);
                if let Err(e) = r.q.unlock(lk, put) {
                    log::warn!("o2dlm: local unlock of {name}: {e:?}");
                }
                let internal = self.locks.remove(&cookie).is_some_and(|l| l.internal);
                if internal {
                    self.reco_lock_unlocked(now, key, cookie);
                } else {
                    self.event(Event::Unlocked {
                        lock: LockId(cookie),
                    });
                }
                self.after_change(now, key, name);
            }
        }
    }

    /// The operation sent to the master `owner`.
    fn remote_op(&mut self, _now: Instant, cookie: u64, owner: u8) {
        let me = self.me;
        let Some(l) = self.locks.get(&cookie) else {
            return;
        };
        let Some(op) = l.op else { return };
        let (key, name, granted, lvb) = (l.domain, l.name, l.granted, l.lvb);
        let internal = l.internal;
        let (msg, what) = match op.kind {
            OpKind::Create {
                mode,
                noqueue,
                valblk,
            } => {
                let mut flags = 0;
                if noqueue {
                    flags |= LKM_NOQUEUE;
                }
                if internal {
                    flags |= LKM_RECOVERY;
                }
                // VALBLK travels with GET_LVB for PR/EX and is dropped for NL.
                if valblk && mode > Mode::Nl {
                    flags |= LKM_VALBLK | LKM_GET_LVB;
                }
                (
                    DlmMessage::CreateLock(CreateLock {
                        cookie,
                        flags,
                        node_idx: me,
                        requested_type: mode.to_wire(),
                        name,
                    }),
                    Pending::Create(cookie),
                )
            }
            OpKind::Convert {
                target,
                noqueue,
                valblk,
            } => {
                let mut flags = LKM_CONVERT;
                if noqueue {
                    flags |= LKM_NOQUEUE;
                }
                let mut put = None;
                if valblk {
                    if granted == Some(Mode::Ex) {
                        flags |= LKM_VALBLK | LKM_PUT_LVB;
                        put = Some(lvb);
                    } else if target != Mode::Nl {
                        flags |= LKM_VALBLK | LKM_GET_LVB;
                    }
                }
                (
                    DlmMessage::ConvertLock(ConvertLock {
                        cookie,
                        flags,
                        node_idx: me,
                        requested_type: target.to_wire(),
                        name,
                        lvb: put,
                    }),
                    Pending::Convert(cookie),
                )
            }
            OpKind::Unlock { valblk } => {
                let (flags, put) = if valblk && granted == Some(Mode::Ex) {
                    (LKM_VALBLK | LKM_PUT_LVB, Some(lvb))
                } else {
                    (0, None)
                };
                (
                    DlmMessage::UnlockLock(UnlockLock {
                        cookie,
                        flags,
                        node_idx: me,
                        name,
                        lvb: put,
                    }),
                    Pending::Unlock(cookie),
                )
            }
        };
        let id = self.send(owner, key, msg, what);
        self.set_stage(cookie, Stage::Sent(id));
    }

    pub(crate) fn set_stage(&mut self, cookie: u64, stage: Stage) {
        if let Some(op) = self.locks.get_mut(&cookie).and_then(|l| l.op.as_mut()) {
            op.stage = stage;
        }
    }

    /// Was this reply for the operation currently in flight on `cookie`?
    pub(crate) fn op_sent_as(&self, cookie: u64, id: RequestId) -> bool {
        self.locks
            .get(&cookie)
            .and_then(|l| l.op)
            .is_some_and(|op| op.stage == Stage::Sent(id))
    }

    /// Puts the operation back to waiting and tries again after `ms`.
    pub(crate) fn op_retry_later(&mut self, now: Instant, cookie: u64, ms: u64) {
        self.set_stage(cookie, Stage::Waiting);
        self.arm(Self::after(now, ms), Timer::OpRetry(cookie));
    }

    /// The reply of a request an AST already completed: the lock may send
    /// again.
    pub(crate) fn late_reply(&mut self, now: Instant, cookie: u64, id: RequestId) {
        let Some(l) = self.locks.get_mut(&cookie) else {
            return;
        };
        if l.reply_pending == Some(id) {
            l.reply_pending = None;
            self.run_op(now, cookie);
        }
    }

    pub(crate) fn retry_op(&mut self, now: Instant, cookie: u64) {
        let Some(l) = self.locks.get(&cookie) else {
            return;
        };
        if l.cancel == Some(Stage::Waiting) {
            if l.op.is_some_and(|o| o.stage == Stage::Waiting) {
                // The request itself failed on the way (its master is
                // gone) and waits to be sent again: withdraw it here, as
                // the API does before a request is sent.
                self.cancel_done(now, cookie);
            } else {
                self.send_cancel(now, cookie);
            }
            return;
        }
        self.run_op(now, cookie);
    }

    pub(crate) fn on_create_reply(
        &mut self,
        now: Instant,
        cookie: u64,
        id: RequestId,
        r: Result<i32, TransportError>,
    ) {
        if !self.op_sent_as(cookie, id) {
            // Already granted by an AST that overtook this reply.
            self.late_reply(now, cookie, id);
            return;
        }
        let internal = self.locks.get(&cookie).is_some_and(|l| l.internal);
        match r {
            Ok(DLM_NORMAL) if internal => {
                // `$RECOVERY` grants carry no AST: NORMAL is the grant.
                self.set_stage(cookie, Stage::Accepted);
                self.complete_grant(now, cookie, Mode::Ex, None);
            }
            Ok(DLM_NORMAL) => self.set_stage(cookie, Stage::Accepted),
            Ok(s) if is_retry_status(s) => self.op_retry_later(now, cookie, LOCK_RETRY_MS),
            Err(_) => self.op_retry_later(now, cookie, LOCK_RETRY_MS),
            Ok(status) => self.lock_failed(now, cookie, status),
        }
    }

    /// A new lock was refused: it is gone.
    pub(crate) fn lock_failed(&mut self, now: Instant, cookie: u64, status: i32) {
        let Some(l) = self.locks.remove(&cookie) else {
            return;
        };
        if l.internal {
            self.reco_lock_failed(now, l.domain, cookie, status);
        } else {
            self.event(Event::LockFailed {
                lock: LockId(cookie),
                status,
            });
        }
    }

    /// CREATE_LOCK at the master (§6.2). Never answers DLM_REJECTED: a Linux
    /// requester BUGs on it.
    pub(crate) fn handle_create(
        &mut self,
        now: Instant,
        key: u32,
        from: u8,
        m: &CreateLock,
        token: ReplyToken,
    ) {
        let status = self.create_at_master(now, key, m);
        debug_assert!(status != DLM_REJECTED);
        self.reply(token, from, status);
    }

    fn create_at_master(&mut self, now: Instant, key: u32, m: &CreateLock) -> i32 {
        let me = self.me;
        let Some(mode) = Mode::from_wire(m.requested_type) else {
            return DLM_BADPARAM;
        };
        if m.flags & LKM_PUT_LVB != 0 {
            return DLM_BADARGS;
        }
        let Some(d) = self.domains.get_mut(&key) else {
            return DLM_IVLOCKID;
        };
        if d.state == DomState::Joining {
            return DLM_IVLOCKID;
        }
        let Some(r) = d.resources.get_mut(&m.name) else {
            return DLM_IVLOCKID;
        };
        if let Some(s) = master_state_status(r, me) {
            return s;
        }
        let lk = LockKey {
            node: m.node_idx,
            cookie: m.cookie,
        };
        if r.q.find(lk).is_some() {
            return DLM_NORMAL;
        }
        let mut lock = Lock::new(lk, mode);
        lock.get_lvb = m.flags & LKM_GET_LVB != 0;
        match r.q.create(lock, m.flags & LKM_NOQUEUE != 0) {
            Ok(()) => {
                if m.node_idx != me {
                    r.refmap.insert(m.node_idx);
                }
                r.unused_since = None;
                self.after_change(now, key, m.name);
                DLM_NORMAL
            }
            Err(e) => refusal_status(e),
        }
    }
}

/// A resource's state as a refusal to a lock request at the "master".
pub(crate) fn master_state_status(r: &super::domain::Resource, me: u8) -> Option<i32> {
    if r.recovering || r.recovery_waiting {
        return Some(DLM_RECOVERING);
    }
    if r.migrating || r.mig_source.is_some() || r.mig_target.is_some() {
        return Some(DLM_MIGRATING);
    }
    if r.owner != Some(me) {
        return Some(DLM_FORWARD);
    }
    None
}

pub(crate) fn refusal_status(e: Refusal) -> i32 {
    match e {
        Refusal::NotQueued => DLM_NOTQUEUED,
        Refusal::Denied => DLM_DENIED,
        Refusal::UnknownLock => DLM_IVLOCKID,
        Refusal::CancelGrant => DLM_CANCELGRANT,
    }
}
