//! o2net connection state machines (sans-IO).
//!
//! [`Net`] is one node's whole o2net: a record per configured peer (the
//! kernel's `o2net_node`) holding at most one connection, the handler
//! registry, outstanding requests and the quorum bookkeeping. It follows
//! the rules of Linux's `fs/ocfs2/cluster/tcp.c` as restated in
//! o2net-wire.md, so that a kernel peer cannot tell us from a kernel node:
//!
//! - the higher node number connects, only to heartbeating peers, at most
//!   once per reconnect delay; the lower one accepts after the kernel's
//!   four checks;
//! - both sides send their 32-byte handshake first and check the peer's
//!   (version 11, idle timeout, keepalive delay, heartbeat timeout);
//! - frames with an unknown magic or an oversize length close the link;
//! - every request gets exactly one status reply echoing its header;
//! - a keepalive request goes out after `keepalive_delay` of receive
//!   silence; `idle_timeout` of silence does not close the link (current
//!   kernels) but counts as a link error for quorum;
//! - losing a valid link fails outstanding requests ("host down") and sets a
//!   persistent "not connected" error; a link that never becomes valid is
//!   given up and retried `reconnect_delay + idle_timeout` after attempts
//!   started (the kernel's "connect expired"), which also clears a
//!   persistent error; a heartbeat node-down tears everything down until the
//!   next node-up;
//! - the quorum rule runs `O2NET_QUORUM_DELAY` after a link error and may
//!   return a fence verdict.
//!
//! The driver owns the sockets. It feeds [`Input`]s to
//! [`Net::handle_event`], asks [`Net::accept`] about every accepted socket,
//! calls [`Net::handle_timeout`] at [`Net::poll_timeout`], and drains
//! [`Net::poll_transmit`] (bytes), then [`Net::poll_io`] (connect/close:
//! a close comes after the bytes queued before it, e.g. our handshake) and
//! [`Net::poll_event`] (for the layer above) after every call. Connections
//! are named by a [`ConnId`] so that anything the driver reports about a
//! socket Net has already dropped is ignored.

pub mod quorum;

#[cfg(test)]
mod tests;

use crate::config::EngineConfig;
use crate::wire::o2net::{
    self as wire, Handshake, MsgHeader, HANDSHAKE_LEN, KEEP_REQ_MAGIC, KEEP_RESP_MAGIC,
    MAX_PAYLOAD, MSG_MAGIC, STATUS_MAGIC,
};
use quorum::{Decision, Quorum};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Names one TCP connection for the lifetime of a `Net`.
pub type ConnId = u64;

/// One configured node as o2net sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNode {
    pub number: u8,
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Everything o2net needs to know about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub local: u8,
    /// All nodes, the local one included.
    pub nodes: Vec<NetNode>,
    pub idle_timeout_ms: u32,
    pub keepalive_delay_ms: u32,
    pub reconnect_delay_ms: u32,
    /// o2hb's max write timeout, 2000 × (threshold − 1): sent in the
    /// handshake and required of the peer.
    pub hb_timeout_ms: u32,
    /// Delay between a link error and the quorum decision,
    /// (threshold + 2) × 2000.
    pub quorum_delay_ms: u32,
}

impl NetConfig {
    pub fn from_engine(cfg: &EngineConfig) -> NetConfig {
        NetConfig {
            local: cfg.local.number,
            nodes: cfg
                .nodes
                .iter()
                .map(|n| NetNode {
                    number: n.number,
                    name: n.name.clone(),
                    ip: n.ip,
                    port: n.port,
                })
                .collect(),
            idle_timeout_ms: cfg.timeouts.idle_timeout_ms,
            keepalive_delay_ms: cfg.timeouts.keepalive_delay_ms,
            reconnect_delay_ms: cfg.timeouts.reconnect_delay_ms,
            hb_timeout_ms: cfg.timeouts.max_write_timeout_ms(),
            quorum_delay_ms: cfg.timeouts.quorum_delay_ms(),
        }
    }

    /// The handshake this node sends.
    pub fn handshake(&self) -> Handshake {
        Handshake {
            protocol_version: wire::PROTOCOL_VERSION,
            connector_id: wire::CONNECTOR_ID,
            o2hb_heartbeat_timeout_ms: self.hb_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            keepalive_delay_ms: self.keepalive_delay_ms,
            reconnect_delay_ms: self.reconnect_delay_ms,
        }
    }

    pub fn node(&self, number: u8) -> Option<&NetNode> {
        self.nodes.iter().find(|n| n.number == number)
    }

    pub fn local_node(&self) -> Option<&NetNode> {
        self.node(self.local)
    }

    fn ms(v: u32) -> Duration {
        Duration::from_millis(u64::from(v))
    }
}

/// Why a request failed at the transport level (sys_status ≠ 0 or a
/// local condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// The peer has no handler for (type, key): sys_status 1.
    NoHandler,
    /// The payload exceeded the peer handler's max length: sys_status 2.
    Overflow,
    /// The link died with the request outstanding.
    HostDown,
    /// No usable link (persistent "not connected").
    NotConnected,
    /// The peer answered with a sys_status we do not know.
    UnknownSysStatus(u32),
}

