//! The node-local side of one lock name: many local holders (contexts and
//! threads of this process) share one cluster lock, which stays cached at
//! its level after they release it, until a BAST asks for it back. This is
//! what dlmfs does in the kernel, with one difference: local holders exclude
//! each other too (dlmfs lets two local openers both hold EX).
//!
//! Sans-IO: calls return `CacheAction`s for the caller to carry out (send a
//! cluster request, wake a waiter, tell holders about a BAST).

use super::lockres::Lvb;
use super::mode::Mode;
use std::collections::VecDeque;

/// Identifies one local request/holder (chosen by the caller).
pub type HolderId = u64;

/// What the cluster side must do next for this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOp {
    /// Ask for `mode` (a new lock if none exists, else an up-conversion).
    Acquire { mode: Mode, noqueue: bool },
    /// Give the lock back down to `mode` because another node wants it;
    /// `lvb` is written back when we held EX.
    Downconvert { mode: Mode, lvb: Option<Lvb> },
    /// Drop the cluster lock entirely (`lvb` as above).
    Release { lvb: Option<Lvb> },
    /// Withdraw the pending up-conversion (another node needs our level).
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheAction {
    Cluster(ClusterOp),
    /// The local request is granted.
    Granted(HolderId),
    /// A trylock could not be granted (locally or in the cluster).
    TryFailed(HolderId),
    /// The cluster request for this waiter failed for another reason.
    Failed(HolderId),
    /// Holders should release: another node is blocked at this level.
    BlockingNotice {
        holders: Vec<HolderId>,
        blocked: Mode,
    },
}

#[derive(Debug, Clone)]
struct Waiter {
    id: HolderId,
    mode: Mode,
    trylock: bool,
}

/// The cluster request in flight (at most one per name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// Acquire or up-convert on behalf of the waiter `for_id`.
    Acquire {
        for_id: HolderId,
        trylock: bool,
        cancelling: bool,
    },
    Downconvert,
    Release,
}

#[derive(Debug, Clone)]
pub struct LocalLock {
    /// Level the cluster has granted us (None: no cluster lock).
    cluster: Option<Mode>,
    in_flight: Option<InFlight>,
    /// Highest level another node is blocked at (from BASTs).
    blocking: Option<Mode>,
    /// The waiter whose acquire just completed: it is served even while
    /// another node waits, so the two nodes cannot starve each other.
    favored: Option<HolderId>,
    holders: Vec<(HolderId, Mode)>,
    waiters: VecDeque<Waiter>,
    lvb: Lvb,
}

impl Default for LocalLock {
    fn default() -> Self {
        LocalLock {
            cluster: None,
            in_flight: None,
            blocking: None,
            favored: None,
            holders: Vec::new(),
            waiters: VecDeque::new(),
            lvb: [0; 64],
        }
    }
}

/// Level to give the lock back down to so a request at `blocked` can go.
fn downconvert_target(blocked: Mode) -> Mode {
    if blocked == Mode::Ex {
        Mode::Nl
    } else {
        Mode::Pr
    }
}

impl LocalLock {
    pub fn new() -> LocalLock {
        LocalLock::default()
    }

    pub fn cluster_mode(&self) -> Option<Mode> {
        self.cluster
    }

    pub fn holders(&self) -> impl Iterator<Item = &(HolderId, Mode)> {
        self.holders.iter()
    }

