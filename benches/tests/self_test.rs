//! Runs the whole harness against the flock stand-in: node processes,
//! CPU pinning, every o2dlm workload and the coordinator's bookkeeping,
//! the table, the markdown and the PNG. It fails if any figure did not
//! produce a number, so the o2dlm figures are known to plug in once the
//! engine answers.

use std::process::Command;

#[test]
fn self_test_produces_every_figure_and_the_files() {
    let out = std::env::temp_dir().join(format!("o2dlm-bench-it-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_o2dlm-bench"))
        .args(["--self-test", "--out"])
        .arg(&out)
        .output()
        .expect("run o2dlm-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        run.status
    );
    for figure in [
        "flock stand-in cached re-lock [1 core]",
        "flock stand-in new-lock mastery, 3 nodes [2 cores], median",
        "flock stand-in EX handoff, 2 nodes [2 cores], p99",
        "flock stand-in lock+unlock, 4 nodes, one shared name [2 cores]",
        "flock stand-in memory for 1 M lock resources",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(figure))
            .unwrap_or_else(|| panic!("no row {figure:?} in\n{stdout}"));
        let value = row.split('|').nth(1).unwrap_or("").trim();
        assert!(value.parse::<f64>().is_ok(), "{figure}: {value:?}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| figure | value | unit | baseline | ratio | target | met? |"));
    let png = std::fs::read(out.join("bench.png")).expect("bench.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let _ = std::fs::remove_dir_all(&out);
}
