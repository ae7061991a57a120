//! Node death and recovery (§9) across engine nodes in the in-memory
//! cluster: local cleanup, the `$RECOVERY` election, lock state collection,
//! FINALIZE_RECO, deaths during recovery and rejoin. Every run is also
//! checked against the traffic that would make a kernel peer BUG (§10).

use o2dlm::dlm::lockres::Queue;
use o2dlm::dlm::sim::{kernel_safety_violations, Cluster, Record};
use o2dlm::dlm::{DomainId, Event, LockFlags, LockId, Mode};
use o2dlm::wire::dlm::*;

const DOM: &[u8] = b"testdomain";

const VALBLK: LockFlags = LockFlags {
    noqueue: false,
    valblk: true,
};

fn cluster(n: usize, seed: u64) -> (Cluster, DomainId) {
    let mut c = Cluster::new(n, seed);
    let mut d = None;
    for i in 0..n as u8 {
        d = Some(c.with(i, |x, now| x.join(now, DOM)).unwrap());
        c.run_for(5);
    }
    for i in 0..n as u8 {
        c.take_events(i);
        assert!(c.dlm(i).is_joined(d.unwrap()));
    }
    c.log.clear();
    (c, d.unwrap())
}

fn lock(c: &mut Cluster, n: u8, d: DomainId, name: &str, mode: Mode) -> LockId {
    c.with(n, |x, now| x.lock(now, d, name.as_bytes(), mode, VALBLK))
        .unwrap()
}

fn granted(c: &Cluster, n: u8, l: LockId) -> Option<(Mode, Option<[u8; 64]>)> {
    c.events(n).iter().rev().find_map(|e| match e {
        Event::Ast { lock, mode, lvb } if *lock == l => Some((*mode, *lvb)),
        _ => None,
    })
}

fn lvb(s: &str) -> [u8; 64] {
    let mut v = [0u8; 64];
    v[..s.len()].copy_from_slice(s.as_bytes());
    v
}

/// Requests sent since `from` in the log, as (from, to, type).
fn requests_since(c: &Cluster, from: usize) -> Vec<(u8, u8, u16)> {
    c.log[from..]
        .iter()
        .filter_map(|r| match r {
            Record::Request {
                from, to, msg_type, ..
            } => Some((*from, *to, *msg_type)),
            Record::Reply { .. } => None,
        })
        .collect()
}

fn safe(c: &Cluster) {
    let v = kernel_safety_violations(&c.log);
    assert!(v.is_empty(), "{v:?}");
}

/// Node `holder` takes EX on `name` (mastered by `master`, which locks it
/// first at NL), writes `value` and keeps EX.
fn ex_with_value(
    c: &mut Cluster,
    d: DomainId,
    master: u8,
    holder: u8,
    name: &str,
    value: &str,
) -> (LockId, LockId) {
    let m = lock(c, master, d, name, Mode::Nl);
    c.run_for(10);
    assert!(granted(c, master, m).is_some());
    let h = lock(c, holder, d, name, Mode::Ex);
    c.run_for(10);
    assert_eq!(granted(c, holder, h).map(|g| g.0), Some(Mode::Ex));
    c.dlm(holder).set_lvb(h, value.as_bytes()).unwrap();
    (m, h)
}

