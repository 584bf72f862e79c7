//! Failures of the vm backend, one variant per step of preparing, booting and driving a
//! guest.

use std::io;
use std::path::PathBuf;

use airlock_core::Unavailable;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the vm backend cannot run on this host")]
    Unavailable(#[source] Unavailable),
    #[error("cannot list kernels in {path:?}")]
    KernelDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no kernel with modules found in {boot:?}: install one (Debian: `apt-get install linux-image-cloud-amd64`), or pass --kernel /boot/vmlinuz-RELEASE")]
    NoKernel { boot: PathBuf },
    #[error("kernel image {0:?} is not named vmlinuz-RELEASE, so its modules in /lib/modules/RELEASE cannot be found: pass the image as /boot installs it")]
    KernelName(PathBuf),
    #[error(
        "cannot read the kernel image {path:?}: run as root, or pass a readable copy with --kernel"
    )]
    KernelUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the modules of kernel {release} are missing: {path:?} has no modules.dep; reinstall the kernel's package, or run depmod {release}")]
    ModulesMissing { release: String, path: PathBuf },
    #[error("cannot read the module index {path:?}")]
    ModuleIndex {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the guest kernel has no module {name:?}, neither built in nor in modules.dep: use a kernel with virtio, ext4 and overlayfs support, such as Debian's linux-image-cloud-amd64")]
    ModuleNotFound { name: String },
    #[error("cannot read the kernel module {path:?}")]
    ReadModule {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the Airlock binary {path:?} for the guest's agent")]
    ReadAgent {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Airlock binary {path:?} is linked dynamically, so it cannot run as the guest's agent without a C library: build it for the default musl target (`cargo build`), not for x86_64-unknown-linux-gnu")]
    AgentNotStatic { path: PathBuf },
    #[error("cannot write the initramfs {path:?}")]
    WriteInitramfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
