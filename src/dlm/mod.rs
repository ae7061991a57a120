//! The o2dlm protocol core (sans-IO): lock resources, mastery, locking,
//! AST/BAST delivery, purge and migration, one file per protocol phase,
//! byte-compatible with Linux kernel o2dlm nodes.
//!
//! [`Dlm`] is one node's DLM: see node.rs for its inputs and outputs.

mod ast;
pub mod cache;
mod convert;
mod deref;
mod domain;
mod join;
mod lock;
pub mod lockres;
mod master;
mod migrate;
pub mod mode;
mod node;
mod recovery;
pub mod sim;
mod unlock;

pub use lockres::{Lvb, LVB_LEN};
pub use mode::Mode;
pub use node::{
    ApiError, Dlm, DlmConfig, DomainId, Event, JoinError, LockFlags, LockId, NotHandled,
    ReplyToken, RequestId, Transmit, TransportError, UnlockFlags,
};
