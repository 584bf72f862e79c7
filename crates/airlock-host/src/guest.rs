//! A tiny test guest for QEMU: one boot sector that turns on what every operating system
//! turns on (protected mode, then paging), writes a line to the serial port and exits QEMU
//! through the `isa-debug-exit` device. It writes a letter to the serial port as it enters
//! each mode, so a failure names the step where the guest stopped.
//!
//! A guest that stays in real mode is not enough. On a nested KVM host (a Linux 6.18 guest
//! of a Firecracker-style VMM), such a guest finished under KVM. This one reset as it turned
//! on paging, and rebooted forever without `-no-reboot`.
//!
//! The image lives in a memfd, so no file is left behind whatever happens to this process,
//! and QEMU gets PR_SET_PDEATHSIG so that it ends with this process.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a guest under KVM may take. The guest needs milliseconds of CPU, but QEMU with
/// KVM took up to about 2 s to start on the nested KVM host above.
pub const KVM_TIME_LIMIT: Duration = Duration::from_secs(5);

/// How long a guest under software emulation may take.
pub const TCG_TIME_LIMIT: Duration = Duration::from_secs(10);

/// The line the guest writes to its serial port.
pub const MARKER: &str = "airlock-guest-ok";

/// The byte the guest writes to `isa-debug-exit`; QEMU then exits with `(value << 1) | 1`.
const EXIT_VALUE: u8 = 0x10;

/// QEMU's exit status after the guest wrote [`EXIT_VALUE`].
pub const EXIT_STATUS: i32 = ((EXIT_VALUE as i32) << 1) | 1;

/// I/O port of the `isa-debug-exit` device, as passed to QEMU.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The address where the BIOS loads the boot sector.
const LOAD_ADDRESS: u32 = 0x7c00;

/// Offsets in the boot sector of its parts.
const PROTECTED_MODE_ENTRY: usize = 0x24;
const GDT_OFFSET: usize = 0x80;
const GDTR_OFFSET: usize = 0x98;
const MESSAGE_OFFSET: usize = 0x9e;

/// The letters the guest writes as it reaches real mode and protected mode.
const REAL_MODE_LETTER: u8 = b'r';
const PROTECTED_MODE_LETTER: u8 = b'p';

/// Physical address of the page directory the guest builds.
const PAGE_DIRECTORY: u32 = 0x1000;

fn le16(value: u16) -> [u8; 2] {
    value.to_le_bytes()
}

fn le32(value: u32) -> [u8; 4] {
    value.to_le_bytes()
}

/// Builds the 512-byte boot sector. Each line is one x86 instruction, with its assembly.
pub fn boot_sector() -> [u8; 512] {
    let address = |offset: usize| LOAD_ADDRESS + offset as u32;
    let mut code: Vec<u8> = Vec::with_capacity(512);
    // 16-bit real mode, as the BIOS leaves it.
    code.push(0xfa); // cli
    code.extend([0x31, 0xc0]); // xor ax, ax
    code.extend([0x8e, 0xd8]); // mov ds, ax
    code.extend([0x8e, 0xd0]); // mov ss, ax
    code.push(0xbc); // mov sp, LOAD_ADDRESS
    code.extend(le16(LOAD_ADDRESS as u16));
    code.extend([0xba, 0xf8, 0x03]); // mov dx, 0x3f8 (COM1), kept to the end
    code.extend([0xb0, REAL_MODE_LETTER]); // mov al, REAL_MODE_LETTER
    code.push(0xee); // out dx, al
    code.extend([0x0f, 0x01, 0x16]); // lgdt [GDTR]
    code.extend(le16(address(GDTR_OFFSET) as u16));
    code.extend([0x0f, 0x20, 0xc0]); // mov eax, cr0
    code.extend([0x66, 0x83, 0xc8, 0x01]); // or eax, 1 (protection enable)
    code.extend([0x0f, 0x22, 0xc0]); // mov cr0, eax
    code.push(0xea); // jmp 0x08:PROTECTED_MODE_ENTRY
    code.extend(le16(address(PROTECTED_MODE_ENTRY) as u16));
    code.extend(le16(0x08));
    assert_eq!(code.len(), PROTECTED_MODE_ENTRY);

    // 32-bit protected mode, with the flat data segment of the GDT.
    code.extend([0x66, 0xb8, 0x10, 0x00]); // mov ax, 0x10
    code.extend([0x8e, 0xd8]); // mov ds, ax
    code.extend([0x8e, 0xc0]); // mov es, ax
    code.extend([0x8e, 0xd0]); // mov ss, ax
    code.extend([0xb0, PROTECTED_MODE_LETTER]); // mov al, PROTECTED_MODE_LETTER
    code.push(0xee); // out dx, al
    code.extend([0xc7, 0x05]); // mov dword [PAGE_DIRECTORY], 0x83
    code.extend(le32(PAGE_DIRECTORY));
    code.extend(le32(0x83)); // one 4 MiB page at 0: present, writable, page size
    code.extend([0x0f, 0x20, 0xe0]); // mov eax, cr4
    code.extend([0x83, 0xc8, 0x10]); // or eax, 0x10 (page size extension)
    code.extend([0x0f, 0x22, 0xe0]); // mov cr4, eax
    code.push(0xb8); // mov eax, PAGE_DIRECTORY
    code.extend(le32(PAGE_DIRECTORY));
    code.extend([0x0f, 0x22, 0xd8]); // mov cr3, eax
    code.extend([0x0f, 0x20, 0xc0]); // mov eax, cr0
    code.push(0x0d); // or eax, 0x80000000 (paging)
    code.extend(le32(0x8000_0000));
    code.extend([0x0f, 0x22, 0xc0]); // mov cr0, eax

    // Paging is on: write the message to COM1, then exit QEMU.
    code.push(0xbe); // mov esi, MESSAGE
    code.extend(le32(address(MESSAGE_OFFSET)));
    code.push(0xac); // next: lodsb
    code.extend([0x84, 0xc0]); // test al, al
    code.extend([0x74, 0x03]); // jz done
    code.push(0xee); // out dx, al
    code.extend([0xeb, 0xf8]); // jmp next
    code.extend([0x66, 0xba]); // done: mov dx, DEBUG_EXIT_PORT
    code.extend(le16(DEBUG_EXIT_PORT));
    code.extend([0xb0, EXIT_VALUE]); // mov al, EXIT_VALUE
    code.push(0xee); // out dx, al
    code.push(0xf4); // halt: hlt
    code.extend([0xeb, 0xfd]); // jmp halt
    assert!(code.len() <= GDT_OFFSET, "the code overlaps the GDT");

    let mut sector = [0u8; 512];
    sector[..code.len()].copy_from_slice(&code);
    // Null descriptor, then flat 4 GiB code (0x08) and data (0x10) segments.
    let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (index, descriptor) in gdt.iter().enumerate() {
        let at = GDT_OFFSET + index * 8;
        sector[at..at + 8].copy_from_slice(&descriptor.to_le_bytes());
    }
    sector[GDTR_OFFSET..GDTR_OFFSET + 2].copy_from_slice(&le16(23));
    sector[GDTR_OFFSET + 2..GDTR_OFFSET + 6].copy_from_slice(&le32(address(GDT_OFFSET)));
    let message = format!("{MARKER}\r\n\0");
    sector[MESSAGE_OFFSET..MESSAGE_OFFSET + message.len()].copy_from_slice(message.as_bytes());
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// The accelerator a guest runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn time_limit(self) -> Duration {
        match self {
            Accel::Kvm => KVM_TIME_LIMIT,
            Accel::Tcg => TCG_TIME_LIMIT,
        }
    }
}

