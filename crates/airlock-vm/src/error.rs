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
    #[error("kernel image {0:?} does not exist: pass the path of an installed kernel, such as /boot/vmlinuz-$(uname -r)")]
    KernelMissing(PathBuf),
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
    #[error("cannot find a cache directory for guest images: set HOME, XDG_CACHE_HOME or AIRLOCK_CACHE_DIR")]
    NoCacheDirectory,
    #[error("cannot create the cache directory {path:?}")]
    CacheDirectory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path:?} of the root filesystem, which goes whole into the guest's disk: run as a user who can read the whole tree, such as its owner, or use the host view (no --rootfs) or --image")]
    ReadRootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the owner of the project {path:?}, which the guest's copy keeps")]
    ProjectOwner {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mkfs.ext4 could not build a disk image of {root:?}: {message}")]
    Mkfs { root: PathBuf, message: String },
    #[error("cannot store the root disk image {path:?}")]
    BuildImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Engine(#[from] airlock_docker::EngineError),
    #[error(transparent)]
    Image(#[from] airlock_docker::image::ImageError),
    #[error("image {image:?} is not in the engine at {socket:?}: add it with `airlock image pull {image}`, or make it from a directory tree with `airlock image import DIR {image}`")]
    ImageNotFound { image: String, socket: PathBuf },
    #[error("the cached root disk of image {image:?} ({id}) was removed, and it cannot be rebuilt from the engine at {socket:?} that it came from: make that image available there again, or remove this sandbox and create a new one")]
    PinnedImageGone {
        image: String,
        id: String,
        socket: PathBuf,
        #[source]
        source: Option<Box<Error>>,
    },
    #[error("--image {image:?} and --rootfs {rootfs:?} both name the guest's root filesystem: pass only one")]
    ImageWithRootfs { image: String, rootfs: PathBuf },
    #[error("cannot unpack the files of image {image:?} for the guest's root disk")]
    UnpackImage {
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the owners and device nodes of image {image:?} in the guest's root disk: {message}")]
    FixOwners { image: String, message: String },
    #[error(
        "the build of the guest's root disk was interrupted; its temporary files were removed"
    )]
    BuildInterrupted(#[source] airlock_namespace::interrupt::Interrupted),
    #[error("cannot create the guest's directory of sockets, disks and logs")]
    GuestDirectory(#[source] io::Error),
    #[error("memory limit {} is more than this host can give a guest: the guest needs {} more for its kernel and agent, and the host has {} of memory; pass --memory {} or less", crate::sizing::describe_bytes(*limit), airlock_core::size::format_bytes(crate::sizing::GUEST_OVERHEAD), airlock_core::size::format_bytes_short(*host), crate::sizing::describe_bytes(*available))]
    MemoryAboveHost {
        limit: u64,
        host: u64,
        available: u64,
    },
    #[error("--cpus {requested} is more than this host's {host} CPUs: the guest's virtual CPUs would share them, so the limit would not hold; pass --cpus {host} or less")]
    CpusAboveHost { requested: f64, host: u32 },
    #[error("cannot catch the signals that Airlock forwards to the guest's command")]
    CatchSignals(#[source] io::Error),
    #[error("signal {signal} arrived while the guest booted")]
    Interrupted { signal: i32 },
    #[error("cannot start QEMU")]
    SpawnQemu(#[source] io::Error),
    #[error("{reason}; the guest's console ended with: {console}; QEMU's last messages: {qemu:?}{shares}")]
    GuestStopped {
        reason: String,
        console: String,
        qemu: String,
        /// The share daemons' last messages, after "; ", or empty.
        shares: String,
    },
    #[error("the guest's agent speaks protocol version {version}, not {}: the initramfs cache holds an agent from another Airlock; remove the cache directory", airlock_protocol::PROTOCOL_VERSION)]
    AgentVersion { version: u32 },
    #[error("the connection to the guest's agent broke")]
    Protocol(#[source] airlock_protocol::FrameError),
    #[error("the guest's agent failed: {message}")]
    AgentFailed { message: String },
    #[error("virtiofsd, which shares the host view and a bind workspace with the guest, is not installed (searched {searched}): install it (Debian 12: `apt-get install qemu-system-common`), or pass --rootfs DIR or --image NAME, and a workspace mode other than bind")]
    VirtiofsdMissing { searched: String },
    #[error("cannot create {path:?} for a virtiofs share")]
    ShareFiles {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start virtiofsd for the share {tag:?}")]
    SpawnShare {
        tag: String,
        #[source]
        source: io::Error,
    },
    #[error("the sandbox cannot enforce what the spec requires: {unmet}; pass --allow-weaker to run with weaker isolation")]
    WeakerThanRequired { unmet: String },
    #[error("cannot prepare the workspace overlay's layers in {path:?}")]
    Layers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy the workspace changes out of the guest")]
    Export(#[source] crate::export::ExportError),
    #[error("the vm backend cannot start a sandbox again while its workspace holds changes, which the new guest would not see: review them with `airlock diff`, then `airlock apply` or `airlock discard` them first")]
    ChangesPending,
    #[error("cannot block the supervisor's stop signals")]
    Signals(#[source] io::Error),
    #[error("cannot connect to the supervisor of the sandbox at {path:?}: {message}")]
    ControlSocket { path: PathBuf, message: String },
    #[error("the sandbox's record has no usable runtime ({0}); remove it with `airlock rm --force` or `airlock gc`")]
    Runtime(String),
    #[error("cannot copy {path:?}: {message}")]
    Copy { path: PathBuf, message: String },
    #[error("cannot copy {path:?} out of the guest: the copy exceeds {}, the maximum of a copy out of this sandbox, which is all the guest can hold: its memory ({}) and disk images ({}). Nothing was written. Copy a smaller part, such as one directory at a time. A sparse file counts at its full size; pack it in the guest with `tar -cSf` and copy the archive", airlock_core::size::format_bytes_short(limit.max_bytes()), airlock_core::size::format_bytes_short(limit.memory), airlock_core::size::format_bytes_short(limit.disks))]
    CopyOutTooLarge {
        path: PathBuf,
        limit: crate::copy::CopyOutLimit,
    },
    #[error("--inner namespace cannot share the project {project:?} with --workspace-mode bind: {reason}. The inner layer needs a workspace that a user other than root owns, or else an idmapped mount, which virtiofs in the guest's Debian 6.1 kernel does not support. Use the default --workspace-mode overlay, or run airlock as root on a project that a user other than root owns")]
    InnerBind {
        project: PathBuf,
        reason: &'static str,
    },
    #[error("cannot generate a sandbox id")]
    Id(#[source] io::Error),
    #[error("the vm backend cannot {action} yet; use `airlock run --backend vm`")]
    NotSupported { action: &'static str },
}
