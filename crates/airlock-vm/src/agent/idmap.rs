//! The workspace disk as an idmapped mount, for an inner layer on a root-owned project.
//!
//! The inner namespace sandbox maps its root to the owner of /workspace when that owner is
//! not root, and otherwise to an unused id that needs an idmapped /workspace. The guest's
//! Debian 6.1 kernel has no idmapped mounts of overlayfs, so the inner layer cannot get one
//! of the guest's overlay. The agent idmaps the layer below it instead, the ext4 workspace
//! disk: Linux has idmapped mounts of ext4 since 5.12 and accepts them as overlay layers
//! since 5.19. The project's root-owned files then belong to [`UNUSED_HOST_ID`], and the
//! overlay copies them up with that owner.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use airlock_namespace::sys;
use airlock_namespace::userns::UNUSED_HOST_ID;

/// Builds the ID map of the idmapped workspace disk, in which root and [`UNUSED_HOST_ID`]
/// swap places and every other id keeps its own, so files of other owners stay theirs.
/// Lines are "inside outside count", with the disk's ids inside and the guest's outside.
/// The last extent ends at 4294967294, since 4294967295 is the invalid id -1.
fn swap_map() -> String {
    let unused = UNUSED_HOST_ID;
    let above = unused + 1;
    format!(
        "0 {unused} 1\n1 1 {}\n{unused} 0 1\n{above} {above} {}\n",
        unused - 1,
        u32::MAX - above
    )
}

/// Remounts the ext4 disk mounted at `lower` as an idmapped mount with [`swap_map`]: a
/// detached clone gets the map, the original is detached, and the clone takes its place.
/// The caller must be single-threaded, since a child is cloned to hold the user namespace.
pub fn map_root_to_unused(lower: &Path) -> io::Result<()> {
    let userns = swapped_user_namespace()?;
    let directory = sys::open(lower, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let tree = sys::open_tree_clone(directory.as_raw_fd())?;
    drop(directory);
    let attributes = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    sys::mount_setattr_tree(tree.as_raw_fd(), attributes, Some(userns.as_raw_fd()))?;
    sys::umount_detach(lower)?;
    sys::move_mount(tree.as_raw_fd(), lower)
}

/// Creates a user namespace with [`swap_map`] for its uids and gids and returns its
/// descriptor. A child cloned into the namespace keeps it alive while the maps are written
/// and the descriptor opened, and is then killed.
fn swapped_user_namespace() -> io::Result<OwnedFd> {
    let child = sys::clone_process(libc::CLONE_NEWUSER, None)?;
    if child == 0 {
        // The child only waits for its SIGKILL, with no call that could take a lock.
        loop {
            // SAFETY: pause takes no arguments and only waits for a signal.
            unsafe { libc::pause() };
        }
    }
    let result = write_maps_and_open(child);
    let _ = sys::kill(child, libc::SIGKILL);
    let _ = sys::waitpid(child, 0);
    result
}

fn write_maps_and_open(child: libc::pid_t) -> io::Result<OwnedFd> {
    let map = swap_map();
    // Written by the guest's root, which has CAP_SETUID and CAP_SETGID over the new
    // namespace, so several extents are allowed and setgroups(2) stays allowed.
    std::fs::write(format!("/proc/{child}/uid_map"), &map)?;
    std::fs::write(format!("/proc/{child}/gid_map"), &map)?;
    let path = format!("/proc/{child}/ns/user");
    sys::open(Path::new(&path), libc::O_RDONLY | libc::O_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_map_covers_every_valid_id_once() {
        let mut extents: Vec<(u64, u64, u64)> = swap_map()
            .lines()
            .map(|line| {
                let fields: Vec<u64> = line.split(' ').map(|f| f.parse().unwrap()).collect();
                (fields[0], fields[1], fields[2])
            })
            .collect();
        assert_eq!(extents[0], (0, u64::from(UNUSED_HOST_ID), 1));
        assert_eq!(extents[2], (u64::from(UNUSED_HOST_ID), 0, 1));
        let total: u64 = extents.iter().map(|extent| extent.2).sum();
        assert_eq!(total, u64::from(u32::MAX), "ids 0 to 4294967294");
        for side in [0, 1] {
            let key = |extent: &(u64, u64, u64)| if side == 0 { extent.0 } else { extent.1 };
            extents.sort_by_key(key);
            let mut next = 0;
            for extent in &extents {
                assert_eq!(key(extent), next, "side {side}: {extents:?}");
                next += extent.2;
            }
        }
    }
}
