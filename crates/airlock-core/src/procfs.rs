//! Reading the text files of /proc and /sys.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Reads a file of /proc or /sys whole. Such files report a size of 0 or of one page,
/// whatever they contain, so `fs::read_to_string` starts with 32-byte reads and doubles its
/// buffer each time: eight reads for a mountinfo of 2 KiB. With a page of capacity up front,
/// one read takes a file of up to that size, and a second one finds the end.
pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    const PAGE: usize = 4096;
    let mut text = String::with_capacity(PAGE);
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_larger_than_a_page() {
        let mountinfo = read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(
            mountinfo,
            std::fs::read_to_string("/proc/self/mountinfo").unwrap()
        );
        let large = tempfile::NamedTempFile::new().unwrap();
        let text = "0123456789abcdef".repeat(1000);
        std::fs::write(large.path(), &text).unwrap();
        assert_eq!(read_to_string(large.path()).unwrap(), text);
    }

    #[test]
    fn missing_file_reported() {
        let error = read_to_string("/proc/self/no-such-file").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
