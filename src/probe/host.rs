//! The host's side of the probes: the canaries that a probe tries to reach from inside the
//! sandbox, and the facts about the host that the judges compare with. Every canary removes
//! itself when dropped, so each path out of a probe, an interrupted run included, cleans up.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_namespace::sys;
use serde::Serialize;

use super::system;

/// Prefix of the process names of canary processes and of processes that probes leave
/// behind, so that a test can find any that outlived a run. `airlock` itself is named
/// `airlock`, without the hyphen.
pub const PROCESS_NAME_PREFIX: &str = "airlock-";

/// The limits of the sandbox the probes run in. They are small so that the fork, memory
/// and /tmp bombs end within a second.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    pub pids: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Size of /tmp in bytes.
    pub tmp_size: u64,
}

pub const LIMITS: ProbeLimits = ProbeLimits {
    pids: 64,
    memory: 128 << 20,
    tmp_size: 16 << 20,
};

/// The host's settings for every probe it sets up.
#[derive(Debug)]
pub struct Host {
    /// A directory outside the workspace that the caller can write, for canary files: the
    /// caller's home when it can, else /var/tmp or the temporary directory.
    pub canary_dir: PathBuf,
    /// The name, in the workspace, of a root-owned setuid copy of Airlock, or why there is
    /// none.
    pub setuid_copy: Result<String, String>,
    pub limits: ProbeLimits,
}

/// A canary as the JSON report lists it, so that a reader (or a test) can check that it is
/// gone after the run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Canary {
    /// A process the host started.
    Process { pid: i32, name: String },
    /// A file on the host.
    File { path: PathBuf },
    /// A TCP listener on the host's loopback.
    Listener { address: String },
    /// A variable in Airlock's own environment.
    Variable { name: String },
    /// A pseudo-terminal the host opened.
    Terminal,
    /// The source name of a tmpfs that a probe mounts; the host looks for it in its own
    /// mount table.
    Mount { source: String },
    /// The name that a process left behind by a probe takes; the host looks for it in /proc.
    ProcessName { name: String },
}

/// Returns `bytes` random bytes from the kernel, as lowercase hex.
pub fn token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: the pointer and length describe `rest`, which getrandom fills.
        let read = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if read <= 0 {
            break;
        }
        filled += read as usize;
    }
    hex(&buffer)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A process the host starts for a probe to see, signal or trace. It blocks every signal,
/// so a signal sent to it stays pending where the host can read it, and it allows any
/// process of its user to trace it, so that only the sandbox is between the two. It is
/// killed and reaped when dropped, and dies with Airlock if Airlock is killed.
pub struct CanaryProcess {
    pid: libc::pid_t,
    name: String,
    secret: Box<[u8; 16]>,
}

impl CanaryProcess {
    pub fn start() -> io::Result<CanaryProcess> {
        let name = format!("{PROCESS_NAME_PREFIX}{}", &token(4)[..7]);
        let mut secret = Box::new([0u8; 16]);
        secret.copy_from_slice(&token(8).into_bytes());
        let c_name = CString::new(name.clone()).map_err(io::Error::other)?;
        let parent = sys::getpid();
        let (ready_read, ready_write) = sys::pipe()?;
        match sys::fork()? {
            0 => canary_process_main(parent, &c_name, ready_write),
            pid => {
                let canary = CanaryProcess { pid, name, secret };
                // The pipe reaches end of file once the process has its name and signal
                // mask, so a probe that looks for it by name finds it.
                drop(ready_write);
                let mut byte = [0u8; 1];
                sys::read(ready_read.as_raw_fd(), &mut byte)?;
                Ok(canary)
            }
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the address of 16 random bytes in the process's memory, which a probe that
    /// can read the process's memory reports back.
    pub fn secret_address(&self) -> usize {
        self.secret.as_ptr() as usize
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret[..]
    }

    /// Returns whether `signal` is pending for the process, that is, someone sent it.
    pub fn received(&self, signal: libc::c_int) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        let bit = 1u64 << (signal - 1);
        status
            .lines()
            .filter_map(|line| {
                let value = line
                    .strip_prefix("SigPnd:")
                    .or_else(|| line.strip_prefix("ShdPnd:"))?;
                u64::from_str_radix(value.trim(), 16).ok()
            })
            .any(|pending| pending & bit != 0)
    }

    pub fn describe(&self) -> Canary {
        Canary::Process {
            pid: self.pid,
            name: self.name.clone(),
        }
    }
}

impl Drop for CanaryProcess {
    fn drop(&mut self) {
        // The process is this process's unreaped child, so its pid cannot have been reused.
        let _ = sys::kill(self.pid, libc::SIGKILL);
        let _ = sys::waitpid(self.pid, 0);
    }
}

/// Runs the canary process after the fork: only system calls, then it sleeps until killed.
fn canary_process_main(parent: libc::pid_t, name: &CString, ready: OwnedFd) -> ! {
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    if sys::getppid() != parent {
        sys::exit_now(0);
    }
    let _ = sys::close_all_except(&[ready.as_raw_fd()]);
    let _ = sys::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong);
    // Without Yama this fails with EINVAL, and any process of the same user may trace anyway.
    let _ = sys::prctl(
        libc::PR_SET_PTRACER,
        libc::PR_SET_PTRACER_ANY as libc::c_ulong,
    );
    // SAFETY: sigfillset initializes the set it is given.
    let all = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    };
    let _ = sys::set_signal_mask(libc::SIG_SETMASK, &all);
    drop(ready);
    loop {
        // SAFETY: pause takes no arguments; with every signal blocked only SIGKILL ends it.
        unsafe { libc::pause() };
    }
}

