//! The QEMU machine of one sandbox, as data, and the command line built from it.
//!
//! The same spec gives the same [`Machine`] and so the same command line, except for the
//! paths of the sandbox's own files. The machine is recorded with the sandbox, so that a
//! snapshot can later be restored into the same configuration.

use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::agent::boot::{
    WorkspaceMount, HOSTNAME_PARAMETER, INNER_PARAMETER, MEMORY_PARAMETER, PIDS_PARAMETER,
    PORT_NAME, ROOT_DISK_SERIAL, ROOT_PARAMETER, ROOT_SHARE_TAG, TMP_SIZE_PARAMETER,
    WORKSPACE_DISK_SERIAL, WORKSPACE_PARAMETER,
};
use crate::agent::AGENT_ARGUMENT;
use crate::share::Share;

/// The accelerator QEMU runs the guest under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Everything QEMU is started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub accel: Accel,
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The shared root disk image, attached read-only, or `None` for the host view, which
    /// the share tagged [`ROOT_SHARE_TAG`] provides.
    pub root_disk: Option<PathBuf>,
    /// The unix socket of the agent's virtio-serial port; QEMU listens on it.
    pub agent_socket: PathBuf,
    /// The file the guest's serial console is written to.
    pub console_log: PathBuf,
    /// Size of the guest's /tmp in bytes.
    pub tmp_size: u64,
    /// The image of the project, attached read-only, and how the guest shows it; for
    /// [`WorkspaceMount::Bind`], the project itself, which a share provides.
    pub workspace: Option<(PathBuf, WorkspaceMount)>,
    /// The host directories shared with the guest through virtiofs.
    #[serde(default)]
    pub shares: Vec<Share>,
    /// The process limit of the guest's commands.
    pub pids: u64,
    /// The memory limit of the guest's commands in bytes, or 0 for the guest's whole
    /// memory, as in records of machines that had no such limit.
    #[serde(default)]
    pub memory_limit: u64,
    /// The host's TSC frequency in kHz, which a guest under TCG keeps time with; `None`
    /// under KVM or when it could not be measured.
    #[serde(default)]
    pub tsc_khz: Option<u64>,
    /// The guest's hostname, `airlock-` and the sandbox's short id, or `None` in records of
    /// machines made before guests had one.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Whether the commands run in an inner layer, which makes the agent give the
    /// workspace an owner other than root.
    #[serde(default)]
    pub inner: bool,
}

/// Kernel parameters for every guest. `panic=-1` reboots at once on a panic, which
/// `-no-reboot` turns into QEMU's exit, so a guest whose kernel fails never hangs.
/// `reboot=t` reboots by a triple fault: microvm has no keyboard controller, and with the
/// kernel's default methods a panicked guest sometimes stayed up.
const KERNEL_PARAMETERS: &str = "console=ttyS0 quiet panic=-1 reboot=t rdinit=/init";

/// Kernel parameters under software emulation. QEMU's microvm machine has no PIT or HPET
/// to calibrate the TSC against, and the boot hangs right after "tsc: Marking TSC
/// unstable" without them (seen with Debian's 6.1 cloud kernel under QEMU 7.2).
/// `tsc_early_khz` gives the frequency instead, and `lpj` skips the delay loop's
/// calibration.
const TCG_KERNEL_PARAMETERS: &str = "lpj=4000000 no_timer_check";

/// The TSC frequency given to a guest when the host's could not be measured.
// NOTE: a guess, so the guest's clock runs fast or slow by the ratio of the real frequency
// to this one. Timeouts are measured on the host.
const GUESSED_TSC_KHZ: u64 = 1_000_000;

