//! The guest's memory and virtual CPUs, checked against the host before any image is built
//! or QEMU started.
//!
//! Guest memory above the host's total memory is rejected. Guest memory above the memory
//! available now (`MemAvailable` of /proc/meminfo) gets a warning only, for two reasons.
//! QEMU allocates guest memory as the guest first touches it, so a guest that uses less
//! than it was given runs. And what is available changes as other programs start and end.
//! A guest that does fill its memory then pushes the host into swap, or makes the host's
//! OOM killer end a process, QEMU among them.

use airlock_core::size::{format_bytes, format_bytes_short};
use airlock_core::Spec;

use crate::error::Error;
use crate::protections;

/// Guest memory on top of the memory limit, for the guest's kernel and the initramfs with
/// the agent. The limit itself is the `memory.max` of the commands' cgroup in the guest.
// NOTE: an estimate from Debian's 6.1 cloud kernel, whose idle guest uses about 60 MiB;
// a larger kernel leaves the commands less room before the guest's own OOM killer acts.
pub const GUEST_OVERHEAD: u64 = 128 << 20;

/// The memory and CPUs a guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// The commands' memory limit in bytes.
    pub memory_limit: u64,
    /// The guest's whole memory in MiB: the limit and [`GUEST_OVERHEAD`].
    pub memory_mib: u64,
    pub cpus: u32,
}

/// The host's memory in bytes and its online CPUs, where they could be read.
#[derive(Debug, Clone, Copy)]
struct Host {
    memory: Option<u64>,
    cpus: Option<u32>,
}

/// Sizes the guest of `spec` on this host, or returns why the host cannot give it what the
/// spec requests.
pub fn size(spec: &Spec) -> Result<Sizing, Error> {
    size_on(spec, Host::read())
}

fn size_on(spec: &Spec, host: Host) -> Result<Sizing, Error> {
    let memory = &spec.limits.memory;
    let mut memory_limit = memory.value;
    if let Some(host_memory) = host.memory {
        let available = host_memory.saturating_sub(GUEST_OVERHEAD) & !((1 << 20) - 1);
        if memory_limit > available {
            // A default is applied as far as the host allows; a requested limit is not
            // silently lowered.
            if memory.is_requested() {
                return Err(Error::MemoryAboveHost {
                    limit: memory_limit,
                    host: host_memory,
                    available,
                });
            }
            memory_limit = available;
        }
    }
    let cpus = spec.limits.cpus.value.map_or(1, protections::vcpus);
    if let (Some(requested), Some(host_cpus)) = (spec.limits.cpus.value, host.cpus) {
        if cpus > host_cpus {
            return Err(Error::CpusAboveHost {
                requested,
                host: host_cpus,
            });
        }
    }
    Ok(Sizing {
        memory_limit,
        memory_mib: (memory_limit + GUEST_OVERHEAD).div_ceil(1 << 20),
        cpus,
    })
}

impl Host {
    fn read() -> Host {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        // SAFETY: sysconf takes an integer and touches no memory.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        Host {
            memory: total_memory(&meminfo),
            cpus: u32::try_from(online).ok().filter(|&cpus| cpus > 0),
        }
    }
}

/// Warns on stderr, in one line, when the guest's memory of `sizing` exceeds the host's
/// memory available now.
pub fn warn_above_available(sizing: &Sizing) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(warning) = available_warning(sizing, &meminfo) {
        eprintln!("airlock: warning: {warning}");
    }
}

fn available_warning(sizing: &Sizing, meminfo: &str) -> Option<String> {
    let available = meminfo_bytes(meminfo, "MemAvailable")?;
    let guest = sizing.memory_mib << 20;
    (guest > available).then(|| {
        format!(
            "the guest's memory of {} (the memory limit and {} for its kernel and agent) \
             exceeds the host's MemAvailable of {}, so as the guest fills it the host may swap \
             or its OOM killer may end QEMU; pass a smaller --memory, or free memory on the host",
            format_bytes_short(guest),
            format_bytes(GUEST_OVERHEAD),
            format_bytes_short(available)
        )
    })
}

/// Returns `MemTotal` of /proc/meminfo in bytes.
fn total_memory(meminfo: &str) -> Option<u64> {
    meminfo_bytes(meminfo, "MemTotal")
}

/// Returns the field `name` of /proc/meminfo, which the kernel gives in KiB, in bytes.
fn meminfo_bytes(meminfo: &str, name: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Formats a memory size for the errors of this module.
pub fn describe_bytes(bytes: u64) -> String {
    format_bytes(bytes & !((1 << 20) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::Limit;

    const HOST: Host = Host {
        memory: Some(4 << 30),
        cpus: Some(2),
    };

    fn spec() -> Spec {
        Spec::new(vec!["true".into()])
    }

    #[test]
    fn guest_memory_is_limit_and_overhead() {
        let mut spec = spec();
        spec.limits.memory = Limit::requested(256 << 20);
        let sizing = size_on(&spec, HOST).unwrap();
        assert_eq!(sizing.memory_limit, 256 << 20);
        assert_eq!(sizing.memory_mib, 256 + 128);
        assert_eq!(sizing.cpus, 1);
    }

    #[test]
    fn requested_memory_above_host_rejected() {
        let mut spec = spec();
        spec.limits.memory = Limit::requested(4 << 30);
        let error = size_on(&spec, HOST).unwrap_err();
        assert!(
            matches!(error, Error::MemoryAboveHost { available, .. } if available == (4 << 30) - GUEST_OVERHEAD),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("--memory 3968M or less"), "{message}");
    }

    #[test]
    fn default_memory_lowered_to_host() {
        let host = Host {
            memory: Some(1 << 30),
            cpus: Some(2),
        };
        let sizing = size_on(&spec(), host).unwrap();
        assert_eq!(sizing.memory_limit, (1 << 30) - GUEST_OVERHEAD);
        assert_eq!(sizing.memory_mib, 1024);
    }

    #[test]
    fn cpus_above_host_rejected() {
        let mut spec = spec();
        spec.limits.cpus = Limit::requested(Some(2.5));
        let error = size_on(&spec, HOST).unwrap_err();
        assert!(
            matches!(error, Error::CpusAboveHost { host: 2, .. }),
            "{error}"
        );
        spec.limits.cpus = Limit::requested(Some(2.0));
        assert_eq!(size_on(&spec, HOST).unwrap().cpus, 2);
    }

    #[test]
    fn meminfo_total_read_in_bytes() {
        let meminfo = "MemTotal:       24530208 kB\nMemFree:        19876 kB\n";
        assert_eq!(total_memory(meminfo), Some(24530208 * 1024));
        assert_eq!(total_memory("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn guest_above_available_memory_warned() {
        let sizing = Sizing {
            memory_limit: 2 << 30,
            memory_mib: 2048 + 128,
            cpus: 1,
        };
        let meminfo = "MemTotal:       24530208 kB\nMemAvailable:    1048576 kB\n";
        let warning = available_warning(&sizing, meminfo).expect("a warning");
        assert!(warning.contains("MemAvailable of 1.0G"), "{warning}");
        assert!(warning.contains("memory of 2.1G"), "{warning}");
        assert!(warning.contains("pass a smaller --memory"), "{warning}");

        let roomy = "MemTotal:       24530208 kB\nMemAvailable:   20971520 kB\n";
        assert_eq!(available_warning(&sizing, roomy), None);
        assert_eq!(available_warning(&sizing, "MemTotal: 1 kB\n"), None);
    }
}
