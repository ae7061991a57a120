//! The thin I/O layer: threads, sockets, the heartbeat device and clocks.

pub mod heartbeat_disk;
pub mod net_io;
pub mod node;
