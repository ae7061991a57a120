//! The engine against the kernel's own behaviour: every scenario of the
//! reference captures 02, 03, 04, 05, 06 and 09 is replayed with engine
//! nodes (same node numbers, same lock names, same dlmfs-like calls, same
//! LVB texts), and for every step the DLM requests each direction carried
//! must equal the kernel's, decoded from the pcap: same types, same order,
//! same flags, modes, cookies, names and LVBs. The status replies of lock
//! operations, joins, derefs and migrations are compared as well.
//!
//! One timing variant is normalised on both sides (README "Variations
//! between runs", finding 4): whether a requester repeats its
//! MASTER_REQUEST after the master's MLE_CLEANUP assert (and so draws a
//! second assert). The engine always does (§5.1 step 5); the kernel did in
//! most steps. Test `mastery_round_matches_capture_03_exactly` checks the
//! un-normalised sequence where the kernel did it too.

mod support;

use o2dlm::dlm::sim::{Cluster, Record};
use o2dlm::dlm::{DomainId, Event, LockFlags, LockId, Mode, UnlockFlags};
use o2dlm::wire::dlm::*;
use o2dlm::wire::o2net::{peek_frame, HANDSHAKE_LEN, MSG_MAGIC, STATUS_MAGIC};
use std::collections::{BTreeMap, BTreeSet};
use support::pcap;

const DOM: &[u8] = b"testdomain";

/// Per direction: the requests, and the (type, status) replies.
#[derive(Debug, Default, PartialEq)]
struct Traffic {
    requests: BTreeMap<(u8, u8), Vec<DlmMessage>>,
    replies: BTreeMap<(u8, u8), Vec<(u16, i32)>>,
}

struct KMsg {
    frame: usize,
    from: u8,
    to: u8,
    msg: Result<DlmMessage, (u16, i32)>,
}

fn node_of(ip: std::net::Ipv4Addr) -> u8 {
    ip.octets()[3] - 1
}

fn frame_at(offsets: &[(usize, usize)], off: usize) -> usize {
    let i = offsets.partition_point(|&(o, _)| o <= off);
    if i == 0 {
        0
    } else {
        offsets[i - 1].1
    }
}

/// Every DLM request and status reply in a capture, in frame order.
fn kernel_messages(name: &str) -> Vec<KMsg> {
    let path = support::captures_dir().join(name);
    let (_, conns) = pcap::tcp_connections_on_port(&path, 7777).unwrap();
    let mut out = Vec::new();
    for c in &conns {
        for dir in [&c.client, &c.server] {
            let (Some(src), Some(dst)) = (dir.src, dir.dst) else {
                continue;
            };
            let data = &dir.data;
            let mut off = HANDSHAKE_LEN;
            while off < data.len() {
                let (h, total) = peek_frame(&data[off..]).unwrap().unwrap();
                let frame = frame_at(&dir.frame_offsets, off);
                let payload = &data[off + 24..off + total];
                let is_dlm = (500..=522).contains(&h.msg_type);
                if h.magic == MSG_MAGIC && is_dlm {
                    out.push(KMsg {
                        frame,
                        from: node_of(src.0),
                        to: node_of(dst.0),
                        msg: Ok(DlmMessage::decode(h.msg_type, payload).unwrap()),
                    });
                } else if h.magic == STATUS_MAGIC && is_dlm {
                    out.push(KMsg {
                        frame,
                        from: node_of(src.0),
                        to: node_of(dst.0),
                        msg: Err((h.msg_type, h.status)),
                    });
                }
                off += total;
            }
        }
    }
    out.sort_by_key(|m| m.frame);
    out
}

/// The kernel's traffic in frames [lo, hi).
fn kernel_step(all: &[KMsg], lo: usize, hi: usize) -> Traffic {
    let mut t = Traffic::default();
    for m in all.iter().filter(|m| m.frame >= lo && m.frame < hi) {
        match &m.msg {
            Ok(msg) => t
                .requests
                .entry((m.from, m.to))
                .or_default()
                .push(msg.clone()),
            Err(r) => t.replies.entry((m.from, m.to)).or_default().push(*r),
        }
    }
    t
}

