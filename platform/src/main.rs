//! The `rally` binary: the platform server and the command line, both in `rally_platform::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    rally_platform::cli::main()
}
