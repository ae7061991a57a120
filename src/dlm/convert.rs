//! Conversions (§6.2 "convert", §6.3 "convert"): the API call, the reply
//! on the requesting side and the CONVERT_LOCK handler at the master.

use super::domain::{DomState, Op, OpKind, Stage};
use super::lock::{is_retry_status, master_state_status, refusal_status};
use super::lockres::LockKey;
use super::lockres::Lvb;
use super::mode::Mode;
use super::node::*;
use crate::wire::dlm::*;
use std::time::Instant;

impl Dlm {
    /// Converts a granted lock to `mode`. With `flags.valblk`, an EX holder
    /// writes `lvb` (or its current LVB copy when None) back to the master;
    /// a PR/NL holder going up gets the LVB with the grant. Completion:
    /// `Event::Ast` or `Event::ConvertFailed`.
    pub fn convert(
        &mut self,
        now: Instant,
        lock: LockId,
        mode: Mode,
        flags: LockFlags,
        lvb: Option<Lvb>,
    ) -> Result<(), ApiError> {
        let l = self.locks.get_mut(&lock.0).ok_or(ApiError::UnknownLock)?;
        if l.op.is_some() {
            return Err(ApiError::Busy);
        }
        if l.granted.is_none() {
            return Err(ApiError::Denied);
        }
        if self
            .domains
            .get(&l.domain)
            .is_none_or(|d| d.state == DomState::Joining)
        {
            return Err(ApiError::NotJoined);
        }
        if let Some(v) = lvb {
            l.lvb = v;
        }
        l.op = Some(Op {
            kind: OpKind::Convert {
                target: mode,
                noqueue: flags.noqueue,
                valblk: flags.valblk,
            },
            stage: Stage::Waiting,
        });
        self.run_op(now, lock.0);
        Ok(())
    }

    pub(crate) fn on_convert_reply(
        &mut self,
        now: Instant,
        cookie: u64,
        id: RequestId,
        r: Result<i32, TransportError>,
    ) {
        if !self.op_sent_as(cookie, id) {
            // The grant AST overtook this reply; it already completed.
            self.late_reply(now, cookie, id);
            return;
        }
        match r {
            Ok(DLM_NORMAL) => self.set_stage(cookie, Stage::Accepted),
            Ok(s) if is_retry_status(s) => self.op_retry_later(now, cookie, LOCK_RETRY_MS),
            Err(_) => self.op_retry_later(now, cookie, LOCK_RETRY_MS),
            Ok(status) => {
                if let Some(l) = self.locks.get_mut(&cookie) {
                    l.op = None;
                    l.cancel = None;
                }
                self.event(Event::ConvertFailed {
                    lock: LockId(cookie),
                    status,
                });
            }
        }
    }

    /// CONVERT_LOCK at the master.
    pub(crate) fn handle_convert(
        &mut self,
        now: Instant,
        key: u32,
        from: u8,
        m: &ConvertLock,
        token: ReplyToken,
    ) {
        let status = self.convert_at_master(now, key, m);
        debug_assert!(status != DLM_REJECTED);
        self.reply(token, from, status);
    }

    fn convert_at_master(&mut self, now: Instant, key: u32, m: &ConvertLock) -> i32 {
        let me = self.me;
        if m.flags & LKM_PUT_LVB != 0 && m.flags & LKM_GET_LVB != 0 {
            return DLM_BADARGS;
        }
        let Some(target) = Mode::from_wire(m.requested_type) else {
            return DLM_BADPARAM;
        };
        let Some(d) = self.domains.get_mut(&key) else {
            return DLM_IVLOCKID;
        };
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
        let valblk = m.flags & (LKM_VALBLK | LKM_PUT_LVB | LKM_GET_LVB) != 0;
        let put = if m.flags & LKM_PUT_LVB != 0 {
            m.lvb
        } else {
            None
        };
        match r
            .q
            .convert(lk, target, valblk, put, m.flags & LKM_NOQUEUE != 0)
        {
            Ok(()) => {
                self.after_change(now, key, m.name);
                DLM_NORMAL
            }
            Err(e) => refusal_status(e),
        }
    }
}
