//! Unlock and cancel (§6.2 "unlock"/"cancel", §6.3): the API call, replies
//! on the requesting side and the UNLOCK_LOCK handler at the master.

use super::domain::{Op, OpKind, Stage};
use super::lock::{is_retry_status, master_state_status, refusal_status};
use super::lockres::{LockKey, Lvb, Queue};
use super::node::*;
use crate::wire::dlm::*;
use std::time::Instant;

impl Dlm {
    /// Unlocks a granted lock (`Event::Unlocked`), or with `flags.cancel`
    /// withdraws its pending create/convert (`Event::Cancelled`, or the Ast
    /// if the master had granted it already). With `flags.valblk` an EX
    /// holder writes `lvb` (or its LVB copy) back.
    pub fn unlock(
        &mut self,
        now: Instant,
        lock: LockId,
        flags: UnlockFlags,
        lvb: Option<Lvb>,
    ) -> Result<(), ApiError> {
        let cookie = lock.0;
        let l = self.locks.get_mut(&cookie).ok_or(ApiError::UnknownLock)?;
        if flags.cancel {
            let Some(op) = l.op else {
                return Err(ApiError::Denied);
            };
            if matches!(op.kind, OpKind::Unlock { .. }) {
                return Err(ApiError::Denied);
            }
            if l.cancel.is_some() {
                return Err(ApiError::Busy);
            }
            if op.stage == Stage::Waiting {
                // Not at any master yet: withdraw here.
                self.cancel_done(now, cookie);
                return Ok(());
            }
            self.send_cancel(now, cookie);
            return Ok(());
        }
        if l.op.is_some() {
            return Err(ApiError::Busy);
        }
        if l.granted.is_none() {
            return Err(ApiError::Denied);
        }
        if let Some(v) = lvb {
            l.lvb = v;
        }
        l.op = Some(Op {
            kind: OpKind::Unlock {
                valblk: flags.valblk,
            },
            stage: Stage::Waiting,
        });
        self.run_op(now, cookie);
        Ok(())
    }

    /// Sends (or performs, at the local master) the cancel of `cookie`.
    pub(crate) fn send_cancel(&mut self, now: Instant, cookie: u64) {
        let me = self.me;
        let Some(l) = self.locks.get(&cookie) else {
            return;
        };
        let (key, name) = (l.domain, l.name);
        let owner = self
            .domains
            .get(&key)
            .and_then(|d| d.resources.get(&name))
            .and_then(|r| r.owner);
        match owner {
            Some(o) if o == me => {
                let lk = LockKey { node: me, cookie };
                let res = self
                    .domains
                    .get_mut(&key)
                    .and_then(|d| d.resources.get_mut(&name))
                    .map(|r| r.q.cancel(lk));
                match res {
                    Some(Ok(_)) | Some(Err(super::lockres::Refusal::UnknownLock)) | None => {
                        self.cancel_done(now, cookie);
                        self.after_change(now, key, name);
                    }
                    Some(Err(_)) => {
                        // Granted already: the AST completes the request.
                        if let Some(l) = self.locks.get_mut(&cookie) {
                            l.cancel = None;
                        }
                    }
                }
            }
            Some(o) => {
                let id = self.send(
                    o,
                    key,
                    DlmMessage::UnlockLock(UnlockLock {
                        cookie,
                        flags: LKM_CANCEL,
                        node_idx: me,
                        name,
                        lvb: None,
                    }),
                    Pending::Cancel(cookie),
                );
                if let Some(l) = self.locks.get_mut(&cookie) {
                    l.cancel = Some(Stage::Sent(id));
                }
            }
            None => self.cancel_done(now, cookie),
        }
    }

    /// The pending request is withdrawn: a create disappears, a convert
    /// falls back to its granted mode.
    pub(crate) fn cancel_done(&mut self, _now: Instant, cookie: u64) {
        let Some(l) = self.locks.get_mut(&cookie) else {
            return;
        };
        l.cancel = None;
        let (key, name) = (l.domain, l.name);
        match l.op.map(|o| o.kind) {
            Some(OpKind::Create { .. }) => {
                self.locks.remove(&cookie);
                if let Some(r) = self
                    .domains
                    .get_mut(&key)
                    .and_then(|d| d.resources.get_mut(&name))
                {
                    r.waiting_ops.retain(|&c| c != cookie);
                }
            }
            Some(OpKind::Convert { .. }) => l.op = None,
            _ => return,
        }
        self.disarm(|t| *t == Timer::OpRetry(cookie));
        self.event(Event::Cancelled {
            lock: LockId(cookie),
        });
    }

