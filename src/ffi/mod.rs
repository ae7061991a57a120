//! The C edge.
