//! The agent's service loop: it reads requests from the host, starts commands, relays
//! their streams, reaps every process that ends in the guest, and serves file requests.
//!
//! Threads do the waiting: one reads the port, one per stream of a command relays it,
//! one reaps children, and one per command reports its end once its output is relayed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::cgroup::{self, Workload};
use airlock_protocol::{
    DirEntry, EntryKind, Frame, FrameKind, FrameReader, FrameWriter, Message, CONTROL_CHANNEL,
    PROTOCOL_VERSION,
};

/// The write side of the port, shared by every thread that reports to the host.
pub(super) type Port = Arc<Mutex<FrameWriter<File>>>;

/// A wait status as waitpid(2) returns it.
type WaitStatus = libc::c_int;

/// The running commands, by the channel that started them.
#[derive(Default)]
struct Commands {
    stdin: HashMap<u32, Sender<Vec<u8>>>,
    /// The process group and, for a command with a terminal, the terminal's master.
    groups: HashMap<u32, (libc::pid_t, Option<Arc<OwnedFd>>)>,
    files: HashMap<u32, Sender<Vec<u8>>>,
    /// The cancel flag of each tar stream being sent, which a [`Message::Signal`] on its
    /// channel sets. A flag whose stream ended is gone, and its entry is pruned.
    packs: HashMap<u32, Weak<AtomicBool>>,
    /// The cgroup every command joins, with the process limit.
    workload: Option<Arc<Workload>>,
    /// The owner (uid, gid) that files copied into /workspace get, for an inner layer.
    workspace_owner: Option<(u32, u32)>,
}

/// Hands each reaped process's status to the command waiting for it.
#[derive(Default)]
struct Reaper {
    waiting: HashMap<libc::pid_t, Sender<WaitStatus>>,
    /// Statuses of processes that ended before their command registered them.
    early: HashMap<libc::pid_t, WaitStatus>,
}

/// Serves the host on `port` until it requests a shutdown or closes the connection.
/// `inner` is whether the commands run in an inner layer.
pub fn serve(port: File, inner: bool) -> io::Result<()> {
    let writer: Port = Arc::new(Mutex::new(FrameWriter::new(port.try_clone()?)));
    let reaper = Arc::new(Mutex::new(Reaper::default()));
    spawn_reaper(Arc::clone(&reaper));
    spawn_heartbeat(Arc::clone(&writer));
    send(
        &writer,
        CONTROL_CHANNEL,
        &Message::Ready {
            version: PROTOCOL_VERSION,
        },
    );
    let mut reader = FrameReader::new(port);
    let mut commands = Commands {
        workload: Workload::open().map(Arc::new),
        workspace_owner: inner.then(super::tree::workspace_owner).flatten(),
        ..Commands::default()
    };
    loop {
        let frame = match reader.read_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(error) => {
                super::console(&format!("the connection to the host broke: {error}"));
                return Ok(());
            }
        };
        match frame.kind {
            FrameKind::Message => {
                let message = match frame.to_message() {
                    Ok(message) => message,
                    Err(error) => {
                        let message = error.to_string();
                        send(&writer, frame.channel, &Message::Error { message });
                        continue;
                    }
                };
                if message == Message::Shutdown {
                    return Ok(());
                }
                handle(frame.channel, message, &writer, &reaper, &mut commands);
            }
            FrameKind::Stdin => forward(&mut commands.stdin, frame),
            FrameKind::FileData => forward(&mut commands.files, frame),
            FrameKind::Stdout | FrameKind::Stderr | FrameKind::Unknown(_) => {}
        }
    }
}

/// Hands a data frame to the thread that consumes its channel; an empty frame ends it.
fn forward(consumers: &mut HashMap<u32, Sender<Vec<u8>>>, frame: Frame) {
    if frame.payload.is_empty() {
        consumers.remove(&frame.channel);
    } else if let Some(consumer) = consumers.get(&frame.channel) {
        let _ = consumer.send(frame.payload);
    }
}

