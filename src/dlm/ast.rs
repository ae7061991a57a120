//! AST/BAST delivery (§6.2 "AST/BAST delivery", §6.3 "PROXY_AST handler"):
//! the master turns queue changes into local callbacks or PROXY_AST
//! messages; the lock owner completes its pending request when the AST
//! comes, even if the request's own reply has not arrived yet (the
//! AST-before-reply race).

use super::domain::{OpKind, Stage};
use super::lockres::{Lvb, Notify};
use super::mode::Mode;
use super::node::*;
use crate::wire::dlm::*;
use std::time::Instant;

impl Dlm {
    /// Something changed on a resource: if we master it (and it is not
    /// frozen by a migration or recovery), grant what can be granted and
    /// send the notifications.
    pub(crate) fn after_change(&mut self, now: Instant, key: u32, name: LockName) {
        let me = self.me;
        let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        else {
            return;
        };
        if r.owner != Some(me)
            || r.migrating
            || r.recovering
            || r.recovery_waiting
            || r.mig_target.is_some()
        {
            return;
        }
        r.q.shuffle();
        let notes = r.q.take_notifications();
        self.deliver(now, key, name, notes);
        self.note_maybe_unused(now, key, name);
    }

    fn deliver(&mut self, now: Instant, key: u32, name: LockName, notes: Vec<Notify>) {
        let me = self.me;
        let lvb_invalid = self
            .domains
            .get(&key)
            .and_then(|d| d.resources.get(&name))
            .is_some_and(|r| r.q.lvb_invalid);
        // The kernel grants `$RECOVERY` silently: no AST for it, ever.
        let silent = name.as_bytes() == DLM_RECOVERY_LOCK_NAME;
        for n in notes {
            match n {
                Notify::Ast { key: lk, mode, lvb } => {
                    if lk.node == me {
                        self.complete_grant(now, lk.cookie, mode, lvb);
                        if lvb.is_some() {
                            if let Some(l) = self.locks.get_mut(&lk.cookie) {
                                l.lvb_invalid = lvb_invalid;
                            }
                        }
                    } else if silent {
                        log::debug!("o2dlm: $RECOVERY granted to node {}", lk.node);
                    } else {
                        let flags = if lvb.is_some() { LKM_GET_LVB } else { 0 };
                        self.send(
                            lk.node,
                            key,
                            DlmMessage::ProxyAst(ProxyAst {
                                cookie: lk.cookie,
                                flags,
                                node_idx: me,
                                ast_type: DLM_AST,
                                blocked_type: 0,
                                name,
                                lvb,
                            }),
                            Pending::Ignored,
                        );
                    }
                }
                Notify::Bast { key: lk, blocked } => {
                    if lk.node == me {
                        self.deliver_bast(lk.cookie, blocked);
                    } else {
                        self.send(
                            lk.node,
                            key,
                            DlmMessage::ProxyAst(ProxyAst {
                                cookie: lk.cookie,
                                flags: 0,
                                node_idx: me,
                                ast_type: DLM_BAST,
                                blocked_type: blocked.to_wire() as u8,
                                name,
                                lvb: None,
                            }),
                            Pending::Ignored,
                        );
                    }
                }
            }
        }
    }

    /// Our pending create/convert was granted at `mode`.
    pub(crate) fn complete_grant(
        &mut self,
        _now: Instant,
        cookie: u64,
        mode: Mode,
        lvb: Option<Lvb>,
    ) {
        let Some(l) = self.locks.get_mut(&cookie) else {
            return;
        };
        if matches!(l.op.map(|o| o.kind), Some(OpKind::Unlock { .. })) {
            return;
        }
        l.granted = Some(mode);
        if let Some(super::domain::Op {
            stage: Stage::Sent(id),
            ..
        }) = l.op
        {
            l.reply_pending = Some(id);
        }
        l.op = None;
        // A cancel still in flight will be answered CANCELGRANT.
        if let Some(v) = lvb {
            l.lvb = v;
            l.lvb_invalid = false;
        }
        let (internal, domain) = (l.internal, l.domain);
        self.disarm(|t| *t == Timer::OpRetry(cookie));
        if internal {
            self.reco_lock_granted(_now, domain, cookie);
            return;
        }
        self.event(Event::Ast {
            lock: LockId(cookie),
            mode,
            lvb,
        });
    }

    fn deliver_bast(&mut self, cookie: u64, blocked: Mode) {
        let Some(l) = self.locks.get(&cookie) else {
            return;
        };
        if l.granted.is_none() || matches!(l.op.map(|o| o.kind), Some(OpKind::Unlock { .. })) {
            return;
        }
        self.event(Event::Bast {
            lock: LockId(cookie),
            blocked,
        });
    }

    /// PROXY_AST on the lock owner. Never answers RECOVERING or MIGRATING
    /// (a Linux master BUGs on them): ASTs are processed in every state.
    pub(crate) fn handle_proxy_ast(
        &mut self,
        now: Instant,
        key: u32,
        from: u8,
        m: &ProxyAst,
    ) -> i32 {
        let me = self.me;
        if m.flags & LKM_PUT_LVB != 0 && m.flags & LKM_GET_LVB != 0 {
            return DLM_BADARGS;
        }
        if m.ast_type != DLM_AST && m.ast_type != DLM_BAST {
            return DLM_IVLOCKID;
        }
        let Some(r) = self
            .domains
            .get(&key)
            .and_then(|d| d.resources.get(&m.name))
        else {
            return DLM_IVLOCKID;
        };
        if r.owner == Some(me) {
            log::error!(
                "o2dlm: PROXY_AST from node {from} for {} which we master",
                m.name
            );
            return DLM_NORMAL;
        }
        let found = self
            .locks
            .get(&m.cookie)
            .filter(|l| l.domain == key && l.name == m.name)
            .map(|l| (l.op, l.granted));
        let Some((op, granted)) = found else {
            return DLM_NORMAL;
        };
        if m.ast_type == DLM_AST {
            let mode = match op.map(|o| o.kind) {
                Some(OpKind::Create { mode, .. }) => mode,
                Some(OpKind::Convert { target, .. }) => target,
                _ => return DLM_NORMAL,
            };
            if op.is_some_and(|o| o.stage == Stage::Waiting) {
                log::warn!("o2dlm: AST for lock {:#x} not sent anywhere", m.cookie);
            }
            let lvb = if m.flags & LKM_GET_LVB != 0 {
                m.lvb
            } else {
                None
            };
            self.complete_grant(now, m.cookie, mode, lvb);
        } else if let Some(blocked) = i8::try_from(m.blocked_type).ok().and_then(Mode::from_wire) {
            if granted.is_some() {
                self.deliver_bast(m.cookie, blocked);
            }
        }
        DLM_NORMAL
    }

    /// The resource may now be ready for waiting operations, or need
    /// mastery started.
    pub(crate) fn kick_resource(&mut self, now: Instant, key: u32, name: LockName) {
        let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        else {
            return;
        };
        let idle_master =
            r.owner.is_none() && r.mastery.is_none() && r.drop == super::domain::DropState::None;
        if idle_master && !r.waiting_ops.is_empty() {
            self.start_mastery(now, key, name);
            return;
        }
        let ready = r.owner.is_some()
            && r.mastery.is_none()
            && !r.migrating
            && !r.recovering
            && !r.recovery_waiting
            && r.drop == super::domain::DropState::None
            && r.mig_target.is_none();
        if ready && !r.waiting_ops.is_empty() {
            let ops = std::mem::take(&mut r.waiting_ops);
            for c in ops {
                self.run_op(now, c);
            }
        }
    }
}