/// The last step the guest reported on its serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Nothing: the BIOS did not run the boot sector.
    NotBooted,
    /// The boot sector runs in real mode.
    RealMode,
    /// Protected mode is on.
    ProtectedMode,
    /// Paging is on and the message written.
    Paging,
}

impl Stage {
    /// Reads the stage from what the guest wrote to its serial port.
    pub fn from_serial(output: &[u8]) -> Stage {
        let text = String::from_utf8_lossy(output);
        if text.contains(MARKER) {
            Stage::Paging
        } else if output.contains(&PROTECTED_MODE_LETTER) {
            Stage::ProtectedMode
        } else if output.contains(&REAL_MODE_LETTER) {
            Stage::RealMode
        } else {
            Stage::NotBooted
        }
    }

    /// Says where a guest that stopped at this stage stopped.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::NotBooted => "before the BIOS ran its boot sector",
            Stage::RealMode => "in real mode, as it turned on protected mode",
            Stage::ProtectedMode => "in protected mode, as it turned on paging",
            Stage::Paging => "after it turned on paging",
        }
    }
}

/// The end of a test guest's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestOutcome {
    /// The guest wrote its line and exited QEMU after `elapsed`.
    Finished { elapsed: Duration },
    /// QEMU was still running at the time limit and was killed.
    TimedOut { limit: Duration, stage: Stage },
    /// QEMU ended before the guest finished. With `-no-reboot`, a guest that resets, as on a
    /// triple fault, makes QEMU exit with status 0. `message` is the last line of stderr.
    Ended {
        status: Option<i32>,
        elapsed: Duration,
        stage: Stage,
        message: String,
    },
    /// QEMU could not be started.
    NotStarted { error: String },
}

/// A QEMU process running the test guest.
struct Running {
    accel: Accel,
    child: Child,
    started: Instant,
    /// The boot sector, kept open until QEMU ends.
    _image: OwnedFd,
}

