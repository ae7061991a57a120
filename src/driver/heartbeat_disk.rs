//! Driver: heartbeat_disk.