/// Makes the two sides comparable: node addresses in QUERY_NODEINFO (the
/// capture's VMs are 10.0.3.x, the simulation's 127.0.0.x) are cleared,
/// and replies to the mastery messages are left to the dedicated checks.
fn comparable(mut t: Traffic, collapse_repeat_rounds: bool) -> Traffic {
    for msgs in t.requests.values_mut() {
        for m in msgs.iter_mut() {
            if let DlmMessage::QueryNodeinfo(q) = m {
                for n in q.nodes.iter_mut() {
                    n.addr = std::net::Ipv4Addr::UNSPECIFIED;
                }
            }
        }
        if collapse_repeat_rounds {
            let mut seen = BTreeSet::new();
            msgs.retain(|m| match m {
                DlmMessage::MasterRequest(r) => seen.insert(("mr", r.name)),
                DlmMessage::AssertMaster(a) if a.flags == DLM_ASSERT_MASTER_MLE_CLEANUP => {
                    seen.insert(("cleanup", a.name))
                }
                _ => true,
            });
        }
    }
    for r in t.replies.values_mut() {
        r.retain(|(ty, _)| *ty != DLM_MASTER_REQUEST_MSG && *ty != DLM_ASSERT_MASTER_MSG);
    }
    t.requests.retain(|_, v| !v.is_empty());
    t.replies.retain(|_, v| !v.is_empty());
    t
}

/// Engine nodes driven the way dlmfs drives the kernel DLM.
struct Scenario {
    c: Cluster,
    d: Option<DomainId>,
    locks: BTreeMap<(u8, String), LockId>,
    seen: Vec<Vec<Event>>,
    mark: usize,
}

impl Scenario {
    fn new(n: usize) -> Scenario {
        Scenario {
            c: Cluster::new(n, 42),
            d: None,
            locks: BTreeMap::new(),
            seen: vec![Vec::new(); n],
            mark: 0,
        }
    }

    fn join(&mut self, n: u8) {
        self.d = Some(self.c.with(n, |x, now| x.join(now, DOM)).unwrap());
        self.settle(50);
        assert!(self.c.dlm(n).is_joined(self.d.unwrap()));
    }

    fn leave(&mut self, n: u8) {
        let d = self.d.unwrap();
        self.c.with(n, |x, now| x.leave(now, d)).unwrap();
    }

    /// open(): a new lock on first use, else an up-conversion of the
    /// cached one; VALBLK always, NOQUEUE for O_NONBLOCK.
    fn open(&mut self, n: u8, name: &str, mode: Mode, trylock: bool) {
        let d = self.d.unwrap();
        let flags = LockFlags {
            noqueue: trylock,
            valblk: true,
        };
        match self.locks.get(&(n, name.to_string())).copied() {
            None => {
                let l = self
                    .c
                    .with(n, |x, now| x.lock(now, d, name.as_bytes(), mode, flags))
                    .unwrap();
                self.locks.insert((n, name.to_string()), l);
            }
            Some(l) => {
                if self.c.dlm(n).lock_mode(l).is_none_or(|m| m < mode) {
                    self.c
                        .with(n, |x, now| x.convert(now, l, mode, flags, None))
                        .unwrap();
                }
            }
        }
    }

    fn write_lvb(&mut self, n: u8, name: &str, text: &str) {
        let l = self.locks[&(n, name.to_string())];
        self.c.dlm(n).set_lvb(l, text.as_bytes()).unwrap();
    }

    fn unlink(&mut self, n: u8, name: &str) {
        let l = self.locks.remove(&(n, name.to_string())).unwrap();
        let f = UnlockFlags {
            valblk: true,
            cancel: false,
        };
        self.c.with(n, |x, now| x.unlock(now, l, f, None)).unwrap();
    }

