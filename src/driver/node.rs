//! Driver: node.
