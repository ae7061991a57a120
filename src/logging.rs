//! Logging to stderr, off unless `O2DLM_LOG=error|warn|info|debug|trace`.
//!
//! A library must not take over the host program's logger, so ours is
//! installed only when the variable asks for it, and only if the program has
//! not installed one of its own.

use log::{LevelFilter, Log, Metadata, Record};
use once_cell::sync::OnceCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // One write per line so lines of concurrent threads do not interleave.
        let line = format!(
            "o2dlm[{}] {}.{:06} {:5} {}: {}\n",
            std::process::id(),
            now.as_secs(),
            now.subsec_micros(),
            record.level(),
            record.target(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;
static INIT: OnceCell<()> = OnceCell::new();

/// Parses an `O2DLM_LOG` value.
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "off" | "none" | "0" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Reads `O2DLM_LOG` once per process and installs the stderr logger.
pub fn init_from_env() {
    INIT.get_or_init(|| {
        let Ok(value) = std::env::var("O2DLM_LOG") else {
            return;
        };
        let level = match parse_level(&value) {
            Some(l) => l,
            None => {
                let _ = writeln!(
                    std::io::stderr(),
                    "o2dlm: ignoring O2DLM_LOG={value:?}: expected error, warn, info, debug or trace"
                );
                return;
            }
        };
        if level == LevelFilter::Off {
            return;
        }
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level(""), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