    /// Nothing local depends on this name: no holders, waiters or requests.
    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.in_flight.is_none()
    }

    pub fn lvb(&self) -> &Lvb {
        &self.lvb
    }

    /// Local write of the LVB; only an EX holder may (checked by the caller).
    /// It reaches the master with the next down-convert or release.
    pub fn write_lvb(&mut self, data: &[u8]) {
        let n = data.len().min(self.lvb.len());
        self.lvb[..n].copy_from_slice(&data[..n]);
    }

    pub fn holder_mode(&self, id: HolderId) -> Option<Mode> {
        self.holders.iter().find(|(h, _)| *h == id).map(|(_, m)| *m)
    }

    fn locally_compatible(&self, mode: Mode) -> bool {
        self.holders.iter().all(|(_, m)| m.compatible(mode))
    }

    /// A new local request for `mode`.
    pub fn request(&mut self, id: HolderId, mode: Mode, trylock: bool) -> Vec<CacheAction> {
        if trylock && !self.waiters.is_empty() {
            // Others are queued ahead: a trylock cannot be granted now
            // without jumping the queue, so it fails at once (found by the
            // kernel tests: it used to wait behind a blocked waiter).
            return vec![CacheAction::TryFailed(id)];
        }
        self.waiters.push_back(Waiter { id, mode, trylock });
        self.progress()
    }

    /// A local holder (or waiter) lets go. The cluster lock stays cached
    /// unless another node is waiting for it.
    pub fn release(&mut self, id: HolderId) -> Vec<CacheAction> {
        self.holders.retain(|(h, _)| *h != id);
        self.waiters.retain(|w| w.id != id);
        if self.favored == Some(id) {
            self.favored = None;
        }
        self.progress()
    }

    /// The cluster granted `mode`; `lvb` when the grant carried one.
    pub fn on_granted(&mut self, mode: Mode, lvb: Option<Lvb>) -> Vec<CacheAction> {
        if let Some(InFlight::Acquire { for_id, .. }) = self.in_flight {
            self.favored = Some(for_id);
        }
        self.in_flight = None;
        self.cluster = Some(mode);
        if self.blocking.is_some_and(|b| mode <= downconvert_target(b)) {
            self.blocking = None;
        }
        if let Some(v) = lvb {
            self.lvb = v;
        }
        self.progress()
    }

    /// The cluster released our lock (Release completed).
    pub fn on_released(&mut self) -> Vec<CacheAction> {
        self.in_flight = None;
        self.cluster = None;
        self.blocking = None;
        self.progress()
    }

    /// A cancel went through: the lock is back at its granted level.
    pub fn on_cancelled(&mut self) -> Vec<CacheAction> {
        self.in_flight = None;
        self.progress()
    }

    /// The cluster refused an acquire: NOQUEUE and not grantable, or an
    /// error. Fails a trylock waiter; other waiters try again later.
    pub fn on_refused(&mut self) -> Vec<CacheAction> {
        let mut out = Vec::new();
        if let Some(InFlight::Acquire {
            for_id,
            trylock: true,
            ..
        }) = self.in_flight
        {
            self.waiters.retain(|w| w.id != for_id);
            out.push(CacheAction::TryFailed(for_id));
        }
        self.in_flight = None;
        out.extend(self.progress());
        out
    }

    /// The cluster could not carry out the acquire at all (not a NOQUEUE
    /// refusal): the waiter it was for fails; later waiters try again.
    pub fn on_failed(&mut self) -> Vec<CacheAction> {
        let mut out = Vec::new();
        if let Some(InFlight::Acquire { for_id, .. }) = self.in_flight {
            self.waiters.retain(|w| w.id != for_id);
            out.push(CacheAction::Failed(for_id));
        }
        self.in_flight = None;
        out.extend(self.progress());
        out
    }

    /// Another node is blocked at `blocked` by our cluster lock.
    pub fn on_bast(&mut self, blocked: Mode) -> Vec<CacheAction> {
        self.blocking = Some(self.blocking.map_or(blocked, |b| b.max(blocked)));
        let mut out = Vec::new();
        let holders: Vec<HolderId> = self
            .holders
            .iter()
            .filter(|(_, m)| !m.compatible(blocked))
            .map(|(h, _)| *h)
            .collect();
        if !holders.is_empty() {
            out.push(CacheAction::BlockingNotice { holders, blocked });
        }
        // Our pending up-conversion may be what keeps the other node out
        // while it keeps ours out: withdraw it, give way, then retry.
        if let Some(InFlight::Acquire {
            for_id,
            trylock,
            cancelling: false,
        }) = self.in_flight
        {
            if self.cluster.is_some() {
                self.in_flight = Some(InFlight::Acquire {
                    for_id,
                    trylock,
                    cancelling: true,
                });
                out.push(CacheAction::Cluster(ClusterOp::Cancel));
            }
        }
        out.extend(self.progress());
        out
    }

    /// Grants what can be granted locally, and decides the next cluster op.
    fn progress(&mut self) -> Vec<CacheAction> {
        let mut out = Vec::new();
        // Waiters are served in order, so local requesters cannot starve
        // each other.
        while let Some(w) = self.waiters.front().cloned() {
            if !self.locally_compatible(w.mode) {
                if w.trylock {
                    self.waiters.pop_front();
                    out.push(CacheAction::TryFailed(w.id));
                    continue;
                }
                break;
            }
            // While another node waits, new holders above the level we are
            // about to give back would keep it waiting (dlmfs does the same).
            let blocked_out = self
                .blocking
                .is_some_and(|b| w.mode > downconvert_target(b))
                && self.favored != Some(w.id);
            if self.cluster.is_some_and(|c| c >= w.mode) && !blocked_out {
                self.waiters.pop_front();
                self.holders.push((w.id, w.mode));
                if self.favored == Some(w.id) {
                    self.favored = None;
                }
                out.push(CacheAction::Granted(w.id));
                continue;
            }
            if blocked_out && w.trylock {
                self.waiters.pop_front();
                out.push(CacheAction::TryFailed(w.id));
                continue;
            }
            if self.in_flight.is_none() && !blocked_out {
                self.in_flight = Some(InFlight::Acquire {
                    for_id: w.id,
                    trylock: w.trylock,
                    cancelling: false,
                });
                out.push(CacheAction::Cluster(ClusterOp::Acquire {
                    mode: w.mode,
                    noqueue: w.trylock,
                }));
            }
            break;
        }
        // Give the lock back when someone else waits and nothing here
        // needs the level any more.
        if let (Some(b), Some(c), None) = (self.blocking, self.cluster, self.in_flight) {
            let target = downconvert_target(b);
            let in_use = self.holders.iter().any(|(_, m)| !m.compatible(b));
            if c > target && !in_use {
                self.in_flight = Some(InFlight::Downconvert);
                let lvb = (c == Mode::Ex).then_some(self.lvb);
                out.push(CacheAction::Cluster(ClusterOp::Downconvert {
                    mode: target,
                    lvb,
                }));
            }
        }
        out
    }

    /// Drops the cluster lock when nothing uses it (domain leave, purge).
    pub fn release_cluster(&mut self) -> Option<ClusterOp> {
        if !self.is_idle() {
            return None;
        }
        let mode = self.cluster?;
        self.in_flight = Some(InFlight::Release);
        let lvb = (mode == Mode::Ex).then_some(self.lvb);
        Some(ClusterOp::Release { lvb })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CacheAction::*;

    fn acquire(mode: Mode, noqueue: bool) -> CacheAction {
        Cluster(ClusterOp::Acquire { mode, noqueue })
    }

    #[test]
    fn first_lock_asks_the_cluster_then_is_cached() {
        let mut l = LocalLock::new();
        assert_eq!(
            l.request(1, Mode::Ex, false),
            vec![acquire(Mode::Ex, false)]
        );
        assert_eq!(l.on_granted(Mode::Ex, Some([0; 64])), vec![Granted(1)]);
        assert_eq!(l.release(1), vec![]);
        // Re-taking the cached lock costs no message, at EX or PR.
        assert_eq!(l.request(2, Mode::Pr, false), vec![Granted(2)]);
        assert_eq!(l.release(2), vec![]);
        assert_eq!(l.request(3, Mode::Ex, false), vec![Granted(3)]);
    }

    #[test]
    fn local_holders_exclude_each_other() {
        let mut l = LocalLock::new();
        l.request(1, Mode::Ex, false);
        l.on_granted(Mode::Ex, None);
        assert_eq!(l.request(2, Mode::Ex, true), vec![TryFailed(2)]);
        assert_eq!(l.request(3, Mode::Pr, false), vec![]);
        assert_eq!(l.release(1), vec![Granted(3)]);
        assert_eq!(l.request(4, Mode::Pr, false), vec![Granted(4)]);
    }

    #[test]
    fn bast_with_holders_notifies_then_downconverts_on_release() {
        let mut l = LocalLock::new();
        l.request(1, Mode::Ex, false);
        l.on_granted(Mode::Ex, None);
        l.write_lvb(b"v1");
        let acts = l.on_bast(Mode::Ex);
        // The holder is told; nothing else happens while it holds EX.
        assert_eq!(
            acts,
            vec![BlockingNotice {
                holders: vec![1],
                blocked: Mode::Ex
            }]
        );
        let mut expect = [0u8; 64];
        expect[..2].copy_from_slice(b"v1");
        assert_eq!(
            l.release(1),
            vec![Cluster(ClusterOp::Downconvert {
                mode: Mode::Nl,
                lvb: Some(expect)
            })]
        );
        // A new local request waits for the down-convert, then re-acquires.
        assert_eq!(l.request(2, Mode::Pr, false), vec![]);
        assert_eq!(l.on_granted(Mode::Nl, None), vec![acquire(Mode::Pr, false)]);
    }

    #[test]
    fn idle_cached_lock_is_given_back_at_once() {
        let mut l = LocalLock::new();
        l.request(1, Mode::Ex, false);
        l.on_granted(Mode::Ex, None);
        l.release(1);
        assert_eq!(
            l.on_bast(Mode::Pr),
            vec![Cluster(ClusterOp::Downconvert {
                mode: Mode::Pr,
                lvb: Some([0; 64])
            })]
        );
        l.on_granted(Mode::Pr, None);
        // PR is still cached and compatible with what the other node wants.
        assert_eq!(l.request(2, Mode::Pr, false), vec![Granted(2)]);
    }

    #[test]
    fn cluster_trylock_refusal_fails_only_that_request() {
        let mut l = LocalLock::new();
        assert_eq!(l.request(1, Mode::Ex, true), vec![acquire(Mode::Ex, true)]);
        assert_eq!(l.on_refused(), vec![TryFailed(1)]);
        assert!(l.is_idle());
    }

    #[test]
    fn trylock_behind_a_waiting_request_fails_at_once() {
        let mut l = LocalLock::new();
        assert_eq!(
            l.request(1, Mode::Ex, false),
            vec![acquire(Mode::Ex, false)]
        );
        assert_eq!(l.request(2, Mode::Ex, true), vec![TryFailed(2)]);
        assert_eq!(l.request(3, Mode::Pr, true), vec![TryFailed(3)]);
        assert_eq!(l.on_granted(Mode::Ex, None), vec![Granted(1)]);
    }

    #[test]
    fn pr_holder_is_not_disturbed_by_pr_bast() {
        let mut l = LocalLock::new();
        l.request(1, Mode::Pr, false);
        l.on_granted(Mode::Pr, None);
        assert_eq!(l.on_bast(Mode::Pr), vec![]);
    }
}

