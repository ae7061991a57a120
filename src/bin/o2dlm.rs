fn main() -> std::process::ExitCode {
    o2dlm::cli::main(std::env::args().skip(1).collect())
}