#[test]
fn two_nodes_ex_holder_dies_waiter_on_master_granted_lvb_invalid() {
    let (mut c, d) = cluster(2, 1);
    // Node 0 masters R and first stores a value through an EX round.
    let w = lock(&mut c, 0, d, "R", Mode::Ex);
    c.run_for(10);
    c.dlm(0).set_lvb(w, b"old").unwrap();
    c.with(0, |x, now| x.convert(now, w, Mode::Nl, VALBLK, None))
        .unwrap();
    c.run_for(10);
    assert_eq!(c.dlm(0).resource_lvb(d, b"R"), Some(lvb("old")));
    // Node 1 takes EX (reads "old"), writes without writing back.
    let h = lock(&mut c, 1, d, "R", Mode::Ex);
    c.run_for(10);
    assert_eq!(granted(&c, 1, h), Some((Mode::Ex, Some(lvb("old")))));
    c.dlm(1).set_lvb(h, b"new-not-written-back").unwrap();
    // Node 0 wants PR: blocked by node 1's EX.
    c.with(0, |x, now| x.convert(now, w, Mode::Pr, VALBLK, None))
        .unwrap();
    c.run_for(10);
    assert_eq!(c.dlm(0).lock_mode(w), Some(Mode::Nl));
    let mark = c.log.len();
    c.crash(1);
    c.declare_dead(1);
    let t0 = c.elapsed_ms();
    let ok = c.run_until(10_000, |c| c.dlm(0).lock_mode(w) == Some(Mode::Pr));
    assert!(ok, "waiter not granted after recovery");
    println!(
        "2-node master-side recovery: granted {} ms after the verdict (allowed 10000)",
        c.elapsed_ms() - t0
    );
    // The dead node held EX: the value may have changed, so it is zeroed
    // and reported invalid (§9.6).
    assert_eq!(granted(&c, 0, w), Some((Mode::Pr, Some([0; 64]))));
    assert!(c.dlm(0).lock_lvb_invalid(w));
    assert_eq!(c.dlm(0).resource_lvb(d, b"R"), Some([0; 64]));
    // One survivor: nothing on the wire, as in capture 07.
    assert!(c.log.len() == mark, "{:?}", &c.log[mark..]);
    assert!(c.dlm(0).recovery_pending(d).is_empty());
    assert_eq!(c.dlm(0).recovery_master(d), None);
    assert_eq!(c.dlm(0).resource_owner(d, b"$RECOVERY"), Some(0));
    // Writing the LVB makes it valid again.
    c.with(0, |x, now| x.convert(now, w, Mode::Ex, VALBLK, None))
        .unwrap();
    c.run_for(10);
    c.dlm(0).set_lvb(w, b"fresh").unwrap();
    assert!(!c.dlm(0).lock_lvb_invalid(w));
}

#[test]
fn two_nodes_master_dies_waiter_remasters_and_is_granted() {
    let (mut c, d) = cluster(2, 2);
    let (_, _h) = ex_with_value(&mut c, d, 1, 1, "K", "v");
    let w = lock(&mut c, 0, d, "K", Mode::Ex);
    c.run_for(10);
    assert!(granted(&c, 0, w).is_none());
    c.crash(1);
    c.run_for(1_000);
    c.declare_dead(1);
    assert!(c.run_until(10_000, |c| c.dlm(0).lock_mode(w) == Some(Mode::Ex)));
    assert_eq!(c.dlm(0).resource_owner(d, b"K"), Some(0));
    let q = c.dlm(0).resource_locks(d, b"K").unwrap();
    assert_eq!(q, vec![(Queue::Granted, 0, w.0, Mode::Ex)]);
    // Nobody could vouch for the LVB.
    assert_eq!(granted(&c, 0, w).unwrap().1, Some([0; 64]));
    assert!(c.dlm(0).lock_lvb_invalid(w));
    safe(&c);
}

