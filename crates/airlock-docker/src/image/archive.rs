//! Reads a root filesystem tarball, plain or compressed with gzip, zstd or xz, and passes
//! it on as a plain tar stream. The engines decompress some formats themselves, but not the
//! same ones, so Airlock decompresses every format before sending.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Size of one tar block, and so of a tar header.
const BLOCK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the tarball {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path:?} is not a tar archive (plain, gzip, zstd or xz); give a directory or a tarball of a root filesystem, such as one made by `tar -C ROOT -czf rootfs.tar.gz .`")]
    NotTar { path: PathBuf },
    #[error("{path:?} is compressed with {format}, which Airlock does not read; decompress it first, or recompress it with gzip, zstd or xz")]
    UnsupportedCompression { path: PathBuf, format: &'static str },
    #[error("cannot decompress the {format} tarball {path:?}; check that the file is complete")]
    Decompress {
        path: PathBuf,
        format: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Copies the tarball at `path` to `out` as a plain tar stream; returns its compression.
/// Fails before writing anything when the file is not a tar archive.
pub fn copy_tarball<W: Write>(
    path: &Path,
    file: File,
    out: W,
) -> Result<Compression, ArchiveError> {
    let read_error = |source| ArchiveError::Read {
        path: path.to_owned(),
        source,
    };
    let mut input = BufReader::with_capacity(1 << 16, file);
    let magic = peek(&mut input, 6).map_err(read_error)?;
    let compression = detect(path, &magic)?;
    let mut checked = CheckedTar::new(path, out);
    let result = match compression {
        Compression::None => io::copy(&mut input, &mut checked).map(drop),
        Compression::Gzip => io::copy(
            &mut flate2::bufread::MultiGzDecoder::new(input),
            &mut checked,
        )
        .map(drop),
        Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(input)
            .map_err(io::Error::other)
            .and_then(|mut decoder| io::copy(&mut decoder, &mut checked).map(drop)),
        Compression::Xz => {
            lzma_rs::xz_decompress(&mut input, &mut checked).map_err(|error| match error {
                lzma_rs::error::Error::IoError(error) => error,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            })
        }
    };
    let result = result.and_then(|()| checked.finish());
    if result.as_ref().is_err_and(is_stop) {
        return Ok(compression);
    }
    result.map_err(|source| {
        if let Some(error) = checked_error(&source) {
            return error;
        }
        match compression {
            Compression::None => read_error(source),
            _ => ArchiveError::Decompress {
                path: path.to_owned(),
                format: format_name(compression),
                source,
            },
        }
    })?;
    Ok(compression)
}

/// Checks that the tarball in `file` starts with a tar header, decompressing no more than
/// needed to read it, then rewinds `file`; returns the compression. An invalid tarball fails
/// here, before a request to the engine starts.
pub fn check_tarball(path: &Path, file: &File) -> Result<Compression, ArchiveError> {
    let read_error = |source| ArchiveError::Read {
        path: path.to_owned(),
        source,
    };
    let reader = file.try_clone().map_err(read_error)?;
    let compression = copy_tarball(path, reader, StopAfterHeader)?;
    let mut file = file;
    file.seek(SeekFrom::Start(0)).map_err(read_error)?;
    Ok(compression)
}

/// A writer that fails as soon as it gets bytes, which [`CheckedTar`] passes on only after
/// the first block proved to be a tar header.
struct StopAfterHeader;

/// Marks the error of [`StopAfterHeader`].
#[derive(Debug)]
struct StopMarker;

impl std::fmt::Display for StopMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the header was checked")
    }
}

impl std::error::Error for StopMarker {}

fn is_stop(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<StopMarker>().is_some())
}

impl Write for StopAfterHeader {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other(StopMarker))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Returns the first `count` bytes of `input` without consuming them, or fewer at the end
/// of the file.
fn peek(input: &mut BufReader<File>, count: usize) -> io::Result<Vec<u8>> {
    use std::io::BufRead;
    let available = input.fill_buf()?;
    Ok(available[..available.len().min(count)].to_vec())
}

/// Names the compression of a file from its first bytes, its magic number.
fn detect(path: &Path, magic: &[u8]) -> Result<Compression, ArchiveError> {
    let unsupported = |format| ArchiveError::UnsupportedCompression {
        path: path.to_owned(),
        format,
    };
    match magic {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Ok(Compression::Xz),
        [b'B', b'Z', b'h', ..] => Err(unsupported("bzip2")),
        [0x5d, 0x00, 0x00, ..] => Err(unsupported("lzma")),
        [0x04, 0x22, 0x4d, 0x18, ..] => Err(unsupported("lz4")),
        _ => Ok(Compression::None),
    }
}

impl Compression {
    /// Returns the format's name: `plain`, `gzip`, `zstd` or `xz`.
    pub fn name(self) -> &'static str {
        format_name(self)
    }
}

fn format_name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "plain",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::Xz => "xz",
    }
}

