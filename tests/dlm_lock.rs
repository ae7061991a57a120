//! Mastery and locking across engine nodes in the in-memory cluster.

use o2dlm::dlm::sim::{Cluster, Record};
use o2dlm::dlm::{DomainId, Event, LockFlags, LockId, Mode, UnlockFlags};
use o2dlm::wire::dlm::*;

const DOM: &[u8] = b"testdomain";

fn cluster(n: usize, seed: u64) -> (Cluster, DomainId) {
    let mut c = Cluster::new(n, seed);
    let mut d = None;
    for i in 0..n as u8 {
        d = Some(c.with(i, |x, now| x.join(now, DOM)).unwrap());
        c.run_for(5);
    }
    for i in 0..n as u8 {
        c.take_events(i);
    }
    c.log.clear();
    (c, d.unwrap())
}

fn lock(c: &mut Cluster, n: u8, d: DomainId, name: &str, mode: Mode, flags: LockFlags) -> LockId {
    c.with(n, |x, now| x.lock(now, d, name.as_bytes(), mode, flags))
        .unwrap()
}

fn granted(c: &Cluster, n: u8, l: LockId) -> Option<(Mode, Option<[u8; 64]>)> {
    c.events(n).iter().find_map(|e| match e {
        Event::Ast { lock, mode, lvb } if *lock == l => Some((*mode, *lvb)),
        _ => None,
    })
}

fn basts(c: &Cluster, n: u8, l: LockId) -> Vec<Mode> {
    c.events(n)
        .iter()
        .filter_map(|e| match e {
            Event::Bast { lock, blocked } if *lock == l => Some(*blocked),
            _ => None,
        })
        .collect()
}

fn lvb(s: &str) -> [u8; 64] {
    let mut v = [0u8; 64];
    v[..s.len()].copy_from_slice(s.as_bytes());
    v
}

const VALBLK: LockFlags = LockFlags {
    noqueue: false,
    valblk: true,
};
const TRY: LockFlags = LockFlags {
    noqueue: true,
    valblk: true,
};

#[test]
fn first_user_masters_with_request_no_then_assert() {
    let (mut c, d) = cluster(2, 1);
    let l = lock(&mut c, 1, d, "lockM", Mode::Ex, VALBLK);
    c.run_for(10);
    assert_eq!(granted(&c, 1, l).map(|g| g.0), Some(Mode::Ex));
    assert_eq!(c.dlm(0).resource_owner(d, b"lockM"), None);
    assert_eq!(c.dlm(1).resource_owner(d, b"lockM"), Some(1));
    assert_eq!(
        c.request_types(),
        vec![
            (1, 0, DLM_MASTER_REQUEST_MSG),
            (1, 0, DLM_ASSERT_MASTER_MSG)
        ]
    );
    // A second lock on the same name costs nothing on the wire.
    let l2 = lock(&mut c, 1, d, "lockM", Mode::Nl, LockFlags::default());
    c.run_for(10);
    assert!(granted(&c, 1, l2).is_some());
    assert_eq!(c.request_types().len(), 2);
}

#[test]
fn racing_masters_lowest_node_wins() {
    for seed in 0..30 {
        let (mut c, d) = cluster(3, seed);
        c.shuffle_links = true;
        let ls: Vec<LockId> = (0..3)
            .rev()
            .map(|n| lock(&mut c, n, d, "race", Mode::Pr, LockFlags::default()))
            .collect();
        c.run_for(20_000);
        let owners: Vec<Option<u8>> = (0..3)
            .map(|n| c.dlm(n).resource_owner(d, b"race"))
            .collect();
        assert_eq!(owners, vec![Some(0); 3], "seed {seed}");
        for (i, n) in (0..3u8).rev().enumerate() {
            assert_eq!(
                granted(&c, n, ls[i]).map(|g| g.0),
                Some(Mode::Pr),
                "seed {seed} node {n}"
            );
        }
        let refmap = c.dlm(0).resource_refmap(d, b"race").unwrap();
        assert_eq!(refmap, vec![1, 2], "seed {seed}");
    }
}

