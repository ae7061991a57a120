//! A lock resource as its master keeps it: the granted, converting and
//! blocked queues, the authoritative LVB, and the grant rules ("shuffle")
//! that decide who gets the lock and who is asked to give it up (BAST).
//!
//! Pure data and rules; which node a lock belongs to only matters to the
//! caller, which turns the notifications into local callbacks or PROXY_AST
//! messages.

use super::mode::Mode;

pub const LVB_LEN: usize = 64;
pub type Lvb = [u8; LVB_LEN];

/// A lock is named by its owner node and the cookie that node gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    pub node: u8,
    pub cookie: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub key: LockKey,
    /// Granted mode; for a lock on the blocked queue, the requested mode.
    pub mode: Mode,
    /// Target of a pending conversion (the lock is on the converting queue).
    pub convert_to: Option<Mode>,
    /// Highest mode this lock blocks and has not yet been told about.
    pub highest_blocked: Option<Mode>,
    /// The owner asked for the LVB with its next grant.
    pub get_lvb: bool,
    /// LVB to store when the pending down-conversion from EX is granted.
    pub put_lvb: Option<Lvb>,
}

impl Lock {
    pub fn new(key: LockKey, mode: Mode) -> Lock {
        Lock {
            key,
            mode,
            convert_to: None,
            highest_blocked: None,
            get_lvb: false,
            put_lvb: None,
        }
    }
}

/// Which queue a lock is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Granted,
    Converting,
    Blocked,
}

/// Why a request was refused (a subset of the kernel's dlm_status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// NOQUEUE request that cannot be granted now (DLM_NOTQUEUED).
    NotQueued,
    /// The lock is not in a state that allows the operation (DLM_DENIED).
    Denied,
    /// No such lock (DLM_IVLOCKID).
    UnknownLock,
    /// Cancel arrived after the grant (DLM_CANCELGRANT).
    CancelGrant,
}

/// Something the owner of a lock must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// The request was granted; `lvb` is attached when the owner asked.
    Ast {
        key: LockKey,
        mode: Mode,
        lvb: Option<Lvb>,
    },
    /// Another request is blocked at `blocked` by this lock.
    Bast { key: LockKey, blocked: Mode },
}

#[derive(Debug, Clone, Default)]
pub struct LockRes {
    pub granted: Vec<Lock>,
    pub converting: Vec<Lock>,
    pub blocked: Vec<Lock>,
    pub lvb: StoredLvb,
    /// The LVB was lost to a node death (zeroed by the §9.6 rules, or not
    /// rebuilt by recovery) and nobody has written it since.
    pub lvb_invalid: bool,
    pending_asts: Vec<LockKey>,
    pending_basts: Vec<LockKey>,
}

/// The resource LVB; a newtype because `[u8; 64]` has no `Default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLvb(pub Lvb);

impl Default for StoredLvb {
    fn default() -> Self {
        StoredLvb([0; LVB_LEN])
    }
}

impl LockRes {
    pub fn new() -> LockRes {
        LockRes::default()
    }