impl NetError {
    /// The negative Linux errno the kernel hands its callers.
    pub fn errno(&self) -> i32 {
        match self {
            NetError::NoHandler => -libc::ENOPROTOOPT,
            NetError::Overflow => -libc::EOVERFLOW,
            NetError::HostDown => -libc::EHOSTDOWN,
            NetError::NotConnected => -libc::ENOTCONN,
            NetError::UnknownSysStatus(_) => -libc::EPROTO,
        }
    }

    fn from_sys_status(s: u32) -> NetError {
        match s {
            wire::SYS_ERR_NO_HANDLER => NetError::NoHandler,
            wire::SYS_ERR_OVERFLOW => NetError::Overflow,
            wire::SYS_ERR_DIED => NetError::HostDown,
            other => NetError::UnknownSysStatus(other),
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoHandler => write!(f, "no handler on the peer"),
            NetError::Overflow => write!(f, "payload too long for the peer's handler"),
            NetError::HostDown => write!(f, "host down"),
            NetError::NotConnected => write!(f, "not connected"),
            NetError::UnknownSysStatus(s) => write!(f, "unknown sys_status {s}"),
        }
    }
}

/// Why `send_request` refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Sending to ourselves (the kernel's -ELOOP).
    ToSelf,
    /// Payload above 4072 bytes (-EINVAL).
    TooLong(usize),
    /// Not a configured node (-EINVAL).
    UnknownNode(u8),
    /// Persistent "not connected" (-ENOTCONN).
    NotConnected,
    /// The o2net driver is not running (the kernel's -ESRCH).
    Stopped,
}

impl SendError {
    pub fn errno(&self) -> i32 {
        match self {
            SendError::ToSelf => -libc::ELOOP,
            SendError::TooLong(_) | SendError::UnknownNode(_) => -libc::EINVAL,
            SendError::NotConnected => -libc::ENOTCONN,
            SendError::Stopped => -libc::ESRCH,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::ToSelf => write!(f, "cannot send to ourselves"),
            SendError::TooLong(n) => write!(f, "payload of {n} bytes exceeds {MAX_PAYLOAD}"),
            SendError::UnknownNode(n) => write!(f, "node {n} is not configured"),
            SendError::NotConnected => write!(f, "not connected"),
            SendError::Stopped => write!(f, "o2net is not running"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why a handler registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// (type, key) already has a handler (-EEXIST).
    Exists,
    /// msg_type 0 is reserved.
    ZeroType,
    /// max_len above 4072.
    TooLong(u32),
    /// The o2net driver is not running.
    Stopped,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Exists => write!(f, "a handler for this type and key exists"),
            RegisterError::ZeroType => write!(f, "message type 0 is invalid"),
            RegisterError::TooLong(n) => write!(f, "max length {n} exceeds {MAX_PAYLOAD}"),
            RegisterError::Stopped => write!(f, "o2net is not running"),
        }
    }
}

impl std::error::Error for RegisterError {}

/// Why an incoming connection was closed right after accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptRefusal {
    UnknownAddress(SocketAddrV4),
    /// The source is a node that should be accepting from us, not
    /// connecting (its number is not higher than ours).
    NotHigher {
        node: u8,
        from: SocketAddrV4,
    },
    NotHeartbeating {
        node: u8,
        from: SocketAddrV4,
    },
    AlreadyConnected {
        node: u8,
        from: SocketAddrV4,
    },
}

impl fmt::Display for AcceptRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcceptRefusal::UnknownAddress(a) => {
                write!(f, "connection from {a}, which is not a configured node")
            }
            AcceptRefusal::NotHigher { node, from } => write!(
                f,
                "unexpected connection from node {node} at {from}: lower-numbered nodes do not connect"
            ),
            AcceptRefusal::NotHeartbeating { node, from } => write!(
                f,
                "connection from node {node} at {from}, which is not heartbeating (yet)"
            ),
            AcceptRefusal::AlreadyConnected { node, from } => write!(
                f,
                "connection from node {node} at {from}, which already has a connection"
            ),
        }
    }
}

/// Handle of a request we sent, reported back with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Proof that an incoming request still needs its one status reply. Not
/// `Clone`: answering consumes it.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyToken {
    node: u8,
    conn: ConnId,
    header: MsgHeader,
}

impl ReplyToken {
    pub fn node(&self) -> u8 {
        self.node
    }
    pub fn header(&self) -> &MsgHeader {
        &self.header
    }
}

/// A request for a registered handler, to be answered with [`Net::reply`].
#[derive(Debug)]
pub struct IncomingRequest {
    pub node: u8,
    pub header: MsgHeader,
    pub payload: Vec<u8>,
    pub token: ReplyToken,
}

/// What the driver reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Heartbeat saw the node come up (the local node included).
    NodeUp(u8),
    /// Heartbeat declared the node dead.
    NodeDown(u8),
    /// An outbound connect completed.
    Connected(ConnId),
    /// An outbound connect failed (refused, unreachable, bind failed...).
    ConnectFailed(ConnId, &'a str),
    /// Bytes read from a connection.
    Data(ConnId, &'a [u8]),
    /// End of file or an error on a connection.
    Closed(ConnId, &'a str),
}

/// Socket work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoAction {
    /// Open a socket bound to `local` (port 0), non-blocking connect to
    /// `remote`, report `Connected` or `ConnectFailed`.
    Connect {
        conn: ConnId,
        node: u8,
        local: Ipv4Addr,
        remote: SocketAddrV4,
    },
    /// Shut the connection down and forget it.
    Close { conn: ConnId, node: u8 },
}

/// Bytes to write, in order, on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub conn: ConnId,
    pub node: u8,
    pub data: Vec<u8>,
}