#[test]
fn pr_shared_ex_exclusive_trylock_notqueued_bast_and_grant() {
    let (mut c, d) = cluster(2, 3);
    let a = lock(&mut c, 0, d, "L", Mode::Pr, VALBLK);
    let b = lock(&mut c, 1, d, "L", Mode::Pr, VALBLK);
    c.run_for(10);
    assert!(granted(&c, 0, a).is_some() && granted(&c, 1, b).is_some());
    // EX trylock from node 1 while node 0 holds PR: refused, no BAST.
    let t = lock(&mut c, 1, d, "L", Mode::Ex, TRY);
    c.run_for(10);
    assert!(c.events(1).contains(&Event::LockFailed {
        lock: t,
        status: DLM_NOTQUEUED
    }));
    assert!(basts(&c, 0, a).is_empty());
    // Node 1 up-converts to EX: node 0's PR is asked to go.
    c.with(1, |x, now| x.convert(now, b, Mode::Ex, VALBLK, None))
        .unwrap();
    c.run_for(10);
    assert_eq!(basts(&c, 0, a), vec![Mode::Ex]);
    assert_eq!(c.dlm(1).lock_mode(b), Some(Mode::Pr));
    // Node 0 gives way (down to NL): node 1 gets EX.
    c.take_events(1);
    c.with(0, |x, now| x.convert(now, a, Mode::Nl, VALBLK, None))
        .unwrap();
    c.run_for(10);
    assert_eq!(granted(&c, 1, b).map(|g| g.0), Some(Mode::Ex));
    assert_eq!(c.dlm(0).lock_mode(a), Some(Mode::Nl));
}

#[test]
fn lvb_passes_from_ex_writer_to_pr_reader_on_another_node() {
    for master in [0u8, 1] {
        let (mut c, d) = cluster(2, 5);
        let other = 1 - master;
        // `master` touches the name first and so masters it.
        let w = lock(&mut c, master, d, "V", Mode::Ex, VALBLK);
        c.run_for(10);
        c.with(master, |x, now| {
            x.convert(now, w, Mode::Nl, VALBLK, Some(lvb("hello")))
        })
        .unwrap();
        c.run_for(10);
        let r = lock(&mut c, other, d, "V", Mode::Pr, VALBLK);
        c.run_for(10);
        assert_eq!(granted(&c, other, r), Some((Mode::Pr, Some(lvb("hello")))));
        // Now the reader's node writes under EX and the first node reads.
        c.take_events(other);
        c.with(other, |x, now| x.convert(now, r, Mode::Ex, VALBLK, None))
            .unwrap();
        c.run_for(10);
        assert_eq!(granted(&c, other, r).map(|g| g.1), Some(Some(lvb("hello"))));
        c.with(other, |x, now| {
            x.unlock(
                now,
                r,
                UnlockFlags {
                    valblk: true,
                    cancel: false,
                },
                Some(lvb("world")),
            )
        })
        .unwrap();
        c.run_for(10);
        c.take_events(master);
        c.with(master, |x, now| x.convert(now, w, Mode::Pr, VALBLK, None))
            .unwrap();
        c.run_for(10);
        assert_eq!(
            granted(&c, master, w),
            Some((Mode::Pr, Some(lvb("world")))),
            "master {master}"
        );
    }
}

#[test]
fn ex_holder_gets_bast_and_waiter_is_granted_after_unlock() {
    let (mut c, d) = cluster(3, 6);
    let h = lock(&mut c, 2, d, "X", Mode::Ex, VALBLK);
    c.run_for(10);
    let w1 = lock(&mut c, 0, d, "X", Mode::Pr, VALBLK);
    let w2 = lock(&mut c, 1, d, "X", Mode::Ex, VALBLK);
    c.run_for(10);
    assert!(!basts(&c, 2, h).is_empty());
    assert!(granted(&c, 0, w1).is_none() && granted(&c, 1, w2).is_none());
    c.with(2, |x, now| {
        x.unlock(
            now,
            h,
            UnlockFlags {
                valblk: true,
                cancel: false,
            },
            Some(lvb("v1")),
        )
    })
    .unwrap();
    c.run_for(10);
    assert!(c.events(2).contains(&Event::Unlocked { lock: h }));
    assert_eq!(granted(&c, 0, w1), Some((Mode::Pr, Some(lvb("v1")))));
    assert!(granted(&c, 1, w2).is_none());
    assert_eq!(basts(&c, 0, w1), vec![Mode::Ex]);
    c.with(0, |x, now| x.unlock(now, w1, UnlockFlags::default(), None))
        .unwrap();
    c.run_for(10);
    assert_eq!(granted(&c, 1, w2), Some((Mode::Ex, Some(lvb("v1")))));
}

