//! A cluster node: the o2hb disk heartbeat and the o2net driver wired
//! together, as the kernel's o2cb stack wires them.
//!
//! Heartbeat node-up is passed to o2net (the higher node starts
//! connecting) and node-down tears the link down; everything either layer
//! reports comes out of one ordered event channel for the layer above (the
//! CLI today, the DLM later), which also uses [`NetHandle`] to register
//! handlers, send requests and answer them.

use super::heartbeat_disk::HeartbeatDriver;
use super::net_io::{NetApp, NetDriver, NetHandle};
use crate::config::EngineConfig;
use crate::heartbeat::HbEvent;
use crate::net::{NetConfig, NetEvent};
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// What the node reports, in order.
#[derive(Debug)]
pub enum NodeEvent {
    /// Heartbeat sees the node alive (our own node included).
    NodeUp(u8),
    /// Heartbeat declared the node dead.
    NodeDown(u8),
    /// Link events, requests for our handlers, replies to our requests,
    /// and the quorum's fence verdict.
    Net(NetEvent),
    /// Another writer in our heartbeat slot, or our writes have failed
    /// for too long (the heartbeat's own reason to fence).
    Heartbeat(HbEvent),
}

impl NodeEvent {
    /// True when this node must stop using the cluster at once.
    pub fn is_fence(&self) -> bool {
        matches!(
            self,
            NodeEvent::Net(NetEvent::Fence(_)) | NodeEvent::Heartbeat(HbEvent::WriteTimeout)
        )
    }
}

/// A running node.
pub struct Node {
    cfg: EngineConfig,
    net: Option<NetDriver>,
    hb: Option<HeartbeatDriver>,
    events: mpsc::Receiver<NodeEvent>,
}

impl Node {
    /// Starts o2net (listening) and then the heartbeat. Returns once our
    /// heartbeat is being written; node-up events follow as the heartbeat
    /// sees the other nodes.
    pub fn start(cfg: &EngineConfig) -> io::Result<Node> {
        let (tx, events) = mpsc::channel::<NodeEvent>();
        let tx = Mutex::new(tx);
        Self::start_inner(
            cfg,
            Arc::new(move |e| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(e);
                }
            }),
            events,
        )
    }

    /// Like `start`, but every event goes to `sink` (called from the
    /// heartbeat and o2net threads) instead of the `events()` channel, so
    /// the layer above can merge them into its own queue.
    pub fn start_with_sink(
        cfg: &EngineConfig,
        sink: Arc<dyn Fn(NodeEvent) + Send + Sync>,
    ) -> io::Result<Node> {
        let (_unused, events) = mpsc::channel::<NodeEvent>();
        Self::start_inner(cfg, sink, events)
    }

    /// Like `start_with_sink`, but o2net events go to `app` on the o2net
    /// thread itself (see [`NetApp`]); `sink` gets the heartbeat's events
    /// (on the heartbeat thread).
    pub fn start_with_app(
        cfg: &EngineConfig,
        sink: Arc<dyn Fn(NodeEvent) + Send + Sync>,
        app: Box<dyn NetApp>,
    ) -> io::Result<Node> {
        let (_unused, events) = mpsc::channel::<NodeEvent>();
        let net = NetDriver::start_app(NetConfig::from_engine(cfg), app)?;
        Self::start_hb(cfg, net, sink, events)
    }

    fn start_inner(
        cfg: &EngineConfig,
        sink: Arc<dyn Fn(NodeEvent) + Send + Sync>,
        events: mpsc::Receiver<NodeEvent>,
    ) -> io::Result<Node> {
        let net_sink = sink.clone();
        let net = NetDriver::start(
            NetConfig::from_engine(cfg),
            Box::new(move |e| net_sink(NodeEvent::Net(e))),
        )?;
        Self::start_hb(cfg, net, sink, events)
    }

    fn start_hb(
        cfg: &EngineConfig,
        net: NetDriver,
        sink: Arc<dyn Fn(NodeEvent) + Send + Sync>,
        events: mpsc::Receiver<NodeEvent>,
    ) -> io::Result<Node> {
        let handle = net.handle();
        let hb = HeartbeatDriver::start(
            cfg,
            Box::new(move |e| {
                let ev = NodeEvent::Heartbeat(e);
                let ev = match e {
                    HbEvent::NodeUp(n) => NodeEvent::NodeUp(n),
                    HbEvent::NodeDown(n) => NodeEvent::NodeDown(n),
                    _ => ev,
                };
                // Report first, then act, so "node up" precedes "link up".
                sink(ev);
                match e {
                    HbEvent::NodeUp(n) => handle.node_up(n),
                    HbEvent::NodeDown(n) => handle.node_down(n),
                    _ => {}
                }
            }),
        )?;
        Ok(Node {
            cfg: cfg.clone(),
            net: Some(net),
            hb: Some(hb),
            events,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Everything the node reports. Requests for registered handlers
    /// arrive here as `NodeEvent::Net(NetEvent::Request(..))`.
    pub fn events(&self) -> &mpsc::Receiver<NodeEvent> {
        &self.events
    }

    /// The o2net API for the layer above.
    pub fn net(&self) -> Option<NetHandle> {
        self.net.as_ref().map(NetDriver::handle)
    }

    /// See [`WriteWatch`]: whether our heartbeat writes are current.
    pub fn write_watch(&self) -> Option<super::heartbeat_disk::WriteWatch> {
        self.hb.as_ref().map(|h| h.write_watch())
    }

    /// Nodes live in our heartbeat view.
    pub fn live_nodes(&self) -> Vec<u8> {
        self.hb.as_ref().map(|h| h.live_nodes()).unwrap_or_default()
    }

    /// Clean stop: the heartbeat writes its leaving block first (peers
    /// see us go at their next read and drop the links themselves), then
    /// our links are closed.
    pub fn stop(mut self) {
        if let Some(hb) = self.hb.take() {
            hb.stop();
        }
        if let Some(net) = self.net.take() {
            net.stop();
        }
    }

    /// Fencing: stop heartbeating without the leaving block (peers
    /// declare us dead after their threshold, as for a crash) and drop
    /// every link.
    pub fn fence(mut self) {
        if let Some(hb) = self.hb.take() {
            hb.stop_unclean();
        }
        if let Some(net) = self.net.take() {
            net.stop();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(hb) = self.hb.take() {
            hb.stop();
        }
        if let Some(net) = self.net.take() {
            net.stop();
        }
    }
}
