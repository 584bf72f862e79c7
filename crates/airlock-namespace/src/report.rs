//! Messages from the sandbox's init and workload to the launching process, one JSON object
//! per line on a pipe.

use std::io;
use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::pack::SpecialFile;
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
    /// A held sandbox is set up and waits for `airlock exec`.
    Ready,
    /// The largest resident set of any process of the sandbox, in bytes, sent before the
    /// final report.
    Usage { max_rss: u64 },
    /// The special files that `cp` left out of the tree it packed in the sandbox: the
    /// first by path, and a count of the others.
    Skipped {
        named: Vec<(String, SpecialFile)>,
        unnamed: u64,
    },
}

impl Report {
    /// Writes the report as one line. Reports are small, so one write is atomic on a pipe.
    pub fn send(&self, fd: RawFd) {
        Report::send_all(std::slice::from_ref(self), fd);
    }

    /// Writes `reports` as lines in one write, so that the reader wakes once for them all.
    pub fn send_all(reports: &[Report], fd: RawFd) {
        let mut lines = Vec::new();
        for report in reports {
            serde_json::to_writer(&mut lines, report).expect("reports always serialize");
            lines.push(b'\n');
        }
        // Nothing useful can be done if the launcher is gone, so a failed write is dropped.
        let _ = sys::write_all(fd, &lines);
    }
}

/// Collects reports from the launcher's end of the pipe as they arrive.
pub struct ReportReader {
    fd: RawFd,
    buffer: Vec<u8>,
    reports: Vec<Report>,
    closed: bool,
}

impl ReportReader {
    /// Reads from `fd`, which it makes non-blocking.
    pub fn new(fd: RawFd) -> ReportReader {
        let _ = sys::set_nonblocking(fd);
        ReportReader {
            fd,
            buffer: Vec::new(),
            reports: Vec::new(),
            closed: false,
        }
    }

    /// The descriptor to poll, or -1 (which poll skips) after end of file.
    pub fn fd(&self) -> RawFd {
        if self.closed {
            -1
        } else {
            self.fd
        }
    }

    /// Reads and parses the reports the pipe contains now.
    pub fn read_available(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        while !self.closed {
            match sys::read(self.fd, &mut chunk) {
                Ok(0) => self.closed = true,
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
        while let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            if let Ok(report) = serde_json::from_slice(&line[..end]) {
                self.reports.push(report);
            }
        }
        Ok(())
    }

    /// Whether the init has reported how the command ended.
    pub fn has_final(&self) -> bool {
        self.reports
            .iter()
            .any(|report| matches!(report, Report::Exited { .. } | Report::Signaled { .. }))
    }

    pub fn take(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reports_round_trip_through_pipe() {
        let (read, write) = sys::pipe().unwrap();
        let mut reader = ReportReader::new(read.as_raw_fd());
        Report::Landlock {
            abi: 7,
            fully_enforced: true,
        }
        .send(write.as_raw_fd());
        Report::Exited { code: 3 }.send(write.as_raw_fd());
        reader.read_available().unwrap();
        assert!(reader.has_final());
        drop(write);
        reader.read_available().unwrap();
        assert_eq!(reader.fd(), -1, "end of file was seen");
        let reports = reader.take();
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