impl Machine {
    /// Returns the kernel command line. The agent's marker comes after `--`, which the
    /// kernel passes to init as its argument.
    pub fn kernel_command_line(&self) -> String {
        let mut line = KERNEL_PARAMETERS.to_owned();
        if self.accel == Accel::Tcg {
            let khz = self.tsc_khz.unwrap_or(GUESSED_TSC_KHZ);
            line.push_str(&format!(" tsc_early_khz={khz} {TCG_KERNEL_PARAMETERS}"));
        }
        line.push_str(&format!(" {TMP_SIZE_PARAMETER}={}", self.tmp_size));
        line.push_str(&format!(" {PIDS_PARAMETER}={}", self.pids));
        if self.memory_limit > 0 {
            line.push_str(&format!(" {MEMORY_PARAMETER}={}", self.memory_limit));
        }
        if let Some(hostname) = &self.hostname {
            line.push_str(&format!(" {HOSTNAME_PARAMETER}={hostname}"));
        }
        if self.root_disk.is_none() {
            line.push_str(&format!(" {ROOT_PARAMETER}={ROOT_SHARE_TAG}"));
        }
        if let Some((_, mount)) = &self.workspace {
            line.push_str(&format!(" {WORKSPACE_PARAMETER}={}", mount.name()));
        }
        if self.inner {
            line.push_str(&format!(" {INNER_PARAMETER}=1"));
        }
        line.push_str(&format!(" -- {AGENT_ARGUMENT}"));
        line
    }

    /// Returns QEMU's arguments.
    pub fn arguments(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ]);
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        let cpus = self.cpus.to_string();
        let memory = format!("{}M", self.memory_mib);
        if self.shares.is_empty() {
            push(&["-machine", "microvm,rtc=on", "-accel", self.accel.name()]);
        } else {
            // A vhost-user device's daemon reads and writes the guest's memory itself, so
            // the memory must be a file that QEMU can hand to it: a shared memfd.
            let backend = format!("memory-backend-memfd,id={MEMORY_ID},size={memory},share=on");
            let machine = format!("microvm,rtc=on,memory-backend={MEMORY_ID}");
            push(&["-object", &backend, "-machine", &machine]);
            push(&["-accel", self.accel.name()]);
            // virtiofsd's libvhost-user serves virtio 1.0 devices only, and QEMU 7.2's
            // virtio-mmio transport offers legacy virtio unless `force-legacy` is off.
            push(&["-global", "virtio-mmio.force-legacy=false"]);
        }
        push(&["-cpu", cpu, "-smp", &cpus, "-m", &memory]);
        // No network device: the guest has only its own loopback.
        push(&["-nic", "none"]);
        let console = format!("file:{}", self.console_log.display());
        push(&["-serial", &console]);
        let (kernel, initramfs) = (self.kernel.display(), self.initramfs.display());
        let cmdline = self.kernel_command_line();
        push(&[
            "-kernel",
            &kernel.to_string(),
            "-initrd",
            &initramfs.to_string(),
        ]);
        push(&["-append", &cmdline]);
        // QEMU waits for the host to connect before it starts the guest, so nothing the
        // agent writes is lost before anyone reads it.
        let socket = format!(
            "socket,id=agent,path={},server=on,wait=on",
            self.agent_socket.display()
        );
        push(&["-device", "virtio-serial-device", "-chardev", &socket]);
        let port = format!("virtserialport,chardev=agent,name={PORT_NAME}");
        push(&["-device", &port]);
        if let Some(root_disk) = &self.root_disk {
            let drive = format!(
                "file={},if=none,id=root,format=raw,readonly=on",
                root_disk.display()
            );
            let device = format!("virtio-blk-device,drive=root,serial={ROOT_DISK_SERIAL}");
            push(&["-drive", &drive, "-device", &device]);
        }
        for (index, share) in self.shares.iter().enumerate() {
            let chardev = format!("socket,id=share{index},path={}", share.socket.display());
            let device = format!(
                "vhost-user-fs-device,chardev=share{index},tag={}",
                share.tag
            );
            push(&["-chardev", &chardev, "-device", &device]);
        }
        if let Some((image, _)) = self.workspace_disk() {
            let drive = format!(
                "file={},if=none,id=workspace,format=raw,readonly=on",
                image.display()
            );
            let device =
                format!("virtio-blk-device,drive=workspace,serial={WORKSPACE_DISK_SERIAL}");
            push(&["-drive", &drive, "-device", &device]);
        }
        args
    }

    /// Returns the workspace image with its mount, unless the guest shows the project
    /// through a share.
    pub fn workspace_disk(&self) -> Option<(&PathBuf, WorkspaceMount)> {
        let (image, mount) = self.workspace.as_ref()?;
        (*mount != WorkspaceMount::Bind).then_some((image, *mount))
    }
}

