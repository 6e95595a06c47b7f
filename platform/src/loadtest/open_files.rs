//! Room for every player's socket under the open-files limit. The command line raises the soft
//! limit to the hard one before any command runs; a run that still would not fit fails before
//! connecting anyone, rather than with thousands of "too many open files" set-ups.

use nix::sys::resource::{getrlimit, Resource};

/// Descriptors besides the sockets counted by the caller: stdio, tokio's own, the
/// `/metrics` requests.
const SPARE: u64 = 64;

/// Fails when `sockets` more open sockets would not fit under the soft limit. Passes when the
/// limit cannot be read: connect errors will then say what went wrong.
pub(super) fn ensure_room_for(sockets: u64) -> anyhow::Result<()> {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => check(sockets + SPARE, soft, hard),
        Err(_) => Ok(()),
    }
}

fn check(needed: u64, soft: u64, hard: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        needed <= soft,
        "this run needs about {needed} open files (a socket per player and per HTTP \
         connection), but the limit is {soft}{}",
        if needed <= hard {
            format!("; raise it with `ulimit -n {needed}`")
        } else {
            format!(" (hard limit {hard}); use fewer players or raise the hard limit")
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_fits_under_the_soft_limit_or_says_what_to_raise() {
        assert!(check(1000, 1024, 1024).is_ok());
        let error = check(10_064, 1024, 524_288).unwrap_err().to_string();
        assert!(error.contains("ulimit -n 10064"), "{error}");
        let error = check(10_064, 4096, 4096).unwrap_err().to_string();
        assert!(error.contains("raise the hard limit"), "{error}");
    }
}
