//! Two o2net socket drivers on loopback (heartbeat events injected): the
//! higher one connects from its own address, requests and async replies
//! flow both ways, and when one driver stops the other's outstanding
//! request fails with "host down" and the link goes down.

use o2dlm::driver::net_io::{NetDriver, NetHandle};
use o2dlm::net::{LinkState, NetConfig, NetError, NetEvent, NetNode};
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn port() -> u16 {
    20000 + (std::process::id() % 20000) as u16 + 11
}

fn cfg(local: u8) -> NetConfig {
    NetConfig {
        local,
        nodes: (0..2)
            .map(|n| NetNode {
                number: n,
                name: format!("d{n}"),
                ip: Ipv4Addr::new(127, 0, 0, 51 + n),
                port: port(),
            })
            .collect(),
        idle_timeout_ms: 5000,
        keepalive_delay_ms: 1000,
        reconnect_delay_ms: 2000,
        hb_timeout_ms: 12000,
        quorum_delay_ms: 18000,
    }
}

fn start(local: u8) -> (NetDriver, NetHandle, mpsc::Receiver<NetEvent>) {
    o2dlm::logging::init_from_env();
    let (tx, rx) = mpsc::channel();
    let d = NetDriver::start(
        cfg(local),
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .expect("driver starts");
    let h = d.handle();
    (d, h, rx)
}

fn next(rx: &mpsc::Receiver<NetEvent>, what: &str, f: impl Fn(&NetEvent) -> bool) -> NetEvent {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(e) if f(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no {what}"),
        }
    }
}

#[test]
fn two_drivers_talk_and_fail_cleanly() {
    let (d0, h0, rx0) = start(0);
    let (d1, h1, rx1) = start(1);
    for h in [&h0, &h1] {
        h.node_up(0);
        h.node_up(1);
    }
    match next(&rx1, "link up on 1", |e| {
        matches!(e, NetEvent::LinkUp { .. })
    }) {
        NetEvent::LinkUp { node, connector } => assert_eq!((node, connector), (0, true)),
        _ => unreachable!(),
    }
    match next(&rx0, "link up on 0", |e| {
        matches!(e, NetEvent::LinkUp { .. })
    }) {
        NetEvent::LinkUp { node, connector } => assert_eq!((node, connector), (1, false)),
        _ => unreachable!(),
    }
    assert_eq!(h0.links(), vec![(1, LinkState::Up)]);

    h0.register_handler(510, 0x666C_6172, 128).unwrap();
    h1.register_handler(511, 0x666C_6172, 128).unwrap();
    // 1 → 0; node 0 holds the request while asking node 1 something.
    let outer = h1.send_request(0, 510, 0x666C_6172, b"join?").unwrap();
    let req = match next(&rx0, "request on 0", |e| matches!(e, NetEvent::Request(_))) {
        NetEvent::Request(r) => r,
        _ => unreachable!(),
    };
    assert_eq!((req.node, req.payload.as_slice()), (1, &b"join?"[..]));
    let inner = h0.send_request(1, 511, 0x666C_6172, b"who?").unwrap();
    match next(&rx1, "request on 1", |e| matches!(e, NetEvent::Request(_))) {
        NetEvent::Request(r) => h1.reply_to(r, 5),
        _ => unreachable!(),
    }
    match next(&rx0, "response on 0", |e| {
        matches!(e, NetEvent::Response { .. })
    }) {
        NetEvent::Response { id, result, .. } => assert_eq!((id, result), (inner, Ok(5))),
        _ => unreachable!(),
    }
    h0.reply_to(req, 1);
    match next(&rx1, "response on 1", |e| {
        matches!(e, NetEvent::Response { .. })
    }) {
        NetEvent::Response { id, result, .. } => assert_eq!((id, result), (outer, Ok(1))),
        _ => unreachable!(),
    }
    // No handler on the peer.
    let nh = h1.send_request(0, 999, 1, b"").unwrap();
    match next(&rx1, "no-handler response", |e| {
        matches!(e, NetEvent::Response { .. })
    }) {
        NetEvent::Response { id, result, .. } => {
            assert_eq!((id, result), (nh, Err(NetError::NoHandler)))
        }
        _ => unreachable!(),
    }

    // Node 0 keeps a request unanswered, then its driver stops: node 1's
    // request fails with "host down" and its link goes down.
    let pending = h1.send_request(0, 510, 0x666C_6172, b"x").unwrap();
    next(&rx0, "last request on 0", |e| {
        matches!(e, NetEvent::Request(_))
    });
    d0.stop();
    let (mut failed, mut down) = (false, false);
    while !(failed && down) {
        match next(&rx1, "host-down response and link down", |e| {
            matches!(e, NetEvent::Response { .. } | NetEvent::LinkDown { .. })
        }) {
            NetEvent::Response { id, result, .. } => {
                assert_eq!((id, result), (pending, Err(NetError::HostDown)));
                failed = true;
            }
            NetEvent::LinkDown { node, .. } => {
                assert_eq!(node, 0);
                down = true;
            }
            _ => unreachable!(),
        }
    }
    // A stopped driver refuses calls instead of hanging.
    assert_eq!(
        h0.send_request(1, 510, 1, b""),
        Err(o2dlm::net::SendError::Stopped)
    );
    d1.stop();
}