#[test]
fn cancel_a_blocked_request_and_a_pending_convert() {
    let (mut c, d) = cluster(2, 8);
    let h = lock(&mut c, 0, d, "C", Mode::Ex, LockFlags::default());
    c.run_for(10);
    let w = lock(&mut c, 1, d, "C", Mode::Ex, LockFlags::default());
    c.run_for(10);
    assert!(granted(&c, 1, w).is_none());
    c.with(1, |x, now| {
        x.unlock(
            now,
            w,
            UnlockFlags {
                valblk: false,
                cancel: true,
            },
            None,
        )
    })
    .unwrap();
    c.run_for(10);
    assert!(c.events(1).contains(&Event::Cancelled { lock: w }));
    assert_eq!(c.dlm(1).lock_mode(w), None);
    // The cancel travelled as UNLOCK_LOCK with flags CANCEL.
    let cancel = c
        .log
        .iter()
        .filter_map(|r| r.message())
        .find_map(|m| match m {
            DlmMessage::UnlockLock(u) => Some(u.flags),
            _ => None,
        });
    assert_eq!(cancel, Some(LKM_CANCEL));
    // A pending up-convert is withdrawn back to its granted mode.
    let p = lock(&mut c, 1, d, "C", Mode::Nl, LockFlags::default());
    c.run_for(10);
    c.with(1, |x, now| {
        x.convert(now, p, Mode::Ex, LockFlags::default(), None)
    })
    .unwrap();
    c.run_for(10);
    c.with(1, |x, now| {
        x.unlock(
            now,
            p,
            UnlockFlags {
                valblk: false,
                cancel: true,
            },
            None,
        )
    })
    .unwrap();
    c.run_for(10);
    assert!(c.events(1).contains(&Event::Cancelled { lock: p }));
    assert_eq!(c.dlm(1).lock_mode(p), Some(Mode::Nl));
    // The holder still holds; unlocking it leaves nothing pending.
    c.with(0, |x, now| x.unlock(now, h, UnlockFlags::default(), None))
        .unwrap();
    c.run_for(10);
    assert!(c.events(0).contains(&Event::Unlocked { lock: h }));
}

