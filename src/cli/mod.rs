//! The `o2dlm` command: subcommands for operators and tests.

mod client;
mod heartbeat;
mod node;
mod simulate;

use std::process::ExitCode;

const USAGE: &str = "usage: o2dlm <command> [args]

commands:
  client DOMAIN      a scriptable lock client (commands on stdin; see client --help)
  heartbeat DEVICE   print every used slot of a heartbeat region
  node               run this node (heartbeat + o2net) until interrupted
  simulate           deterministic cluster simulation sweeps and replays
  help               this text
";

/// Entry point of the binary; `args` excludes the program name.
pub fn main(args: Vec<String>) -> ExitCode {
    crate::logging::init_from_env();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    match cmd.as_str() {
        "client" => client::run(rest),
        "heartbeat" => heartbeat::run(rest),
        "node" => node::run(rest),
        "simulate" => simulate::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("o2dlm: unknown command '{other}'\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
