//! `o2dlm node`.

use std::process::ExitCode;

pub fn run(_args: &[String]) -> ExitCode {
    eprintln!("o2dlm node: not available in this build yet");
    ExitCode::from(1)
}
