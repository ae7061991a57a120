//! The embedded engine backend: this process as an o2cb cluster node.
//!
//! The DLM on top of heartbeat and o2net is not built yet; until it is,
//! choosing the engine fails cleanly with SERVICE_UNAVAILABLE.

pub mod bast;

use crate::api::Backend;
use crate::error::{Error, Result};

/// True when the environment configures an engine node.
pub fn is_configured() -> bool {
    crate::config::engine_configured()
}

/// Joins `domain` as an engine node.
pub(crate) fn initialize(domain: &[u8]) -> Result<Box<dyn Backend>> {
    log::error!(
        "{}: the embedded engine's DLM is not available in this build",
        String::from_utf8_lossy(domain)
    );
    Err(Error::ServiceUnavailable)
}
