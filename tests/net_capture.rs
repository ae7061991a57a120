//! Replays the real kernel-to-kernel link of capture 01-connect into our
//! `Net`, once in the role of each kernel node: our handshake must equal
//! the kernel's byte for byte, the kernel's handshake must be accepted, and
//! every keepalive request must be answered with exactly the bytes the
//! kernel answered with.

mod support;

use o2dlm::net::{Input, IoAction, Net, NetConfig, NetEvent, NetNode};
use o2dlm::wire::o2net::{peek_frame, HANDSHAKE_LEN, KEEP_REQ_MAGIC, KEEP_RESP_MAGIC};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use support::pcap;

/// The capture's cluster (01-connect.md): node n at 10.0.3.(n+1):7777,
/// threshold 7, idle 10000, keepalive 1000, reconnect 1000.
fn cfg(local: u8) -> NetConfig {
    NetConfig {
        local,
        nodes: (0..2)
            .map(|n| NetNode {
                number: n,
                name: format!("node{n}"),
                ip: Ipv4Addr::new(10, 0, 3, n + 1),
                port: 7777,
            })
            .collect(),
        idle_timeout_ms: 10000,
        keepalive_delay_ms: 1000,
        reconnect_delay_ms: 1000,
        hb_timeout_ms: 2000 * (7 - 1),
        quorum_delay_ms: 2000 * (7 + 2),
    }
}

/// (client→server bytes, server→client bytes) of the single o2net link.
fn link() -> (Vec<u8>, Vec<u8>) {
    let path = support::captures_dir().join("01-connect.pcap");
    let (_, conns) = pcap::tcp_connections_on_port(&path, 7777).expect("capture readable");
    assert_eq!(conns.len(), 1, "one o2net connection in 01-connect");
    let c = &conns[0];
    assert_eq!(c.client.src.map(|a| a.0), Some(Ipv4Addr::new(10, 0, 3, 2)));
    (c.client.data.clone(), c.server.data.clone())
}

fn frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = HANDSHAKE_LEN;
    while let Ok(Some((_, len))) = peek_frame(&data[off..]) {
        out.push(data[off..off + len].to_vec());
        off += len;
    }
    assert_eq!(off, data.len(), "stream is whole frames");
    out
}

fn magic(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[0], f[1]])
}

/// Feeds the peer's stream frame by frame; returns what we transmitted
/// after the handshake and whether the link came up.
fn replay(net: &mut Net, conn: u64, peer: &[u8], now: Instant) -> (Vec<Vec<u8>>, bool) {
    let mut sent = Vec::new();
    let mut up = false;
    let mut feed = |net: &mut Net, bytes: &[u8], sent: &mut Vec<Vec<u8>>| {
        net.handle_event(now, Input::Data(conn, bytes));
        while let Some(t) = net.poll_transmit() {
            sent.push(t.data);
        }
        while let Some(e) = net.poll_event() {
            match e {
                NetEvent::LinkUp { .. } => up = true,
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert!(net.poll_io().is_none(), "the link must not be closed");
    };
    feed(net, &peer[..HANDSHAKE_LEN], &mut sent);
    for f in frames(peer) {
        feed(net, &f, &mut sent);
    }
    (sent, up)
}

fn check_answers(peer: &[u8], kernel_own: &[u8], sent: &[Vec<u8>]) {
    let reqs = frames(peer)
        .into_iter()
        .filter(|f| magic(f) == KEEP_REQ_MAGIC)
        .count();
    assert!(reqs >= 5, "capture has keepalive requests ({reqs})");
    let kernel_resps: Vec<Vec<u8>> = frames(kernel_own)
        .into_iter()
        .filter(|f| magic(f) == KEEP_RESP_MAGIC)
        .collect();
    assert_eq!(sent.len(), reqs, "one answer per keepalive request");
    assert_eq!(kernel_resps.len(), reqs);
    for (ours, theirs) in sent.iter().zip(&kernel_resps) {
        assert_eq!(ours, theirs, "keepalive response bytes");
    }
}

#[test]
fn as_kernel_node0_the_acceptor() {
    let (from_node1, from_node0) = link();
    let now = Instant::now();
    let mut net = Net::new(cfg(0)).unwrap();
    net.handle_event(now, Input::NodeUp(0));
    net.handle_event(now, Input::NodeUp(1));
    let (node, conn) = net
        .accept(now, SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 44497))
        .expect("node1 accepted");
    assert_eq!(node, 1);
    let hs = net.poll_transmit().expect("our handshake");
    assert_eq!(
        hs.data,
        from_node0[..HANDSHAKE_LEN],
        "handshake identical to the kernel's"
    );
    let (sent, up) = replay(&mut net, conn, &from_node1, now);
    assert!(up, "kernel handshake accepted");
    check_answers(&from_node1, &from_node0, &sent);
}

#[test]
fn as_kernel_node1_the_connector() {
    let (from_node1, from_node0) = link();
    let now = Instant::now();
    let mut net = Net::new(cfg(1)).unwrap();
    net.handle_event(now, Input::NodeUp(1));
    net.handle_event(now, Input::NodeUp(0));
    net.handle_timeout(now);
    let conn = match net.poll_io() {
        Some(IoAction::Connect {
            conn,
            node: 0,
            local,
            remote,
        }) => {
            assert_eq!(
                local,
                Ipv4Addr::new(10, 0, 3, 2),
                "bound to our own address"
            );
            assert_eq!(remote, SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 1), 7777));
            conn
        }
        other => panic!("expected a connect, got {other:?}"),
    };
    net.handle_event(now, Input::Connected(conn));
    let hs = net.poll_transmit().expect("our handshake");
    assert_eq!(
        hs.data,
        from_node1[..HANDSHAKE_LEN],
        "handshake identical to the kernel's"
    );
    let (sent, up) = replay(&mut net, conn, &from_node0, now);
    assert!(up);
    check_answers(&from_node0, &from_node1, &sent);
    // Silence after the last frame: our own keepalive request, a second
    // later, in the kernel's exact bytes.
    net.handle_timeout(now + Duration::from_millis(1000));
    let ka = net.poll_transmit().expect("keepalive after 1 s of silence");
    let kernel_req = frames(&from_node1)
        .into_iter()
        .find(|f| magic(f) == KEEP_REQ_MAGIC)
        .unwrap();
    assert_eq!(ka.data, kernel_req);
}