#[test]
fn pr_holder_keeps_value_nl_holder_loses_it() {
    // §9.6 on a resource the dead node mastered: a PR holder's copy
    // stays, an NL holder's copy is zeroed.
    let (mut c, d) = cluster(3, 3);
    let ex = lock(&mut c, 2, d, "V", Mode::Ex);
    c.run_for(10);
    c.dlm(2).set_lvb(ex, b"val").unwrap();
    c.with(2, |x, now| x.convert(now, ex, Mode::Nl, VALBLK, None))
        .unwrap();
    c.run_for(10);
    let p = lock(&mut c, 0, d, "V", Mode::Pr);
    let n = lock(&mut c, 1, d, "V", Mode::Pr);
    c.run_for(10);
    assert_eq!(granted(&c, 0, p).unwrap().1, Some(lvb("val")));
    assert_eq!(granted(&c, 1, n).unwrap().1, Some(lvb("val")));
    c.with(1, |x, now| x.convert(now, n, Mode::Nl, VALBLK, None))
        .unwrap();
    c.run_for(10);
    c.crash(2);
    c.declare_dead(2);
    c.run_for(2_000);
    assert_eq!(c.dlm(0).lock_lvb(p), Some(lvb("val")));
    assert!(!c.dlm(0).lock_lvb_invalid(p));
    assert_eq!(c.dlm(1).lock_lvb(n), Some([0; 64]));
    assert!(c.dlm(1).lock_lvb_invalid(n));
    // Node 0 is recovery master; node 1's NL record carries no LVB, node
    // 0's own PR copy does not count (kernel rule): the new master's
    // value is zero.
    assert_eq!(c.dlm(0).resource_owner(d, b"V"), Some(0));
    assert_eq!(c.dlm(1).resource_owner(d, b"V"), Some(0));
    assert_eq!(c.dlm(0).resource_refmap(d, b"V"), Some(vec![1]));
    safe(&c);
}

fn name_of(t: u16) -> &'static str {
    match t {
        DLM_MASTER_REQUEST_MSG => "MASTER_REQUEST",
        DLM_ASSERT_MASTER_MSG => "ASSERT_MASTER",
        DLM_CREATE_LOCK_MSG => "CREATE_LOCK",
        DLM_CONVERT_LOCK_MSG => "CONVERT_LOCK",
        DLM_PROXY_AST_MSG => "PROXY_AST",
        DLM_UNLOCK_LOCK_MSG => "UNLOCK_LOCK",
        DLM_DEREF_LOCKRES_MSG => "DEREF",
        DLM_MIG_LOCKRES_MSG => "MIG_LOCKRES",
        DLM_MASTER_REQUERY_MSG => "MASTER_REQUERY",
        DLM_LOCK_REQUEST_MSG => "LOCK_REQUEST",
        DLM_RECO_DATA_DONE_MSG => "RECO_DATA_DONE",
        DLM_BEGIN_RECO_MSG => "BEGIN_RECO",
        DLM_FINALIZE_RECO_MSG => "FINALIZE_RECO",
        DLM_QUERY_JOIN_MSG => "QUERY_JOIN",
        DLM_ASSERT_JOINED_MSG => "ASSERT_JOINED",
        _ => "other",
    }
}

/// Four nodes; node 3 masters A (nodes 1 and 2 hold PR on it, node 0
/// waits for EX) and holds EX on B mastered by node 1 (node 2 waits).
fn four_nodes(seed: u64) -> (Cluster, DomainId, [LockId; 5]) {
    let (mut c, d) = cluster(4, seed);
    let a3 = lock(&mut c, 3, d, "A", Mode::Ex);
    c.run_for(10);
    c.dlm(3).set_lvb(a3, b"a").unwrap();
    c.with(3, |x, now| x.convert(now, a3, Mode::Pr, VALBLK, None))
        .unwrap();
    c.run_for(10);
    let a1 = lock(&mut c, 1, d, "A", Mode::Pr);
    let a2 = lock(&mut c, 2, d, "A", Mode::Pr);
    c.run_for(10);
    let a0 = lock(&mut c, 0, d, "A", Mode::Ex);
    c.run_for(10);
    let b1 = lock(&mut c, 1, d, "B", Mode::Nl);
    c.run_for(10);
    let b3 = lock(&mut c, 3, d, "B", Mode::Ex);
    c.run_for(10);
    let b2 = lock(&mut c, 2, d, "B", Mode::Pr);
    c.run_for(10);
    assert!(granted(&c, 1, a1).is_some() && granted(&c, 2, a2).is_some());
    assert!(granted(&c, 0, a0).is_none() && granted(&c, 2, b2).is_none());
    assert!(granted(&c, 3, b3).is_some() && granted(&c, 1, b1).is_some());
    (c, d, [a0, a1, a2, b1, b2])
}

