//! o2dlm: a drop-in replacement for ocfs2-tools' libo2dlm.
//!
//! Two backends sit behind the same C API (`ffi`): the classic one over a
//! mounted `ocfs2_dlmfs` tree (`dlmfs`), and an embedded engine (`engine`)
//! that makes this process an o2cb cluster node speaking the kernel's own
//! o2hb, o2net and o2dlm protocols. Protocol logic is sans-IO (`heartbeat`,
//! `net`, ...): state machines fed with events that return actions; the
//! threads, sockets, disk and clocks live in `driver`.

/// cbindgen:ignore
pub mod api;
/// cbindgen:ignore
pub mod cli;
/// cbindgen:ignore
pub mod config;
/// cbindgen:ignore
pub mod dlm;
/// cbindgen:ignore
mod dlmfs;
/// cbindgen:ignore
pub mod driver;
/// cbindgen:ignore
mod engine;
/// cbindgen:ignore
pub mod error;
/// The C ABI; the only module cbindgen reads.
pub mod ffi;
/// cbindgen:ignore
pub mod heartbeat;
/// cbindgen:ignore
pub mod logging;
/// cbindgen:ignore
pub mod net;
/// cbindgen:ignore
pub mod sim;
/// cbindgen:ignore
pub mod wire;

pub use error::{Error, Result};