    /// No locks at all (the resource may be purged if nothing else pins it).
    pub fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.blocked.is_empty()
    }

    pub fn find(&self, key: LockKey) -> Option<(Queue, &Lock)> {
        for (q, list) in [
            (Queue::Granted, &self.granted),
            (Queue::Converting, &self.converting),
            (Queue::Blocked, &self.blocked),
        ] {
            if let Some(l) = list.iter().find(|l| l.key == key) {
                return Some((q, l));
            }
        }
        None
    }

    fn queue_mut(&mut self, q: Queue) -> &mut Vec<Lock> {
        match q {
            Queue::Granted => &mut self.granted,
            Queue::Converting => &mut self.converting,
            Queue::Blocked => &mut self.blocked,
        }
    }

    fn take(&mut self, key: LockKey) -> Option<(Queue, Lock)> {
        for q in [Queue::Granted, Queue::Converting, Queue::Blocked] {
            let list = self.queue_mut(q);
            if let Some(i) = list.iter().position(|l| l.key == key) {
                return Some((q, list.remove(i)));
            }
        }
        None
    }

    /// A new lock request. Granted at once when compatible with every
    /// granted and converting lock (the blocked queue is not consulted),
    /// else queued, or refused with NOQUEUE.
    pub fn create(&mut self, lock: Lock, noqueue: bool) -> Result<(), Refusal> {
        let grantable = self
            .granted
            .iter()
            .chain(self.converting.iter())
            .all(|l| l.mode.compatible(lock.mode));
        if grantable {
            self.pending_asts.push(lock.key);
            self.granted.push(lock);
            return Ok(());
        }
        if noqueue {
            return Err(Refusal::NotQueued);
        }
        self.blocked.push(lock);
        Ok(())
    }

    /// A conversion of a granted lock to `target`. `valblk` is the
    /// requester's VALBLK; `lvb` the value it sends when it held EX.
    pub fn convert(
        &mut self,
        key: LockKey,
        target: Mode,
        valblk: bool,
        lvb: Option<Lvb>,
        noqueue: bool,
    ) -> Result<(), Refusal> {
        let Some(idx) = self.granted.iter().position(|l| l.key == key) else {
            return Err(if self.find(key).is_some() {
                Refusal::Denied
            } else {
                Refusal::UnknownLock
            });
        };
        let current = self.granted[idx].mode;
        // EX holders write the LVB back; others read it with the grant.
        let (put, get) = match (valblk, current) {
            (true, Mode::Ex) => (lvb, false),
            (true, _) => (None, target > Mode::Nl),
            (false, _) => (None, false),
        };
        if target <= current {
            let lock = &mut self.granted[idx];
            lock.mode = target;
            lock.get_lvb |= get;
            if let Some(v) = put {
                self.lvb = StoredLvb(v);
                self.lvb_invalid = false;
            }
            self.pending_asts.push(key);
            return Ok(());
        }
        let others_ok = self
            .granted
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != idx)
            .all(|(_, l)| l.mode.compatible(target))
            && self.converting.iter().all(|l| {
                l.mode.compatible(target) && l.convert_to.is_none_or(|t| t.compatible(target))
            });
        if others_ok {
            let lock = &mut self.granted[idx];
            lock.mode = target;
            lock.get_lvb |= get;
            if let Some(v) = put {
                self.lvb = StoredLvb(v);
                self.lvb_invalid = false;
            }
            self.pending_asts.push(key);
            return Ok(());
        }
        if noqueue {
            return Err(Refusal::NotQueued);
        }
        let mut lock = self.granted.remove(idx);
        lock.convert_to = Some(target);
        lock.get_lvb |= get;
        lock.put_lvb = put;
        self.converting.push(lock);
        Ok(())
    }

    /// Releases a granted lock; an EX holder's `lvb` becomes the resource's.
    pub fn unlock(&mut self, key: LockKey, lvb: Option<Lvb>) -> Result<Lock, Refusal> {
        let Some(idx) = self.granted.iter().position(|l| l.key == key) else {
            return Err(if self.find(key).is_some() {
                Refusal::Denied
            } else {
                Refusal::UnknownLock
            });
        };
        let lock = self.granted.remove(idx);
        if lock.mode == Mode::Ex {
            if let Some(v) = lvb {
                self.lvb = StoredLvb(v);
                self.lvb_invalid = false;
            }
        }
        Ok(lock)
    }

    /// Withdraws a pending request: a blocked lock goes away, a pending
    /// conversion returns to granted at its old mode.
    pub fn cancel(&mut self, key: LockKey) -> Result<Queue, Refusal> {
        match self.take(key) {
            None => Err(Refusal::UnknownLock),
            Some((Queue::Granted, lock)) => {
                self.granted.push(lock);
                Err(Refusal::CancelGrant)
            }
            Some((Queue::Blocked, _)) => Ok(Queue::Blocked),
            Some((Queue::Converting, mut lock)) => {
                lock.convert_to = None;
                lock.put_lvb = None;
                lock.get_lvb = false;
                self.granted.push(lock);
                Ok(Queue::Converting)
            }
        }
    }

    /// Whether `node` has any lock here.
    pub fn has_node_locks(&self, node: u8) -> bool {
        self.granted
            .iter()
            .chain(self.converting.iter())
            .chain(self.blocked.iter())
            .any(|l| l.key.node == node)
    }

    /// Removes every lock of `node` (it died); returns whether it held EX on
    /// granted/converting, which makes the LVB untrustworthy.
    pub fn remove_node_locks(&mut self, node: u8) -> bool {
        let held_ex = self
            .granted
            .iter()
            .chain(self.converting.iter())
            .any(|l| l.key.node == node && l.mode == Mode::Ex);
        for q in [Queue::Granted, Queue::Converting, Queue::Blocked] {
            self.queue_mut(q).retain(|l| l.key.node != node);
        }
        self.pending_asts.retain(|k| k.node != node);
        self.pending_basts.retain(|k| k.node != node);
        held_ex
    }

    fn note_blocker(lock: &mut Lock, wanted: Mode, basts: &mut Vec<LockKey>) {
        if lock.highest_blocked.is_none() {
            basts.push(lock.key);
        }
        lock.highest_blocked = Some(lock.highest_blocked.map_or(wanted, |m| m.max(wanted)));
    }

    /// Grants whatever can be granted, in queue order, and records BASTs for
    /// the holders in the way. Conversions go first; while the head
    /// conversion is stuck, no blocked lock is granted in the same pass.
    pub fn shuffle(&mut self) {
        let mut can_grant = true;
        loop {
            if !self.converting.is_empty() {
                let target = self.converting[0]
                    .convert_to
                    .unwrap_or(self.converting[0].mode);
                let head_key = self.converting[0].key;
                let mut basts = std::mem::take(&mut self.pending_basts);
                for l in self
                    .granted
                    .iter_mut()
                    .chain(self.converting.iter_mut().skip(1))
                {
                    if !l.mode.compatible(target) {
                        can_grant = false;
                        Self::note_blocker(l, target, &mut basts);
                    }
                }
                self.pending_basts = basts;
                if can_grant {
                    let mut lock = self.converting.remove(0);
                    lock.mode = target;
                    lock.convert_to = None;
                    if let Some(v) = lock.put_lvb.take() {
                        self.lvb = StoredLvb(v);
                        self.lvb_invalid = false;
                    }
                    self.pending_asts.push(head_key);
                    self.granted.push(lock);
                    continue;
                }
            }
            if !self.blocked.is_empty() {
                let wanted = self.blocked[0].mode;
                let head_key = self.blocked[0].key;
                let mut basts = std::mem::take(&mut self.pending_basts);
                for l in self.granted.iter_mut().chain(self.converting.iter_mut()) {
                    if !l.mode.compatible(wanted) {
                        can_grant = false;
                        Self::note_blocker(l, wanted, &mut basts);
                    }
                }
                self.pending_basts = basts;
                if can_grant {
                    let lock = self.blocked.remove(0);
                    self.pending_asts.push(head_key);
                    self.granted.push(lock);
                    continue;
                }
            }
            break;
        }
    }

    /// The ASTs then BASTs queued since the last call, for locks that still
    /// exist. An AST carries the LVB when its lock asked for it. A BAST made
    /// pointless by a grant in the same batch (now NL, or now PR while only
    /// PR is wanted) is dropped, as the kernel does.
    pub fn take_notifications(&mut self) -> Vec<Notify> {
        let mut out = Vec::new();
        let asts = std::mem::take(&mut self.pending_asts);
        let basts = std::mem::take(&mut self.pending_basts);
        let lvb = self.lvb.0;
        let mut granted_now: Vec<(LockKey, Mode)> = Vec::new();
        for key in asts {
            if let Some(lock) = self.granted.iter_mut().find(|l| l.key == key) {
                let lvb = if lock.get_lvb { Some(lvb) } else { None };
                lock.get_lvb = false;
                granted_now.push((key, lock.mode));
                out.push(Notify::Ast {
                    key,
                    mode: lock.mode,
                    lvb,
                });
            }
        }
        for key in basts {
            let lock = self
                .granted
                .iter_mut()
                .chain(self.converting.iter_mut())
                .find(|l| l.key == key);
            let Some(lock) = lock else { continue };
            let Some(blocked) = lock.highest_blocked.take() else {
                continue;
            };
            if let Some((_, mode)) = granted_now.iter().find(|(k, _)| *k == key) {
                let pointless = *mode == Mode::Nl || (*mode == Mode::Pr && blocked != Mode::Ex);
                if pointless {
                    continue;
                }
            }
            out.push(Notify::Bast { key, blocked });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(node: u8, cookie: u64) -> LockKey {
        LockKey { node, cookie }
    }

    fn lock(node: u8, cookie: u64, mode: Mode) -> Lock {
        Lock::new(key(node, cookie), mode)
    }

    #[test]
    fn compatible_requests_are_granted_at_once() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Pr), false).unwrap();
        r.create(lock(2, 1, Mode::Pr), false).unwrap();
        assert_eq!(r.granted.len(), 2);
        let n = r.take_notifications();
        assert_eq!(n.len(), 2);
        assert!(matches!(n[0], Notify::Ast { mode: Mode::Pr, .. }));
    }

    #[test]
    fn conflicting_request_waits_and_blocker_gets_bast() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Ex), false).unwrap();
        r.take_notifications();
        r.create(lock(2, 1, Mode::Pr), false).unwrap();
        assert_eq!(r.blocked.len(), 1);
        r.shuffle();
        assert_eq!(
            r.take_notifications(),
            vec![Notify::Bast {
                key: key(1, 1),
                blocked: Mode::Pr
            }]
        );
        // Once delivered, the next shuffle asks again while still blocked.
        r.shuffle();
        assert_eq!(
            r.take_notifications(),
            vec![Notify::Bast {
                key: key(1, 1),
                blocked: Mode::Pr
            }]
        );
        // The holder releases: the waiter is granted.
        r.unlock(key(1, 1), None).unwrap();
        r.shuffle();
        assert_eq!(
            r.take_notifications(),
            vec![Notify::Ast {
                key: key(2, 1),
                mode: Mode::Pr,
                lvb: None
            }]
        );
    }

    #[test]
    fn noqueue_is_refused_without_side_effects() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Ex), false).unwrap();
        assert_eq!(
            r.create(lock(2, 1, Mode::Ex), true),
            Err(Refusal::NotQueued)
        );
        assert!(r.blocked.is_empty());
        r.create(lock(2, 2, Mode::Pr), false).unwrap();
        assert_eq!(
            r.convert(key(2, 2), Mode::Ex, false, None, true),
            Err(Refusal::Denied)
        );
    }

    #[test]
    fn lvb_flows_through_ex_down_convert_and_get() {
        let mut r = LockRes::new();
        let mut l = lock(1, 1, Mode::Ex);
        l.get_lvb = true;
        r.create(l, false).unwrap();
        match &r.take_notifications()[0] {
            Notify::Ast { lvb: Some(v), .. } => assert_eq!(v, &[0u8; 64]),
            other => panic!("{other:?}"),
        }
        let value = [7u8; 64];
        r.convert(key(1, 1), Mode::Nl, true, Some(value), false)
            .unwrap();
        assert_eq!(r.lvb.0, value);
        let mut reader = lock(2, 1, Mode::Pr);
        reader.get_lvb = true;
        r.create(reader, false).unwrap();
        let n = r.take_notifications();
        assert!(n.contains(&Notify::Ast {
            key: key(2, 1),
            mode: Mode::Pr,
            lvb: Some(value)
        }));
    }

    #[test]
    fn unlock_of_ex_with_lvb_stores_it_but_pr_does_not() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Pr), false).unwrap();
        r.unlock(key(1, 1), Some([1; 64])).unwrap();
        assert_eq!(r.lvb.0, [0; 64]);
        r.create(lock(1, 2, Mode::Ex), false).unwrap();
        r.unlock(key(1, 2), Some([2; 64])).unwrap();
        assert_eq!(r.lvb.0, [2; 64]);
        assert_eq!(r.unlock(key(1, 2), None), Err(Refusal::UnknownLock));
    }

    #[test]
    fn up_convert_waits_behind_other_holder_then_gets_granted() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Pr), false).unwrap();
        r.create(lock(2, 1, Mode::Pr), false).unwrap();
        r.take_notifications();
        r.convert(key(1, 1), Mode::Ex, false, None, false).unwrap();
        assert_eq!(r.converting.len(), 1);
        r.shuffle();
        assert_eq!(
            r.take_notifications(),
            vec![Notify::Bast {
                key: key(2, 1),
                blocked: Mode::Ex
            }]
        );
        r.convert(key(2, 1), Mode::Nl, false, None, false).unwrap();
        r.shuffle();
        let n = r.take_notifications();
        assert!(n.contains(&Notify::Ast {
            key: key(1, 1),
            mode: Mode::Ex,
            lvb: None
        }));
        assert_eq!(
            r.find(key(1, 1)).map(|(q, l)| (q, l.mode)),
            Some((Queue::Granted, Mode::Ex))
        );
    }

    #[test]
    fn cancel_rules() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Ex), false).unwrap();
        r.create(lock(2, 1, Mode::Ex), false).unwrap();
        assert_eq!(r.cancel(key(2, 1)), Ok(Queue::Blocked));
        assert_eq!(r.cancel(key(1, 1)), Err(Refusal::CancelGrant));
        assert_eq!(r.cancel(key(9, 9)), Err(Refusal::UnknownLock));
        r.create(lock(3, 1, Mode::Nl), false).unwrap();
        r.convert(key(3, 1), Mode::Ex, false, None, false).unwrap();
        assert_eq!(r.cancel(key(3, 1)), Ok(Queue::Converting));
        assert_eq!(
            r.find(key(3, 1)).map(|(q, l)| (q, l.mode)),
            Some((Queue::Granted, Mode::Nl))
        );
    }

    #[test]
    fn pointless_bast_is_dropped_when_grant_makes_it_moot() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Ex), false).unwrap();
        r.take_notifications();
        r.create(lock(2, 1, Mode::Pr), false).unwrap();
        r.shuffle();
        // Before the BAST goes out, the holder down-converts to PR itself.
        r.convert(key(1, 1), Mode::Pr, false, None, false).unwrap();
        r.shuffle();
        let n = r.take_notifications();
        assert!(!n.iter().any(|x| matches!(x, Notify::Bast { .. })), "{n:?}");
        assert!(n.contains(&Notify::Ast {
            key: key(2, 1),
            mode: Mode::Pr,
            lvb: None
        }));
    }

    #[test]
    fn node_death_removes_its_locks_and_reports_ex() {
        let mut r = LockRes::new();
        r.create(lock(1, 1, Mode::Ex), false).unwrap();
        r.create(lock(2, 1, Mode::Ex), false).unwrap();
        assert!(r.remove_node_locks(1));
        r.shuffle();
        let n = r.take_notifications();
        assert!(n.contains(&Notify::Ast {
            key: key(2, 1),
            mode: Mode::Ex,
            lvb: None
        }));
        assert!(!r.remove_node_locks(7));
    }
}
