//! Checks the installed guest kernel, which scripts/test installs (Debian's
//! linux-image-cloud-amd64): the modules a guest needs resolve from its real modules.dep,
//! and an initramfs builds from them.

use airlock_vm::initramfs::Inputs;
use airlock_vm::kernel;
use airlock_vm::modules::{module_name, ModuleIndex, GUEST_MODULES};

#[test]
fn cloud_kernel_guest_modules_resolve() {
    let kernel =
        kernel::find(None).expect("a guest kernel: apt-get install linux-image-cloud-amd64");
    let index = ModuleIndex::load(&kernel.modules).unwrap();
    let order = index.resolve(&GUEST_MODULES).unwrap();
    let names: Vec<String> = order.iter().filter_map(|path| module_name(path)).collect();
    for needed in [
        "virtio_mmio",
        "virtio_console",
        "virtio_blk",
        "overlay",
        "virtio",
        "virtio_ring",
    ] {
        assert!(
            names.iter().any(|name| name == needed),
            "{needed} missing from {names:?}"
        );
    }
    let position = |name: &str| names.iter().position(|found| found == name).unwrap();
    assert!(position("virtio_ring") < position("virtio"));
    assert!(position("virtio") < position("virtio_mmio"));
    for path in &order {
        assert!(
            kernel.modules.join(path).is_file(),
            "{path:?} is not a file"
        );
    }
}

#[test]
fn cloud_kernel_initramfs_holds_static_agent() {
    let kernel =
        kernel::find(None).expect("a guest kernel: apt-get install linux-image-cloud-amd64");
    let agent = std::env::current_exe().unwrap();
    let inputs = Inputs::gather(&kernel, &agent).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let archive = airlock_vm::initramfs::build_cached(&inputs, cache.path()).unwrap();
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size > inputs.agent.len() as u64, "archive of {size} bytes");
}
