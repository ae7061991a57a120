//! Shared helpers for integration tests (not a test target itself).

#![allow(dead_code)]

pub mod pcap;

use std::path::{Path, PathBuf};

/// Directory holding the reference kernel captures.
///
/// `O2DLM_CAPTURES_DIR` wins; otherwise the first ancestor of the crate
/// directory that contains `shared/reference/captures` (the checkout lives at
/// `<x>/main` or `<x>/<clone>` next to `<x>/shared`). Panics with an
/// explanation when none is found: a missing corpus must fail the tests,
/// never let them pass vacuously.
pub fn captures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("O2DLM_CAPTURES_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "O2DLM_CAPTURES_DIR={} is not a directory",
            dir.display()
        );
        return dir;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for anc in manifest.ancestors() {
        let cand = anc.join("shared").join("reference").join("captures");
        if cand.is_dir() {
            return cand;
        }
    }
    panic!(
        "reference captures not found: set O2DLM_CAPTURES_DIR or place a copy of \
         shared/reference/captures in an ancestor of {} (e.g. <clone>/../shared)",
        manifest.display()
    );
}
