//! `o2dlm heartbeat DEVICE` run as a real process against a region written
//! by the heartbeat driver.

use o2dlm::config::{EngineConfig, HeartbeatGeometry, NodeConf, Timeouts};
use o2dlm::driver::heartbeat_disk::{wait_until, HeartbeatDriver};
use o2dlm::wire::o2hb::{self, HbBlock};
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BB: u64 = 1024;
const START: u64 = 3;
const BLOCKS: u32 = 12;

fn cfg(path: &Path, local: u8, all: &[u8]) -> EngineConfig {
    let node = |n: u8| NodeConf {
        name: format!("n{n}"),
        number: n,
        ip: Ipv4Addr::new(127, 0, 0, n),
        port: 20100 + n as u16,
        cluster: "t".into(),
    };
    EngineConfig {
        cluster_name: "t".into(),
        local: node(local),
        nodes: all.iter().map(|&n| node(n)).collect(),
        advertised: all.iter().map(|&n| node(n)).collect(),
        timeouts: Timeouts::default(),
        heartbeat: HeartbeatGeometry {
            device: path.to_path_buf(),
            block_bytes: BB as u32,
            start_block: START,
            blocks: BLOCKS,
        },
    }
}

fn o2dlm(args: &[&str], path: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_o2dlm"));
    c.arg("heartbeat").args(args);
    if let Some(p) = path {
        c.arg(p);
    }
    c.env("O2DLM_HEARTBEAT_BLOCK_BYTES", BB.to_string())
        .env("O2DLM_HEARTBEAT_START_BLOCK", START.to_string())
        .env("O2DLM_HEARTBEAT_BLOCKS", BLOCKS.to_string())
        .env_remove("O2CB_HEARTBEAT_THRESHOLD")
        .output()
        .unwrap()
}

/// Lines of the listing keyed by node number.
fn rows(out: &Output) -> Vec<(u8, Vec<String>)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().contains("GENERATION"));
    lines
        .map(|l| {
            let f: Vec<String> = l.split_whitespace().map(str::to_string).collect();
            (f[0].parse().unwrap(), f)
        })
        .collect()
}

fn put(path: &Path, slot: u8, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, (START + slot as u64) * BB).unwrap();
}

#[test]
fn lists_slots_with_live_and_dead() {
    let path: PathBuf =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hbcli-{}", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    let nodes = [1u8, 2];
    let starts: Vec<_> = nodes
        .iter()
        .map(|&n| {
            let c = cfg(&path, n, &nodes);
            std::thread::spawn(move || HeartbeatDriver::start(&c, Box::new(|_| {})).unwrap())
        })
        .collect();
    let mut drivers: Vec<HeartbeatDriver> = starts.into_iter().map(|h| h.join().unwrap()).collect();
    for d in &drivers {
        assert!(wait_until(Duration::from_secs(12), || d.live_nodes() == vec![1, 2]));
    }
    let d2 = drivers.pop().unwrap();
    let d1 = drivers.pop().unwrap();
    let gen1 = d1.generation();
    d2.stop();

    // A stale block of a crashed node 4 (10 minutes old) and garbage in 6.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stale = HbBlock {
        seq: now - 600,
        node: 4,
        generation: 0x44,
        dead_ms: 62000,
    };
    put(&path, 4, &o2hb::encode(&stale, BB as usize).unwrap());
    let mut garbage = vec![0xA5u8; BB as usize];
    garbage[8] = 6;
    put(&path, 6, &garbage);

    for args in [&["--once"][..], &[][..]] {
        let out = o2dlm(args, Some(&path));
        let r = rows(&out);
        let nums: Vec<u8> = r.iter().map(|(n, _)| *n).collect();
        assert_eq!(nums, vec![1, 2, 4, 6], "{args:?}: {r:?}");
        let f = |n: u8| r.iter().find(|(m, _)| *m == n).unwrap().1.clone();
        let (a, b, c, g) = (f(1), f(2), f(4), f(6));
        // node seq generation age crc state
        assert_eq!(a[2], format!("{gen1:#018x}"));
        assert_eq!(
            (a[4].as_str(), a[5].as_str()),
            ("ok", "live"),
            "{args:?} {a:?}"
        );
        let age1: i64 = a[3].trim_end_matches('s').parse().unwrap();
        assert!((0..=4).contains(&age1), "{a:?}");
        assert_eq!(b[2], format!("{:#018x}", 0));
        assert_eq!((b[4].as_str(), b[5].as_str()), ("ok", "dead"), "{b:?}");
        assert_eq!(c[1], (now - 600).to_string());
        let age4: i64 = c[3].trim_end_matches('s').parse().unwrap();
        assert!((600..=610).contains(&age4), "{c:?}");
        assert_eq!((c[4].as_str(), c[5].as_str()), ("ok", "dead"));
        assert_eq!((g[4].as_str(), g[5].as_str()), ("BAD", "dead"));
    }
    d1.stop();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn usage_and_errors() {
    let out = o2dlm(&[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: o2dlm heartbeat"));
    let out = o2dlm(&["--bogus"], Some(Path::new("/nonexistent")));
    assert_eq!(out.status.code(), Some(2));
    let out = o2dlm(&["--once"], Some(Path::new("/nonexistent/hb")));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/hb"));
    // A file too short for the region is an error, not a crash.
    let short =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hbcli-short-{}", std::process::id()));
    std::fs::write(&short, vec![0u8; 100]).unwrap();
    let out = o2dlm(&["--once"], Some(&short));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("region needs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad geometry variables are reported by name.
    let out = Command::new(env!("CARGO_BIN_EXE_o2dlm"))
        .args(["heartbeat", "--once"])
        .arg(&short)
        .env("O2DLM_HEARTBEAT_BLOCK_BYTES", "1000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("O2DLM_HEARTBEAT_BLOCK_BYTES"));
    let _ = std::fs::remove_file(&short);
}
