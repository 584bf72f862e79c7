//! A writer of cpio archives in the "newc" format, the one the Linux kernel unpacks as an
//! initramfs. Every entry gets mtime 0 and owner root, so equal inputs give equal bytes.

use std::io::{self, Write};

/// The magic number that starts each newc header.
const MAGIC: &[u8] = b"070701";

/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

pub struct CpioWriter<W: Write> {
    out: W,
    /// Bytes written so far, for the padding to 4-byte boundaries.
    written: u64,
    next_inode: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter {
            out,
            written: 0,
            next_inode: 1,
        }
    }

    /// Adds a directory. `path` is relative, without a leading `/`.
    pub fn directory(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, libc::S_IFDIR | mode, b"")
    }

    /// Adds a regular file with `data` as its content.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, libc::S_IFREG | mode, data)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, libc::S_IFLNK | 0o777, target.as_bytes())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 0)?;
        self.name(TRAILER)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        if path.is_empty() || path.starts_with('/') || path.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {path:?}: expected a relative path"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} is larger than the 4 GiB a newc entry can hold"),
            )
        })?;
        let inode = self.next_inode;
        self.next_inode += 1;
        self.header(path, inode, mode, size)?;
        self.name(path)?;
        self.write(data)?;
        self.pad()
    }

    fn header(&mut self, name: &str, inode: u32, mode: u32, size: u32) -> io::Result<()> {
        let nlink = if mode & libc::S_IFMT == libc::S_IFDIR {
            2
        } else {
            1
        };
        let name_size = name.len() as u32 + 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check.
        let fields = [inode, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_size, 0];
        let mut header = Vec::with_capacity(110);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.write(&header)
    }

    /// Writes the name with its NUL and the padding that follows the header and name.
    fn name(&mut self, name: &str) -> io::Result<()> {
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - self.written % 4) % 4;
        self.write(&[0; 3][..padding as usize])
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the entries of a newc archive: (name, mode, data).
    fn parse(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let field = |at: usize, index: usize| {
            let start = at + 6 + index * 8;
            u32::from_str_radix(std::str::from_utf8(&archive[start..start + 8]).unwrap(), 16)
                .unwrap()
        };
        let align = |at: usize| at.div_ceil(4) * 4;
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&archive[at..at + 6], MAGIC, "magic at offset {at}");
            let (mode, size, name_size) = (field(at, 1), field(at, 6), field(at, 11));
            let name_start = at + 110;
            let name = &archive[name_start..name_start + name_size as usize - 1];
            let name = String::from_utf8(name.to_vec()).unwrap();
            let data_start = align(name_start + name_size as usize);
            let data = archive[data_start..data_start + size as usize].to_vec();
            at = align(data_start + size as usize);
            if name == TRAILER {
                assert_eq!(at, archive.len(), "bytes after the trailer");
                return entries;
            }
            entries.push((name, mode, data));
        }
    }

    #[test]
    fn archive_entries_parse_back() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.directory("lib", 0o755).unwrap();
        writer.file("lib/a.ko", 0o644, b"odd-sized!").unwrap();
        writer.file("init", 0o755, b"").unwrap();
        writer.symlink("sbin", "lib").unwrap();
        let archive = writer.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);
        let entries = parse(&archive);
        let names: Vec<&str> = entries.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(names, ["lib", "lib/a.ko", "init", "sbin"]);
        assert_eq!(entries[0].1, libc::S_IFDIR | 0o755);
        assert_eq!(entries[1].2, b"odd-sized!");
        assert_eq!(entries[2].1, libc::S_IFREG | 0o755);
        assert_eq!(entries[3].1 & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(entries[3].2, b"lib");
    }

    #[test]
    fn equal_inputs_give_equal_archives() {
        let build = || {
            let mut writer = CpioWriter::new(Vec::new());
            writer.file("x", 0o600, b"same").unwrap();
            writer.finish().unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn absolute_entry_name_rejected() {
        let mut writer = CpioWriter::new(Vec::new());
        let error = writer.file("/init", 0o755, b"").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
