//! DLM recovery bugs found by the cluster simulator after the ones kept in
//! tests/sim_known_bugs.rs were fixed, each as the exact schedule that
//! showed it; they pass now and must keep passing.

use o2dlm::sim::{self, Schedule};

fn must_pass(text: &str) {
    let s = Schedule::from_text(text).expect("schedule text");
    let a = sim::run_schedule(&s);
    assert_eq!(sim::run_schedule(&s), a, "replay is not exact");
    if let Err(f) = a {
        panic!("{f}\n{text}");
    }
}

/// n6 pauses while joining the second domain: n0 had admitted it, the
/// others had not. n0 declares it dead and recovers it there; the others'
/// BEGIN_RECO handler ignored a dead node outside their domain map, so
/// their LOCK_REQUEST answer (-ENOMEM: "another dead node") held n0's
/// recovery up for ever and n6 could never join again. The kernel forces
/// such a node into its maps and runs the node-down cleanup.
#[test]
fn begin_reco_for_a_joiner_we_had_not_admitted() {
    must_pass(
        "\
o2dlm-sim seed=0xd0e nodes=8 domains=2 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
12566 fault pause n6 6939ms
",
    );
}

/// A stale BLOCK mle after a death. n3 asks n1 who masters s2 (n1 keeps a
/// BLOCK mle naming n3), waits for recovery of the dead n4 and, as the
/// recovery master, gets s2 from the recovery data: it never asserts, so
/// n1's later request waited on that mle for ever. A death now drops
/// the BLOCK mles no local request waits on.
#[test]
fn block_mle_of_a_node_that_recovery_made_owner() {
    must_pass(
        "\
o2dlm-sim seed=0x45c nodes=6 domains=1 names=3 cache_clients=2 direct_clients=1 faults=delays,links,pauses,crashes
12006 op n4 c0 lock d0 s2 ex try
12699 op n5 c0 lock d0 s2 ex try
13814 fault crash n4 9304ms
19651 op n3 c0 lock d0 s2 ex
26770 op n1 c0 lock d0 s2 ex
",
    );
}
