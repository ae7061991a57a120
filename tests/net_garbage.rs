//! The o2net socket driver against raw TCP clients on loopback: accept
//! checks, handshake checks and framing errors are refused (the driver
//! closes the socket, logs, reports) and it keeps serving afterwards.

use o2dlm::driver::net_io::{connect_from_blocking, NetDriver, NetHandle};
use o2dlm::net::{LinkState, NetConfig, NetEvent, NetNode};
use o2dlm::wire::o2net::{MsgHeader, KEEP_RESP_MAGIC, STATUS_MAGIC};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Listener port: above 20000, distinct per process run.
fn port() -> u16 {
    20000 + (std::process::id() % 20000) as u16 + 7
}

fn cfg(port: u16) -> NetConfig {
    // Node 0 is the driver under test (127.0.0.41); node 1 (127.0.0.42) and
    // node 2 (127.0.0.43) are played by raw sockets.
    NetConfig {
        local: 0,
        nodes: (0..3)
            .map(|n| NetNode {
                number: n,
                name: format!("n{n}"),
                ip: Ipv4Addr::new(127, 0, 0, 41 + n),
                port,
            })
            .collect(),
        idle_timeout_ms: 5000,
        keepalive_delay_ms: 1000,
        reconnect_delay_ms: 2000,
        hb_timeout_ms: 12000,
        quorum_delay_ms: 18000,
    }
}

struct Server {
    driver: NetDriver,
    handle: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    cfg: NetConfig,
}

fn start() -> Server {
    o2dlm::logging::init_from_env();
    let c = cfg(port());
    let (tx, events) = mpsc::channel();
    let driver = NetDriver::start(
        c.clone(),
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .expect("driver starts");
    let handle = driver.handle();
    assert_eq!(driver.local_addr().port(), port());
    Server {
        driver,
        handle,
        events,
        cfg: c,
    }
}

fn client(from: u8) -> TcpStream {
    let s = connect_from_blocking(
        Ipv4Addr::new(127, 0, 0, from),
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 41), port()),
        Duration::from_secs(5),
    )
    .expect("TCP connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads until EOF (or `max` bytes); returns what came.
fn read_to_eof(s: &mut TcpStream, max: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < max {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed (no close from the server?): {e}"),
        }
    }
    got
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("read");
    v
}

fn wait_event(srv: &Server, what: &str, f: impl Fn(&NetEvent) -> bool) -> NetEvent {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match srv.events.recv_timeout(left) {
            Ok(e) if f(&e) => return e,
            Ok(_) => continue,
            Err(_) => panic!("no {what} event"),
        }
    }
}

