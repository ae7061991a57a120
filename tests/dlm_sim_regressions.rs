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