    fn lvb_read(&mut self, n: u8, name: &str) -> String {
        let l = self.locks[&(n, name.to_string())];
        let v = self.c.dlm(n).lock_lvb(l).unwrap();
        String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .to_string()
    }

    /// Runs `ms` of time; cached locks answer BASTs as dlmfs does once its
    /// holders are gone (EX wanted → NL, PR wanted → PR).
    fn settle(&mut self, ms: u64) {
        for _ in 0..50 {
            self.c.run_for(ms);
            let mut acted = false;
            for n in 0..self.seen.len() as u8 {
                for e in self.c.take_events(n) {
                    match &e {
                        Event::Bast { lock, blocked } => {
                            let target = if *blocked == Mode::Ex {
                                Mode::Nl
                            } else {
                                Mode::Pr
                            };
                            let l = *lock;
                            if self.c.dlm(n).lock_mode(l).is_some_and(|m| m > target) {
                                let f = LockFlags {
                                    noqueue: false,
                                    valblk: true,
                                };
                                let _ = self.c.with(n, |x, now| x.convert(now, l, target, f, None));
                                acted = true;
                            }
                        }
                        Event::LockFailed { lock, .. } => {
                            self.locks.retain(|_, v| v != lock);
                        }
                        _ => {}
                    }
                    self.seen[n as usize].push(e);
                }
            }
            if !acted {
                return;
            }
        }
    }

    /// What the engine sent since the previous call.
    fn step(&mut self) -> Traffic {
        let mut t = Traffic::default();
        for r in &self.c.log[self.mark..] {
            match r {
                Record::Request { from, to, .. } => t
                    .requests
                    .entry((*from, *to))
                    .or_default()
                    .push(r.message().unwrap()),
                Record::Reply {
                    from,
                    to,
                    msg_type,
                    result,
                    ..
                } => t
                    .replies
                    .entry((*from, *to))
                    .or_default()
                    .push((*msg_type, result.unwrap())),
            }
        }
        self.mark = self.c.log.len();
        let v = o2dlm::dlm::sim::kernel_safety_violations(&self.c.log);
        assert!(v.is_empty(), "{v:?}");
        t
    }
}

fn check(kernel: &[KMsg], lo: usize, hi: usize, engine: Traffic, what: &str) {
    let k = comparable(kernel_step(kernel, lo, hi), true);
    let e = comparable(engine, true);
    // Only the locally refused trylock puts nothing on the wire.
    assert_eq!(
        k.requests.is_empty(),
        what.contains("refused locally"),
        "{what}: unexpected kernel step contents {k:?}"
    );
    assert_eq!(
        e.requests, k.requests,
        "{what}: requests differ (engine left, kernel right)"
    );
    assert_eq!(
        e.replies, k.replies,
        "{what}: replies differ (engine left, kernel right)"
    );
}

#[test]
fn capture_02_domain_join() {
    let k = kernel_messages("02-domain-join.pcap");
    let mut s = Scenario::new(2);
    s.join(0);
    check(&k, 34, 39, s.step(), "02 step 1");
    s.join(1);
    check(&k, 39, 52, s.step(), "02 step 2");
}

