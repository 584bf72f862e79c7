//! The guest kernel: a Linux image and the directory of its modules.
//!
//! Without `--kernel`, the newest `/boot/vmlinuz-*-cloud-amd64` with a matching
//! `/lib/modules/RELEASE` is used, as Debian's `linux-image-cloud-amd64` installs it: a
//! small kernel with the virtio drivers as modules. Any other `/boot/vmlinuz-RELEASE` with
//! its modules comes next.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// Where Debian and most distributions install kernels and their modules.
const BOOT: &str = "/boot";
const MODULES: &str = "/lib/modules";
const IMAGE_PREFIX: &str = "vmlinuz-";
const CLOUD_SUFFIX: &str = "-cloud-amd64";

/// A kernel that can boot a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub image: PathBuf,
    /// The release, as `uname -r` prints it in the guest.
    pub release: String,
    /// `/lib/modules/RELEASE`, with `modules.dep`.
    pub modules: PathBuf,
}

/// Finds the kernel to boot: `explicit` when given, else the best one in /boot.
pub fn find(explicit: Option<&Path>) -> Result<Kernel, Error> {
    match explicit {
        Some(image) => from_image(image, Path::new(MODULES)),
        None => discover(Path::new(BOOT), Path::new(MODULES)),
    }
}

/// Takes a kernel image named `vmlinuz-RELEASE` and finds its modules below `modules_root`.
fn from_image(image: &Path, modules_root: &Path) -> Result<Kernel, Error> {
    if std::fs::symlink_metadata(image)
        .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound)
    {
        return Err(Error::KernelMissing(image.to_owned()));
    }
    let release = release_of(image).ok_or_else(|| Error::KernelName(image.to_owned()))?;
    let kernel = Kernel {
        image: image.to_owned(),
        modules: modules_root.join(&release),
        release,
    };
    check_readable(&kernel)?;
    Ok(kernel)
}

fn release_of(image: &Path) -> Option<String> {
    let name = image.file_name()?.to_str()?;
    let release = name.strip_prefix(IMAGE_PREFIX)?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// Lists the kernels in `boot` that have modules, the cloud kernels first, newest first in
/// each group, and returns the first.
fn discover(boot: &Path, modules_root: &Path) -> Result<Kernel, Error> {
    let mut candidates: Vec<Kernel> = std::fs::read_dir(boot)
        .map_err(|source| Error::KernelDirectory {
            path: boot.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let image = entry.path();
            let release = release_of(&image)?;
            let modules = modules_root.join(&release);
            modules.join("modules.dep").is_file().then_some(Kernel {
                image,
                release,
                modules,
            })
        })
        .collect();
    candidates.sort_by(|a, b| {
        let cloud = |kernel: &Kernel| kernel.release.ends_with(CLOUD_SUFFIX);
        cloud(b)
            .cmp(&cloud(a))
            .then_with(|| compare_versions(&b.release, &a.release))
    });
    let kernel = candidates.into_iter().next().ok_or(Error::NoKernel {
        boot: boot.to_owned(),
    })?;
    check_readable(&kernel)?;
    Ok(kernel)
}

/// Compares two releases by their numbers, so that 6.10 sorts after 6.9.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let numbers = |release: &str| -> Vec<u64> {
        release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|part| part.parse().ok())
            .collect()
    };
    numbers(a).cmp(&numbers(b)).then_with(|| a.cmp(b))
}

fn check_readable(kernel: &Kernel) -> Result<(), Error> {
    if let Err(source) = std::fs::File::open(&kernel.image) {
        return Err(Error::KernelUnreadable {
            path: kernel.image.clone(),
            source,
        });
    }
    let dep = kernel.modules.join("modules.dep");
    if !dep.is_file() {
        return Err(Error::ModulesMissing {
            release: kernel.release.clone(),
            path: kernel.modules.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_kernel(boot: &Path, modules: &Path, release: &str, with_modules: bool) {
        std::fs::write(boot.join(format!("vmlinuz-{release}")), b"kernel").unwrap();
        if with_modules {
            std::fs::create_dir_all(modules.join(release)).unwrap();
            std::fs::write(modules.join(release).join("modules.dep"), b"").unwrap();
        }
    }

    #[test]
    fn discovery_prefers_newest_cloud_kernel_with_modules() {
        let root = tempfile::tempdir().unwrap();
        let (boot, modules) = (root.path().join("boot"), root.path().join("modules"));
        std::fs::create_dir_all(&boot).unwrap();
        fake_kernel(&boot, &modules, "6.1.0-9-cloud-amd64", true);
        fake_kernel(&boot, &modules, "6.1.0-10-cloud-amd64", true);
        fake_kernel(&boot, &modules, "6.1.0-11-cloud-amd64", false);
        fake_kernel(&boot, &modules, "6.12.0-1-amd64", true);
        let kernel = discover(&boot, &modules).unwrap();
        assert_eq!(kernel.release, "6.1.0-10-cloud-amd64");
        assert_eq!(kernel.modules, modules.join("6.1.0-10-cloud-amd64"));
    }

    #[test]
    fn discovery_without_kernels_names_boot() {
        let root = tempfile::tempdir().unwrap();
        let error = discover(root.path(), root.path()).unwrap_err();
        assert!(matches!(error, Error::NoKernel { .. }), "{error}");
    }

    #[test]
    fn explicit_missing_image_named_missing() {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("vmlinuz-6.1.0-1-cloud-amd64");
        let error = from_image(&image, root.path()).unwrap_err();
        assert!(matches!(error, Error::KernelMissing(_)), "{error}");
    }

    #[test]
    fn explicit_image_needs_release_in_name() {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("bzImage");
        std::fs::write(&image, b"kernel").unwrap();
        let error = from_image(&image, root.path()).unwrap_err();
        assert!(matches!(error, Error::KernelName(_)), "{error}");
    }

    #[test]
    fn explicit_image_without_modules_rejected() {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("vmlinuz-6.1.0-1-cloud-amd64");
        std::fs::write(&image, b"kernel").unwrap();
        let error = from_image(&image, root.path()).unwrap_err();
        assert!(matches!(error, Error::ModulesMissing { .. }), "{error}");
    }
}
