//! Two or three `Net`s wired together in memory, with simulated time.

use super::*;
use std::collections::HashSet;

const IDLE: u32 = 5000;
const KA: u32 = 1000;
const RECONNECT: u32 = 2000;
const THRESHOLD: u32 = 7;

fn cfg(local: u8, count: u8) -> NetConfig {
    NetConfig {
        local,
        nodes: (0..count)
            .map(|n| NetNode {
                number: n,
                name: format!("node{n}"),
                ip: Ipv4Addr::new(127, 0, 0, n + 1),
                port: 27777,
            })
            .collect(),
        idle_timeout_ms: IDLE,
        keepalive_delay_ms: KA,
        reconnect_delay_ms: RECONNECT,
        hb_timeout_ms: 2000 * (THRESHOLD - 1),
        quorum_delay_ms: 2000 * (THRESHOLD + 2),
    }
}

/// A frame as it crossed the simulated wire.
#[derive(Debug, Clone)]
struct Sent {
    at: Duration,
    from: usize,
    to: usize,
    data: Vec<u8>,
}

struct Sim {
    nets: Vec<Net>,
    t0: Instant,
    now: Instant,
    /// (node, conn) → (peer node, peer conn)
    links: HashMap<(usize, ConnId), (usize, ConnId)>,
    /// Directions whose bytes vanish (a silent network fault).
    blackhole: HashSet<(usize, usize)>,
    /// Nodes whose listener is down (connects are refused).
    no_listener: HashSet<usize>,
    events: Vec<(Duration, usize, NetEvent)>,
    sent: Vec<Sent>,
    connects: Vec<(Duration, usize, usize)>,
    refusals: Vec<(usize, AcceptRefusal)>,
}

impl Sim {
    fn new(count: u8) -> Sim {
        Sim::with(count, |_| {})
    }

