//! Several heartbeat drivers (threads of this process, one per node number)
//! sharing one region file.

use o2dlm::config::{EngineConfig, HeartbeatGeometry, NodeConf, Timeouts};
use o2dlm::driver::heartbeat_disk::{wait_until, HeartbeatDriver, RegionFile};
use o2dlm::heartbeat::HbEvent;
use o2dlm::wire::o2hb;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn region_file(tag: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hb-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, b"").unwrap();
    p
}

fn cfg(path: &Path, local: u8, all: &[u8], threshold: u32) -> EngineConfig {
    let node = |n: u8| NodeConf {
        name: format!("n{n}"),
        number: n,
        ip: Ipv4Addr::new(127, 0, 0, n),
        port: 20000 + n as u16,
        cluster: "test".into(),
    };
    EngineConfig {
        cluster_name: "test".into(),
        local: node(local),
        nodes: all.iter().map(|&n| node(n)).collect(),
        advertised: all.iter().map(|&n| node(n)).collect(),
        timeouts: Timeouts {
            heartbeat_threshold: threshold,
            ..Timeouts::default()
        },
        heartbeat: HeartbeatGeometry {
            device: path.to_path_buf(),
            block_bytes: 512,
            start_block: 1,
            blocks: 16,
        },
    }
}

type Events = mpsc::Receiver<(Instant, HbEvent)>;

fn start(c: &EngineConfig) -> io::Result<(HeartbeatDriver, Events)> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let d = HeartbeatDriver::start(
        c,
        Box::new(move |e| {
            let _ = tx.lock().unwrap().send((Instant::now(), e));
        }),
    )?;
    Ok((d, rx))
}

/// Starts all nodes concurrently (each start watches its slot ~4 s).
fn start_all(path: &Path, nodes: &[u8], threshold: u32) -> Vec<(HeartbeatDriver, Events)> {
    let handles: Vec<_> = nodes
        .iter()
        .map(|&n| {
            let c = cfg(path, n, nodes, threshold);
            std::thread::spawn(move || start(&c).unwrap())
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn wait_event(rx: &Events, want: HbEvent, within: Duration) -> Option<Instant> {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, e)) if e == want => return Some(t),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[test]
fn nodes_see_each_other_and_a_clean_stop_at_once() {
    let path = region_file("clean");
    let mut nodes = start_all(&path, &[1, 2, 5], 31);
    for (d, _) in &nodes {
        assert!(
            wait_until(Duration::from_secs(12), || d.live_nodes() == vec![1, 2, 5]),
            "node {} sees {:?}",
            d.local(),
            d.live_nodes()
        );
    }
    // Every slot holds a valid block of its node with its generation.
    let r = RegionFile::open(&cfg(&path, 1, &[1], 31).heartbeat, false).unwrap();
    assert!(r.is_direct(), "ext4 file in target/ should take O_DIRECT");
    let buf = r.read_slots(6).unwrap();
    for (d, _) in &nodes {
        let n = d.local() as usize;
        let b = o2hb::decode(&buf[n * 512..(n + 1) * 512]).unwrap();
        assert!(b.crc_ok());
        assert_eq!(b.block.node as usize, n);
        assert_eq!(b.block.generation, d.generation());
        assert_eq!(b.block.dead_ms, 62000);
    }

    let (d2, _) = nodes.remove(1);
    let stopped = Instant::now();
    d2.stop();
    for (d, rx) in &nodes {
        let t = wait_event(rx, HbEvent::NodeDown(2), Duration::from_secs(5))
            .unwrap_or_else(|| panic!("node {} did not see 2 down", d.local()));
        // At the next read, not after 31 periods.
        assert!(t.duration_since(stopped) < Duration::from_millis(2600));
        assert_eq!(d.live_nodes(), vec![1, 5]);
    }
    let buf = r.read_slots(3).unwrap();
    let b = o2hb::decode(&buf[2 * 512..3 * 512]).unwrap();
    assert!(b.crc_ok());
    assert_eq!(
        b.block.generation, 0,
        "clean stop leaves a generation-0 block"
    );
    for (d, _) in nodes {
        d.stop();
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn stalled_node_is_dead_after_threshold() {
    let path = region_file("stall");
    let mut nodes = start_all(&path, &[3, 4], 7);
    for (d, _) in &nodes {
        assert!(wait_until(Duration::from_secs(12), || d.live_nodes() == vec![3, 4]));
    }
    let (d4, _) = nodes.pop().unwrap();
    let (d3, rx3) = nodes.pop().unwrap();
    while rx3.try_recv().is_ok() {}
    let stalled = Instant::now();
    d4.stop_unclean();
    let t = wait_event(&rx3, HbEvent::NodeDown(4), Duration::from_secs(25))
        .expect("node 4 never declared dead");
    let took = t.duration_since(stalled);
    // 7 unchanged samples 2 s apart after the last write: 12..16 s.
    assert!(took >= Duration::from_secs(11), "too early: {took:?}");
    assert!(took <= Duration::from_secs(17), "too late: {took:?}");
    assert_eq!(d3.live_nodes(), vec![3]);
    d3.stop();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn second_writer_in_a_slot_is_refused_but_stale_slot_is_not() {
    let path = region_file("intruder");
    let c = cfg(&path, 6, &[6, 7], 31);
    let (first, _) = start(&c).unwrap();
    let err = start(&c).err().expect("second writer must be refused");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains("slot 6"), "{err}");
    // After an unclean stop the slot holds a stale block that no longer
    // changes: a new run may take over.
    let gen1 = first.generation();
    first.stop_unclean();
    let (again, _) = start(&c).unwrap();
    assert_ne!(again.generation(), gen1);
    assert_ne!(again.generation(), 0);
    again.stop();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn refuses_bad_devices() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let c = cfg(dir, 1, &[1], 31);
    let err = start(&c)
        .err()
        .expect("a directory is not a heartbeat device");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    let c = cfg(&dir.join("does-not-exist-hb"), 1, &[1], 31);
    assert_eq!(start(&c).err().unwrap().kind(), io::ErrorKind::NotFound);
}