/// What happened, for the layers above.
#[derive(Debug)]
pub enum NetEvent {
    /// Handshake done both ways. `connector`: we made the connection.
    LinkUp { node: u8, connector: bool },
    /// A valid link went away.
    LinkDown { node: u8, reason: String },
    /// We refused the peer's handshake (version or timeouts differ).
    HandshakeRejected { node: u8, reason: String },
    /// Nothing received for idle_timeout: counted as a link error.
    LinkIdle { node: u8 },
    /// Traffic resumed after `LinkIdle`.
    LinkResumed { node: u8 },
    /// A request for one of our handlers; answer with [`Net::reply`].
    Request(IncomingRequest),
    /// The outcome of one of our requests: the peer handler's status, or
    /// a transport error.
    Response {
        id: RequestId,
        node: u8,
        result: Result<i32, NetError>,
    },
    /// The quorum rule says this node must fence itself.
    Fence(Decision),
}

/// A peer link as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No connection object.
    Down,
    /// TCP connect in progress (we are the connector).
    Connecting,
    /// TCP up, waiting for the peer's handshake.
    Handshaking,
    /// Handshake done, messages flow.
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    Valid,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    connector: bool,
    phase: Phase,
    /// Received bytes not yet consumed. Holds at most one partial frame
    /// plus what the driver handed in last.
    rx: Vec<u8>,
    keepalive_at: Option<Instant>,
    idle_at: Option<Instant>,
    idle_since: Option<Instant>,
}

#[derive(Debug)]
struct QueuedRequest {
    id: RequestId,
    msg_type: u16,
    key: u32,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Peer {
    node: NetNode,
    heartbeating: bool,
    conn: Option<Conn>,
    /// The kernel's `nn_persistent_error`: sends fail at once while set.
    persistent: Option<NetError>,
    /// The kernel's `nn_timeout`: the link went idle since it was valid.
    idle_flag: bool,
    last_attempt: Option<Instant>,
    connect_at: Option<Instant>,
    expire_at: Option<Instant>,
    still_up_at: Option<Instant>,
    /// msg_num → our request.
    outstanding: BTreeMap<u32, RequestId>,
    /// Requests waiting for the link to become valid.
    queued: VecDeque<QueuedRequest>,
}

impl Peer {
    fn valid(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.phase == Phase::Valid)
    }

    fn label(&self) -> String {
        format!(
            "node {} ({}) at {}:{}",
            self.node.number, self.node.name, self.node.ip, self.node.port
        )
    }
}

/// Which connection object a state change installs.
enum NewConn {
    Keep,
    Drop,
    Install(Conn),
}

/// One node's o2net.
pub struct Net {
    cfg: NetConfig,
    handshake: [u8; HANDSHAKE_LEN],
    /// Indexed by node number; None for unconfigured numbers and ourselves.
    peers: Vec<Option<Peer>>,
    conns: HashMap<ConnId, u8>,
    next_conn: ConnId,
    next_request: u64,
    handlers: HashMap<(u16, u32), u32>,
    quorum: Quorum,
    transmits: VecDeque<Transmit>,
    io: VecDeque<IoAction>,
    events: VecDeque<NetEvent>,
}

