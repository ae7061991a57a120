//! o2hb liveness state machine (sans-IO).
