//! Driver: net_io.