/// The survivors release what blocks the waiters, as applications would
/// after recovery; then the waiters must be granted.
fn release_and_check(c: &mut Cluster, d: DomainId, l: [LockId; 5], a_master: u8) {
    let [a0, a1, a2, _b1, b2] = l;
    for (n, x) in [(1u8, a1), (2u8, a2)] {
        c.with(n, |dl, now| {
            dl.unlock(now, x, o2dlm::dlm::UnlockFlags::default(), None)
        })
        .unwrap();
    }
    assert!(
        c.run_until(10_000, |c| c.dlm(0).lock_mode(a0) == Some(Mode::Ex)
            && c.dlm(2).lock_mode(b2) == Some(Mode::Pr))
    );
    for n in 0..3 {
        assert_eq!(c.dlm(n).resource_owner(d, b"A"), Some(a_master), "node {n}");
    }
    safe(c);
}

#[test]
fn three_survivors_elect_one_recovery_master_lowest_in_send_order() {
    for seed in 0..10 {
        let (mut c, d, l) = four_nodes(seed);
        c.shuffle_links = seed % 2 == 1;
        let mark = c.log.len();
        c.crash(3);
        c.declare_dead(3);
        let t0 = c.elapsed_ms();
        assert!(c.run_until(20_000, |c| (0..3)
            .all(|n| c.dlm(n).recovery_pending(d).is_empty())));
        let took = c.elapsed_ms() - t0;
        let reqs = requests_since(&c, mark);
        let begin: Vec<(u8, u8)> = reqs
            .iter()
            .filter(|r| r.2 == DLM_BEGIN_RECO_MSG)
            .map(|r| (r.0, r.1))
            .collect();
        // In send order the lowest survivor gets `$RECOVERY` first; with
        // shuffled links another may win the race, as between kernels.
        // Either way exactly one node announces itself, to all others.
        let m = begin.first().map(|b| b.0).unwrap_or(9);
        if !c.shuffle_links {
            assert_eq!(m, 0, "seed {seed}: {reqs:?}");
        }
        let others: Vec<u8> = (0..3).filter(|&n| n != m).collect();
        let to_others: Vec<(u8, u8)> = others.iter().map(|&o| (m, o)).collect();
        assert_eq!(begin, to_others, "seed {seed}: {reqs:?}");
        let lr: Vec<(u8, u8)> = reqs
            .iter()
            .filter(|r| r.2 == DLM_LOCK_REQUEST_MSG)
            .map(|r| (r.0, r.1))
            .collect();
        assert_eq!(lr, to_others, "seed {seed}");
        let fin: Vec<(u8, u8)> = reqs
            .iter()
            .filter(|r| r.2 == DLM_FINALIZE_RECO_MSG)
            .map(|r| (r.0, r.1))
            .collect();
        let twice: Vec<(u8, u8)> = to_others.iter().chain(to_others.iter()).copied().collect();
        assert_eq!(fin, twice, "seed {seed}");
        // Each participant sent its data on A, then RECO_DATA_DONE.
        for &n in &others {
            let sent: Vec<u16> = reqs
                .iter()
                .filter(|r| {
                    r.0 == n
                        && r.1 == m
                        && (r.2 == DLM_MIG_LOCKRES_MSG || r.2 == DLM_RECO_DATA_DONE_MSG)
                })
                .map(|r| r.2)
                .collect();
            assert_eq!(
                sent,
                vec![DLM_MIG_LOCKRES_MSG, DLM_RECO_DATA_DONE_MSG],
                "seed {seed} node {n}"
            );
        }
        if seed == 0 {
            let names: Vec<String> = reqs
                .iter()
                .map(|r| format!("{}->{} {}", r.0, r.1, name_of(r.2)))
                .collect();
            println!("recovery traffic: {names:?}");
            println!("3 survivors: recovery done {took} ms after the verdict (allowed 20000)");
        }
        // A was re-mastered by the recovery master with both PR holders
        // and the waiter; the LVB came with the PR records.
        let q = c.dlm(m).resource_locks(d, b"A").unwrap();
        let mut holders: Vec<(Queue, u8, Mode)> = q.iter().map(|x| (x.0, x.1, x.3)).collect();
        holders.sort_by_key(|x| x.1);
        assert_eq!(
            holders,
            vec![
                (Queue::Blocked, 0, Mode::Ex),
                (Queue::Granted, 1, Mode::Pr),
                (Queue::Granted, 2, Mode::Pr)
            ],
            "seed {seed}"
        );
        assert_eq!(c.dlm(m).resource_lvb(d, b"A"), Some(lvb("a")));
        assert_eq!(c.dlm(m).resource_refmap(d, b"A"), Some(others.clone()));
        // B: node 3's EX removed at its master, node 2's PR granted.
        assert_eq!(c.dlm(1).resource_owner(d, b"B"), Some(1));
        release_and_check(&mut c, d, l, m);
        assert_eq!(granted(&c, 0, l[0]).unwrap().1, Some(lvb("a")));
    }
}

