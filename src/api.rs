//! The backend-neutral Rust API behind the C functions.
