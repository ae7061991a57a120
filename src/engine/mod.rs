//! The embedded engine backend.
