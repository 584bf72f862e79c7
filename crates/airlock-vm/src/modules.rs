//! Kernel modules and their dependencies, read from `modules.dep` and `modules.builtin` as
//! depmod writes them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The modules a guest needs: the virtio-mmio transport of QEMU's microvm machine, the
/// virtio-serial port the agent talks through, the root disk, its file system, and the
/// workspace overlay. Those built into the kernel are skipped.
pub const GUEST_MODULES: [&str; 5] = [
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "ext4",
    "overlay",
];

/// The modules of virtiofs, which a guest loads only when the host shares a directory
/// with it.
pub const SHARE_MODULES: [&str; 2] = ["fuse", "virtiofs"];

/// The modules of one kernel.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Each module's file, relative to the modules directory, by module name.
    files: HashMap<String, PathBuf>,
    /// Each module's dependencies, by module name.
    dependencies: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

/// Returns a module's name from its file name: `kernel/fs/overlayfs/overlay.ko.xz` is
/// `overlay`, and dashes become underscores, as the kernel names modules.
pub fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.split_once(".ko")?.0;
    Some(stem.replace('-', "_"))
}

impl ModuleIndex {
    /// Reads `modules.dep` and, where present, `modules.builtin` in `directory`.
    pub fn load(directory: &Path) -> Result<ModuleIndex, Error> {
        let read = |name: &str| {
            let path = directory.join(name);
            std::fs::read_to_string(&path).map_err(|source| Error::ModuleIndex { path, source })
        };
        let dep = read("modules.dep")?;
        let builtin = match read("modules.builtin") {
            Ok(text) => text,
            Err(Error::ModuleIndex { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                String::new()
            }
            Err(error) => return Err(error),
        };
        Ok(ModuleIndex::parse(&dep, &builtin))
    }

    /// Parses the text of `modules.dep` (`path: dependency-path ...` per line) and of
    /// `modules.builtin` (one path per line).
    pub fn parse(dep: &str, builtin: &str) -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for line in dep.lines() {
            let Some((module, dependencies)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = module_name(Path::new(module.trim())) else {
                continue;
            };
            let dependencies = dependencies
                .split_whitespace()
                .filter_map(|path| module_name(Path::new(path)))
                .collect();
            index
                .files
                .insert(name.clone(), PathBuf::from(module.trim()));
            index.dependencies.insert(name, dependencies);
        }
        index.builtin = builtin
            .lines()
            .filter_map(|line| module_name(Path::new(line.trim())))
            .collect();
        index
    }

    /// Returns the files of `names` and of everything they depend on, each once, every
    /// module after its dependencies: the order to load them in. Built-in modules are left
    /// out; a module that is neither built in nor in `modules.dep` is an error.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<PathBuf>, Error> {
        let mut order = Vec::new();
        let mut visited = HashSet::new();
        for name in names {
            self.visit(&name.replace('-', "_"), &mut visited, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        visited: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), Error> {
        if self.builtin.contains(name) || !visited.insert(name.to_owned()) {
            return Ok(());
        }
        let file = self.files.get(name).ok_or_else(|| Error::ModuleNotFound {
            name: name.to_owned(),
        })?;
        for dependency in self.dependencies.get(name).into_iter().flatten() {
            self.visit(dependency, visited, order)?;
        }
        order.push(file.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    fn paths(order: &[PathBuf]) -> Vec<&str> {
        order.iter().map(|path| path.to_str().unwrap()).collect()
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let index = ModuleIndex::parse(DEP, "kernel/fs/ext4/ext4.ko\n");
        let order = index
            .resolve(&["virtio_mmio", "virtio_blk", "ext4", "overlay"])
            .unwrap();
        assert_eq!(
            paths(&order),
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/overlayfs/overlay.ko.xz",
            ]
        );
    }

    #[test]
    fn dashed_names_match_underscored() {
        let index = ModuleIndex::parse(DEP, "");
        let order = index.resolve(&["virtio-rng"]).unwrap();
        assert_eq!(
            paths(&order).last(),
            Some(&"kernel/drivers/char/hw_random/virtio-rng.ko")
        );
    }

    #[test]
    fn unknown_module_named_in_error() {
        let index = ModuleIndex::parse(DEP, "");
        let error = index.resolve(&["virtio_console"]).unwrap_err();
        assert!(
            matches!(&error, Error::ModuleNotFound { name } if name == "virtio_console"),
            "{error}"
        );
    }

    #[test]
    fn module_name_strips_compression() {
        assert_eq!(
            module_name(Path::new("a/b/overlay.ko.zst")).as_deref(),
            Some("overlay")
        );
        assert_eq!(module_name(Path::new("a/readme.txt")), None);
    }
}