fn logged(c: &Cluster, t: u16) -> bool {
    c.log
        .iter()
        .any(|r| matches!(r, Record::Request { msg_type, .. } if *msg_type == t))
}

#[test]
fn recovery_master_dies_mid_recovery_election_restarts() {
    let (mut c, d, l) = four_nodes(7);
    let [a0, a1, a2, _b1, b2] = l;
    c.crash(3);
    c.declare_dead(3);
    // Node 0 won `$RECOVERY` and is asking for data: kill it now.
    assert!(c.run_until(5_000, |c| logged(c, DLM_LOCK_REQUEST_MSG)));
    assert!(!logged(&c, DLM_FINALIZE_RECO_MSG));
    assert_eq!(c.dlm(1).recovery_master(d), Some(0));
    let mark = c.log.len();
    c.crash(0);
    c.run_for(500);
    c.declare_dead(0);
    let t0 = c.elapsed_ms();
    assert!(c.run_until(20_000, |c| (1..3)
        .all(|n| c.dlm(n).recovery_pending(d).is_empty())));
    println!(
        "recovery master death: both dead nodes recovered {} ms after the second verdict (allowed 20000)",
        c.elapsed_ms() - t0
    );
    let reqs = requests_since(&c, mark);
    // Node 1 is the new recovery master, once per dead node (3, then 0).
    let begin: Vec<(u8, u8)> = reqs
        .iter()
        .filter(|r| r.2 == DLM_BEGIN_RECO_MSG)
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(begin, vec![(1, 2), (1, 2)], "{reqs:?}");
    let begin_dead: Vec<u8> = c.log[mark..]
        .iter()
        .filter_map(|r| match r.message() {
            Some(DlmMessage::BeginReco(b)) => Some(b.dead_node),
            _ => None,
        })
        .collect();
    assert_eq!(begin_dead, vec![3, 0]);
    for n in 1..3 {
        assert_eq!(c.dlm(n).resource_owner(d, b"A"), Some(1), "node {n}");
        assert_eq!(c.dlm(n).resource_owner(d, b"B"), Some(1), "node {n}");
    }
    // Node 0's blocked EX died with it; the PR holders remain.
    let q = c.dlm(1).resource_locks(d, b"A").unwrap();
    let nodes: Vec<(u8, Mode)> = q.iter().map(|x| (x.1, x.3)).collect();
    assert_eq!(nodes, vec![(1, Mode::Pr), (2, Mode::Pr)]);
    assert_eq!(c.dlm(1).resource_lvb(d, b"A"), Some(lvb("a")));
    assert_eq!(c.dlm(2).lock_mode(b2), Some(Mode::Pr));
    assert_eq!(c.dlm(1).lock_mode(a1), Some(Mode::Pr));
    assert_eq!(c.dlm(2).lock_mode(a2), Some(Mode::Pr));
    let _ = a0;
    safe(&c);
}

