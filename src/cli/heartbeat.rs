//! `o2dlm heartbeat`.

use std::process::ExitCode;

pub fn run(_args: &[String]) -> ExitCode {
    eprintln!("o2dlm heartbeat: not available in this build yet");
    ExitCode::from(1)
}
