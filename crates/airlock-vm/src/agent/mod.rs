//! The in-guest agent: the Airlock binary started by the guest kernel as `/init`, PID 1.
//!
//! It runs only as PID 1 with [`AGENT_ARGUMENT`] as its first argument, which the host
//! puts after `--` on the kernel command line, so an `airlock __vm-agent` typed on a host
//! refuses to start. Its steps, in order:
//! 1. mount /proc, /sys and /dev, and write to the console;
//! 2. load the modules the initramfs lists (virtio-mmio, virtio-serial, virtio-blk, ...),
//!    and fuse and virtiofs when the host shares a directory;
//! 3. mount the root disk, or the host view that the host shares, read-only and make it
//!    the root, with /tmp, /dev, /proc and the workspace, which an inner layer gets with an
//!    owner other than root;
//! 4. open the virtio-serial port and serve the host ([`serve`]);
//! 5. when the host asks, or goes away, kill every process and power the guest off.
//!
//! As PID 1 it survives its workload: the kernel sends init no signal it has no handler
//! for, so `kill -9 -1` ends every other process but not the agent, and the OOM killer
//! never picks init.

pub mod boot;
pub mod cgroup;
mod idmap;
pub mod serve;
pub mod tree;

use airlock_namespace::sys;

/// The argument that marks the agent's start by the guest kernel.
pub const AGENT_ARGUMENT: &str = "__vm-agent";

/// The error of an agent started anywhere but as a guest's PID 1.
#[derive(Debug, thiserror::Error)]
#[error("`airlock {AGENT_ARGUMENT}` is the agent inside a vm sandbox and runs only as the guest's PID 1; use `airlock run --backend vm` on the host")]
pub struct NotPidOne;

/// Runs the agent. Returns only when this process is not PID 1.
pub fn run() -> Result<std::convert::Infallible, NotPidOne> {
    if sys::getpid() != 1 {
        return Err(NotPidOne);
    }
    if let Err(error) = boot_and_serve() {
        console(&airlock_namespace::error_chain(&*error));
    }
    power_off()
}

fn boot_and_serve() -> Result<(), Box<dyn std::error::Error>> {
    boot::mount_kernel_filesystems()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = boot::BootConfig::from_cmdline(&cmdline);
    boot::set_hostname(&config)?;
    let loaded = boot::load_modules(&config)?;
    let root = boot::find_root(&config)?;
    boot::enter_root(&root, &config)?;
    // The guest has no network device, only its own loopback, which starts down.
    airlock_namespace::init::bring_up_loopback()
        .map_err(|error| format!("cannot bring up the loopback interface: {error}"))?;
    let port_path = boot::find_port()?;
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port_path)
        .map_err(|error| format!("cannot open the port {}: {error}", port_path.display()))?;
    console(&format!("ready ({loaded} modules loaded, root {root})"));
    serve::serve(port, config.inner)?;
    Ok(())
}

/// Writes one line to the guest's console. Unlike `eprintln!`, it never panics: a panic in
/// PID 1 would end the agent and panic the guest's kernel.
pub fn console(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "airlock agent: {line}");
}

/// Ends every process, flushes the disks and powers the guest off. QEMU runs with
/// `-no-reboot`, so the reboot that follows a failed power-off ends it too.
fn power_off() -> ! {
    // SAFETY: kill, sync and reboot take integers only. Signal -1 spares PID 1.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot(2) returns only on failure, which leaves nothing else to do.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
