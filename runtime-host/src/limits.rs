//! A runtime's CPU and memory limits (`runtime_cpu_millis`, `runtime_memory_mb` of its
//! deployment), applied by the launcher to each runtime it forks.
//!
//! Where the cgroup v1 `cpu` and `memory` controllers are mounted and writable (as root on this
//! kind of host), each runtime gets a group of its own under the launcher's, `rally/<its id>`,
//! which the forked runtime makes and joins itself (the launcher's loop, which every start
//! goes through, only computes the paths):
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

/// Age past which an empty group is taken to be left behind.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// cgroup v1 CPU period, in microseconds; the quota is `cpu_millis` × 100 of it.
const CPU_PERIOD_MICROS: u64 = 100_000;

/// Where the cgroup v1 hierarchies of the two controllers put this process's runtimes:
/// `<mount>/<the launcher's own group>/rally`. Found once, by the launcher.
#[derive(Debug, Clone, Default)]
pub struct Hierarchies {
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
}

impl Hierarchies {
    pub fn find() -> Hierarchies {
        let parent = |controller: &str| {
            let mount = mount_point(controller)?;
            let own = own_group(controller).unwrap_or_else(|| "/".to_owned());
            Some(mount.join(own.trim_start_matches('/')).join("rally"))
        };
        Hierarchies {
            cpu: parent("cpu"),
            memory: parent("memory"),
        }
    }

    /// Removes the groups of runtimes that are gone, left by a launcher that ended before it
    /// reaped them. The kernel refuses to remove a group that still holds a process; groups
    /// younger than [`ABANDONED_AFTER`] are left alone, since they may be a runtime's of another
    /// launcher on this host that has just made its group or has just ended.
    pub fn sweep(&self) {
        for parent in [&self.cpu, &self.memory].into_iter().flatten() {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let abandoned = entry.metadata().is_ok_and(|metadata| {
                    metadata.is_dir()
                        && metadata
                            .modified()
                            .ok()
                            .and_then(|modified| modified.elapsed().ok())
                            .is_some_and(|age| age > ABANDONED_AFTER)
                });
                if abandoned {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// The groups of one runtime with its limits; nothing is made yet.
    pub fn for_runtime(&self, runtime_id: &str, limits: ResourceLimits) -> Groups {
        Groups {
            cpu: self.cpu.as_ref().map(|parent| parent.join(runtime_id)),
            memory: self.memory.as_ref().map(|parent| parent.join(runtime_id)),
            limits,
        }
    }
}

/// One runtime's groups: made and joined by the runtime, removed by the launcher.
#[derive(Debug)]
pub struct Groups {
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    limits: ResourceLimits,
}

impl Groups {
    /// In the forked runtime, before it loads anything: makes and joins its groups (or sets
    /// `RLIMIT_DATA`), and logs what is not enforced.
    pub fn enter(&self) {
        let ResourceLimits {
            cpu_millis,
            memory_mb,
        } = self.limits;
        let quota = u64::from(cpu_millis) * CPU_PERIOD_MICROS / 1000;
        let cpu = join(
            self.cpu.as_deref(),
            &[
                ("cpu.cfs_period_us", CPU_PERIOD_MICROS.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ],
        );
        if let Err(problem) = cpu {
            eprintln!(
                "rally-runtime: the CPU limit of {cpu_millis} millicores is not enforced: {problem}"
            );
        }
        let bytes = u64::from(memory_mb) * 1024 * 1024;
        let memory = join(
            self.memory.as_deref(),
            &[
                ("memory.limit_in_bytes", bytes.to_string()),
                // Past the limit the runtime is killed, not left to swap.
                ("memory.swappiness", "0".to_owned()),
            ],
        );
        if let Err(problem) = memory {
            eprintln!(
                "rally-runtime: no memory group ({problem}); the memory limit of {memory_mb} MiB \
                 caps the data segment instead (RLIMIT_DATA)"
            );
            let set = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_DATA,
                bytes,
                bytes,
            );
            if let Err(error) = set {
                eprintln!("rally-runtime: cannot set RLIMIT_DATA: {error}");
            }
        }
    }

    /// In the launcher, once the runtime is reaped: why the kernel ended it, if it was its
    /// memory limit, then the groups go.
    pub fn remove(self) -> Option<String> {
        let killed = self.memory.as_deref().and_then(oom_kills).unwrap_or(0);
        for group in [self.cpu, self.memory].into_iter().flatten() {
            match std::fs::remove_dir(&group) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => eprintln!(
                    "rally-runtime launcher: cannot remove {}: {error}",
                    group.display()
                ),
                _ => {}
            }
        }
        (killed > 0).then(|| format!("memory limit of {} MiB exceeded", self.limits.memory_mb))
    }
}

/// Makes `group` with `settings` and moves this process into it.
fn join(group: Option<&Path>, settings: &[(&str, String)]) -> Result<(), String> {
    let group = group.ok_or("the controller is not mounted (cgroup v1)")?;
    std::fs::create_dir_all(group).map_err(|error| format!("{}: {error}", group.display()))?;
    let write = |file: &str, value: &str| {
        let path = group.join(file);
        std::fs::write(&path, value).map_err(|error| format!("{}: {error}", path.display()))
    };
    for (file, value) in settings {
        write(file, value)?;
    }
    write("cgroup.procs", &std::process::id().to_string())
}

/// `oom_kill` of a memory group: how many of its processes the kernel killed.
fn oom_kills(group: &Path) -> Option<u64> {
    let control = std::fs::read_to_string(group.join("memory.oom_control")).ok()?;
    control.lines().find_map(|line| {
        line.strip_prefix("oom_kill ")
            .and_then(|count| count.trim().parse().ok())
    })
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