impl Net {
    pub fn new(cfg: NetConfig) -> Result<Net, String> {
        if cfg.local_node().is_none() {
            return Err(format!("local node {} is not in the node list", cfg.local));
        }
        if cfg.idle_timeout_ms <= cfg.keepalive_delay_ms {
            return Err(format!(
                "idle timeout {} ms must exceed the keepalive delay {} ms",
                cfg.idle_timeout_ms, cfg.keepalive_delay_ms
            ));
        }
        let mut peers: Vec<Option<Peer>> = (0..=u8::MAX).map(|_| None).collect();
        for n in &cfg.nodes {
            if n.number == cfg.local {
                continue;
            }
            if cfg.nodes.iter().filter(|m| m.ip == n.ip).count() > 1 {
                return Err(format!("address {} is used by several nodes", n.ip));
            }
            peers[n.number as usize] = Some(Peer {
                node: n.clone(),
                heartbeating: false,
                conn: None,
                // As the kernel at module start: nothing is sent to a node
                // before its heartbeat is seen.
                persistent: Some(NetError::NotConnected),
                idle_flag: false,
                last_attempt: None,
                connect_at: None,
                expire_at: None,
                still_up_at: None,
                outstanding: BTreeMap::new(),
                queued: VecDeque::new(),
            });
        }
        Ok(Net {
            handshake: cfg.handshake().encode(),
            quorum: Quorum::new(cfg.local),
            cfg,
            peers,
            conns: HashMap::new(),
            next_conn: 1,
            next_request: 1,
            handlers: HashMap::new(),
            transmits: VecDeque::new(),
            io: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    pub fn link_state(&self, node: u8) -> LinkState {
        match self.peer(node).and_then(|p| p.conn.as_ref()) {
            None => LinkState::Down,
            Some(c) => match c.phase {
                Phase::Connecting => LinkState::Connecting,
                Phase::Handshaking => LinkState::Handshaking,
                Phase::Valid => LinkState::Up,
            },
        }
    }

    /// Nodes with a valid link, ascending.
    pub fn connected_nodes(&self) -> Vec<u8> {
        self.peers
            .iter()
            .flatten()
            .filter(|p| p.valid())
            .map(|p| p.node.number)
            .collect()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_io(&mut self) -> Option<IoAction> {
        self.io.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NetEvent> {
        self.events.pop_front()
    }

    /// The earliest instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        for p in self.peers.iter().flatten() {
            consider(p.connect_at);
            consider(p.expire_at);
            consider(p.still_up_at);
            if let Some(c) = &p.conn {
                consider(c.keepalive_at);
                consider(c.idle_at);
            }
        }
        best
    }

    // ------------------------------------------------------------------
    // Handlers and requests (the API of the layer above).

    /// Accept requests of (msg_type, key) with payloads up to `max_len`.
    pub fn register_handler(
        &mut self,
        msg_type: u16,
        key: u32,
        max_len: u32,
    ) -> Result<(), RegisterError> {
        if msg_type == 0 {
            return Err(RegisterError::ZeroType);
        }
        if max_len as usize > MAX_PAYLOAD {
            return Err(RegisterError::TooLong(max_len));
        }
        if self.handlers.contains_key(&(msg_type, key)) {
            return Err(RegisterError::Exists);
        }
        self.handlers.insert((msg_type, key), max_len);
        Ok(())
    }

    /// Returns whether a handler was registered.
    pub fn unregister_handler(&mut self, msg_type: u16, key: u32) -> bool {
        self.handlers.remove(&(msg_type, key)).is_some()
    }

    /// Sends a request. The result comes later as `NetEvent::Response`
    /// with the returned id. While the link is being set up the request
    /// waits (as the kernel's senders do); a persistent error fails it.
    pub fn send_request(
        &mut self,
        node: u8,
        msg_type: u16,
        key: u32,
        payload: &[u8],
    ) -> Result<RequestId, SendError> {
        if node == self.cfg.local {
            return Err(SendError::ToSelf);
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(SendError::TooLong(payload.len()));
        }
        let id = RequestId(self.next_request);
        let Some(peer) = self.peers.get_mut(node as usize).and_then(Option::as_mut) else {
            return Err(SendError::UnknownNode(node));
        };
        if peer.persistent.is_some() {
            return Err(SendError::NotConnected);
        }
        self.next_request += 1;
        let q = QueuedRequest {
            id,
            msg_type,
            key,
            payload: payload.to_vec(),
        };
        if peer.valid() {
            Self::transmit_request(&mut self.transmits, peer, q);
        } else {
            peer.queued.push_back(q);
        }
        Ok(id)
    }

    /// Answers an incoming request with the handler's status. Dropped
    /// silently when its link is gone (the peer has failed the request
    /// with "host down" on its side).
    pub fn reply(&mut self, token: ReplyToken, status: i32) {
        let live = self
            .peer(token.node)
            .and_then(|p| p.conn.as_ref())
            .is_some_and(|c| c.id == token.conn && c.phase == Phase::Valid);
        if !live {
            log::debug!(
                "o2net: reply to node {} msg {} dropped: its link is gone",
                token.node,
                token.header.msg_num
            );
            return;
        }
        let hdr = MsgHeader::status_reply(&token.header, wire::SYS_ERR_NONE, status);
        self.transmits.push_back(Transmit {
            conn: token.conn,
            node: token.node,
            data: hdr.encode().to_vec(),
        });
    }

    fn transmit_request(transmits: &mut VecDeque<Transmit>, peer: &mut Peer, q: QueuedRequest) {
        let Some(conn) = peer.conn.as_ref() else {
            return;
        };
        // Smallest free id, as Linux picks them.
        let mut msg_num = 0u32;
        for &used in peer.outstanding.keys() {
            if used != msg_num {
                break;
            }
            msg_num += 1;
        }
        peer.outstanding.insert(msg_num, q.id);
        // Length was checked against MAX_PAYLOAD (< u16::MAX) on entry.
        let hdr = MsgHeader::request(q.msg_type, q.key, msg_num, q.payload.len() as u16);
        let mut data = Vec::with_capacity(wire::HEADER_LEN + q.payload.len());
        data.extend_from_slice(&hdr.encode());
        data.extend_from_slice(&q.payload);
        transmits.push_back(Transmit {
            conn: conn.id,
            node: peer.node.number,
            data,
        });
    }

    // ------------------------------------------------------------------
    // Driver inputs.

    /// The kernel's accept checks, run on a socket the listener just
    /// accepted. Ok: keep the socket under the returned id (our handshake
    /// is already queued). Err: close it without sending anything.
    pub fn accept(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
    ) -> Result<(u8, ConnId), AcceptRefusal> {
        let local = self.cfg.local;
        let found = self
            .cfg
            .nodes
            .iter()
            .find(|n| n.ip == *from.ip())
            .map(|n| n.number);
        let refusal = match found {
            None => Some(AcceptRefusal::UnknownAddress(from)),
            Some(node) if node <= local => Some(AcceptRefusal::NotHigher { node, from }),
            Some(node) => match self.peer(node) {
                None => Some(AcceptRefusal::UnknownAddress(from)),
                Some(p) if !p.heartbeating => Some(AcceptRefusal::NotHeartbeating { node, from }),
                Some(p) if p.conn.is_some() => Some(AcceptRefusal::AlreadyConnected { node, from }),
                Some(_) => None,
            },
        };
        if let Some(r) = refusal {
            match r {
                // Routine while heartbeats settle: the connector retries.
                AcceptRefusal::NotHeartbeating { .. } => log::info!("o2net: refused {r}"),
                _ => log::warn!("o2net: refused {r}"),
            }
            return Err(r);
        }
        let node = found.unwrap_or_default();
        let id = self.alloc_conn(node);
        if let Some(p) = self.peer_mut(node) {
            p.idle_flag = false;
        }
        let conn = Conn::new(id, false, Phase::Handshaking);
        self.set_state(now, node, NewConn::Install(conn), false, None);
        self.send_handshake(node, id);
        log::debug!("o2net: accepted connection {id} from node {node} at {from}");
        Ok((node, id))
    }

    pub fn handle_event(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::NodeUp(n) => self.node_up(now, n),
            Input::NodeDown(n) => self.node_down(now, n),
            Input::Connected(id) => {
                let Some(node) = self.current(id) else { return };
                let mut send = false;
                if let Some(c) = self.peer_mut(node).and_then(|p| p.conn.as_mut()) {
                    if c.phase == Phase::Connecting {
                        c.phase = Phase::Handshaking;
                        send = true;
                    }
                }
                if send {
                    log::debug!(
                        "o2net: connection {id} to node {node} established, sending handshake"
                    );
                    self.send_handshake(node, id);
                }
            }
            Input::ConnectFailed(id, why) => {
                let Some(node) = self.current(id) else { return };
                if let Some(p) = self.peer(node) {
                    log::info!("o2net: connect attempt to {} failed: {why}", p.label());
                }
                self.shutdown(now, node, None);
            }
            Input::Closed(id, why) => {
                let Some(node) = self.current(id) else { return };
                self.shutdown_with(now, node, None, why);
            }
            Input::Data(id, bytes) => self.data(now, id, bytes),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for n in 0..=u8::MAX {
            let Some(p) = self.peer(n) else { continue };
            let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
            let (connect, expire, still_up) =
                (due(p.connect_at), due(p.expire_at), due(p.still_up_at));
            let (keepalive, idle) = match &p.conn {
                Some(c) => (due(c.keepalive_at), due(c.idle_at)),
                None => (false, false),
            };
            if expire {
                self.connect_expired(now, n);
            }
            if connect {
                self.start_connect(now, n);
            }
            if keepalive {
                self.send_keepalive(n);
            }
            if idle {
                self.idle_timer(now, n);
            }
            if still_up {
                if let Some(p) = self.peer_mut(n) {
                    p.still_up_at = None;
                }
                log::debug!("o2net: node {n} still heartbeating after its link error");
                let d = self.quorum.hb_still_up(n);
                self.quorum_result(d);
            }
        }
    }

    // ------------------------------------------------------------------
    // Internals.

    fn peer(&self, n: u8) -> Option<&Peer> {
        self.peers.get(n as usize).and_then(Option::as_ref)
    }

    fn peer_mut(&mut self, n: u8) -> Option<&mut Peer> {
        self.peers.get_mut(n as usize).and_then(Option::as_mut)
    }

    fn alloc_conn(&mut self, node: u8) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, node);
        id
    }

    /// The node whose current connection is `id`; None for stale ids.
    fn current(&self, id: ConnId) -> Option<u8> {
        let node = *self.conns.get(&id)?;
        let p = self.peer(node)?;
        (p.conn.as_ref()?.id == id).then_some(node)
    }

    fn send_handshake(&mut self, node: u8, conn: ConnId) {
        self.transmits.push_back(Transmit {
            conn,
            node,
            data: self.handshake.to_vec(),
        });
    }

    fn node_up(&mut self, now: Instant, n: u8) {
        let d = self.quorum.hb_up(n);
        self.quorum_result(d);
        let reconnect = NetConfig::ms(self.cfg.reconnect_delay_ms);
        let Some(p) = self.peer_mut(n) else { return };
        if p.heartbeating {
            return;
        }
        p.heartbeating = true;
        // Connect at once, whatever the last attempt was.
        p.last_attempt = now.checked_sub(reconnect + Duration::from_millis(1));
        p.idle_flag = false;
        if p.persistent.is_some() {
            self.set_state(now, n, NewConn::Keep, false, None);
        }
    }

    fn node_down(&mut self, now: Instant, n: u8) {
        let d = self.quorum.hb_down(n);
        self.quorum_result(d);
        let Some(p) = self.peer_mut(n) else { return };
        if !p.heartbeating {
            return;
        }
        p.heartbeating = false;
        p.idle_flag = false;
        self.shutdown_with(
            now,
            n,
            Some(NetError::NotConnected),
            "heartbeat declared the node dead",
        );
        if let Some(p) = self.peer_mut(n) {
            // No reconnecting until it heartbeats again.
            p.connect_at = None;
            p.expire_at = None;
            p.still_up_at = None;
        }
    }

    fn shutdown(&mut self, now: Instant, node: u8, err: Option<NetError>) {
        self.shutdown_with(now, node, err, "connection closed");
    }

    fn shutdown_with(&mut self, now: Instant, node: u8, err: Option<NetError>, why: &str) {
        self.set_state_why(now, node, NewConn::Drop, false, err, why);
    }

    fn set_state(
        &mut self,
        now: Instant,
        node: u8,
        conn: NewConn,
        valid: bool,
        err: Option<NetError>,
    ) {
        self.set_state_why(now, node, conn, valid, err, "connection closed");
    }

    /// The single place peer state changes (the kernel's
    /// `o2net_set_nn_state`): installs or drops the connection, the valid
    /// flag and the persistent error, and derives everything that follows
    /// from the transition.
    fn set_state_why(
        &mut self,
        now: Instant,
        node: u8,
        new_conn: NewConn,
        valid: bool,
        err: Option<NetError>,
        why: &str,
    ) {
        let reconnect = NetConfig::ms(self.cfg.reconnect_delay_ms);
        let idle = NetConfig::ms(self.cfg.idle_timeout_ms);
        let quorum_delay = NetConfig::ms(self.cfg.quorum_delay_ms);
        let Some(p) = self.peers.get_mut(node as usize).and_then(Option::as_mut) else {
            return;
        };
        let was_valid = p.valid();
        let was_err = p.persistent.is_some();
        // Losing a valid link is never retried at once.
        let err = if was_valid && !valid && err.is_none() {
            Some(NetError::NotConnected)
        } else {
            err
        };

        let mut dropped: Option<ConnId> = None;
        match new_conn {
            NewConn::Keep => {}
            NewConn::Drop => dropped = p.conn.take().map(|c| c.id),
            NewConn::Install(c) => {
                dropped = p.conn.replace(c).map(|c| c.id);
            }
        }
        if valid {
            if let Some(c) = p.conn.as_mut() {
                c.phase = Phase::Valid;
            }
        }
        p.persistent = err;
        let label = p.label();
        let connector = p.conn.as_ref().is_some_and(|c| c.connector);

        let mut failed: Vec<(RequestId, NetError)> = Vec::new();
        if err.is_some() {
            // Waiting senders give up with the persistent error.
            failed.extend(p.queued.drain(..).map(|q| (q.id, NetError::NotConnected)));
        }
        // Only the loss of a valid link is a quorum matter; a refused
        // handshake or failed connect is not (current kernels).
        if was_valid && !was_err && err.is_some() {
            self.quorum.conn_err(node);
            if p.still_up_at.is_none() {
                p.still_up_at = Some(now + quorum_delay);
            }
        }
        if was_valid && !valid {
            log::warn!("o2net: no longer connected to {label}: {why}");
            failed.extend(
                std::mem::take(&mut p.outstanding)
                    .into_values()
                    .map(|id| (id, NetError::HostDown)),
            );
            self.events.push_back(NetEvent::LinkDown {
                node,
                reason: why.to_string(),
            });
        }
        let mut became_valid = false;
        if !was_valid && valid {
            p.expire_at = None;
            became_valid = true;
        }
        if !valid {
            // Try (again) no sooner than reconnect_delay after the last
            // attempt, and give the whole effort idle_timeout more before
            // logging it and starting over.
            let delay = p
                .last_attempt
                .map(|t| (t + reconnect).saturating_duration_since(now))
                .filter(|d| *d <= reconnect)
                .unwrap_or_default();
            if p.connect_at.is_none() {
                p.connect_at = Some(now + delay);
            }
            if p.expire_at.is_none() {
                p.expire_at = Some(now + delay + idle);
            }
        }
        if let Some(id) = dropped {
            self.conns.remove(&id);
            self.io.push_back(IoAction::Close { conn: id, node });
        }
        for (id, e) in failed {
            self.events.push_back(NetEvent::Response {
                id,
                node,
                result: Err(e),
            });
        }
        if became_valid {
            let d = self.quorum.conn_up(node);
            if connector {
                log::info!("o2net: connected to {label}");
            } else {
                log::info!("o2net: accepted connection from {label}");
            }
            self.events.push_back(NetEvent::LinkUp { node, connector });
            self.quorum_result(d);
            if let Some(p) = self.peers.get_mut(node as usize).and_then(Option::as_mut) {
                let queued: Vec<QueuedRequest> = p.queued.drain(..).collect();
                for q in queued {
                    Self::transmit_request(&mut self.transmits, p, q);
                }
            }
        }
    }

    fn quorum_result(&mut self, d: Option<Decision>) {
        let Some(d) = d else { return };
        if d.fence {
            log::error!("o2net: quorum lost, fencing this node: {d}");
            self.events.push_back(NetEvent::Fence(d));
        } else {
            log::info!("o2net: quorum kept, not fencing: {d}");
        }
    }

    /// The kernel's connect worker: only the higher node connects, only to
    /// a heartbeating peer, one connection at a time, and not while a
    /// persistent error stands (unless the link had gone idle).
    fn start_connect(&mut self, now: Instant, n: u8) {
        let local = self.cfg.local;
        let Some(local_ip) = self.cfg.local_node().map(|l| l.ip) else {
            return;
        };
        let Some(p) = self.peer_mut(n) else { return };
        p.connect_at = None;
        if local <= n || !p.heartbeating {
            return;
        }
        if p.conn.is_some() || (p.persistent.is_some() && !p.idle_flag) {
            return;
        }
        p.last_attempt = Some(now);
        let remote = SocketAddrV4::new(p.node.ip, p.node.port);
        let id = self.alloc_conn(n);
        log::debug!("o2net: connecting to node {n} at {remote} (connection {id})");
        self.set_state(
            now,
            n,
            NewConn::Install(Conn::new(id, true, Phase::Connecting)),
            false,
            None,
        );
        self.io.push_back(IoAction::Connect {
            conn: id,
            node: n,
            local: local_ip,
            remote,
        });
    }

    fn connect_expired(&mut self, now: Instant, n: u8) {
        let idle_ms = self.cfg.idle_timeout_ms;
        let Some(p) = self.peer_mut(n) else { return };
        p.expire_at = None;
        if p.valid() {
            return;
        }
        log::info!(
            "o2net: no connection established with node {n} after {}.{} seconds; check the network and that all nodes use the same timeouts",
            idle_ms / 1000,
            idle_ms % 1000
        );
        self.set_state_why(
            now,
            n,
            NewConn::Drop,
            false,
            None,
            "no connection established in time",
        );
    }

    fn send_keepalive(&mut self, n: u8) {
        let Some(c) = self.peer_mut(n).and_then(|p| p.conn.as_mut()) else {
            return;
        };
        c.keepalive_at = None;
        let id = c.id;
        log::debug!("o2net: keepalive request to node {n}");
        self.transmits.push_back(Transmit {
            conn: id,
            node: n,
            data: MsgHeader::keepalive_request().encode().to_vec(),
        });
    }

    /// Idle timeout of a valid link: not closed (current kernels), but a
    /// link error for quorum until traffic resumes.
    fn idle_timer(&mut self, now: Instant, n: u8) {
        let ka = NetConfig::ms(self.cfg.keepalive_delay_ms);
        let idle = NetConfig::ms(self.cfg.idle_timeout_ms);
        let quorum_delay = NetConfig::ms(self.cfg.quorum_delay_ms);
        let Some(p) = self.peer_mut(n) else { return };
        let label = p.label();
        let Some(c) = p.conn.as_mut() else { return };
        let silent = c
            .idle_since
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or(idle);
        c.reset_timers(now, ka, idle, false);
        p.idle_flag = true;
        if p.still_up_at.is_none() {
            p.still_up_at = Some(now + quorum_delay);
        }
        log::warn!(
            "o2net: connection to {label} has been idle for {}.{:03} s",
            silent.as_secs(),
            silent.subsec_millis()
        );
        self.quorum.conn_err(n);
        self.events.push_back(NetEvent::LinkIdle { node: n });
    }

    fn data(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        let Some(node) = self.current(id) else {
            return;
        };
        if let Some(c) = self.peer_mut(node).and_then(|p| p.conn.as_mut()) {
            if c.phase == Phase::Connecting {
                // Data implies the connect completed; we still owe our
                // handshake.
                c.phase = Phase::Handshaking;
                self.send_handshake(node, id);
            }
        }
        let Some(c) = self.peer_mut(node).and_then(|p| p.conn.as_mut()) else {
            return;
        };
        c.rx.extend_from_slice(bytes);
        let mut off = 0usize;
        loop {
            // The connection may have been closed by the previous frame.
            if self.current(id).is_none() {
                return;
            }
            let Some(c) = self.peer_mut(node).and_then(|p| p.conn.as_mut()) else {
                return;
            };
            let avail = &c.rx[off..];
            if c.phase != Phase::Valid {
                if avail.len() < HANDSHAKE_LEN {
                    break;
                }
                let hs = Handshake::decode(&avail[..HANDSHAKE_LEN]);
                off += HANDSHAKE_LEN;
                self.check_handshake(now, node, hs);
                continue;
            }
            match wire::peek_frame(avail) {
                Ok(None) => break,
                Ok(Some((hdr, len))) => {
                    let payload = avail[wire::HEADER_LEN..len].to_vec();
                    off += len;
                    self.process_frame(now, node, id, hdr, payload);
                }
                Err(e) => {
                    log::warn!("o2net: closing link to node {node}: bad frame: {e}");
                    self.shutdown_with(now, node, None, &format!("bad frame: {e}"));
                    return;
                }
            }
        }
        if let Some(c) = self.peer_mut(node).and_then(|p| p.conn.as_mut()) {
            if c.id == id {
                c.rx.drain(..off.min(c.rx.len()));
            }
        }
    }

    fn check_handshake(
        &mut self,
        now: Instant,
        node: u8,
        hs: Result<Handshake, crate::wire::WireError>,
    ) {
        let Some(p) = self.peer(node) else { return };
        let label = p.label();
        let problem = match hs {
            Err(e) => Some(format!("unreadable handshake: {e}")),
            Ok(h) if h.protocol_version != wire::PROTOCOL_VERSION => Some(format!(
                "advertised protocol version {} but {} is required",
                h.protocol_version,
                wire::PROTOCOL_VERSION
            )),
            Ok(h) if h.idle_timeout_ms != self.cfg.idle_timeout_ms => Some(format!(
                "uses an idle timeout of {} ms, we use {} ms",
                h.idle_timeout_ms, self.cfg.idle_timeout_ms
            )),
            Ok(h) if h.keepalive_delay_ms != self.cfg.keepalive_delay_ms => Some(format!(
                "uses a keepalive delay of {} ms, we use {} ms",
                h.keepalive_delay_ms, self.cfg.keepalive_delay_ms
            )),
            Ok(h) if h.o2hb_heartbeat_timeout_ms != self.cfg.hb_timeout_ms => Some(format!(
                "uses a heartbeat timeout of {} ms, we use {} ms",
                h.o2hb_heartbeat_timeout_ms, self.cfg.hb_timeout_ms
            )),
            Ok(_) => None,
        };
        if let Some(reason) = problem {
            log::warn!("o2net: {label} {reason}; disconnecting");
            self.events.push_back(NetEvent::HandshakeRejected {
                node,
                reason: reason.clone(),
            });
            self.shutdown_with(
                now,
                node,
                Some(NetError::NotConnected),
                &format!("handshake refused: {reason}"),
            );
            return;
        }
        let ka = NetConfig::ms(self.cfg.keepalive_delay_ms);
        let idle = NetConfig::ms(self.cfg.idle_timeout_ms);
        if let Some(p) = self.peer_mut(node) {
            p.idle_flag = false;
            if let Some(c) = p.conn.as_mut() {
                c.reset_timers(now, ka, idle, true);
            }
        }
        self.set_state(now, node, NewConn::Keep, true, None);
    }

    fn process_frame(
        &mut self,
        now: Instant,
        node: u8,
        conn: ConnId,
        hdr: MsgHeader,
        payload: Vec<u8>,
    ) {
        let ka = NetConfig::ms(self.cfg.keepalive_delay_ms);
        let idle = NetConfig::ms(self.cfg.idle_timeout_ms);
        // Any frame is activity: withdraw an idle verdict, push timers out.
        let mut resumed = false;
        if let Some(p) = self.peer_mut(node) {
            if p.idle_flag {
                p.idle_flag = false;
                p.still_up_at = None;
                resumed = true;
            }
            if let Some(c) = p.conn.as_mut() {
                c.reset_timers(now, ka, idle, true);
            }
        }
        if resumed {
            log::info!("o2net: traffic from node {node} resumed");
            self.events.push_back(NetEvent::LinkResumed { node });
            let d = self.quorum.conn_up(node);
            self.quorum_result(d);
        }
        match hdr.magic {
            STATUS_MAGIC => {
                let Some(p) = self.peer_mut(node) else { return };
                let Some(id) = p.outstanding.remove(&hdr.msg_num) else {
                    log::debug!(
                        "o2net: status reply from node {node} for unknown msg {}",
                        hdr.msg_num
                    );
                    return;
                };
                let result = if hdr.sys_status == wire::SYS_ERR_NONE {
                    Ok(hdr.status)
                } else {
                    Err(NetError::from_sys_status(hdr.sys_status))
                };
                self.events
                    .push_back(NetEvent::Response { id, node, result });
            }
            KEEP_REQ_MAGIC => {
                log::debug!("o2net: keepalive request from node {node}, answering");
                self.transmits.push_back(Transmit {
                    conn,
                    node,
                    data: MsgHeader::keepalive_response().encode().to_vec(),
                });
            }
            KEEP_RESP_MAGIC => {
                log::debug!("o2net: keepalive response from node {node}");
            }
            MSG_MAGIC => {
                let sys = match self.handlers.get(&(hdr.msg_type, hdr.key)) {
                    None => wire::SYS_ERR_NO_HANDLER,
                    Some(&max) if u32::from(hdr.data_len) > max => wire::SYS_ERR_OVERFLOW,
                    Some(_) => wire::SYS_ERR_NONE,
                };
                if sys != wire::SYS_ERR_NONE {
                    log::debug!(
                        "o2net: request type {} key {:#010x} from node {node} refused with sys_status {sys}",
                        hdr.msg_type,
                        hdr.key
                    );
                    let reply = MsgHeader::status_reply(&hdr, sys, 0);
                    self.transmits.push_back(Transmit {
                        conn,
                        node,
                        data: reply.encode().to_vec(),
                    });
                    return;
                }
                self.events.push_back(NetEvent::Request(IncomingRequest {
                    node,
                    header: hdr,
                    payload,
                    token: ReplyToken {
                        node,
                        conn,
                        header: hdr,
                    },
                }));
            }
            // peek_frame only yields the four known magics.
            _ => {}
        }
    }
}

impl Conn {
    fn new(id: ConnId, connector: bool, phase: Phase) -> Conn {
        Conn {
            id,
            connector,
            phase,
            rx: Vec::new(),
            keepalive_at: None,
            idle_at: None,
            idle_since: None,
        }
    }

    /// Re-arms the keepalive and idle timers from `now`. `activity`: the
    /// silence measured for the idle log line restarts too.
    fn reset_timers(&mut self, now: Instant, ka: Duration, idle: Duration, activity: bool) {
        self.keepalive_at = Some(now + ka);
        self.idle_at = Some(now + idle);
        if activity || self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("local", &self.cfg.local)
            .field("connected", &self.connected_nodes())
            .finish()
    }
}