#[test]
fn capture_03_mastery() {
    let k = kernel_messages("03-mastery.pcap");
    let mut s = Scenario::new(2);
    s.join(0);
    s.join(1);
    s.step();
    s.open(1, "lockM", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(1, "lockM", "lvb-from-node1");
    check(&k, 52, 60, s.step(), "03 step 3");
    s.open(0, "lockM", Mode::Pr, false);
    s.settle(20);
    assert_eq!(s.lvb_read(0, "lockM"), "lvb-from-node1");
    check(&k, 60, 79, s.step(), "03 step 5");
}

#[test]
fn mastery_round_matches_capture_03_exactly() {
    let k = kernel_messages("03-mastery.pcap");
    let mut s = Scenario::new(2);
    s.join(0);
    s.join(1);
    s.open(1, "lockM", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(1, "lockM", "lvb-from-node1");
    s.step();
    s.open(0, "lockM", Mode::Pr, false);
    s.settle(20);
    let e = s.step();
    let kt = kernel_step(&k, 60, 79);
    assert_eq!(e.requests, kt.requests);
    // Including the mastery replies: YES, YES / MASTERY_REF then 0.
    assert_eq!(e.replies, kt.replies, "replies");
}

#[test]
fn capture_04_contention() {
    let k = kernel_messages("04-contention.pcap");
    let mut s = Scenario::new(2);
    s.join(0);
    s.join(1);
    s.step();
    // Part A: lockH mastered by the holder.
    s.open(0, "lockH", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(0, "lockH", "lvb-from-node0-H");
    check(&k, 51, 62, s.step(), "04 step 3");
    s.open(1, "lockH", Mode::Pr, true);
    s.settle(20);
    assert!(
        !s.locks.contains_key(&(1, "lockH".to_string())),
        "trylock refused"
    );
    check(&k, 62, 77, s.step(), "04 step 4");
    s.open(1, "lockH", Mode::Pr, false);
    s.settle(20);
    assert_eq!(s.lvb_read(1, "lockH"), "lvb-from-node0-H");
    check(&k, 77, 86, s.step(), "04 step 5");
    // Part B: lockR mastered by the requester.
    s.open(1, "lockR", Mode::Pr, false);
    s.settle(20);
    check(&k, 86, 94, s.step(), "04 step 7");
    s.open(0, "lockR", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(0, "lockR", "lvb-from-node0-R");
    check(&k, 94, 109, s.step(), "04 step 8");
    s.open(1, "lockR", Mode::Pr, true);
    s.settle(20);
    check(&k, 109, 110, s.step(), "04 step 9 (refused locally)");
    s.open(1, "lockR", Mode::Pr, false);
    s.settle(20);
    assert_eq!(s.lvb_read(1, "lockR"), "lvb-from-node0-R");
    check(&k, 110, 121, s.step(), "04 step 10");
}

#[test]
fn capture_05_convert() {
    let k = kernel_messages("05-convert.pcap");
    let mut s = Scenario::new(2);
    s.join(0);
    s.join(1);
    s.step();
    s.open(0, "lockV", Mode::Pr, false);
    s.settle(20);
    check(&k, 46, 56, s.step(), "05 step 3");
    s.open(1, "lockV", Mode::Pr, false);
    s.settle(20);
    check(&k, 56, 76, s.step(), "05 step 4");
    s.open(1, "lockV", Mode::Ex, false);
    s.settle(20);
    check(&k, 76, 84, s.step(), "05 step 5");
    s.open(0, "lockW", Mode::Pr, false);
    s.settle(20);
    check(&k, 84, 91, s.step(), "05 step 7");
    s.open(1, "lockW", Mode::Pr, false);
    s.settle(20);
    check(&k, 91, 116, s.step(), "05 step 8");
    s.open(0, "lockW", Mode::Ex, false);
    s.settle(20);
    check(&k, 116, 127, s.step(), "05 step 9");
}

#[test]
fn capture_06_unlink_and_leave_with_migration() {
    let k = kernel_messages("06-unlink-leave.pcap");
    let mut s = Scenario::new(2);
    s.join(0);
    s.join(1);
    s.step();
    s.open(1, "lockU", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(1, "lockU", "lvb-U");
    check(&k, 67, 74, s.step(), "06 step 3");
    s.open(0, "lockU", Mode::Pr, false);
    s.settle(20);
    check(&k, 74, 93, s.step(), "06 step 4");
    s.unlink(0, "lockU");
    s.settle(15_000);
    check(
        &k,
        93,
        181,
        s.step(),
        "06 step 5 (unlock, deref after the purge delay)",
    );
    s.open(1, "lockM", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(1, "lockM", "lvb-M-from-node1");
    check(&k, 181, 188, s.step(), "06 step 6");
    s.open(0, "lockM", Mode::Pr, false);
    s.settle(20);
    check(&k, 188, 206, s.step(), "06 step 7");
    s.open(0, "lockN", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(0, "lockN", "lvb-N-from-node0");
    check(&k, 206, 213, s.step(), "06 step 8");
    s.open(1, "lockN", Mode::Pr, false);
    s.settle(20);
    check(&k, 213, 229, s.step(), "06 step 9");
    for name in ["lockM", "lockN", "lockU"] {
        s.unlink(1, name);
    }
    s.settle(20);
    s.leave(1);
    s.settle(6_000);
    assert!(s.seen[1]
        .iter()
        .any(|e| matches!(e, Event::LeaveDone { .. })));
    check(&k, 229, 272, s.step(), "06 step 11 (leave, migration)");
    assert_eq!(s.c.dlm(0).resource_owner(s.d.unwrap(), b"lockM"), Some(0));
}

#[test]
fn capture_09_three_node_leave_with_migrate_request() {
    let k = kernel_messages("09-leave-3node.pcap");
    let mut s = Scenario::new(3);
    s.join(0);
    s.join(1);
    s.join(2);
    check(&k, 112, 160, s.step(), "09 steps 1-3 (joins)");
    s.open(2, "lockG", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(2, "lockG", "lvb-G-from-node2");
    check(&k, 160, 173, s.step(), "09 step 4");
    s.open(0, "lockG", Mode::Pr, false);
    s.settle(20);
    check(&k, 173, 205, s.step(), "09 step 5");
    s.open(1, "lockG", Mode::Pr, false);
    s.settle(20);
    check(&k, 205, 225, s.step(), "09 step 6");
    s.unlink(2, "lockG");
    s.settle(20);
    s.leave(2);
    s.settle(6_000);
    check(&k, 225, 324, s.step(), "09 step 10 (leave, migration)");
    s.open(1, "lockG", Mode::Ex, false);
    s.settle(20);
    assert_eq!(s.lvb_read(1, "lockG"), "lvb-G-from-node2");
    check(&k, 326, 333, s.step(), "09 step 13");
    s.open(0, "lockG", Mode::Pr, false);
    s.settle(20);
    check(&k, 333, 372, s.step(), "09 step 14");
}

/// As `check`, but the order of messages within one direction is not
/// compared: for steps where the kernel's asynchronous assert worker
/// interleaved its MLE_CLEANUP asserts with other traffic differently
/// (README "Variations between runs"); contents and counts still must
/// match.
fn check_unordered(kernel: &[KMsg], lo: usize, hi: usize, engine: Traffic, what: &str) {
    let sorted = |t: Traffic| {
        let mut t = comparable(t, true);
        for v in t.requests.values_mut() {
            v.sort_by_key(|m| format!("{m:?}"));
        }
        for v in t.replies.values_mut() {
            v.sort();
        }
        t
    };
    let (k, e) = (sorted(kernel_step(kernel, lo, hi)), sorted(engine));
    assert_eq!(
        e.requests, k.requests,
        "{what}: requests differ (engine left, kernel right)"
    );
    assert_eq!(
        e.replies, k.replies,
        "{what}: replies differ (engine left, kernel right)"
    );
}

/// Lock state of one resource as (queue, node, cookie sequence, mode).
fn queues(s: &mut Scenario, n: u8, name: &str) -> Vec<(o2dlm::dlm::lockres::Queue, u8, u64, Mode)> {
    let d = s.d.unwrap();
    s.c.dlm(n)
        .resource_locks(d, name.as_bytes())
        .unwrap_or_default()
        .into_iter()
        .map(|(q, node, cookie, m)| (q, node, cookie & 0x00ff_ffff_ffff_ffff, m))
        .collect()
}

/// Capture 07: node 1 (holding EX on lockK1, which it masters, and on
/// lockK0, mastered by node 0) dies; node 0 recovers alone. The engine
/// sends nothing during recovery (the kernel only tried a DEREF to the
/// dead node, frame 100) and ends in the kernel's lock state (step 12).
#[test]
fn capture_07_node_death_two_nodes() {
    use o2dlm::dlm::lockres::Queue::Granted;
    let k = kernel_messages("07-node-death.pcap");
    let mut s = Scenario::new(2);
    s.join(0);
    check(&k, 29, 33, s.step(), "07 step 1");
    s.join(1);
    check(&k, 33, 46, s.step(), "07 step 2");
    s.open(0, "lockK0", Mode::Pr, false);
    s.settle(20);
    check(&k, 46, 53, s.step(), "07 step 3");
    // Two dlmlock processes at once: lockK0 took the first cookie.
    s.open(1, "lockK0", Mode::Ex, false);
    s.open(1, "lockK1", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(1, "lockK1", "lvb-K1-from-node1");
    s.write_lvb(1, "lockK0", "lvb-K0-from-node1");
    check(&k, 53, 75, s.step(), "07 step 4");
    // Step 5: the kernel's node 0 before the kill.
    let d = s.d.unwrap();
    assert_eq!(
        queues(&mut s, 0, "lockK0"),
        vec![(Granted, 0, 1, Mode::Nl), (Granted, 1, 1, Mode::Ex)]
    );
    assert_eq!(s.c.dlm(0).resource_refmap(d, b"lockK0"), Some(vec![1]));
    s.open(0, "lockK0", Mode::Ex, true);
    s.settle(20);
    s.open(0, "lockK1", Mode::Ex, true);
    s.settle(20);
    check(&k, 76, 91, s.step(), "07 step 6");
    s.c.crash(1);
    s.c.run_for(1_000);
    s.c.declare_dead(1);
    s.settle(100);
    let t = s.step();
    assert!(
        t.requests.is_empty(),
        "one survivor recovers silently: {t:?}"
    );
    assert!(s.c.dlm(0).recovery_pending(d).is_empty());
    s.open(0, "lockK1", Mode::Ex, false);
    s.settle(20);
    assert_eq!(s.lvb_read(0, "lockK1"), "");
    s.open(0, "lockK0", Mode::Ex, false);
    s.settle(20);
    assert_eq!(s.lvb_read(0, "lockK0"), "");
    let t = s.step();
    assert!(t.requests.is_empty(), "{t:?}");
    // Step 12: the kernel's state after recovery.
    assert_eq!(queues(&mut s, 0, "lockK0"), vec![(Granted, 0, 1, Mode::Ex)]);
    assert_eq!(queues(&mut s, 0, "lockK1"), vec![(Granted, 0, 4, Mode::Ex)]);
    assert_eq!(queues(&mut s, 0, "$RECOVERY"), vec![]);
    for name in ["lockK0", "lockK1", "$RECOVERY"] {
        assert_eq!(
            s.c.dlm(0).resource_owner(d, name.as_bytes()),
            Some(0),
            "{name}"
        );
        assert_eq!(
            s.c.dlm(0).resource_refmap(d, name.as_bytes()),
            Some(vec![]),
            "{name}"
        );
        assert_eq!(
            s.c.dlm(0).resource_lvb(d, name.as_bytes()),
            Some([0; 64]),
            "{name}"
        );
    }
    assert_eq!(s.c.dlm(0).domain_members(d), Some(vec![0]));
    // Engine-only: the grant says the value was lost (node 1 held EX).
    let l = s.locks[&(0, "lockK0".to_string())];
    assert!(s.c.dlm(0).lock_lvb_invalid(l));
}

/// Capture 08: three nodes, node 2 (master of lockR2, lockE, lockS;
/// holder of EX on lockR0 mastered by node 0 and PR on lockR1 mastered by
/// node 1) dies. The engine nodes must put the same recovery messages on
/// the wire in the same order with the same contents (MASTER_REQUERY of
/// `$RECOVERY`, its mastery, BEGIN_RECO, LOCK_REQUEST, MIG_LOCKRES with
/// RECOVERY|ALL_DONE carrying node 1's PR and the LVB, RECO_DATA_DONE,
/// FINALIZE_RECO stage 1 then 2) and end in the kernel's lock state.
#[test]
fn capture_08_three_node_recovery() {
    use o2dlm::dlm::lockres::Queue::Granted;
    let k = kernel_messages("08-recovery-3node.pcap");
    let mut s = Scenario::new(3);
    s.join(0);
    s.join(1);
    s.join(2);
    check(&k, 107, 155, s.step(), "08 steps 1-3 (joins)");
    s.open(2, "lockR2", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(2, "lockR2", "lvb-R2-from-node2");
    check(&k, 155, 168, s.step(), "08 step 4");
    s.open(0, "lockR2", Mode::Pr, false);
    s.settle(20);
    assert_eq!(s.lvb_read(0, "lockR2"), "lvb-R2-from-node2");
    check(&k, 168, 200, s.step(), "08 step 5");
    s.open(1, "lockR2", Mode::Pr, false);
    s.settle(20);
    check_unordered(&k, 200, 227, s.step(), "08 step 6");
    s.open(0, "lockR0", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(0, "lockR0", "lvb-R0-from-node0");
    check(&k, 227, 240, s.step(), "08 step 7");
    s.open(2, "lockR0", Mode::Ex, false);
    s.settle(20);
    assert_eq!(s.lvb_read(2, "lockR0"), "lvb-R0-from-node0");
    check(&k, 240, 264, s.step(), "08 step 8");
    s.open(1, "lockR1", Mode::Pr, false);
    s.settle(20);
    check(&k, 264, 277, s.step(), "08 step 9");
    s.open(2, "lockR1", Mode::Pr, false);
    s.settle(20);
    check(&k, 277, 302, s.step(), "08 step 10");
    s.open(2, "lockE", Mode::Ex, false);
    s.settle(20);
    check(&k, 302, 326, s.step(), "08 step 11");
    s.open(2, "lockS", Mode::Ex, false);
    s.settle(20);
    s.write_lvb(2, "lockS", "lvb-S-from-node2");
    check(&k, 326, 339, s.step(), "08 step 12");
    s.open(0, "lockS", Mode::Pr, false);
    s.settle(20);
    assert_eq!(s.lvb_read(0, "lockS"), "lvb-S-from-node2");
    check(&k, 339, 369, s.step(), "08 step 13");
    // Steps 14-16: the kernel's state before the kill.
    let d = s.d.unwrap();
    assert_eq!(
        queues(&mut s, 0, "lockR0"),
        vec![(Granted, 0, 2, Mode::Nl), (Granted, 2, 2, Mode::Ex)]
    );
    assert_eq!(s.c.dlm(0).resource_refmap(d, b"lockR0"), Some(vec![2]));
    assert_eq!(
        queues(&mut s, 1, "lockR1"),
        vec![(Granted, 1, 2, Mode::Pr), (Granted, 2, 3, Mode::Pr)]
    );
    assert_eq!(
        queues(&mut s, 2, "lockR2"),
        vec![
            (Granted, 2, 1, Mode::Pr),
            (Granted, 0, 1, Mode::Pr),
            (Granted, 1, 1, Mode::Pr)
        ]
    );
    assert_eq!(s.c.dlm(2).resource_refmap(d, b"lockR2"), Some(vec![0, 1]));
    assert_eq!(s.c.dlm(2).resource_refmap(d, b"lockS"), Some(vec![0]));
    // Step 18: node 2 vanishes. Node 0's heartbeat notices first and it
    // drives the recovery; node 1 learns of the death from BEGIN_RECO (in
    // the capture its own recovery thread started only after that).
    s.c.crash(2);
    s.c.run_for(1_000);
    s.c.with(0, |x, now| x.handle_node_down(now, 2));
    s.settle(100);
    s.c.with(1, |x, now| x.handle_node_down(now, 2));
    s.settle(100);
    check(&k, 450, 510, s.step(), "08 step 18 (recovery)");
    for n in 0..2u8 {
        assert!(s.c.dlm(n).recovery_pending(d).is_empty(), "node {n}");
        assert_eq!(s.c.dlm(n).domain_members(d), Some(vec![0, 1]));
    }
    // Step 21: node 0 after recovery.
    assert_eq!(
        queues(&mut s, 0, "lockR2"),
        vec![(Granted, 0, 1, Mode::Pr), (Granted, 1, 1, Mode::Pr)]
    );
    assert_eq!(s.c.dlm(0).resource_refmap(d, b"lockR2"), Some(vec![1]));
    assert_eq!(
        s.c.dlm(0).resource_lvb(d, b"lockR2"),
        Some(lvb_text("lvb-R2-from-node2"))
    );
    assert_eq!(queues(&mut s, 0, "lockR0"), vec![(Granted, 0, 2, Mode::Nl)]);
    assert_eq!(s.c.dlm(0).resource_refmap(d, b"lockR0"), Some(vec![]));
    assert_eq!(s.c.dlm(0).resource_lvb(d, b"lockR0"), Some([0; 64]));
    assert_eq!(queues(&mut s, 0, "lockS"), vec![(Granted, 0, 3, Mode::Pr)]);
    assert_eq!(s.c.dlm(0).resource_lvb(d, b"lockS"), Some([0; 64]));
    assert_eq!(s.c.dlm(0).resource_owner(d, b"$RECOVERY"), Some(0));
    assert_eq!(queues(&mut s, 0, "$RECOVERY"), vec![]);
    let mut names = s.c.dlm(0).resource_names(d);
    names.sort();
    assert_eq!(
        names,
        vec![
            b"$RECOVERY".to_vec(),
            b"lockR0".to_vec(),
            b"lockR2".to_vec(),
            b"lockS".to_vec()
        ]
    );
    // Step 22: node 1 after recovery.
    assert_eq!(s.c.dlm(1).resource_owner(d, b"lockR2"), Some(0));
    assert_eq!(queues(&mut s, 1, "lockR1"), vec![(Granted, 1, 2, Mode::Pr)]);
    assert_eq!(s.c.dlm(1).resource_refmap(d, b"lockR1"), Some(vec![]));
    // Steps 24-28 afterwards, message for message.
    s.open(0, "lockR2", Mode::Ex, false);
    s.settle(20);
    assert_eq!(s.lvb_read(0, "lockR2"), "lvb-R2-from-node2");
    check(&k, 519, 530, s.step(), "08 step 24");
    s.open(1, "lockR0", Mode::Ex, false);
    s.settle(20);
    assert_eq!(s.lvb_read(1, "lockR0"), "");
    check(&k, 530, 550, s.step(), "08 step 25");
    s.open(0, "lockE", Mode::Ex, false);
    s.settle(20);
    check(&k, 550, 558, s.step(), "08 step 26");
    s.open(0, "lockS", Mode::Ex, false);
    s.settle(20);
    assert_eq!(s.lvb_read(0, "lockS"), "");
    check(&k, 558, 559, s.step(), "08 step 27 (refused locally: none)");
    // Engine-only: node 0 is told that lockS's value was lost.
    let l = s.locks[&(0, "lockS".to_string())];
    assert!(s.c.dlm(0).lock_lvb_invalid(l));
    let l = s.locks[&(0, "lockR2".to_string())];
    assert!(!s.c.dlm(0).lock_lvb_invalid(l));
}

fn lvb_text(t: &str) -> [u8; 64] {
    let mut v = [0u8; 64];
    v[..t.len()].copy_from_slice(t.as_bytes());
    v
}
