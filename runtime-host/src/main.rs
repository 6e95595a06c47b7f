//! `rally-runtime`: the process that runs one lobby or match of a game's server logic and
//! connects it to the platform. `rally-runtime simulate <bundle> <script>` runs the logic
//! without a platform, from a scripted session.
//!
//! `rally-runtime check <bundle>` loads the lobby and match logic and reports what does not.
//!
//! `rally-runtime launcher` is what the platform's local-process pool keeps running to start
//! runtimes quickly: each is forked from it rather than loaded anew (see [`launcher`]).
//!
//! Exit codes: 0 stopped as asked; 1 `simulate` saw a handler fail; 2 bad environment or
//! command line; 3 the bundle cannot be loaded; 4 the platform refused the credentials;
//! 5 the platform was unreachable past the reconnect window; 6 protocol version mismatch;
//! 7 a handler ran past its time limit where it could not be interrupted.
#![forbid(unsafe_code)]

use rally_runtime_host::engine::Limits;
use rally_runtime_host::session::{self, Exit, RuntimeEnv};
use rally_runtime_host::{launcher, loader, simulate};
use rally_sdk::runtime::{check, launch};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: rally-runtime                        (started by the platform, configured by RALLY_RUNTIME_* variables)\n       \
                     rally-runtime simulate <bundle> <script> [lobby|match]\n       \
                     rally-runtime check <bundle>                 (loads the lobby and match logic, as a runtime would)\n       \
                     rally-runtime launcher                       (started by the platform: starts runtimes on request)\n       \
                     rally-runtime --version";

fn main() -> ExitCode {
    // Diagnostics go to standard error, which is a runtime's log (the launcher's children
    // inherit this subscriber; it holds no thread). Standard output is for data: the
    // launcher's reports, `simulate`'s commands.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("rally-runtime {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("simulate") => simulate_command(&args[1..]),
        Some("check") => check_command(&args[1..]),
        Some(launch::COMMAND) if args.len() == 1 => launcher::serve(),
        None => run_on_platform(),
        Some(_) => {
            eprintln!("{USAGE}");
            ExitCode::from(Exit::Usage as u8)
        }
    }
}

fn run_on_platform() -> ExitCode {
    let runtime = match RuntimeEnv::from_env() {
        Ok(runtime) => runtime,
        Err(problem) => {
            eprintln!("rally-runtime: {problem}\n{USAGE}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let bundle = loader::read_bundle(&runtime.bundle);
    ExitCode::from(session::run_process(runtime, bundle))
}

/// Loads the bundle's lobby and match entries into their engine, as runtimes will: compile
/// errors and a top level that fails are reported with file and line before any upload.
fn check_command(args: &[String]) -> ExitCode {
    let Some(bundle) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(Exit::Usage as u8);
    };
    // Every problem at once: the manifest's broken rules, then each entry that does not load.
    let ((manifest, files), manifest_problems) =
        match loader::read_bundle_for_check(Path::new(bundle)) {
            Ok(read) => read,
            Err(problem) => {
                eprintln!("{}{problem}", check::PREFIX);
                return ExitCode::from(Exit::BadBundle as u8);
            }
        };
    let mut problems: Vec<String> = manifest_problems
        .iter()
        .map(|problem| format!("{}{problem}", check::MANIFEST))
        .collect();
    // A program bundle's logic is its program: the check says so, unless the manifest itself
    // is what is wrong.
    if manifest.runtime.kind != rally_sdk::manifest::RuntimeKind::Program || problems.is_empty() {
        for qualifier in [
            rally_sdk::runtime::Qualifier::Lobby,
            rally_sdk::runtime::Qualifier::Match,
        ] {
            if let Err(problem) = loader::load_files(
                manifest.clone(),
                files.clone(),
                qualifier,
                Limits::default(),
            ) {
                problems.push(format!(
                    "the {} logic does not load: {problem}",
                    qualifier.as_str()
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("{bundle}: lobby and match logic load");
        return ExitCode::SUCCESS;
    }
    for problem in problems {
        eprintln!("{}{problem}", check::PREFIX);
    }
    ExitCode::from(Exit::BadBundle as u8)
}

fn simulate_command(args: &[String]) -> ExitCode {
    let (Some(bundle), Some(script)) = (args.first(), args.get(1)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(Exit::Usage as u8);
    };
    let qualifier = match args.get(2).map(String::as_str) {
        None | Some("lobby") => rally_sdk::runtime::Qualifier::Lobby,
        Some("match") => rally_sdk::runtime::Qualifier::Match,
        Some(other) => {
            eprintln!("rally-runtime: the qualifier is lobby or match, not {other:?}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let events = match std::fs::read_to_string(script)
        .map_err(|error| format!("cannot read {script}: {error}"))
        .and_then(|text| simulate::parse(&text).map_err(|error| format!("{script}: {error}")))
    {
        Ok(events) => events,
        Err(problem) => {
            eprintln!("rally-runtime: {problem}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let mut loaded = match loader::load(Path::new(bundle), qualifier, Limits::default()) {
        Ok(loaded) => loaded,
        Err(problem) => {
            eprintln!("rally-runtime: cannot load the bundle: {problem}");
            return ExitCode::from(Exit::BadBundle as u8);
        }
    };
    let config = serde_json::to_value(&loaded.manifest.deployment).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match simulate::run(
        loaded.engine.as_mut(),
        &events,
        &loaded.manifest.user_data,
        &config,
        &mut out,
    ) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("rally-runtime: {error}");
            ExitCode::FAILURE
        }
    }
}
