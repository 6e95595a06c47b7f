//! A runtime's CPU and memory limits (`runtime_cpu_millis`, `runtime_memory_mb` of its
//! deployment), applied by the launcher to each runtime it forks.
//!
//! Where the cgroup v1 `cpu` and `memory` controllers are mounted and writable (as root on this
//! kind of host), each runtime gets a group of its own under the launcher's, named by its id:
//! `cpu.cfs_quota_us` allows `cpu_millis` thousandths of a core per 100 ms period (the kernel
//! throttles it past that), and `memory.limit_in_bytes` caps what it holds in memory (the kernel
//! kills it past that; the launcher reads the group's OOM counter when it reaps the runtime and
//! reports the reason). Where the memory controller is not writable, `RLIMIT_DATA` caps the
//! runtime's data segment and heap instead (an allocation past it fails: the engines turn that
//! into a handler error, anything else ends the runtime). CPU has no fallback: `RLIMIT_CPU`
//! caps total CPU seconds, not a share, which would kill a long-lived lobby; the runtime's log
//! says when its CPU limit is not enforced.

use rally_sdk::runtime::launch::ResourceLimits;
use std::path::{Path, PathBuf};

/// cgroup v1 CPU period, in microseconds; the quota is `cpu_millis` × 100 of it.
const CPU_PERIOD_MICROS: u64 = 100_000;

/// The groups made for one runtime, removed when it has ended.
#[derive(Debug)]
pub struct Groups {
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    memory_mb: u32,
    /// What could not be applied, for the runtime's log.
    pub problems: Vec<String>,
}

/// Makes the runtime's groups with its limits. Never fails: what cannot be applied is noted.
pub fn prepare(runtime_id: &str, limits: &ResourceLimits) -> Groups {
    let mut groups = Groups {
        cpu: None,
        memory: None,
        memory_mb: limits.memory_mb,
        problems: Vec::new(),
    };
    let quota = u64::from(limits.cpu_millis) * CPU_PERIOD_MICROS / 1000;
    match make_group(
        "cpu",
        runtime_id,
        &[
            ("cpu.cfs_period_us", CPU_PERIOD_MICROS.to_string()),
            ("cpu.cfs_quota_us", quota.to_string()),
        ],
    ) {
        Ok(path) => groups.cpu = Some(path),
        Err(problem) => groups.problems.push(format!(
            "the CPU limit of {} millicores is not enforced: {problem}",
            limits.cpu_millis
        )),
    }
    let bytes = u64::from(limits.memory_mb) * 1024 * 1024;
    match make_group("memory", runtime_id, &[
        ("memory.limit_in_bytes", bytes.to_string()),
        // Past the limit the runtime is killed, not left to swap.
        ("memory.swappiness", "0".to_owned()),
    ]) {
        Ok(path) => groups.memory = Some(path),
        Err(problem) => groups.problems.push(format!(
            "the memory cgroup is not available ({problem}); the memory limit of {} MiB applies to the data segment (RLIMIT_DATA)",
            limits.memory_mb
        )),
    }
    groups
}

impl Groups {
    /// In the forked runtime: joins its groups (or sets `RLIMIT_DATA`) and logs what is not
    /// enforced.
    pub fn enter(&self) {
        let pid = std::process::id().to_string();
        for group in [&self.cpu, &self.memory].into_iter().flatten() {
            if let Err(error) = std::fs::write(group.join("cgroup.procs"), &pid) {
                eprintln!(
                    "rally-runtime: cannot join {}: {error}; its limit is not enforced",
                    group.display()
                );
            }
        }
        if self.memory.is_none() {
            let bytes = u64::from(self.memory_mb) * 1024 * 1024;
            let set = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_DATA,
                bytes,
                bytes,
            );
            if let Err(error) = set {
                eprintln!("rally-runtime: cannot set RLIMIT_DATA: {error}");
            }
        }
        for problem in &self.problems {
            eprintln!("rally-runtime: {problem}");
        }
    }

    /// In the launcher, once the runtime is reaped: why the kernel ended it, if it was its
    /// memory limit, then the groups go.
    pub fn remove(self) -> Option<String> {
        let killed = self.memory.as_deref().and_then(oom_kills).unwrap_or(0);
        for group in [self.cpu, self.memory].into_iter().flatten() {
            if let Err(error) = std::fs::remove_dir(&group) {
                eprintln!(
                    "rally-runtime launcher: cannot remove {}: {error}",
                    group.display()
                );
            }
        }
        (killed > 0).then(|| format!("memory limit of {} MiB exceeded", self.memory_mb))
    }
}

/// `oom_kill` of a memory group: how many of its processes the kernel killed.
fn oom_kills(group: &Path) -> Option<u64> {
    let control = std::fs::read_to_string(group.join("memory.oom_control")).ok()?;
    control.lines().find_map(|line| {
        line.strip_prefix("oom_kill ")
            .and_then(|count| count.trim().parse().ok())
    })
}

/// Makes `rally/<runtime_id>` below this process's own group of `controller` and writes
/// `settings` into it.
fn make_group(
    controller: &str,
    runtime_id: &str,
    settings: &[(&str, String)],
) -> Result<PathBuf, String> {
    let mount = mount_point(controller).ok_or("the controller is not mounted (cgroup v1)")?;
    let own = own_group(controller).unwrap_or_else(|| "/".to_owned());
    let group = mount
        .join(own.trim_start_matches('/'))
        .join("rally")
        .join(runtime_id);
    std::fs::create_dir_all(&group).map_err(|error| format!("{}: {error}", group.display()))?;
    for (file, value) in settings {
        let path = group.join(file);
        if let Err(error) = std::fs::write(&path, value) {
            let _ = std::fs::remove_dir(&group);
            return Err(format!("{}: {error}", path.display()));
        }
    }
    Ok(group)
}

/// Where the cgroup v1 hierarchy holding `controller` is mounted.
fn mount_point(controller: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        // ... mount-point ... - cgroup cgroup rw,cpu
        let (before, after) = line.split_once(" - ")?;
        let mut after = after.split_whitespace();
        if after.next()? != "cgroup" {
            return None;
        }
        let options = after.nth(1)?;
        if !options.split(',').any(|option| option == controller) {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's group in the hierarchy holding `controller` (`/proc/self/cgroup`).
fn own_group(controller: &str) -> Option<String> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let _id = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        controllers
            .split(',')
            .any(|name| name == controller)
            .then(|| path.to_owned())
    })
}