/// The id of the shared memory backend of a guest with shares.
const MEMORY_ID: &str = "guest-memory";

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(accel: Accel) -> Machine {
        Machine {
            accel,
            cpus: 2,
            memory_mib: 512,
            kernel: "/boot/vmlinuz-6.1.0-1-cloud-amd64".into(),
            initramfs: "/cache/initramfs-00.cpio".into(),
            root_disk: Some("/cache/rootfs-00.ext4".into()),
            agent_socket: "/run/x/agent.sock".into(),
            console_log: "/run/x/console.log".into(),
            tmp_size: 1 << 20,
            workspace: None,
            shares: Vec::new(),
            pids: 64,
            memory_limit: 256 << 20,
            tsc_khz: Some(2_596_140),
            hostname: Some("airlock-0123456789ab".into()),
            inner: false,
        }
    }

    fn joined(machine: &Machine) -> String {
        let args: Vec<String> = machine
            .arguments()
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        args.join(" ")
    }

    #[test]
    fn same_machine_gives_same_command_line() {
        assert_eq!(
            machine(Accel::Tcg).arguments(),
            machine(Accel::Tcg).arguments()
        );
    }

    #[test]
    fn command_line_has_no_network_and_no_reboot() {
        let line = joined(&machine(Accel::Kvm));
        assert!(line.contains("-nic none"), "{line}");
        assert!(line.contains("-no-reboot"), "{line}");
        assert!(
            line.contains("-accel kvm -cpu host -smp 2 -m 512M"),
            "{line}"
        );
        assert!(line.contains("serial=airlock-root"), "{line}");
        assert!(line.contains("name=airlock.agent"), "{line}");
    }

    #[test]
    fn shares_get_shared_memory_and_devices() {
        let mut shared = machine(Accel::Tcg);
        shared.root_disk = None;
        shared.workspace = Some(("/srv/project".into(), WorkspaceMount::Bind));
        shared.shares = vec![Share {
            tag: ROOT_SHARE_TAG.into(),
            socket: "/run/x/root.sock".into(),
            source: crate::share::ShareSource::HostView,
        }];
        let line = joined(&shared);
        assert!(
            line.contains("memory-backend-memfd,id=guest-memory,size=512M,share=on"),
            "{line}"
        );
        assert!(line.contains("memory-backend=guest-memory"), "{line}");
        assert!(line.contains("virtio-mmio.force-legacy=false"), "{line}");
        assert!(
            line.contains("vhost-user-fs-device,chardev=share0,tag=airlock-root"),
            "{line}"
        );
        assert!(!line.contains("-drive"), "{line}");
        let cmdline = shared.kernel_command_line();
        assert!(cmdline.contains("airlock.root=airlock-root"), "{cmdline}");
        assert!(cmdline.contains("airlock.workspace=bind"), "{cmdline}");
        let plain = joined(&machine(Accel::Tcg));
        assert!(!plain.contains("memory-backend"), "{plain}");
        assert!(!plain.contains("force-legacy"), "{plain}");
    }

    #[test]
    fn agent_marker_follows_double_dash() {
        let cmdline = machine(Accel::Kvm).kernel_command_line();
        assert!(
            cmdline.ends_with(
                "airlock.tmp_size=1048576 airlock.pids=64 airlock.memory=268435456 \
                 airlock.hostname=airlock-0123456789ab -- __vm-agent"
            ),
            "{cmdline}"
        );
        assert!(!cmdline.contains("tsc_early_khz"), "{cmdline}");
        let tcg = machine(Accel::Tcg).kernel_command_line();
        assert!(tcg.contains("tsc_early_khz=2596140 "), "{tcg}");
    }

    #[test]
    fn inner_layer_on_kernel_command_line() {
        let mut layered = machine(Accel::Kvm);
        layered.inner = true;
        let cmdline = layered.kernel_command_line();
        assert!(
            cmdline.ends_with(" airlock.inner=1 -- __vm-agent"),
            "{cmdline}"
        );
        let plain = machine(Accel::Kvm).kernel_command_line();
        assert!(!plain.contains("airlock.inner"), "{plain}");
    }
}
