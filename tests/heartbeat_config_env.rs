//! `EngineConfig::from_env` and `engine_configured` read the real process
//! environment; this file holds a single test so nothing else in this test
//! binary races on the variables.

use o2dlm::config::{engine_configured, EngineConfig};
use std::path::Path;

#[test]
fn from_env_reads_the_documented_variables() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let conf = dir.join(format!("cluster-env-{}.conf", std::process::id()));
    let sys = dir.join(format!("o2cb-env-{}", std::process::id()));
    std::fs::write(
        &conf,
        "cluster:\n\tnode_count = 2\n\tname = envclu\n\nnode:\n\tip_port = 20301\n\tip_address = 127.0.0.1\n\tnumber = 0\n\tname = kern\n\tcluster = envclu\n\nnode:\n\tip_port = 20302\n\tip_address = 127.0.0.2\n\tnumber = 9\n\tname = me\n\tcluster = envclu\n",
    )
    .unwrap();
    std::fs::write(
        &sys,
        "O2CB_ENABLED=true\nO2CB_HEARTBEAT_THRESHOLD=7\nO2CB_KEEPALIVE_DELAY_MS=1000\n",
    )
    .unwrap();

    for v in ["O2DLM_HEARTBEAT_DEVICE", "O2DLM_CLUSTER_CONF"] {
        std::env::remove_var(v);
    }
    assert!(!engine_configured());
    std::env::set_var("O2DLM_HEARTBEAT_DEVICE", "/tmp/hb-env");
    assert!(engine_configured());
    std::env::remove_var("O2DLM_HEARTBEAT_DEVICE");
    std::env::set_var("O2DLM_CLUSTER_CONF", &conf);
    assert!(engine_configured());

    std::env::set_var("O2DLM_HEARTBEAT_DEVICE", "/tmp/hb-env");
    std::env::set_var("O2DLM_HEARTBEAT_BLOCK_BYTES", "4096");
    std::env::set_var("O2DLM_HEARTBEAT_START_BLOCK", "20");
    std::env::set_var("O2DLM_HEARTBEAT_BLOCKS", "10");
    std::env::set_var("O2DLM_NODE", "me");
    std::env::set_var("O2DLM_O2CB_SYSCONFIG", &sys);
    std::env::set_var("O2CB_IDLE_TIMEOUT_MS", "10000");
    std::env::remove_var("O2CB_BOOTCLUSTER");
    std::env::remove_var("O2CB_HEARTBEAT_THRESHOLD");
    std::env::remove_var("O2CB_RECONNECT_DELAY_MS");
    std::env::remove_var("O2CB_KEEPALIVE_DELAY_MS");

    let c = EngineConfig::from_env().unwrap();
    assert_eq!(c.cluster_name, "envclu");
    assert_eq!(c.local.number, 9);
    assert_eq!(c.local.port, 20302);
    assert_eq!(
        c.nodes.iter().map(|n| n.number).collect::<Vec<_>>(),
        vec![0, 9]
    );
    assert_eq!(c.timeouts.heartbeat_threshold, 7);
    assert_eq!(c.timeouts.idle_timeout_ms, 10000);
    assert_eq!(c.timeouts.keepalive_delay_ms, 1000);
    assert_eq!(c.timeouts.reconnect_delay_ms, 2000);
    assert_eq!(c.heartbeat.device, Path::new("/tmp/hb-env"));
    assert_eq!(
        (
            c.heartbeat.block_bytes,
            c.heartbeat.start_block,
            c.heartbeat.blocks
        ),
        (4096, 20, 10)
    );

    // Node 9 needs ten slots.
    std::env::set_var("O2DLM_HEARTBEAT_BLOCKS", "9");
    let e = EngineConfig::from_env().unwrap_err().to_string();
    assert!(e.starts_with("O2DLM_HEARTBEAT_BLOCKS:"), "{e}");
    let _ = std::fs::remove_file(&conf);
    let _ = std::fs::remove_file(&sys);
}