/// Returns whether `block` is a tar header whose checksum matches: the sum of its bytes
/// with the checksum field (bytes 148 to 155) counted as spaces.
pub fn is_tar_header(block: &[u8; BLOCK]) -> bool {
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|byte| *byte as char)
        .take_while(|c| *c != '\0')
        .collect();
    let Ok(stored) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(index, byte)| {
            if (148..156).contains(&index) {
                32
            } else {
                u32::from(*byte)
            }
        })
        .sum();
    sum == stored
}

/// A writer that holds back the first block until it is known to be a tar header, then
/// passes everything through.
struct CheckedTar<'a, W: Write> {
    path: &'a Path,
    out: W,
    first: Vec<u8>,
    checked: bool,
}

/// Marks the error `CheckedTar` returns for a stream that is not a tar archive.
#[derive(Debug)]
struct NotTarMarker(PathBuf);

impl std::fmt::Display for NotTarMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a tar archive")
    }
}

impl std::error::Error for NotTarMarker {}

fn checked_error(error: &io::Error) -> Option<ArchiveError> {
    let marker = error.get_ref()?.downcast_ref::<NotTarMarker>()?;
    Some(ArchiveError::NotTar {
        path: marker.0.clone(),
    })
}

impl<'a, W: Write> CheckedTar<'a, W> {
    fn new(path: &'a Path, out: W) -> Self {
        CheckedTar {
            path,
            out,
            first: Vec::with_capacity(BLOCK),
            checked: false,
        }
    }

    fn check_first_block(&mut self) -> io::Result<()> {
        let block: &[u8; BLOCK] = self.first.as_slice().try_into().expect("one full block");
        if !is_tar_header(block) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                NotTarMarker(self.path.to_owned()),
            ));
        }
        self.checked = true;
        self.out.write_all(&self.first)
    }

    /// Fails when the stream ended before one whole header.
    fn finish(&mut self) -> io::Result<()> {
        if !self.checked {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                NotTarMarker(self.path.to_owned()),
            ));
        }
        self.out.flush()
    }
}

impl<W: Write> Write for CheckedTar<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.checked {
            return self.out.write(bytes);
        }
        let taken = bytes.len().min(BLOCK - self.first.len());
        self.first.extend_from_slice(&bytes[..taken]);
        if self.first.len() == BLOCK {
            self.check_first_block()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with_one_file() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "hello", &b"world"[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn copy_bytes(bytes: &[u8]) -> Result<(Compression, Vec<u8>), ArchiveError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.tar");
        std::fs::write(&path, bytes).unwrap();
        let mut out = Vec::new();
        let compression = copy_tarball(&path, File::open(&path).unwrap(), &mut out)?;
        Ok((compression, out))
    }

    #[test]
    fn plain_and_gzip_tarballs_pass_as_plain_tar() {
        let tar = tar_with_one_file();
        let (compression, out) = copy_bytes(&tar).unwrap();
        assert_eq!(compression, Compression::None);
        assert_eq!(out, tar);

        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&tar).unwrap();
        let (compression, out) = copy_bytes(&gzip.finish().unwrap()).unwrap();
        assert_eq!(compression, Compression::Gzip);
        assert_eq!(out, tar);
    }

    #[test]
    fn text_file_is_not_a_tarball() {
        let error = copy_bytes(&b"just some text\n".repeat(100)).unwrap_err();
        assert!(matches!(error, ArchiveError::NotTar { .. }), "{error}");
        let error = copy_bytes(b"short").unwrap_err();
        assert!(matches!(error, ArchiveError::NotTar { .. }), "{error}");
        let error = copy_bytes(&[0u8; 2048]).unwrap_err();
        assert!(matches!(error, ArchiveError::NotTar { .. }), "{error}");
    }

    #[test]
    fn check_reads_header_and_rewinds() {
        let tar = tar_with_one_file();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut tar.as_slice(), &mut xz).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.tar.xz");
        std::fs::write(&path, &xz).unwrap();
        let file = File::open(&path).unwrap();

        assert_eq!(check_tarball(&path, &file).unwrap(), Compression::Xz);
        let mut out = Vec::new();
        copy_tarball(&path, file, &mut out).unwrap();
        assert_eq!(out, tar);

        std::fs::write(&path, b"plain text, no archive\n".repeat(50)).unwrap();
        let file = File::open(&path).unwrap();
        let error = check_tarball(&path, &file).unwrap_err();
        assert!(matches!(error, ArchiveError::NotTar { .. }), "{error}");
    }

    #[test]
    fn bzip2_is_named_as_unsupported() {
        let error = copy_bytes(b"BZh91AY&SY rest").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("bzip2"), "{message}");
    }

    #[test]
    fn truncated_gzip_names_the_format() {
        let tar = tar_with_one_file();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&tar).unwrap();
        let compressed = gzip.finish().unwrap();
        let error = copy_bytes(&compressed[..compressed.len() / 2]).unwrap_err();
        assert!(
            matches!(error, ArchiveError::Decompress { format: "gzip", .. }),
            "{error}"
        );
    }
}
