//! Facts about the running system that both sides of a probe read: the host to set up and
//! judge a probe, and the probe inside the sandbox to report what it finds.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct ProcessEntry {
    pub pid: i32,
    /// The process name (`comm`), at most 15 bytes.
    pub name: String,
    /// The state letter of /proc/PID/stat: `R`, `S`, `D`, `Z` and so on.
    pub state: char,
}

impl ProcessEntry {
    /// Returns whether the process still runs: a zombie has ended and only waits to be reaped.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Lists the processes that this process's /proc shows. Processes that end while the list
/// is read are left out.
pub fn processes() -> io::Result<Vec<ProcessEntry>> {
    let mut listed = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(process) = process(pid) {
            listed.push(process);
        }
    }
    Ok(listed)
}

/// Reads one process from /proc/PID/stat, or `None` when it is gone.
pub fn process(pid: i32) -> Option<ProcessEntry> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name sits between the first "(" and the last ")", and may contain either.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some(ProcessEntry { pid, name, state })
}

/// A network interface: its index, name and hardware (MAC) address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub hardware_address: Option<String>,
}

/// Lists the network interfaces of this process's network namespace, through netlink, so
/// that neither /proc nor /sys needs to be mounted.
pub fn interfaces() -> io::Result<Vec<Interface>> {
    // SAFETY: if_nameindex takes no arguments and returns an array that the C library
    // allocated, or null on failure.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    loop {
        // SAFETY: the array ends with an entry whose index is 0, and `entry` never passes it.
        let item = unsafe { &*entry };
        if item.if_index == 0 {
            break;
        }
        // SAFETY: every entry before the end has a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(item.if_name) }
            .to_string_lossy()
            .into_owned();
        found.push(Interface {
            index: item.if_index,
            hardware_address: hardware_address(&name),
            name,
        });
        // SAFETY: this entry was not the end, so the next one is still in the array.
        entry = unsafe { entry.add(1) };
    }
    // SAFETY: `list` came from if_nameindex and is freed once, after its last use.
    unsafe { libc::if_freenameindex(list) };
    Ok(found)
}

/// Reads an interface's hardware address with SIOCGIFHWADDR, or `None` when it has none.
fn hardware_address(name: &str) -> Option<String> {
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return None;
    }
    // SAFETY: the descriptor is fresh, so this is its only owner.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is plain data, so all zeros is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return None;
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }

    // SAFETY: SIOCGIFHWADDR reads the name from and writes the address into `request`.
    let result = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFHWADDR as libc::Ioctl,
            &mut request,
        )
    };
    if result == -1 {
        return None;
    }

    // SAFETY: after SIOCGIFHWADDR the union contains a sockaddr.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr };
    let bytes: Vec<String> = address.sa_data[..6]
        .iter()
        .map(|byte| format!("{:02x}", *byte as u8))
        .collect();
    Some(bytes.join(":"))
}

/// One mount of this process's mount namespace.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The device numbers, major and minor (0 for file systems without a device).
    pub device: (u32, u32),
    pub mount_point: PathBuf,
    /// The mount source, such as a device path or the name given to a tmpfs.
    pub source: String,
}

/// Lists the mounts of this process's mount namespace from /proc/self/mountinfo.
pub fn mounts() -> io::Result<Vec<Mount>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table.lines().filter_map(parse_mount).collect())
}

/// Parses one line of mountinfo: `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [TAGS] -
/// TYPE SOURCE SUPER_OPTIONS`.
fn parse_mount(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let (major, minor) = fields.get(2)?.split_once(':')?;
    let separator = fields.iter().position(|field| *field == "-")?;
    Some(Mount {
        device: (major.parse().ok()?, minor.parse().ok()?),
        mount_point: PathBuf::from(unescape_octal(fields.get(4)?)),
        source: unescape_octal(fields.get(separator + 2)?),
    })
}

/// Decodes the `\NNN` octal escapes that mountinfo uses for spaces, tabs, newlines and
/// backslashes.
fn unescape_octal(field: &str) -> String {
    let decoded = airlock_namespace::rootfs::unescape_mountinfo(field);
    decoded.to_string_lossy().into_owned()
}

/// Names an error by its errno constant, such as `EPERM`, which is shorter in a matrix
/// cell than its description. Other errors keep their description.
pub fn error_name(error: &io::Error) -> String {
    let name = match error.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ESRCH) => "ESRCH",
        Some(libc::EIO) => "EIO",
        Some(libc::EBADF) => "EBADF",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::EXDEV) => "EXDEV",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOTTY) => "ENOTTY",
        Some(libc::EFBIG) => "EFBIG",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EROFS) => "EROFS",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EDQUOT) => "EDQUOT",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        _ => return error.to_string(),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_line_parsed_with_escapes() {
        let line = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - tmpfs my\\134tag rw";
        let mount = parse_mount(line).expect("a valid line");
        assert_eq!(mount.device, (98, 0));
        assert_eq!(mount.mount_point, PathBuf::from("/mnt two"));
        assert_eq!(mount.source, "my\\tag");
    }

    #[test]
    fn own_process_listed_alive() {
        let pid = std::process::id() as i32;
        let listed = processes().expect("list /proc");
        let own = listed.iter().find(|process| process.pid == pid);
        assert!(
            own.is_some_and(ProcessEntry::is_alive),
            "{pid} not found alive"
        );
    }

    #[test]
    fn loopback_interface_listed() {
        let listed = interfaces().expect("list interfaces");
        assert!(
            listed.iter().any(|interface| interface.name == "lo"),
            "{listed:?}"
        );
    }
}