/// A file the host writes for a probe to read or change, removed when dropped.
pub struct CanaryFile {
    path: PathBuf,
    content: Vec<u8>,
}

impl CanaryFile {
    /// Creates `DIR/.airlock-probe-PURPOSE-TOKEN`, readable by everyone, so that only the
    /// sandbox keeps a probe from its content.
    pub fn create(dir: &Path, purpose: &str, content: &[u8]) -> io::Result<CanaryFile> {
        let path = dir.join(format!(".airlock-probe-{purpose}-{}", token(6)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        let canary = CanaryFile {
            path,
            content: content.to_vec(),
        };
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(content)?;
        Ok(canary)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns whether the file no longer contains what the host wrote.
    pub fn changed(&self) -> bool {
        std::fs::read(&self.path).map_or(true, |now| now != self.content)
    }

    pub fn describe(&self) -> Canary {
        Canary::File {
            path: self.path.clone(),
        }
    }
}

impl Drop for CanaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A host path that a probe tries to create; removed when dropped if the probe succeeded.
pub struct HostPath {
    path: PathBuf,
}

impl HostPath {
    pub fn new(path: PathBuf) -> HostPath {
        HostPath { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    pub fn describe(&self) -> Canary {
        Canary::File {
            path: self.path.clone(),
        }
    }
}

impl Drop for HostPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A TCP listener on 127.0.0.1 at a port the kernel picks. It never accepts while a probe
/// runs: a connection waits in its queue, where the host finds it afterwards.
pub struct Listener {
    listener: TcpListener,
    address: SocketAddr,
}

impl Listener {
    pub fn open() -> io::Result<Listener> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        Ok(Listener { listener, address })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Returns whether a connection reached the listener.
    pub fn was_reached(&self) -> bool {
        self.listener.accept().is_ok()
    }

    pub fn describe(&self) -> Canary {
        Canary::Listener {
            address: self.address.to_string(),
        }
    }
}

/// A pseudo-terminal of the host, whose slave becomes the terminal of a probe's command:
/// characters pushed into its input with TIOCSTI can be read back from the slave.
pub struct HostTerminal {
    _master: OwnedFd,
    slave: OwnedFd,
}

impl HostTerminal {
    pub fn open() -> io::Result<HostTerminal> {
        let master = sys::open(Path::new("/dev/ptmx"), libc::O_RDWR | libc::O_NOCTTY)?;
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int from the pointer, which points to `unlock`.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } == -1 {
            return Err(io::Error::last_os_error());
        }
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        let slave = sys::ioctl_int(master.as_raw_fd(), libc::TIOCGPTPEER, flags)?;
        // SAFETY: TIOCGPTPEER returned a fresh descriptor that nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        Ok(HostTerminal {
            _master: master,
            slave,
        })
    }

    /// Returns the slave side, which the probe gets as its terminal.
    pub fn slave(&self) -> BorrowedFd<'_> {
        self.slave.as_fd()
    }

    /// Reads what waits in the terminal's input, without blocking. The terminal is put in
    /// raw mode first, so that input without a newline can be read too.
    pub fn pending_input(&self) -> Vec<u8> {
        let fd = self.slave.as_raw_fd();
        if let Ok(mut termios) = sys::tcgetattr(fd) {
            sys::make_raw(&mut termios);
            termios.c_cc[libc::VMIN] = 0;
            termios.c_cc[libc::VTIME] = 0;
            let _ = sys::tcsetattr(fd, &termios);
        }
        let mut input = Vec::new();
        let mut buffer = [0u8; 1024];
        while let Ok(read) = sys::read(fd, &mut buffer) {
            if read == 0 || input.len() > 1 << 16 {
                break;
            }
            input.extend_from_slice(&buffer[..read]);
        }
        input
    }
}

/// Returns the directory for canary files: the first of $HOME, the caller's home in the
/// password database, /var/tmp and the temporary directory that this user can write.
pub fn canary_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("HOME").map(PathBuf::from),
        home_from_passwd(),
        Some(PathBuf::from("/var/tmp")),
        Some(std::env::temp_dir()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.is_absolute() && dir.is_dir() && is_writable(dir))
        .unwrap_or_else(std::env::temp_dir)
}

