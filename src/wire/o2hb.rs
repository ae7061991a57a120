//! The o2hb on-disk heartbeat block.
