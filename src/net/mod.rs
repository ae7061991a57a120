//! o2net connection state machines (sans-IO).