#[test]
fn participant_dies_mid_recovery_is_marked_dead_then_recovered() {
    let (mut c, d, l) = four_nodes(8);
    let [a0, a1, _a2, _b1, b2] = l;
    c.crash(3);
    c.declare_dead(3);
    assert!(c.run_until(5_000, |c| logged(c, DLM_LOCK_REQUEST_MSG)));
    assert!(!logged(&c, DLM_FINALIZE_RECO_MSG));
    c.crash(2);
    let mark = c.log.len();
    c.run_for(500);
    c.declare_dead(2);
    let t0 = c.elapsed_ms();
    assert!(c.run_until(20_000, |c| (0..2)
        .all(|n| c.dlm(n).recovery_pending(d).is_empty())));
    println!(
        "participant death: recovered {} ms after the second verdict (allowed 20000)",
        c.elapsed_ms() - t0
    );
    let reqs = requests_since(&c, mark);
    assert!(reqs.iter().all(|r| r.1 != 2 && r.0 != 2), "{reqs:?}");
    for n in 0..2 {
        assert_eq!(c.dlm(n).resource_owner(d, b"A"), Some(0), "node {n}");
    }
    let q = c.dlm(0).resource_locks(d, b"A").unwrap();
    let nodes: Vec<(Queue, u8, Mode)> = q.iter().map(|x| (x.0, x.1, x.3)).collect();
    assert_eq!(
        nodes,
        vec![(Queue::Granted, 1, Mode::Pr), (Queue::Blocked, 0, Mode::Ex)]
    );
    assert_eq!(c.dlm(0).resource_refmap(d, b"A"), Some(vec![1]));
    // Releasing node 1's PR lets node 0's EX through.
    c.with(1, |x, now| {
        x.unlock(now, a1, o2dlm::dlm::UnlockFlags::default(), None)
    })
    .unwrap();
    assert!(c.run_until(5_000, |c| c.dlm(0).lock_mode(a0) == Some(Mode::Ex)));
    assert_eq!(granted(&c, 0, a0).unwrap().1, Some(lvb("a")));
    assert_eq!(c.dlm(1).resource_locks(d, b"B").map(|q| q.len()), Some(1));
    let _ = b2;
    safe(&c);
}

#[test]
fn restarted_node_rejoins_only_after_its_old_self_was_recovered() {
    let (mut c, d) = cluster(3, 11);
    let (_m, _h) = ex_with_value(&mut c, d, 0, 2, "R", "x");
    let own = lock(&mut c, 2, d, "S", Mode::Ex);
    c.run_for(10);
    assert!(granted(&c, 2, own).is_some());
    let w = lock(&mut c, 1, d, "R", Mode::Pr);
    c.run_for(10);
    assert!(granted(&c, 1, w).is_none());
    // Node 2 restarts at once with a new heartbeat generation; the others
    // have not yet declared the old one dead.
    c.crash(2);
    c.restart(2, 99);
    let mark = c.log.len();
    let d2 = c.with(2, |x, now| x.join(now, DOM)).unwrap();
    assert_eq!(d2, d);
    c.run_for(1_000);
    assert!(!c.dlm(2).is_joined(d));
    // The heartbeat now sees the old generation die and the new one live.
    for n in 0..2u8 {
        c.with(n, |x, now| {
            x.handle_node_down(now, 2);
            x.handle_node_up(now, 2);
        });
    }
    let t0 = c.elapsed_ms();
    assert!(c.run_until(95_000, |c| c.dlm(2).is_joined(d)));
    println!(
        "rejoin: joined {} ms after the old incarnation's death (allowed 95000)",
        c.elapsed_ms() - t0
    );
    assert!(c.events(2).contains(&Event::JoinDone {
        domain: d,
        result: Ok(())
    }));
    // Refused while its old self was a member / being recovered.
    let disallowed = c.log[mark..].iter().any(|r| {
        matches!(r, Record::Reply { msg_type, result: Ok(s), .. }
            if *msg_type == DLM_QUERY_JOIN_MSG && QueryJoinResponse::from_status(*s).code == JOIN_DISALLOW)
    });
    assert!(disallowed);
    for n in 0..3u8 {
        assert!(c.dlm(n).recovery_pending(d).is_empty());
        assert_eq!(c.dlm(n).domain_members(d), Some(vec![0, 1, 2]), "node {n}");
    }
    // The old incarnation's EX is gone: node 1's PR was granted; the new
    // node 2 can take S, which its old self mastered.
    assert!(c.run_until(1_000, |c| c.dlm(1).lock_mode(w) == Some(Mode::Pr)));
    let s2 = lock(&mut c, 2, d, "S", Mode::Ex);
    let r2 = lock(&mut c, 2, d, "R", Mode::Pr);
    assert!(
        c.run_until(5_000, |c| c.dlm(2).lock_mode(s2) == Some(Mode::Ex)
            && c.dlm(2).lock_mode(r2) == Some(Mode::Pr))
    );
    safe(&c);
}

