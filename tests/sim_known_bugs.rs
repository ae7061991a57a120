//! DLM bugs found by the cluster simulator, each kept as the shrunk
//! schedule that replays it exactly. The `fixed_*` tests assert the
//! correct outcome and are ignored until the DLM is fixed (run them with
//! `cargo test --test sim_known_bugs -- --ignored`); `still_reproduce`
//! checks that every schedule still fails the way it was reported, so a
//! fix (or a simulator change) that makes one pass is noticed: then remove
//! its `#[ignore]`.
//!
//! Replay any of them with the trace: save the text to a file and run
//! `o2dlm simulate --file FILE --trace`.

use o2dlm::sim::{self, FailKind, Schedule};

/// Bug 1a: a mastery in progress when a node dies concludes while the
/// death is still being recovered (§9.4: new masteries wait until the
/// recovery map is empty). n1 masters s1 and holds EX; n2's EX request is
/// queued at n1. n1 stops and is declared dead; n0, whose MASTER_REQUEST
/// to n1 failed, masters s1 itself right after its own §9.1 cleanup and
/// before the recovery starts (it asserts to n2, which still names n1 as
/// the owner). n2's queued request is then not recovered (its copy of s1
/// is owned by n0, not by the dead node) and is never granted.
const MASTERY_DURING_RECOVERY_LOST_REQUEST: &str = "\
o2dlm-sim seed=0x3d nodes=3 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
12561 op n1 c2 lock d0 s1 ex
12728 op n2 c2 lock d0 s1 ex
12987 fault pause n1 10092ms
16656 op n0 c0 lock d0 s1 ex try
";

/// Bug 1b: same cause, two masters. n1 masters s0 (EX held, n0's EX
/// queued). n2 starts mastering s0 while n1 is stopped; its request to n1
/// fails. n0 declares n1 dead and becomes recovery master; its BEGIN_RECO
/// runs §9.1 on n2, whose mastery then concludes at once (n2 masters s0,
/// grants itself PR) while n0 recovers s0 from its own queued lock and
/// grants itself EX.
const MASTERY_DURING_RECOVERY_TWO_MASTERS: &str = "\
o2dlm-sim seed=0x121 nodes=3 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
12153 op n1 c1 lock d0 s0 ex
14208 op n0 c0 lock d0 s0 ex
16912 fault pause n1 6217ms
17780 op n2 c0 lock d0 s0 pr
";

/// Bug 1c: votes taken before a death are kept after it. n2 masters s0
/// (n2 and n3 hold PR). n2 crashes; n0 asks for EX: n1 answers NO, the
/// request to n2 fails and n0 waits. Recovery makes n1 the master of s0
/// (from n3's PR record). n0's mastery then goes on (asks n3: NO) and
/// counts n1's NO from before the death: it concludes that nobody masters
/// s0, masters it and grants itself EX while n3 holds PR under n1. The
/// kernel restarts the vote after a node-map change (response and maybe
/// maps reset) once recovery is over.
const MASTERY_STALE_VOTES_AFTER_DEATH: &str = "\
o2dlm-sim seed=0x129b nodes=4 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
12563 op n1 c1 lock d0 s2 pr
13684 op n3 c2 lock d0 s0 pr
13713 op n2 c2 lock d0 s0 pr
15166 fault crash n2 11249ms
16762 op n0 c1 lock d0 s0 ex try
";

/// Bug 2: the recovery master gives up a recovery it is finalizing. n0
/// (paused) and n5 (crashed) die together in an 8-node cluster. n1
/// recovers n0 and sends FINALIZE_RECO to the members one at a time; n2,
/// finalized first, ends recovery of n0, wins `$RECOVERY` for n5 and sends
/// BEGIN_RECO to n1, which accepts it ("node 2 replaces 1 as recovery
/// master") in the middle of its own finalize. n4, n6 and n7 never get
/// stage 2 and stay in the recovery of n0; n2's recovery of n5 retries
/// their LOCK_REQUEST answers for ever; no one can join again. The
/// kernel's master sets the FINALIZE state while it sends the finalize
/// messages, so its BEGIN_RECO handler answers -EAGAIN; the engine
/// refuses only when finalizing as a participant (`reco.finalizing`),
/// not in its own `RecoPhase::Finalize`.
const MASTER_FINALIZING_ACCEPTS_BEGIN_RECO: &str = "\
o2dlm-sim seed=0x2c nodes=8 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
16678 fault crash n5 14661ms
16761 fault pause n0 9812ms
";