fn wait_link(srv: &Server, node: u8, want: LinkState) {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if srv.handle.links().contains(&(node, want)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("link to {node} never {want:?}: {:?}", srv.handle.links());
}

#[test]
fn refusals_and_garbage_then_a_good_link() {
    let srv = start();
    let good = srv.cfg.handshake();
    let peer_hs = good.encode();

    // 1. Not heartbeating yet: closed before anything is sent.
    let mut c = client(42);
    assert!(
        read_to_eof(&mut c, 64).is_empty(),
        "no handshake to a non-heartbeating node"
    );

    // 2. Unknown address: closed unanswered.
    let mut c = client(49);
    assert!(read_to_eof(&mut c, 64).is_empty());

    srv.handle.node_up(0);
    srv.handle.node_up(1);

    // 3. Wrong protocol version: we get the server's handshake, then EOF.
    let mut c = client(42);
    let mut bad = good;
    bad.protocol_version = 10;
    c.write_all(&bad.encode()).unwrap();
    let got = read_to_eof(&mut c, 1024);
    assert_eq!(got, peer_hs.to_vec(), "server handshake, then close");
    match wait_event(&srv, "handshake rejection", |e| {
        matches!(e, NetEvent::HandshakeRejected { .. })
    }) {
        NetEvent::HandshakeRejected { node, reason } => {
            assert_eq!(node, 1);
            assert!(reason.contains("version 10"), "{reason}");
        }
        _ => unreachable!(),
    }
    // The mismatch is persistent, but a new connection from the higher
    // node is still accepted (the acceptor checks only the four rules).

    // 4. Valid handshake, then a bad magic: link up, then closed.
    for (k, junk) in [
        (
            "bad magic",
            vec![
                0xfa, 0x59, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        (
            "oversized length",
            vec![
                0xfa, 0x55, 0xff, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
    ] {
        let mut c = client(42);
        c.write_all(&peer_hs).unwrap();
        assert_eq!(read_exact(&mut c, 32), peer_hs.to_vec(), "{k}");
        wait_event(&srv, "link up", |e| {
            matches!(e, NetEvent::LinkUp { node: 1, .. })
        });
        c.write_all(&junk).unwrap();
        let rest = read_to_eof(&mut c, 1 << 16);
        // Anything before the close can only be keepalives.
        assert!(rest.len() % 24 == 0, "{k}: {rest:?}");
        match wait_event(&srv, "link down", |e| {
            matches!(e, NetEvent::LinkDown { .. })
        }) {
            NetEvent::LinkDown { node, reason } => {
                assert_eq!(node, 1);
                assert!(reason.contains("bad frame"), "{k}: {reason}");
            }
            _ => unreachable!(),
        }
        wait_link(&srv, 1, LinkState::Down);
    }

    // 5. Node 2 is configured and higher but not heartbeating: refused.
    let mut c = client(43);
    assert!(read_to_eof(&mut c, 64).is_empty());

    // 6. The driver still works: a good link answers keepalives and
    // requests (no handler → sys_status 1; registered → our status).
    srv.handle.register_handler(500, 0xC5C5_3CEA, 16).unwrap();
    let mut c = client(42);
    c.write_all(&peer_hs).unwrap();
    assert_eq!(read_exact(&mut c, 32), peer_hs.to_vec());
    c.write_all(&MsgHeader::keepalive_request().encode())
        .unwrap();
    // The server may send its own keepalive request first; skip those.
    let mut saw_resp = false;
    for _ in 0..4 {
        let h = MsgHeader::decode(&read_exact(&mut c, 24)).unwrap();
        if h.magic == KEEP_RESP_MAGIC {
            saw_resp = true;
            break;
        }
    }
    assert!(saw_resp, "keepalive answered");
    let req = MsgHeader::request(999, 1, 5, 0);
    c.write_all(&req.encode()).unwrap();
    let reply = next_status(&mut c);
    assert_eq!(reply, MsgHeader::status_reply(&req, 1, 0));

    let mut frame = MsgHeader::request(500, 0xC5C5_3CEA, 9, 4).encode().to_vec();
    frame.extend_from_slice(b"ping");
    c.write_all(&frame).unwrap();
    let r = match wait_event(&srv, "request", |e| matches!(e, NetEvent::Request(_))) {
        NetEvent::Request(r) => r,
        _ => unreachable!(),
    };
    assert_eq!(
        (r.node, r.header.msg_num, r.payload.as_slice()),
        (1, 9, &b"ping"[..])
    );
    srv.handle.reply_to(r, -22);
    let reply = next_status(&mut c);
    assert_eq!((reply.msg_num, reply.status, reply.sys_status), (9, -22, 0));

    // And a request of ours is matched by its msg_num.
    let id = srv.handle.send_request(1, 77, 3, b"hello").unwrap();
    let h = loop {
        let h = MsgHeader::decode(&read_exact(&mut c, 24)).unwrap();
        if h.magic == 0xFA55 {
            break h;
        }
    };
    assert_eq!((h.msg_type, h.key, h.data_len), (77, 3, 5));
    assert_eq!(read_exact(&mut c, 5), b"hello".to_vec());
    c.write_all(&MsgHeader::status_reply(&h, 0, 42).encode())
        .unwrap();
    match wait_event(&srv, "response", |e| matches!(e, NetEvent::Response { .. })) {
        NetEvent::Response {
            id: got, result, ..
        } => {
            assert_eq!(got, id);
            assert_eq!(result, Ok(42));
        }
        _ => unreachable!(),
    }
    drop(c);
    srv.driver.stop();
}

/// Next status reply on the stream, skipping keepalives.
fn next_status(c: &mut TcpStream) -> MsgHeader {
    loop {
        let h = MsgHeader::decode(&read_exact(c, 24)).unwrap();
        if h.magic == STATUS_MAGIC {
            return h;
        }
    }
}