#[cfg(test)]
mod convert_deadlock_tests {
    use super::*;
    use CacheAction::*;

    #[test]
    fn bast_during_up_convert_cancels_then_gives_way_then_retries() {
        let mut l = LocalLock::new();
        l.request(1, Mode::Pr, false);
        l.on_granted(Mode::Pr, None);
        l.release(1);
        // A local EX request converts PR -> EX; meanwhile the other node,
        // also holding PR and converting, is blocked by our PR.
        assert_eq!(
            l.request(2, Mode::Ex, false),
            vec![Cluster(ClusterOp::Acquire {
                mode: Mode::Ex,
                noqueue: false
            })]
        );
        assert_eq!(l.on_bast(Mode::Ex), vec![Cluster(ClusterOp::Cancel)]);
        assert_eq!(
            l.on_cancelled(),
            vec![Cluster(ClusterOp::Downconvert {
                mode: Mode::Nl,
                lvb: None
            })]
        );
        assert_eq!(
            l.on_granted(Mode::Nl, None),
            vec![Cluster(ClusterOp::Acquire {
                mode: Mode::Ex,
                noqueue: false
            })]
        );
        assert_eq!(l.on_granted(Mode::Ex, Some([9; 64])), vec![Granted(2)]);
        assert_eq!(l.lvb(), &[9; 64]);
    }

    #[test]
    fn cancel_losing_the_race_to_the_grant_still_serves_the_waiter() {
        let mut l = LocalLock::new();
        l.request(1, Mode::Pr, false);
        l.on_granted(Mode::Pr, None);
        l.release(1);
        l.request(2, Mode::Ex, false);
        l.on_bast(Mode::Ex);
        // CANCELGRANT: the grant arrives instead of the cancel.
        assert_eq!(l.on_granted(Mode::Ex, None), vec![Granted(2)]);
        assert_eq!(
            l.release(2),
            vec![Cluster(ClusterOp::Downconvert {
                mode: Mode::Nl,
                lvb: Some([0; 64])
            })]
        );
    }
}