    fn with(count: u8, tweak: impl Fn(&mut NetConfig)) -> Sim {
        let t0 = Instant::now();
        Sim {
            nets: (0..count)
                .map(|n| {
                    let mut c = cfg(n, count);
                    tweak(&mut c);
                    Net::new(c).unwrap()
                })
                .collect(),
            t0,
            now: t0,
            links: HashMap::new(),
            blackhole: HashSet::new(),
            no_listener: HashSet::new(),
            events: Vec::new(),
            sent: Vec::new(),
            connects: Vec::new(),
            refusals: Vec::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Every node sees every node heartbeating (itself included).
    fn all_up(&mut self) {
        let n = self.nets.len();
        for i in 0..n {
            for j in 0..n {
                self.input(i, Input::NodeUp(j as u8));
            }
        }
    }

    fn input(&mut self, i: usize, ev: Input<'_>) {
        let now = self.now;
        self.nets[i].handle_event(now, ev);
        // Work due "now" (an immediate connect) runs as a driver would.
        self.run_for(Duration::ZERO);
    }

    /// Moves bytes, connects and closes until nothing is left to do.
    fn pump(&mut self) {
        loop {
            let mut progress = false;
            for i in 0..self.nets.len() {
                // Bytes first: a Close follows the bytes queued before it.
                while let Some(t) = self.nets[i].poll_transmit() {
                    progress = true;
                    self.deliver(i, t);
                }
                while let Some(a) = self.nets[i].poll_io() {
                    progress = true;
                    self.io(i, a);
                }
                while let Some(e) = self.nets[i].poll_event() {
                    progress = true;
                    self.events.push((self.now - self.t0, i, e));
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn io(&mut self, i: usize, a: IoAction) {
        let now = self.now;
        match a {
            IoAction::Connect {
                conn,
                node,
                local,
                remote,
            } => {
                let j = node as usize;
                assert_eq!(local, self.nets[i].config().local_node().unwrap().ip);
                assert_eq!(remote.ip(), &self.nets[j].config().local_node().unwrap().ip);
                self.connects.push((self.elapsed(), i, j));
                if self.no_listener.contains(&j) {
                    self.nets[i].handle_event(now, Input::ConnectFailed(conn, "refused"));
                    return;
                }
                let from = SocketAddrV4::new(local, 40000 + conn as u16);
                match self.nets[j].accept(now, from) {
                    Ok((peer, jc)) => {
                        assert_eq!(peer as usize, i);
                        self.links.insert((i, conn), (j, jc));
                        self.links.insert((j, jc), (i, conn));
                        self.nets[i].handle_event(now, Input::Connected(conn));
                    }
                    Err(r) => {
                        // The kernel accepts at TCP level, then closes.
                        self.refusals.push((j, r));
                        self.nets[i].handle_event(now, Input::Connected(conn));
                        self.nets[i].handle_event(now, Input::Closed(conn, "end of file"));
                    }
                }
            }
            IoAction::Close { conn, .. } => {
                if let Some((j, jc)) = self.links.remove(&(i, conn)) {
                    self.links.remove(&(j, jc));
                    self.nets[j].handle_event(now, Input::Closed(jc, "end of file"));
                }
            }
        }
    }

    fn deliver(&mut self, i: usize, t: Transmit) {
        let Some(&(j, jc)) = self.links.get(&(i, t.conn)) else {
            return;
        };
        self.sent.push(Sent {
            at: self.elapsed(),
            from: i,
            to: j,
            data: t.data.clone(),
        });
        if self.blackhole.contains(&(i, j)) {
            return;
        }
        let now = self.now;
        self.nets[j].handle_event(now, Input::Data(jc, &t.data));
    }

    /// Runs timers until `d` has passed.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.pump();
            let next = self.nets.iter().filter_map(|n| n.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in &mut self.nets {
                        n.handle_timeout(now);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
        self.pump();
    }

    fn take_events(&mut self) -> Vec<(Duration, usize, NetEvent)> {
        std::mem::take(&mut self.events)
    }

    fn link_ups(&self) -> Vec<(usize, u8, bool)> {
        self.events
            .iter()
            .filter_map(|(_, i, e)| match e {
                NetEvent::LinkUp { node, connector } => Some((*i, *node, *connector)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(usize, &NetEvent) -> bool) -> usize {
        self.events.iter().filter(|(_, i, e)| f(*i, e)).count()
    }

    fn frames(&self, magic: u16) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|s| s.data.len() >= 2 && u16::from_be_bytes([s.data[0], s.data[1]]) == magic)
            .collect()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[test]
fn two_nodes_link_up_higher_connects() {
    let mut s = Sim::new(2);
    s.all_up();
    let mut ups = s.link_ups();
    ups.sort();
    assert_eq!(ups, vec![(0, 1, false), (1, 0, true)]);
    assert_eq!(s.connects.len(), 1);
    assert_eq!(
        (s.connects[0].1, s.connects[0].2),
        (1, 0),
        "node 1 connects"
    );
    // The first thing each side writes is its 32-byte handshake.
    let hs: Vec<&Sent> = s.sent.iter().filter(|x| x.data.len() == 32).collect();
    assert_eq!(hs.len(), 2);
    let want = cfg(0, 2).handshake().encode();
    assert!(hs.iter().all(|x| x.data == want));
    assert_eq!(s.nets[0].link_state(1), LinkState::Up);
    assert_eq!(s.nets[1].connected_nodes(), vec![0]);
}

#[test]
fn keepalives_flow_and_link_stays_up() {
    let mut s = Sim::new(2);
    s.all_up();
    s.take_events();
    s.run_for(ms(20_000));
    let reqs = s.frames(KEEP_REQ_MAGIC);
    let resps = s.frames(KEEP_RESP_MAGIC);
    // One request per keepalive delay of silence, each answered.
    assert!(reqs.len() >= 15, "{} keepalive requests", reqs.len());
    assert_eq!(reqs.len(), resps.len());
    assert!(reqs
        .iter()
        .all(|r| r.data == MsgHeader::keepalive_request().encode()));
    assert!(reqs.iter().any(|r| r.from == 0) && reqs.iter().any(|r| r.from == 1));
    assert!(reqs.iter().chain(&resps).all(|r| r.to == 1 - r.from));
    // Consecutive requests from one side are about one delay apart.
    let from1: Vec<Duration> = reqs.iter().filter(|r| r.from == 1).map(|r| r.at).collect();
    for w in from1.windows(2) {
        assert!(w[1] - w[0] >= ms(KA as u64), "{:?}", w);
    }
    assert!(
        s.events.is_empty(),
        "no events on a healthy link: {:?}",
        s.events
    );
}

#[test]
fn requests_and_status_replies() {
    let mut s = Sim::new(2);
    s.all_up();
    s.take_events();
    let key = 0xC5C5_3CEA;
    s.nets[0].register_handler(500, key, 100).unwrap();
    assert_eq!(
        s.nets[0].register_handler(500, key, 100),
        Err(RegisterError::Exists)
    );
    assert_eq!(
        s.nets[0].register_handler(0, key, 1),
        Err(RegisterError::ZeroType)
    );
    assert_eq!(
        s.nets[0].register_handler(501, key, 4073),
        Err(RegisterError::TooLong(4073))
    );

    // Three outstanding requests get ids 0, 1, 2.
    let ids: Vec<RequestId> = (0..3)
        .map(|i| s.nets[1].send_request(0, 500, key, &[i; 10]).unwrap())
        .collect();
    s.pump();
    let mut tokens = Vec::new();
    for (_, i, e) in s.take_events() {
        match e {
            NetEvent::Request(r) => {
                assert_eq!(i, 0);
                assert_eq!(r.node, 1);
                assert_eq!(r.payload, vec![r.header.msg_num as u8; 10]);
                tokens.push(r.token);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let nums: Vec<u32> = tokens.iter().map(|t| t.header().msg_num).collect();
    assert_eq!(nums, vec![0, 1, 2]);

    // Answer the middle one; the next request reuses id 1.
    let mid = tokens.remove(1);
    s.nets[0].reply(mid, -22);
    s.pump();
    let ev = s.take_events();
    assert!(matches!(
        ev.as_slice(),
        [(_, 1, NetEvent::Response { id, node: 0, result: Ok(-22) })] if *id == ids[1]
    ));
    // The reply on the wire echoes the request header.
    let st = s.frames(STATUS_MAGIC);
    let last = MsgHeader::decode(&st[st.len() - 1].data).unwrap();
    assert_eq!(
        (
            last.msg_type,
            last.key,
            last.msg_num,
            last.status,
            last.data_len
        ),
        (500, key, 1, -22, 0)
    );
    s.nets[1].send_request(0, 500, key, b"x").unwrap();
    s.pump();
    let ev = s.take_events();
    match ev.as_slice() {
        [(_, 0, NetEvent::Request(r))] => assert_eq!(r.header.msg_num, 1),
        other => panic!("{other:?}"),
    }

    // No handler → sys_status 1; too long → 2; answered without the
    // layer above seeing anything.
    let a = s.nets[1].send_request(0, 999, key, b"").unwrap();
    let b = s.nets[1].send_request(0, 500, key, &[0; 101]).unwrap();
    s.pump();
    let ev = s.take_events();
    let res: Vec<(RequestId, Result<i32, NetError>)> = ev
        .into_iter()
        .map(|(_, i, e)| match e {
            NetEvent::Response { id, result, .. } if i == 1 => (id, result),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        res,
        vec![(a, Err(NetError::NoHandler)), (b, Err(NetError::Overflow))]
    );
    assert_eq!(NetError::NoHandler.errno(), -92);
    assert_eq!(NetError::Overflow.errno(), -75);

    // Local refusals.
    assert_eq!(
        s.nets[1].send_request(1, 500, key, b""),
        Err(SendError::ToSelf)
    );
    assert_eq!(
        s.nets[1].send_request(0, 500, key, &[0; 4073]),
        Err(SendError::TooLong(4073))
    );
    assert_eq!(
        s.nets[1].send_request(7, 500, key, b""),
        Err(SendError::UnknownNode(7))
    );
}

#[test]
fn handler_may_answer_later_while_its_node_sends() {
    // Node 0 holds node 1's request, asks node 1 something itself, and
    // answers only after its own reply came back (the DLM does this).
    let mut s = Sim::new(2);
    s.all_up();
    s.take_events();
    s.nets[0].register_handler(510, 1, 64).unwrap();
    s.nets[1].register_handler(511, 1, 64).unwrap();
    let outer = s.nets[1].send_request(0, 510, 1, b"outer").unwrap();
    s.pump();
    let token = match s.take_events().pop() {
        Some((_, 0, NetEvent::Request(r))) => r.token,
        other => panic!("{other:?}"),
    };
    let inner = s.nets[0].send_request(1, 511, 1, b"inner").unwrap();
    s.pump();
    let inner_tok = match s.take_events().pop() {
        Some((_, 1, NetEvent::Request(r))) => r.token,
        other => panic!("{other:?}"),
    };
    s.nets[1].reply(inner_tok, 7);
    s.pump();
    assert!(matches!(
        s.take_events().as_slice(),
        [(_, 0, NetEvent::Response { id, result: Ok(7), .. })] if *id == inner
    ));
    s.nets[0].reply(token, 0);
    s.pump();
    assert!(matches!(
        s.take_events().as_slice(),
        [(_, 1, NetEvent::Response { id, result: Ok(0), .. })] if *id == outer
    ));
}

#[test]
fn requests_wait_for_the_link_and_fail_before_heartbeat() {
    let mut s = Sim::new(2);
    // Nothing heartbeating: persistent "not connected".
    assert_eq!(
        s.nets[1].send_request(0, 500, 1, b""),
        Err(SendError::NotConnected)
    );
    s.nets[0].register_handler(500, 1, 8).unwrap();
    // Node 1 sees node 0, but node 0 does not see node 1 yet: the connect
    // is refused, the request waits.
    s.input(1, Input::NodeUp(0));
    s.input(1, Input::NodeUp(1));
    let id = s.nets[1].send_request(0, 500, 1, b"hi").unwrap();
    assert!(matches!(
        s.refusals.as_slice(),
        [(0, AcceptRefusal::NotHeartbeating { node: 1, .. })]
    ));
    assert!(s.events.is_empty());
    s.input(0, Input::NodeUp(0));
    s.input(0, Input::NodeUp(1));
    // Retried after the reconnect delay, not before.
    s.run_for(ms(RECONNECT as u64 - 100));
    assert_eq!(s.connects.len(), 1);
    s.run_for(ms(200));
    assert_eq!(s.connects.len(), 2);
    let tok = match s.take_events().into_iter().find_map(|(_, _, e)| match e {
        NetEvent::Request(r) => Some(r.token),
        _ => None,
    }) {
        Some(t) => t,
        None => panic!("queued request delivered once the link came up"),
    };
    s.nets[0].reply(tok, 3);
    s.pump();
    assert!(s
        .take_events()
        .iter()
        .any(|(_, _, e)| matches!(e, NetEvent::Response { id: x, result: Ok(3), .. } if *x == id)));
}

#[test]
fn accept_checks() {
    let mut s = Sim::new(3);
    let now = s.now;
    let a = |n: u8| SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, n), 40000);
    // Unknown address.
    assert_eq!(
        s.nets[1].accept(now, a(9)),
        Err(AcceptRefusal::UnknownAddress(a(9)))
    );
    // A lower (or equal) node must not connect to us.
    assert!(matches!(
        s.nets[1].accept(now, a(1)),
        Err(AcceptRefusal::NotHigher { node: 0, .. })
    ));
    assert!(matches!(
        s.nets[1].accept(now, a(2)),
        Err(AcceptRefusal::NotHigher { node: 1, .. })
    ));
    // Higher but not heartbeating.
    assert!(matches!(
        s.nets[1].accept(now, a(3)),
        Err(AcceptRefusal::NotHeartbeating { node: 2, .. })
    ));
    s.nets[1].handle_event(now, Input::NodeUp(2));
    let (node, id) = s.nets[1].accept(now, a(3)).unwrap();
    assert_eq!(node, 2);
    // Our handshake goes out first thing.
    let t = s.nets[1].poll_transmit().unwrap();
    assert_eq!((t.conn, t.data.len()), (id, 32));
    assert!(matches!(
        s.nets[1].accept(now, a(3)),
        Err(AcceptRefusal::AlreadyConnected { node: 2, .. })
    ));
}

#[test]
fn handshake_mismatch_is_refused_both_ways() {
    let mut s = Sim::with(2, |c| {
        if c.local == 1 {
            c.idle_timeout_ms = 6000;
        }
    });
    s.all_up();
    let rejected: Vec<usize> = s
        .events
        .iter()
        .filter_map(|(_, i, e)| matches!(e, NetEvent::HandshakeRejected { .. }).then_some(*i))
        .collect();
    assert!(
        rejected.contains(&0) && rejected.contains(&1),
        "{:?}",
        s.events
    );
    assert!(s.link_ups().is_empty());
    assert_eq!(s.nets[1].link_state(0), LinkState::Down);
    // Persistent: no new attempt within the reconnect delay and beyond.
    s.run_for(ms(4000));
    assert_eq!(s.connects.len(), 1);
    assert_eq!(
        s.nets[1].send_request(0, 500, 1, b""),
        Err(SendError::NotConnected)
    );
    // As in current kernels, "connect expired" (idle timeout after the
    // attempts began) clears the error and tries once more.
    s.run_for(ms(2000));
    assert_eq!(s.connects.len(), 2);
    assert!(s.link_ups().is_empty());
    // Heartbeat down and up again clears it too: a new attempt at once.
    s.input(1, Input::NodeDown(0));
    s.input(1, Input::NodeUp(0));
    assert_eq!(s.connects.len(), 3);
    // A link that never was valid is no quorum matter: nobody fences,
    // however long the refusals go on.
    s.run_for(ms(120_000));
    assert!(s.link_ups().is_empty());
    assert_eq!(s.count(|_, e| matches!(e, NetEvent::Fence(_))), 0);
}

#[test]
fn handshake_checks_each_field() {
    for (field, tweak) in [("version", 0usize), ("keepalive", 1), ("heartbeat", 2)] {
        let mut s = Sim::new(2);
        s.input(0, Input::NodeUp(0));
        s.input(0, Input::NodeUp(1));
        let from = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 40000);
        let now = s.now;
        let (_, id) = s.nets[0].accept(now, from).unwrap();
        let mut hs = cfg(1, 2).handshake();
        match tweak {
            0 => hs.protocol_version = 10,
            1 => hs.keepalive_delay_ms += 1,
            _ => hs.o2hb_heartbeat_timeout_ms += 2000,
        }
        // Reconnect delay differences are not checked by the kernel.
        let mut ok = cfg(1, 2).handshake();
        ok.reconnect_delay_ms = 9999;
        s.nets[0].handle_event(now, Input::Data(id, &hs.encode()));
        s.pump();
        let ev = s.take_events();
        assert!(
            matches!(
                ev.as_slice(),
                [(_, 0, NetEvent::HandshakeRejected { node: 1, .. })]
            ),
            "{field}: {ev:?}"
        );
        assert_eq!(s.nets[0].link_state(1), LinkState::Down, "{field}");
        // The peer tries again later; a good handshake with another
        // reconnect delay is accepted.
        s.input(0, Input::NodeDown(1));
        s.input(0, Input::NodeUp(1));
        let (_, id2) = s.nets[0].accept(now, from).unwrap();
        s.nets[0].handle_event(now, Input::Data(id2, &ok.encode()));
        s.pump();
        assert_eq!(s.nets[0].link_state(1), LinkState::Up, "{field}");
    }
}

#[test]
fn garbage_closes_the_link_without_panic() {
    let bad: [&[u8]; 3] = [
        // Unknown magic.
        &[
            0xfa, 0x54, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        // data_len 4073.
        &[
            0xfa, 0x55, 0x0f, 0xe9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        // Plain text.
        b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    ];
    for (k, junk) in bad.iter().enumerate() {
        let mut s = Sim::new(2);
        s.all_up();
        s.take_events();
        let id = s.nets[1].send_request(0, 500, 1, b"").unwrap();
        // Find node 0's connection and inject the junk from "node 1".
        let (&(_, c0), _) = s.links.iter().find(|((i, _), _)| *i == 0).unwrap();
        let now = s.now;
        s.nets[0].handle_event(now, Input::Data(c0, junk));
        s.pump();
        let ev = s.take_events();
        assert!(
            ev.iter()
                .any(|(_, i, e)| *i == 0 && matches!(e, NetEvent::LinkDown { node: 1, .. })),
            "case {k}: {ev:?}"
        );
        // Node 1 sees the close; its outstanding request fails.
        assert!(
            ev.iter().any(|(_, i, e)| *i == 1
                && matches!(e, NetEvent::Response { id: x, result: Err(NetError::HostDown), .. } if *x == id)),
            "case {k}: {ev:?}"
        );
        assert_eq!(s.nets[0].link_state(1), LinkState::Down);
    }
    // A handshake-phase connection fed arbitrary bytes in arbitrary
    // chunks never panics.
    let mut seed = 0x1234_5678u32;
    for _ in 0..200 {
        let mut s = Sim::new(2);
        s.input(0, Input::NodeUp(1));
        let now = s.now;
        let from = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 40000);
        let (_, id) = s.nets[0].accept(now, from).unwrap();
        let mut buf = cfg(1, 2).handshake().encode().to_vec();
        for _ in 0..300 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            buf.push((seed >> 16) as u8);
        }
        let mut off = 0;
        while off < buf.len() {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = 1 + (seed >> 20) as usize % 40;
            let end = (off + n).min(buf.len());
            s.nets[0].handle_event(now, Input::Data(id, &buf[off..end]));
            off = end;
        }
        s.pump();
    }
}

#[test]
fn node_down_tears_the_link_down_and_fails_requests() {
    let mut s = Sim::new(2);
    s.all_up();
    s.take_events();
    s.nets[0].register_handler(500, 1, 8).unwrap();
    let id = s.nets[1].send_request(0, 500, 1, b"").unwrap();
    s.pump();
    s.take_events();
    s.input(1, Input::NodeDown(0));
    let ev = s.take_events();
    assert!(ev
        .iter()
        .any(|(_, i, e)| *i == 1 && matches!(e, NetEvent::Response { id: x, result: Err(NetError::HostDown), .. } if *x == id)));
    assert!(ev
        .iter()
        .any(|(_, i, e)| *i == 1 && matches!(e, NetEvent::LinkDown { node: 0, .. })));
    assert_eq!(s.nets[1].link_state(0), LinkState::Down);
    // No reconnect while node 0 is down in node 1's view, and no fence.
    s.run_for(ms(60_000));
    assert_eq!(s.connects.len(), 1);
    assert_eq!(s.count(|_, e| matches!(e, NetEvent::Fence(_))), 0);
    assert_eq!(
        s.nets[1].send_request(0, 500, 1, b""),
        Err(SendError::NotConnected)
    );
}

/// Two linked nodes; node 1 loses its socket (as a reset would do).
fn two_nodes_after_link_loss() -> Sim {
    let mut s = Sim::new(2);
    s.all_up();
    s.take_events();
    let (&(_, c1), _) = s.links.iter().find(|((i, _), _)| *i == 1).unwrap();
    let now = s.now;
    s.nets[1].handle_event(now, Input::Closed(c1, "connection reset"));
    s.pump();
    // Both see the link down; nobody reconnects at once.
    assert_eq!(s.count(|_, e| matches!(e, NetEvent::LinkDown { .. })), 2);
    s
}

#[test]
fn lost_link_that_stays_lost_fences_the_higher_of_two() {
    let mut s = two_nodes_after_link_loss();
    s.no_listener.insert(0);
    s.run_for(ms(1000));
    assert_eq!(s.nets[0].link_state(1), LinkState::Down);
    assert_eq!(s.nets[1].link_state(0), LinkState::Down);
    assert_eq!(
        s.connects.len(),
        1,
        "no reconnect right after losing a valid link"
    );
    let quorum = (2000 * (THRESHOLD + 2)) as u64;
    s.run_for(ms(quorum - 1500));
    assert_eq!(s.count(|_, e| matches!(e, NetEvent::Fence(_))), 0);
    s.run_for(ms(1000));
    let fenced: Vec<usize> = s
        .events
        .iter()
        .filter_map(|(_, i, e)| matches!(e, NetEvent::Fence(_)).then_some(*i))
        .collect();
    assert_eq!(fenced, vec![1], "the node that is not the lowest fences");
}

#[test]
fn lost_link_is_retried_after_idle_timeout() {
    // Current kernels: "connect expired" fires idle_timeout (+ what was
    // left of the reconnect delay) after the loss, clears the persistent
    // error and the higher node connects again, before the quorum delay.
    let mut s = two_nodes_after_link_loss();
    s.run_for(ms(IDLE as u64 - 100));
    assert_eq!(s.connects.len(), 1);
    s.run_for(ms(RECONNECT as u64 + 200));
    assert_eq!(s.connects.len(), 2);
    assert_eq!(s.nets[1].link_state(0), LinkState::Up);
    s.run_for(ms(60_000));
    assert_eq!(s.count(|_, e| matches!(e, NetEvent::Fence(_))), 0);
}

#[test]
fn silence_is_idle_not_closed_and_recovers() {
    let mut s = Sim::new(2);
    s.all_up();
    s.take_events();
    // Node 0's bytes stop arriving at node 1.
    s.blackhole.insert((0, 1));
    s.run_for(ms(IDLE as u64 + 100));
    assert_eq!(
        s.count(|i, e| i == 1 && matches!(e, NetEvent::LinkIdle { node: 0 })),
        1
    );
    // Not closed.
    assert_eq!(s.nets[1].link_state(0), LinkState::Up);
    assert_eq!(s.count(|_, e| matches!(e, NetEvent::LinkDown { .. })), 0);
    // Traffic resumes before the quorum delay: no fence.
    s.blackhole.clear();
    s.run_for(ms(60_000));
    assert_eq!(
        s.count(|i, e| i == 1 && matches!(e, NetEvent::LinkResumed { node: 0 })),
        1
    );
    assert_eq!(s.count(|_, e| matches!(e, NetEvent::Fence(_))), 0);
}

#[test]
fn isolated_node_of_three_fences_alone() {
    let mut s = Sim::new(3);
    s.all_up();
    let mut ups = s.link_ups();
    ups.sort();
    assert_eq!(
        ups,
        vec![
            (0, 1, false),
            (0, 2, false),
            (1, 0, true),
            (1, 2, false),
            (2, 0, true),
            (2, 1, true)
        ]
    );
    s.take_events();
    // Node 2 is cut off in both directions, silently.
    for o in [0, 1] {
        s.blackhole.insert((2, o));
        s.blackhole.insert((o, 2));
    }
    s.run_for(ms((IDLE + 2000 * (THRESHOLD + 2) + 1000) as u64));
    let fenced: Vec<usize> = s
        .events
        .iter()
        .filter_map(|(_, i, e)| matches!(e, NetEvent::Fence(_)).then_some(*i))
        .collect();
    assert_eq!(fenced, vec![2]);
    match s
        .events
        .iter()
        .find(|(_, i, e)| *i == 2 && matches!(e, NetEvent::Fence(_)))
    {
        Some((_, _, NetEvent::Fence(d))) => {
            assert_eq!((d.heartbeating, d.connected, d.needed), (3, 1, 2))
        }
        _ => unreachable!(),
    }
}

#[test]
fn failed_connects_retry_every_reconnect_delay() {
    let mut s = Sim::new(2);
    s.no_listener.insert(0);
    s.all_up();
    s.run_for(ms(9000));
    let times: Vec<Duration> = s.connects.iter().map(|c| c.0).collect();
    assert_eq!(times.len(), 5, "{times:?}");
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], ms(RECONNECT as u64));
    }
    s.no_listener.clear();
    s.run_for(ms(RECONNECT as u64));
    assert_eq!(s.nets[1].link_state(0), LinkState::Up);
}