pub(super) fn send(port: &Port, channel: u32, message: &Message) {
    let mut port = port.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(error) = port.send(channel, message) {
        super::console(&format!("cannot write to the host: {error}"));
    }
}

fn handle(
    channel: u32,
    message: Message,
    port: &Port,
    reaper: &Arc<Mutex<Reaper>>,
    commands: &mut Commands,
) {
    match message {
        Message::Exec {
            argv,
            env,
            cwd,
            tty,
            uid,
            gid,
            host_time,
        } => {
            if let Some(nanos) = host_time {
                set_clock(nanos);
            }
            let request = ExecRequest {
                argv,
                env,
                cwd,
                tty,
                uid,
                gid,
            };
            if let Err(message) = start(channel, request, port, reaper, commands) {
                send(port, channel, &message);
            }
        }
        Message::Signal { signal } => {
            if let Some((group, _)) = commands.groups.get(&channel) {
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(-group, signal) };
            }
            let pack = commands.packs.remove(&channel);
            if let Some(cancelled) = pack.and_then(|flag| flag.upgrade()) {
                cancelled.store(true, Ordering::Relaxed);
            }
        }
        Message::Resize { rows, cols } => {
            if let Some((_, Some(master))) = commands.groups.get(&channel) {
                set_window_size(master.as_raw_fd(), rows, cols);
            }
        }
        Message::ReadFile { path } => {
            let port = Arc::clone(port);
            std::thread::spawn(move || read_file(channel, &path, &port));
        }
        Message::WriteFile { path, mode } => {
            let (sender, receiver) = mpsc::channel();
            commands.files.insert(channel, sender);
            let port = Arc::clone(port);
            std::thread::spawn(move || write_file(channel, &path, mode, receiver, &port));
        }
        Message::PackTree { path } => {
            let cancelled = Arc::new(AtomicBool::new(false));
            commands.packs.retain(|_, flag| flag.strong_count() > 0);
            commands.packs.insert(channel, Arc::downgrade(&cancelled));
            let port = Arc::clone(port);
            std::thread::spawn(move || super::tree::pack(channel, &path, &port, &cancelled));
        }
        Message::UnpackTree { path } => {
            let (sender, receiver) = mpsc::channel();
            commands.files.insert(channel, sender);
            let port = Arc::clone(port);
            let owner = commands.workspace_owner;
            std::thread::spawn(move || {
                super::tree::unpack(channel, &path, owner, receiver, &port);
            });
        }
        Message::ListDir { path } => {
            let reply = match list_dir(&path) {
                Ok(entries) => Message::Entries { entries },
                Err(error) => Message::Error {
                    message: format!("cannot list {path:?}: {error}"),
                },
            };
            send(port, channel, &reply);
        }
        other => {
            let message = format!("the agent does not handle {other:?} from the host");
            send(port, channel, &Message::Error { message });
        }
    }
}

/// Sets the guest's wall clock to `nanos` since the Unix epoch. A failure is written to
/// the console, and the command runs with the clock as it was.
fn set_clock(nanos: u64) {
    let time = libc::timespec {
        tv_sec: (nanos / 1_000_000_000) as _,
        tv_nsec: (nanos % 1_000_000_000) as _,
    };
    // SAFETY: `time` is a live timespec for the call to read.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } == -1 {
        let error = io::Error::last_os_error();
        super::console(&format!("cannot set the clock to the host's: {error}"));
    }
}

struct ExecRequest {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    tty: Option<(u16, u16)>,
    uid: u32,
    gid: u32,
}

