//! Messages from the sandbox's init and workload to the launching process, one JSON object
//! per line on a pipe. The launcher reads them after the init has exited.

use std::io;
use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::sys;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// A setup step failed before the command started; `error` is its cause.
    SetupFailed { step: String, error: String },
    /// Landlock was applied; `enforced` is false if the kernel enforced only part of it.
    Landlock { abi: u32, fully_enforced: bool },
    /// execve of the command failed with `errno`.
    ExecFailed { errno: i32 },
    /// The command exited with `code`.
    Exited { code: i32 },
    /// The command was killed by `signal`.
    Signaled { signal: i32 },
}

impl Report {
    /// Writes the report as one line. Reports are small, so one write is atomic on a pipe.
    pub fn send(&self, fd: RawFd) {
        let mut line = serde_json::to_vec(self).expect("reports always serialize");
        line.push(b'\n');
        // Nothing useful can be done if the launcher is gone, so a failed write is dropped.
        let _ = sys::write_all(fd, &line);
    }
}

/// Reads every report from the pipe until end of file.
pub fn read_all(fd: RawFd) -> io::Result<Vec<Report>> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match sys::read(fd, &mut buffer) {
            Ok(0) => break,
            Ok(read) => bytes.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => return Err(error),
        }
    }
    Ok(bytes
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reports_round_trip_through_pipe() {
        let (read, write) = sys::pipe().unwrap();
        Report::Landlock {
            abi: 7,
            fully_enforced: true,
        }
        .send(write.as_raw_fd());
        Report::Exited { code: 3 }.send(write.as_raw_fd());
        drop(write);
        let reports = read_all(read.as_raw_fd()).unwrap();
        assert_eq!(
            reports,
            [
                Report::Landlock {
                    abi: 7,
                    fully_enforced: true
                },
                Report::Exited { code: 3 }
            ]
        );
    }
}
