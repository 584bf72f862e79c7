//! The cgroup version of the host, and the controllers the caller can put a sandbox under.

use std::path::Path;

use airlock_namespace::cgroup::{Controller, Layout};

use crate::{filesystem_type, Fact};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The layout of the mounted cgroup hierarchies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One cgroup v1 hierarchy per controller.
    V1,
    /// The unified cgroup v2 hierarchy alone.
    V2,
    /// cgroup v1 controllers beside a cgroup v2 hierarchy, usually without controllers, at
    /// /sys/fs/cgroup/unified.
    Hybrid,
}

/// Classifies the layout from the file system types of /sys/fs/cgroup, of one of its v1
/// controller directories, and of /sys/fs/cgroup/unified.
pub fn classify(top: Option<i64>, any_v1: bool, unified: Option<i64>) -> Option<Version> {
    match top? {
        CGROUP2_SUPER_MAGIC => Some(Version::V2),
        _ if !any_v1 => None,
        _ if unified == Some(CGROUP2_SUPER_MAGIC) => Some(Version::Hybrid),
        _ => Some(Version::V1),
    }
}

/// Reads the layout below /sys/fs/cgroup.
pub fn version() -> Option<Version> {
    let top = Path::new("/sys/fs/cgroup");
    let any_v1 = ["memory", "pids", "cpu", "cpuacct", "systemd"]
        .iter()
        .any(|name| filesystem_type(&top.join(name)) == Some(CGROUP_SUPER_MAGIC));
    classify(
        filesystem_type(top),
        any_v1,
        filesystem_type(&top.join("unified")),
    )
}

/// Lists the cgroup version and, for each controller that limits a sandbox, whether the
/// caller can create a sandbox cgroup with it.
pub fn facts(is_root: bool) -> Vec<Fact> {
    let mut facts = vec![version_fact()];
    let layout = Layout::discover(is_root);
    for controller in Controller::ALL {
        facts.push(controller_fact(layout.as_ref(), controller, is_root));
    }
    facts
}

fn version_fact() -> Fact {
    let (id, name) = ("cgroup_version", "cgroup version");
    match version() {
        Some(Version::V1) => Fact::ok(id, name, "v1: one hierarchy per controller"),
        Some(Version::V2) => Fact::ok(id, name, "v2: one unified hierarchy"),
        Some(Version::Hybrid) => Fact::ok(
            id,
            name,
            "hybrid: the controllers on cgroup v1, and a cgroup v2 hierarchy at \
             /sys/fs/cgroup/unified; Airlock uses the v1 controllers",
        ),
        None if filesystem_type(Path::new("/sys/fs/cgroup")) == Some(TMPFS_MAGIC) => Fact::missing(
            id,
            name,
            "/sys/fs/cgroup is a tmpfs without cgroup hierarchies",
            "mount the cgroup hierarchies, as systemd does at boot",
        ),
        None => Fact::missing(
            id,
            name,
            "no cgroup file system is mounted at /sys/fs/cgroup",
            "mount cgroup2 at /sys/fs/cgroup (`mount -t cgroup2 none /sys/fs/cgroup` as root)",
        ),
    }
}

fn controller_fact(layout: Option<&Layout>, controller: Controller, is_root: bool) -> Fact {
    let name = controller.name();
    let (id, label) = match controller {
        Controller::Memory => ("cgroup_memory", "cgroup memory controller"),
        Controller::Pids => ("cgroup_pids", "cgroup pids controller"),
        Controller::Cpu => ("cgroup_cpu", "cgroup cpu controller"),
    };
    let checked = match layout {
        Some(layout) => layout.check(controller).map(Path::to_owned),
        None => {
            Err("this process's own cgroup v2 group is not listed in /proc/self/cgroup".to_owned())
        }
    };
    match checked {
        Ok(parent) if is_root => Fact::ok(
            id,
            label,
            format!("root can create sandbox cgroups below {}", parent.display()),
        ),
        Ok(parent) => Fact::ok(
            id,
            label,
            format!(
                "delegated to this user: sandbox cgroups go below {}",
                parent.display()
            ),
        ),
        Err(reason) if is_root => Fact::missing(
            id,
            label,
            reason,
            format!("mount a cgroup hierarchy with the {name} controller"),
        ),
        Err(reason) => Fact::missing(
            id,
            label,
            format!("not delegated to this user: {reason}"),
            format!(
                "run airlock as root, or in a cgroup of your own that you can write and that \
                 has the {name} controller (see the README's section on limits)"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_told_apart() {
        let ext4 = Some(0xef53);
        assert_eq!(
            classify(Some(CGROUP2_SUPER_MAGIC), false, None),
            Some(Version::V2)
        );
        assert_eq!(classify(Some(TMPFS_MAGIC), true, None), Some(Version::V1));
        assert_eq!(
            classify(Some(TMPFS_MAGIC), true, Some(CGROUP2_SUPER_MAGIC)),
            Some(Version::Hybrid)
        );
        assert_eq!(classify(Some(TMPFS_MAGIC), false, None), None);
        assert_eq!(classify(ext4, false, None), None);
        assert_eq!(classify(None, false, None), None);
    }
}
