//! o2dlm: a drop-in replacement for ocfs2-tools' libo2dlm.
//!
//! Two backends sit behind the same C API (`ffi`): the classic one over a
//! mounted `ocfs2_dlmfs` tree (`dlmfs`), and an embedded engine (`engine`)
//! that makes this process an o2cb cluster node speaking the kernel's own
//! o2hb, o2net and o2dlm protocols. Protocol logic is sans-IO (`heartbeat`,
//! `net`, ...): state machines fed with events that return actions; the
//! threads, sockets, disk and clocks live in `driver`.

pub mod api;
pub mod cli;
pub mod config;
mod dlmfs;
pub mod driver;
mod engine;
pub mod error;
mod ffi;
pub mod heartbeat;
pub mod logging;
pub mod net;
pub mod wire;

pub use error::{Error, Result};
