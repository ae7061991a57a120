//! Byte-exact codecs for the kernel's formats. Pure functions: no I/O, and
//! decoders return errors (never panic, never allocate from a peer's length).

pub mod crc;
pub mod dlm;
pub mod error;
pub mod o2hb;
pub mod o2net;

pub use error::WireError;