    pub(crate) fn on_cancel_reply(
        &mut self,
        now: Instant,
        cookie: u64,
        id: RequestId,
        r: Result<i32, TransportError>,
    ) {
        let Some(l) = self.locks.get_mut(&cookie) else {
            return;
        };
        if l.cancel != Some(Stage::Sent(id)) {
            return;
        }
        match r {
            Ok(DLM_NORMAL) => self.cancel_done(now, cookie),
            Ok(DLM_CANCELGRANT) => l.cancel = None,
            Ok(s) if is_retry_status(s) => {
                l.cancel = Some(Stage::Waiting);
                self.arm(Self::after(now, UNLOCK_RETRY_MS), Timer::OpRetry(cookie));
            }
            Err(_) => {
                l.cancel = Some(Stage::Waiting);
                self.arm(Self::after(now, UNLOCK_RETRY_MS), Timer::OpRetry(cookie));
            }
            Ok(other) => {
                log::warn!("o2dlm: cancel of lock {cookie:#x} answered {other}");
                l.cancel = None;
            }
        }
    }

    pub(crate) fn on_unlock_reply(
        &mut self,
        now: Instant,
        cookie: u64,
        id: RequestId,
        r: Result<i32, TransportError>,
    ) {
        if !self.op_sent_as(cookie, id) {
            return;
        }
        match r {
            Ok(s) if is_retry_status(s) => self.op_retry_later(now, cookie, UNLOCK_RETRY_MS),
            other => {
                // NORMAL; a transport failure counts as done (recovery will
                // hand the state to a new master); anything else means the
                // master has no such lock, so it is gone as well.
                if !matches!(other, Ok(DLM_NORMAL) | Err(_)) {
                    log::warn!("o2dlm: unlock of lock {cookie:#x} answered {other:?}");
                }
                let l = self.locks.remove(&cookie);
                if let Some(l) = l {
                    if l.internal {
                        self.reco_lock_unlocked(now, l.domain, cookie);
                    } else {
                        self.event(Event::Unlocked {
                            lock: LockId(cookie),
                        });
                    }
                    self.note_maybe_unused(now, l.domain, l.name);
                }
            }
        }
    }

    /// UNLOCK_LOCK (plain or cancel) at the master.
    pub(crate) fn handle_unlock(
        &mut self,
        now: Instant,
        key: u32,
        from: u8,
        m: &UnlockLock,
        token: ReplyToken,
    ) {
        let status = self.unlock_at_master(now, key, m);
        debug_assert!(status != DLM_REJECTED);
        self.reply(token, from, status);
    }

    fn unlock_at_master(&mut self, now: Instant, key: u32, m: &UnlockLock) -> i32 {
        let me = self.me;
        if m.flags & LKM_GET_LVB != 0 {
            return DLM_BADARGS;
        }
        let cancel = m.flags & LKM_CANCEL != 0;
        if cancel && m.flags & LKM_PUT_LVB != 0 {
            return DLM_BADARGS;
        }
        let Some(d) = self.domains.get_mut(&key) else {
            return DLM_FORWARD;
        };
        let Some(r) = d.resources.get_mut(&m.name) else {
            return DLM_FORWARD;
        };
        if let Some(s) = master_state_status(r, me) {
            return s;
        }
        let lk = LockKey {
            node: m.node_idx,
            cookie: m.cookie,
        };
        let status = if cancel {
            match r.q.cancel(lk) {
                Ok(Queue::Blocked | Queue::Converting | Queue::Granted) => DLM_NORMAL,
                Err(e) => refusal_status(e),
            }
        } else {
            let put = if m.flags & LKM_PUT_LVB != 0 {
                m.lvb
            } else {
                None
            };
            match r.q.unlock(lk, put) {
                Ok(_) => DLM_NORMAL,
                Err(e) => refusal_status(e),
            }
        };
        if status == DLM_NORMAL {
            self.after_change(now, key, m.name);
        }
        status
    }
}