#[test]
fn random_deaths_under_load_recover_and_stay_kernel_safe() {
    for seed in 0..60u64 {
        let (mut c, d) = cluster(4, 100 + seed);
        c.shuffle_links = true;
        let mut r = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let modes = [Mode::Nl, Mode::Pr, Mode::Ex];
        let mut mine: Vec<(u8, LockId)> = Vec::new();
        for _ in 0..20 {
            let n = (next() % 4) as u8;
            let name = format!("L{}", next() % 5);
            let m = modes[(next() % 3) as usize];
            mine.push((n, lock(&mut c, n, d, &name, m)));
            c.run_for(next() % 3);
        }
        // Kill one node mid-traffic, sometimes a second one later.
        let dead = (next() % 4) as u8;
        c.crash(dead);
        c.run_for(next() % 20);
        c.declare_dead(dead);
        let mut gone = vec![dead];
        if seed % 3 == 0 {
            c.run_for(next() % 5);
            let second = (dead + 1 + (next() % 3) as u8) % 4;
            c.crash(second);
            c.declare_dead(second);
            gone.push(second);
        }
        let alive: Vec<u8> = (0..4).filter(|n| !gone.contains(n)).collect();
        let ok = c.run_until(30_000, |c| {
            alive
                .iter()
                .all(|&n| c.dlm(n).recovery_pending(d).is_empty())
        });
        assert!(ok, "seed {seed}: recovery did not finish");
        // Everybody releases what it was granted; every remaining request
        // must then complete (granted or refused) in turn.
        for _ in 0..20 {
            for &(n, l) in &mine {
                if alive.contains(&n) && c.dlm(n).lock_mode(l).is_some() {
                    let _ = c.with(n, |x, now| {
                        x.unlock(now, l, o2dlm::dlm::UnlockFlags::default(), None)
                    });
                }
            }
            c.run_for(500);
        }
        for &(n, l) in &mine {
            if !alive.contains(&n) {
                continue;
            }
            let done = c.events(n).iter().any(|e| match e {
                Event::Ast { lock, .. } | Event::LockFailed { lock, .. } => *lock == l,
                _ => false,
            });
            assert!(done, "seed {seed}: node {n} lock {l:?} never completed");
            assert_eq!(c.dlm(n).lock_mode(l), None, "seed {seed}: still held");
        }
        // The survivors agree on every master.
        for i in 0..5 {
            let name = format!("L{i}");
            let owners: Vec<Option<u8>> = alive
                .iter()
                .map(|&n| c.dlm(n).resource_owner(d, name.as_bytes()))
                .filter(|o| o.is_some())
                .collect();
            assert!(
                owners.windows(2).all(|w| w[0] == w[1]),
                "seed {seed} {name}: {owners:?}"
            );
            assert!(
                owners.iter().all(|o| o.is_some_and(|o| alive.contains(&o))),
                "seed {seed} {name}: {owners:?}"
            );
        }
        safe(&c);
    }
}