#[test]
fn grant_ast_overtakes_create_reply() {
    let (mut c, d) = cluster(2, 9);
    let m = lock(&mut c, 0, d, "R", Mode::Pr, LockFlags::default());
    c.run_for(10);
    c.log.clear();
    let l = lock(&mut c, 1, d, "R", Mode::Pr, VALBLK);
    c.run_for(10);
    assert!(granted(&c, 0, m).is_some());
    assert_eq!(granted(&c, 1, l).map(|g| g.0), Some(Mode::Pr));
    // The master sent the PROXY_AST before its reply to CREATE_LOCK.
    let order: Vec<String> = c
        .log
        .iter()
        .filter_map(|r| match r {
            Record::Request {
                msg_type, from: 0, ..
            } if *msg_type == DLM_PROXY_AST_MSG => Some("ast".to_string()),
            Record::Reply {
                msg_type, from: 0, ..
            } if *msg_type == DLM_CREATE_LOCK_MSG => Some("create-reply".to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["ast", "create-reply"]);
    // And the late NORMAL reply did not undo the grant.
    assert_eq!(c.dlm(1).lock_mode(l), Some(Mode::Pr));
}

#[test]
fn unused_non_master_copy_is_dereferenced_after_purge_delay() {
    let (mut c, d) = cluster(2, 10);
    let m = lock(&mut c, 0, d, "P", Mode::Pr, LockFlags::default());
    c.run_for(10);
    let l = lock(&mut c, 1, d, "P", Mode::Pr, LockFlags::default());
    c.run_for(10);
    assert!(granted(&c, 1, l).is_some() && granted(&c, 0, m).is_some());
    assert_eq!(c.dlm(0).resource_refmap(d, b"P"), Some(vec![1]));
    c.with(1, |x, now| x.unlock(now, l, UnlockFlags::default(), None))
        .unwrap();
    c.run_for(5_000);
    assert!(!c.request_types().contains(&(1, 0, DLM_DEREF_LOCKRES_MSG)));
    c.run_for(10_000);
    assert!(c.request_types().contains(&(1, 0, DLM_DEREF_LOCKRES_MSG)));
    assert_eq!(c.dlm(0).resource_refmap(d, b"P"), Some(vec![]));
    assert!(c.dlm(1).resource_names(d).is_empty());
    // Taking it again re-finds the master.
    let l2 = lock(&mut c, 1, d, "P", Mode::Pr, LockFlags::default());
    c.run_for(10);
    assert!(granted(&c, 1, l2).is_some());
    assert_eq!(c.dlm(1).resource_owner(d, b"P"), Some(0));
}

#[test]
fn leave_while_mastering_migrates_to_the_holder() {
    for n in [2usize, 3] {
        let (mut c, d) = cluster(n, 11);
        let leaver = (n - 1) as u8;
        let m = lock(&mut c, leaver, d, "G", Mode::Ex, VALBLK);
        c.run_for(10);
        c.with(leaver, |x, now| {
            x.convert(now, m, Mode::Nl, VALBLK, Some(lvb("lvb-G")))
        })
        .unwrap();
        c.run_for(10);
        let holders: Vec<(u8, LockId)> = (0..leaver)
            .map(|h| (h, lock(&mut c, h, d, "G", Mode::Pr, VALBLK)))
            .collect();
        c.run_for(10);
        for (h, l) in &holders {
            assert_eq!(granted(&c, *h, *l), Some((Mode::Pr, Some(lvb("lvb-G")))));
        }
        c.with(leaver, |x, now| {
            x.unlock(now, m, UnlockFlags::default(), None)
        })
        .unwrap();
        c.run_for(10);
        c.with(leaver, |x, now| x.leave(now, d)).unwrap();
        let ok = c.run_until(30_000, |c| {
            c.events(leaver)
                .iter()
                .any(|e| matches!(e, Event::LeaveDone { .. }))
        });
        assert!(ok, "{n} nodes: leave did not finish");
        let types = c.request_types();
        assert!(types.contains(&(leaver, 0, DLM_MIG_LOCKRES_MSG)));
        if n == 3 {
            assert!(types.contains(&(0, 1, DLM_MIGRATE_REQUEST_MSG)));
        }
        for h in 0..leaver {
            assert_eq!(
                c.dlm(h).resource_owner(d, b"G"),
                Some(0),
                "{n} nodes, node {h}"
            );
            assert_eq!(
                c.dlm(h).domain_members(d).unwrap(),
                (0..leaver).collect::<Vec<_>>()
            );
        }
        // The new master works: node 0 up-converts; other holders get BASTs.
        c.with(0, |x, now| {
            x.convert(now, holders[0].1, Mode::Ex, VALBLK, None)
        })
        .unwrap();
        c.run_for(10);
        for (h, l) in &holders[1..] {
            assert_eq!(basts(&c, *h, *l), vec![Mode::Ex]);
            c.with(*h, |x, now| x.unlock(now, *l, UnlockFlags::default(), None))
                .unwrap();
        }
        c.run_for(10);
        let g = c.events(0).iter().rev().find_map(|e| match e {
            Event::Ast { lock, mode, lvb } if *lock == holders[0].1 => Some((*mode, *lvb)),
            _ => None,
        });
        assert_eq!(g, Some((Mode::Ex, Some(lvb("lvb-G")))), "{n} nodes");
        // Rejoin works.
        c.with(leaver, |x, now| x.join(now, DOM)).unwrap();
        c.run_for(100);
        assert!(c.dlm(leaver).is_joined(d));
    }
}

#[test]
fn leave_purges_and_dereferences_everything() {
    let (mut c, d) = cluster(2, 12);
    let a = lock(&mut c, 0, d, "A", Mode::Pr, LockFlags::default());
    c.run_for(10);
    let b = lock(&mut c, 1, d, "A", Mode::Pr, LockFlags::default());
    let e = lock(&mut c, 1, d, "B", Mode::Ex, LockFlags::default());
    c.run_for(10);
    assert!(
        granted(&c, 0, a).is_some() && granted(&c, 1, b).is_some() && granted(&c, 1, e).is_some()
    );
    for l in [b, e] {
        c.with(1, |x, now| x.unlock(now, l, UnlockFlags::default(), None))
            .unwrap();
    }
    c.run_for(10);
    c.with(1, |x, now| x.leave(now, d)).unwrap();
    c.run_for(2_000);
    assert!(c
        .events(1)
        .iter()
        .any(|e| matches!(e, Event::LeaveDone { .. })));
    let t = c.request_types();
    let from1: Vec<u16> = t.iter().filter(|x| x.0 == 1).map(|x| x.2).collect();
    assert!(from1.contains(&DLM_BEGIN_EXIT_DOMAIN_MSG));
    assert!(from1.contains(&DLM_DEREF_LOCKRES_MSG));
    assert_eq!(from1.last(), Some(&DLM_EXIT_DOMAIN_MSG));
    assert_eq!(c.dlm(0).resource_refmap(d, b"A"), Some(vec![]));
}

#[test]
fn leave_refused_while_locks_held() {
    let (mut c, d) = cluster(1, 13);
    let _l = lock(&mut c, 0, d, "A", Mode::Pr, LockFlags::default());
    c.run_for(10);
    assert_eq!(
        c.with(0, |x, now| x.leave(now, d)),
        Err(o2dlm::dlm::ApiError::LocksHeld)
    );
}

#[test]
fn crashed_master_only_survivor_takes_over() {
    let (mut c, d) = cluster(2, 14);
    let m = lock(&mut c, 1, d, "K", Mode::Ex, LockFlags::default());
    c.run_for(10);
    assert!(granted(&c, 1, m).is_some());
    let w = lock(&mut c, 0, d, "K", Mode::Ex, LockFlags::default());
    c.run_for(10);
    assert!(granted(&c, 0, w).is_none());
    c.crash(1);
    c.run_for(1_000);
    c.declare_dead(1);
    c.run_for(1_000);
    assert_eq!(granted(&c, 0, w).map(|g| g.0), Some(Mode::Ex));
    assert_eq!(c.dlm(0).resource_owner(d, b"K"), Some(0));
}