/// Starts a command and the threads that relay its streams and report its end.
fn start(
    channel: u32,
    request: ExecRequest,
    port: &Port,
    reaper: &Arc<Mutex<Reaper>>,
    commands: &mut Commands,
) -> Result<(), Message> {
    let Some(program) = request.argv.first() else {
        return Err(Message::ExecFailed {
            error: "empty command".into(),
            not_found: true,
        });
    };
    let mut command = Command::new(program);
    command
        .args(&request.argv[1..])
        .env_clear()
        .envs(request.env.iter().map(|(key, value)| (key, value)))
        .current_dir(&request.cwd)
        .uid(request.uid)
        .gid(request.gid);
    let terminal = match request.tty {
        Some((rows, cols)) => Some(attach_terminal(&mut command, rows, cols).map_err(|error| {
            Message::ExecFailed {
                error: format!("cannot open a pseudo-terminal: {error}"),
                not_found: false,
            }
        })?),
        None => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            None
        }
    };
    if let Some(workload) = &commands.workload {
        let procs = workload.procs_fd();
        // SAFETY: the closure runs between fork and exec and makes one async-signal-safe
        // write of two bytes from a static buffer to a descriptor that stays open.
        unsafe {
            command.pre_exec(move || {
                if libc::write(procs, b"0\n".as_ptr().cast(), 2) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let oom_kills_before = oom_kills();
    // The reaper must not take the status before this command's waiter is registered.
    let mut reaper_guard = reaper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut child = command.spawn().map_err(|error| Message::ExecFailed {
        not_found: error.kind() == io::ErrorKind::NotFound,
        error: error.to_string(),
    })?;
    let pid = child.id() as libc::pid_t;
    let (status_sender, status_receiver) = mpsc::channel();
    match reaper_guard.early.remove(&pid) {
        Some(status) => {
            let _ = status_sender.send(status);
        }
        None => {
            reaper_guard.waiting.insert(pid, status_sender);
        }
    }
    drop(reaper_guard);
    send(port, channel, &Message::Started { pid });

    let (stdin_sender, stdin_receiver) = mpsc::channel::<Vec<u8>>();
    commands.stdin.insert(channel, stdin_sender);
    let done = Arc::new(AtomicBool::new(false));
    let mut relays = Vec::new();
    match terminal {
        Some(master) => {
            let master = Arc::new(master);
            let input = File::from(master.try_clone().map_err(exec_error)?);
            let output = File::from(master.try_clone().map_err(exec_error)?);
            std::thread::spawn(move || feed(stdin_receiver, input));
            relays.push(relay(
                output,
                FrameKind::Stdout,
                channel,
                port,
                Arc::clone(&done),
            ));
            commands.groups.insert(channel, (pid, Some(master)));
        }
        None => {
            let stdin = child.stdin.take().expect("stdin is piped");
            std::thread::spawn(move || feed(stdin_receiver, stdin));
            let stdout = File::from(OwnedFd::from(child.stdout.take().expect("stdout is piped")));
            let stderr = File::from(OwnedFd::from(child.stderr.take().expect("stderr is piped")));
            relays.push(relay(
                stdout,
                FrameKind::Stdout,
                channel,
                port,
                Arc::clone(&done),
            ));
            relays.push(relay(
                stderr,
                FrameKind::Stderr,
                channel,
                port,
                Arc::clone(&done),
            ));
            commands.groups.insert(channel, (pid, None));
        }
    }
    let port = Arc::clone(port);
    let hits = commands
        .workload
        .as_ref()
        .map(|workload| workload.watch(Arc::clone(&done)));
    let waited = Waited {
        status: status_receiver,
        relays,
        oom_kills_before,
        done,
        hits,
    };
    std::thread::spawn(move || report_end(channel, waited, &port));
    Ok(())
}

fn exec_error(error: io::Error) -> Message {
    Message::ExecFailed {
        error: error.to_string(),
        not_found: false,
    }
}

/// Gives the command a new pseudo-terminal as its controlling terminal and its three
/// standard streams; returns the master.
fn attach_terminal(command: &mut Command, rows: u16, cols: u16) -> io::Result<OwnedFd> {
    let (master, slave) = airlock_namespace::tty::open_pty()?;
    set_window_size(master.as_raw_fd(), rows, cols);
    let slave_fd = slave.as_raw_fd();
    command
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // system calls on integers: a new session, then the terminal as its controlling one.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() == -1 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(master)
}

fn set_window_size(fd: libc::c_int, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `size` is a live winsize for the ioctl to read.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
}

/// Writes what the host sends for stdin to the command, and closes its stdin at the end.
fn feed(chunks: Receiver<Vec<u8>>, mut stdin: impl Write) {
    for chunk in chunks {
        if stdin.write_all(&chunk).is_err() {
            return;
        }
    }
}

/// Relays one output stream to the host, then ends it: at end of file, or once the command
/// `exited` and the stream is empty, or [`DRAIN_LIMIT`] after the exit. A process the
/// command left in the background may keep the stream open, and write to it, for as long as
/// it runs. It keeps running after the relay ends, as background processes do in the
/// namespace backend's sandboxes.
fn relay(
    stream: File,
    kind: FrameKind,
    channel: u32,
    port: &Port,
    exited: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let port = Arc::clone(port);
    std::thread::spawn(move || {
        let mut stream = stream;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut drain_deadline = None;
        loop {
            // The flag is read before the poll: whatever the command wrote before it exited is
            // in the stream by then, so the poll reports it.
            let exited = exited.load(Ordering::SeqCst);
            if exited {
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_LIMIT);
                if Instant::now() >= deadline {
                    break;
                }
            }
            let mut fds = [libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let timeout = if exited { 0 } else { RELAY_POLL_MS };
            match airlock_namespace::sys::poll(&mut fds, timeout) {
                Ok(0) if exited => break,
                Ok(0) => continue,
                Ok(_) => {}
                Err(_) => break,
            }
            let count = match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // A terminal's master reads EIO once the last process holding it is gone.
                Err(_) => break,
            };
            let frame = Frame::data(kind, channel, buffer[..count].to_vec());
            let mut port = port.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if port.write_frame(&frame).is_err() {
                return;
            }
        }
        let mut port = port.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = port.end_stream(kind, channel);
    })
}

/// How long a relay waits for output before it checks whether the command exited.
const RELAY_POLL_MS: libc::c_int = 50;

/// How long a relay goes on after the command exited, while a background process keeps
/// writing. What the command itself left is at most a pipe's or terminal's buffer, which
/// takes far less.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// The channels through which the end of one command arrives.
struct Waited {
    status: Receiver<WaitStatus>,
    relays: Vec<std::thread::JoinHandle<()>>,
    /// The guest's count of OOM kills before the command started.
    oom_kills_before: u64,
    /// Set once the command ended, to stop the watch on the process limit and the relays
    /// of its output.
    done: Arc<AtomicBool>,
    /// What that watch saw when it killed the commands: a refused fork, or thrashing at
    /// the memory limit.
    hits: Option<Arc<cgroup::Hits>>,
}

/// Waits for the command's status and the end of its output, then reports it.
fn report_end(channel: u32, waited: Waited, port: &Port) {
    let Waited {
        status,
        relays,
        oom_kills_before,
        done,
        hits,
    } = waited;
    let Ok(status) = status.recv() else {
        return;
    };
    done.store(true, Ordering::SeqCst);
    if let Some(hits) = &hits {
        hits.check_refused_forks();
    }
    let hit = |flag: fn(&cgroup::Hits) -> &AtomicBool| {
        hits.as_ref()
            .is_some_and(|hits| flag(hits).load(Ordering::SeqCst))
    };
    let (pids_limit, thrashed) = (hit(|hits| &hits.pids), hit(|hits| &hits.memory));
    for relay in relays {
        let _ = relay.join();
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else {
        (None, Some(libc::WTERMSIG(status)))
    };
    let out_of_memory =
        signal == Some(libc::SIGKILL) && (thrashed || oom_kills() > oom_kills_before);
    send(
        port,
        channel,
        &Message::Exited {
            code,
            signal,
            out_of_memory,
            pids_limit,
        },
    );
}

/// Returns the count of processes the guest kernel's OOM killer has killed.
fn oom_kills() -> u64 {
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    vmstat
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends [`Message::Alive`] to the host at a steady pace until the port fails.
fn spawn_heartbeat(port: Port) {
    std::thread::spawn(move || loop {
        std::thread::sleep(airlock_protocol::HEARTBEAT_INTERVAL);
        let mut port = port.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if port.send(CONTROL_CHANNEL, &Message::Alive).is_err() {
            return;
        }
    });
}

/// Reaps every child of PID 1: commands, and orphans the guest's processes leave.
///
/// It first waits without reaping (`WNOWAIT`), then takes the lock that [`start`] holds
/// while it spawns, and only then reaps. When a command cannot be executed, the standard
/// library reaps that child itself inside `spawn` and panics if someone else got it first,
/// which in PID 1 would panic the guest's kernel.
fn spawn_reaper(reaper: Arc<Mutex<Reaper>>) {
    std::thread::spawn(move || loop {
        let Some(pid) = wait_for_exited_child() else {
            // No children yet; a new command's spawn makes one.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let mut reaper = reaper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut status = 0;
        // SAFETY: `status` is a live int for the kernel to fill.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped != pid {
            // `spawn` reaped its own failed child meanwhile.
            continue;
        }
        match reaper.waiting.remove(&pid) {
            Some(waiter) => {
                let _ = waiter.send(status);
            }
            None => {
                reaper.early.insert(pid, status);
            }
        }
    });
}

/// Waits until a child has exited, leaving it unreaped, and returns its pid; `None` when
/// there is no child.
fn wait_for_exited_child() -> Option<libc::pid_t> {
    // SAFETY: siginfo_t is plain data, so an all-zero value is valid for the kernel to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live siginfo_t for the call.
    let result = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if result == -1 {
        return None;
    }
    // SAFETY: waitid filled `info` for an exited child, whose si_pid field is set.
    let pid = unsafe { info.si_pid() };
    (pid > 0).then_some(pid)
}

fn read_file(channel: u32, path: &str, port: &Port) {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => {
            let message = format!("cannot open {path:?}: {error}");
            send(port, channel, &Message::Error { message });
            return;
        }
    };
    let mut buffer = vec![0u8; airlock_protocol::MAX_PAYLOAD];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => {
                let mut port = port.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = port.send_data(FrameKind::FileData, channel, &buffer[..count]);
            }
            Err(error) => {
                let message = format!("cannot read {path:?}: {error}");
                send(port, channel, &Message::Error { message });
                return;
            }
        }
    }
    send(port, channel, &Message::Done);
}

fn write_file(channel: u32, path: &str, mode: u32, chunks: Receiver<Vec<u8>>, port: &Port) {
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| {
            for chunk in chunks {
                file.write_all(&chunk)?;
            }
            file.sync_all()
        });
    let reply = match result {
        Ok(()) => Message::Done,
        Err(error) => Message::Error {
            message: format!("cannot write {path:?}: {error}"),
        },
    };
    send(port, channel, &reply);
}

fn list_dir(path: &str) -> io::Result<Vec<DirEntry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let metadata = entry.path().symlink_metadata()?;
        let file_type = metadata.file_type();
        let kind = if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        };
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let target = file_type
            .is_symlink()
            .then(|| std::fs::read_link(entry.path()).ok())
            .flatten()
            .map(|target| target.to_string_lossy().into_owned());
        entries.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind,
            size: metadata.len(),
            mode: metadata.permissions().mode() & 0o7777,
            target,
            whiteout: file_type.is_char_device() && metadata.rdev() == 0,
            opaque: file_type.is_dir() && is_opaque(&entry.path()),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Returns whether an overlay upper directory is marked opaque. The guest mounts its
/// overlay as root, so the mark is the `trusted.` attribute.
fn is_opaque(path: &std::path::Path) -> bool {
    let Ok(path) = airlock_namespace::sys::cstring(path) else {
        return false;
    };
    let name = c"trusted.overlay.opaque";
    let mut value = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and `value` is a live buffer of its length.
    let length = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    length == 1 && value[0] == b'y'
}