/// Boots the test guest under each of `accels` at once and waits for all of them, each
/// within its time limit. Every QEMU started is killed and reaped before this returns.
pub fn boot_all(qemu: &Path, accels: &[Accel]) -> Vec<(Accel, GuestOutcome)> {
    let mut outcomes = Vec::new();
    let mut running = Vec::new();
    for &accel in accels {
        match start(qemu, accel) {
            Ok(guest) => running.push(guest),
            Err(error) => outcomes.push((
                accel,
                GuestOutcome::NotStarted {
                    error: error.to_string(),
                },
            )),
        }
    }
    while !running.is_empty() {
        let mut index = 0;
        while index < running.len() {
            match poll(&mut running[index]) {
                Some(outcome) => {
                    let guest = running.swap_remove(index);
                    outcomes.push((guest.accel, outcome));
                }
                None => index += 1,
            }
        }
        if !running.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    outcomes
}

/// Writes the boot sector to a memfd and starts QEMU on it.
fn start(qemu: &Path, accel: Accel) -> io::Result<Running> {
    let image = sector_memfd()?;
    let fd = image.as_raw_fd();
    let mut command = Command::new(qemu);
    command
        .args(["-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-machine", "pc", "-accel", accel.name(), "-m", "16"])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-device")
        .arg(format!(
            "isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x01"
        ))
        .arg("-drive")
        .arg(format!("file=/proc/self/fd/{fd},format=raw,if=ide"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls on integers. They keep the image's descriptor open across exec, and set
    // PR_SET_PDEATHSIG so that the kernel kills QEMU if this process dies first.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    Ok(Running {
        accel,
        child,
        started: Instant::now(),
        _image: image,
    })
}

fn sector_memfd() -> io::Result<OwnedFd> {
    let name = c"airlock-doctor-guest";
    // SAFETY: `name` is a NUL-terminated string alive for the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is fresh, so this is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    file.write_all(&boot_sector())?;
    Ok(OwnedFd::from(file))
}

/// Returns the outcome once the guest ended or its time ran out; kills QEMU by its pid in
/// the second case.
fn poll(guest: &mut Running) -> Option<GuestOutcome> {
    let limit = guest.accel.time_limit();
    match guest.child.try_wait() {
        Ok(Some(status)) => Some(judge(guest, status.code())),
        Ok(None) if guest.started.elapsed() < limit => None,
        Ok(None) => {
            let _ = guest.child.kill();
            let _ = guest.child.wait();
            let (stdout, _) = read_output(&mut guest.child);
            let stage = Stage::from_serial(&stdout);
            Some(GuestOutcome::TimedOut { limit, stage })
        }
        Err(error) => {
            let _ = guest.child.kill();
            let _ = guest.child.wait();
            Some(GuestOutcome::NotStarted {
                error: format!("cannot wait for QEMU: {error}"),
            })
        }
    }
}

/// Reads what QEMU wrote to its stdout (the guest's serial port) and stderr. Call it only
/// once QEMU has ended, so that both pipes reach end of file.
fn read_output(child: &mut Child) -> (Vec<u8>, String) {
    let mut stdout = Vec::new();
    if let Some(pipe) = child.stdout.as_mut() {
        let _ = pipe.read_to_end(&mut stdout);
    }
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.as_mut() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (stdout, stderr)
}

fn judge(guest: &mut Running, status: Option<i32>) -> GuestOutcome {
    let elapsed = guest.started.elapsed();
    let (stdout, stderr) = read_output(&mut guest.child);
    let stage = Stage::from_serial(&stdout);
    if status == Some(EXIT_STATUS) && stage == Stage::Paging {
        return GuestOutcome::Finished { elapsed };
    }
    let message = stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .to_owned();
    GuestOutcome::Ended {
        status,
        elapsed,
        stage,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable_and_carries_marker() {
        let sector = boot_sector();
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
        let message = &sector[MESSAGE_OFFSET..MESSAGE_OFFSET + MARKER.len()];
        assert_eq!(message, MARKER.as_bytes());
        assert_eq!(EXIT_STATUS, 33);
    }

    #[test]
    fn far_jump_lands_on_protected_mode_code() {
        let sector = boot_sector();
        let jump = PROTECTED_MODE_ENTRY - 5;
        assert_eq!(sector[jump], 0xea);
        let target = u16::from_le_bytes([sector[jump + 1], sector[jump + 2]]);
        assert_eq!(
            u32::from(target),
            LOAD_ADDRESS + PROTECTED_MODE_ENTRY as u32
        );
        assert_eq!(
            &sector[PROTECTED_MODE_ENTRY..][..4],
            &[0x66, 0xb8, 0x10, 0x00]
        );
    }

    #[test]
    fn serial_output_tells_stage() {
        assert_eq!(Stage::from_serial(b""), Stage::NotBooted);
        assert_eq!(Stage::from_serial(b"r"), Stage::RealMode);
        assert_eq!(Stage::from_serial(b"rp"), Stage::ProtectedMode);
        let finished = format!("rp{MARKER}\r\n");
        assert_eq!(Stage::from_serial(finished.as_bytes()), Stage::Paging);
    }

    #[test]
    fn gdtr_points_at_gdt() {
        let sector = boot_sector();
        let limit = u16::from_le_bytes([sector[GDTR_OFFSET], sector[GDTR_OFFSET + 1]]);
        let base = u32::from_le_bytes(sector[GDTR_OFFSET + 2..GDTR_OFFSET + 6].try_into().unwrap());
        assert_eq!(limit, 23);
        assert_eq!(base, LOAD_ADDRESS + GDT_OFFSET as u32);
        assert_eq!(sector[GDT_OFFSET + 13], 0x9a, "code segment access byte");
    }
}