fn is_writable(dir: &Path) -> bool {
    let Ok(path) = sys::cstring(dir) else {
        return false;
    };
    // SAFETY: `path` is NUL-terminated and alive for the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn home_from_passwd() -> Option<PathBuf> {
    // SAFETY: passwd is plain data, so all zeros is a valid value for getpwuid_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: `entry`, `buffer` and `result` are live, and the length is `buffer`'s.
    let status = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if status != 0 || result.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_dir points to a NUL-terminated string in `buffer`.
    let dir = unsafe { std::ffi::CStr::from_ptr(entry.pw_dir) };
    Some(PathBuf::from(dir.to_string_lossy().into_owned()))
}

/// The block device that holds the host's root file system.
#[derive(Debug, Clone)]
pub struct Disk {
    pub major: u32,
    pub minor: u32,
    /// Digest of the device's first bytes, when the host can read them itself.
    pub digest: Option<String>,
}

/// Number of bytes at the start of a disk that a probe reads and compares.
pub const DISK_SAMPLE: usize = 4096;

/// Finds the block device of the host's root file system and reads its first bytes where
/// the host can. Fails with the reason why the disk probe cannot show anything here: the
/// root is not on a block device (an overlay or a tmpfs root), or the host itself is denied
/// its disk with EPERM. A devices cgroup or a security module does that, and no sandbox that
/// the host starts gets past it.
pub fn root_disk() -> Result<Disk, String> {
    let mounts =
        system::mounts().map_err(|error| format!("cannot read the mount table: {error}"))?;
    let root = mounts
        .iter()
        .rev()
        .find(|mount| mount.mount_point == Path::new("/"))
        .ok_or("the mount table has no root")?;
    let (major, minor) = root.device;
    if major == 0 {
        return Err("the host's root file system is not on a block device".to_owned());
    }
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"));
    let device = uevent.ok().and_then(|uevent| {
        uevent
            .lines()
            .find_map(|line| line.strip_prefix("DEVNAME="))
            .map(|name| Path::new("/dev").join(name))
    });
    let mut digest = None;
    if let Some(path) = device {
        let mut sample = Vec::new();
        let read = std::fs::File::open(&path)
            .and_then(|file| file.take(DISK_SAMPLE as u64).read_to_end(&mut sample));
        match read {
            Ok(_) => digest = Some(fnv1a(&sample)),
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
                return Err(format!(
                    "the host itself is denied its disk {path:?} ({major}:{minor}): EPERM, so this probe cannot show what the sandbox stops"
                ));
            }
            // Without root, the device's permissions keep the host out, but not a sandbox
            // that gained root.
            Err(_) => {}
        }
    }
    Ok(Disk {
        major,
        minor,
        digest,
    })
}

/// Hashes `bytes` with FNV-1a, 64 bits, as hex. That is enough to tell whether two reads of
/// a disk returned the same bytes, since no one picks the bytes to collide.
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Finds the live processes named `name` and kills each by pidfd, after checking through
/// the pidfd's process that the name still matches; returns their pids. Processes that are
/// still ending are given `grace` to go before they count, and the killed ones up to a
/// second to exit.
pub fn kill_processes_named(name: &str, grace: Duration) -> Vec<libc::pid_t> {
    let deadline = Instant::now() + grace;
    let mut found = live_processes_named(name);
    while !found.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        found = live_processes_named(name);
    }
    let mut killed = Vec::new();
    for &pid in &found {
        let Ok(pidfd) = sys::pidfd_open(pid) else {
            continue;
        };
        // With the pidfd open, the pid cannot be reused, so the name read now is this
        // process's own.
        if system::process(pid).is_some_and(|process| process.name == name)
            && sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL).is_ok()
        {
            killed.push(pidfd);
        }
    }
    for pidfd in killed {
        // A pidfd becomes readable when its process exits, before anyone reaps it.
        let mut fds = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let _ = sys::poll(&mut fds, 1000);
    }
    found
}

fn live_processes_named(name: &str) -> Vec<libc::pid_t> {
    system::processes()
        .unwrap_or_default()
        .into_iter()
        .filter(|process| process.name == name && process.is_alive())
        .map(|process| process.pid)
        .collect()
}

/// Unmounts every mount of this mount namespace whose source is `source`; returns their
/// mount points.
pub fn unmount_source(source: &str) -> Vec<PathBuf> {
    let targets: Vec<PathBuf> = system::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|mount| mount.source == source)
        .map(|mount| mount.mount_point)
        .collect();
    for target in &targets {
        let _ = sys::umount_detach(target);
    }
    targets
}