/// Bug 3: a lock whose UNLOCK is in flight to a dead master survives
/// recovery as a granted lock. n2 masters s0; n0 holds PR (direct) and
/// has an EX queued (cache). n2 stops; n0 unlocks its PR: the UNLOCK sits
/// on the (still open) connection to the stopped n2. n1 declares n2 dead
/// first and recovers; its BEGIN_RECO runs §9.1 on n0, which sends its
/// PR lock as granted in its recovery data. Only when n0's own heartbeat
/// declares n2 dead does the UNLOCK fail and n0 completes it locally
/// (Unlocked event), without telling the new master n1, which keeps n0's
/// PR granted for ever: n0's own EX never comes. The kernel commits a
/// pending unlock during §9.1 (before any recovery data is sent), so the
/// lock is not part of the data.
const UNLOCK_IN_FLIGHT_SURVIVES_RECOVERY: &str = "\
o2dlm-sim seed=0x503a nodes=3 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
12967 op n2 c1 lock d0 s0 ex
13301 op n2 c1 unlock
13302 op n0 c2 lock d0 s0 pr
14432 op n0 c0 lock d0 s0 ex
16259 fault pause n2 8968ms
16308 op n0 c2 unlock
";

/// Bug 4 (fixed): n2 waited on a BLOCK mle naming n0 as the node
/// mastering s2, but n0 had learned the owner was n3, so it never
/// asserted, and n3 died before asserting to everyone: n2's client waited
/// for ever. Fix: after a death, a wait on another node's mastery drops
/// its BLOCK mle and asks again once recovery is over.
const REQUEST_TO_DEAD_MASTER_NOT_RETRIED: &str = "\
o2dlm-sim seed=0xb89 nodes=4 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
13077 op n3 c0 lock d0 s2 ex
13078 op n1 c1 lock d0 s0 ex try
13280 op n0 c1 lock d0 s2 nl
13426 fault pause n3 6655ms
18140 op n2 c0 lock d0 s2 ex try
";

/// Bug 4b (fixed): n1's cancel of its up-conversion (sent on a blocking
/// notice) was in flight to n0 when n0 died; on n1, now the master, the
/// cancel was refused and the conversion waited for ever. Fix: a cancel
/// in flight to a dead master completes locally at §9.1, as the kernel
/// does for a pending cancel.
const CONVERT_TO_DEAD_MASTER_NOT_RETRIED: &str = "\
o2dlm-sim seed=0x3804c nodes=2 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
12296 op n0 c1 lock d0 s2 ex try
12472 op n1 c1 lock d0 s2 pr
12944 op n0 c0 lock d0 s0 ex
14344 op n0 c0 unlock
14416 op n0 c0 lock d0 s2 ex
14637 op n0 c2 lock d0 s1 pr
14639 op n1 c2 lock d0 s1 pr
14789 op n1 c1 unlock
15551 op n1 c1 lock d0 s2 ex
15715 op n0 c1 unlock
15895 fault crash n0 7115ms
";

const KNOWN: [(&str, &str, FailKind); 0] = [];

fn replay(text: &str) -> Result<sim::Stats, sim::Failure> {
    let s = Schedule::from_text(text).expect("schedule text");
    let a = sim::run_schedule(&s);
    // Exact replay: the same outcome every time.
    assert_eq!(sim::run_schedule(&s), a);
    a
}

#[test]
fn still_reproduce() {
    for (what, text, kind) in KNOWN {
        match replay(text) {
            Err(f) => assert_eq!(f.kind, kind, "{what}: {f}"),
            Ok(st) => panic!(
                "{what}: passes now ({} grants): the bug looks fixed; un-ignore its fixed_* test",
                st.grants
            ),
        }
    }
}

fn must_pass(text: &str) {
    if let Err(f) = replay(text) {
        panic!("{f}\n{text}");
    }
}

#[test]
fn fixed_mastery_during_recovery_lost_request() {
    must_pass(MASTERY_DURING_RECOVERY_LOST_REQUEST);
}

#[test]
fn fixed_mastery_during_recovery_two_masters() {
    must_pass(MASTERY_DURING_RECOVERY_TWO_MASTERS);
}

#[test]
fn fixed_mastery_stale_votes_after_death() {
    must_pass(MASTERY_STALE_VOTES_AFTER_DEATH);
}

#[test]
fn fixed_master_finalizing_refuses_begin_reco() {
    must_pass(MASTER_FINALIZING_ACCEPTS_BEGIN_RECO);
}

#[test]
fn fixed_unlock_in_flight_does_not_survive_recovery() {
    must_pass(UNLOCK_IN_FLIGHT_SURVIVES_RECOVERY);
}

#[test]
fn fixed_request_to_dead_master_is_retried() {
    must_pass(REQUEST_TO_DEAD_MASTER_NOT_RETRIED);
}

#[test]
fn fixed_convert_to_dead_master_is_retried() {
    must_pass(CONVERT_TO_DEAD_MASTER_NOT_RETRIED);
}
