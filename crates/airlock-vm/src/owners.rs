//! Owners, modes and device nodes that a caller other than root cannot give the files it
//! unpacks, set afterwards in the built ext4 image with debugfs (e2fsprogs, like
//! mkfs.ext4), which writes the image file without mounting it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// debugfs commands that make an image match its tar, in order.
#[derive(Debug, Default)]
pub struct Fixups {
    script: String,
    /// Paths that a debugfs command cannot name: not UTF-8, or with a quote or a control
    /// character.
    skipped: usize,
}

impl Fixups {
    /// Sets the owner of `path`, relative to the image's root.
    pub fn add_owner(&mut self, path: &Path, uid: u32, gid: u32) {
        if let Some(quoted) = self.quote(path) {
            let _ = writeln!(self.script, "set_inode_field {quoted} uid {uid}");
            let _ = writeln!(self.script, "set_inode_field {quoted} gid {gid}");
        }
    }

    /// Sets the type and permission bits of `path`.
    pub fn add_mode(&mut self, path: &Path, mode: u32) {
        if let Some(quoted) = self.quote(path) {
            let _ = writeln!(self.script, "set_inode_field {quoted} mode 0{mode:o}");
        }
    }

    /// Creates the device node or FIFO `path`, with the type and permission bits `mode`.
    pub fn add_node(&mut self, path: &Path, mode: u32, device: libc::dev_t) {
        let parent = self.quote(path.parent().unwrap_or(Path::new("")));
        let name = path
            .file_name()
            .and_then(|name| self.quote_text(name.to_str()));
        let (Some(parent), Some(name)) = (parent, name) else {
            return;
        };
        let node = match mode & libc::S_IFMT {
            libc::S_IFCHR => format!("c {} {}", libc::major(device), libc::minor(device)),
            libc::S_IFBLK => format!("b {} {}", libc::major(device), libc::minor(device)),
            _ => "p".to_owned(),
        };
        // debugfs's mknod creates the name in its current directory.
        let _ = writeln!(self.script, "cd {parent}\nmknod {name} {node}\ncd /");
        self.add_mode(path, mode);
    }

    /// Quotes `path`, relative to the image's root, as an absolute path for a debugfs
    /// command, or counts it as skipped.
    fn quote(&mut self, path: &Path) -> Option<String> {
        let absolute = path.to_str().map(|text| format!("/{text}"));
        self.quote_text(absolute.as_deref())
    }

    /// Quotes `text` for a debugfs command, or counts it as skipped where it is `None` (not
    /// UTF-8) or has a character that debugfs's parser cannot take inside quotes.
    fn quote_text(&mut self, text: Option<&str>) -> Option<String> {
        let text = text.filter(|text| {
            !text
                .chars()
                .any(|character| character == '"' || character.is_control())
        });
        match text {
            Some(text) => Some(format!("\"{text}\"")),
            None => {
                self.skipped += 1;
                None
            }
        }
    }

    /// Runs the commands on the image at `image`. Returns debugfs's complaint on failure.
    pub fn apply(&self, image: &Path) -> Result<(), String> {
        if self.skipped > 0 {
            // NOTE: those entries keep the unpacking caller as owner, or are missing.
            tracing::warn!(
                count = self.skipped,
                "entries with quotes or control characters in their paths keep the caller's owner"
            );
        }
        if self.script.is_empty() {
            return Ok(());
        }

        let Some(debugfs) = crate::availability::find("debugfs") else {
            return Err("debugfs is not installed: install e2fsprogs, or run as root".into());
        };
        let script = image.with_extension("debugfs");
        std::fs::write(&script, &self.script).map_err(|error| error.to_string())?;
        let output = Command::new(debugfs)
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(image)
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_file(&script);
        let output = output.map_err(|error| error.to_string())?;

        // debugfs exits with 0 even when a command fails, and prints its banner on stderr.
        let complaints: Vec<String> = String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| !line.starts_with("debugfs ") && !line.trim().is_empty())
            .map(str::to_owned)
            .collect();
        if !output.status.success() || !complaints.is_empty() {
            return Err(complaints.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_paths_and_skips_unnamable_ones() {
        let mut fixups = Fixups::default();
        fixups.add_owner(Path::new("etc/my file"), 0, 42);
        fixups.add_owner(Path::new("etc/bad\"name"), 0, 0);
        fixups.add_node(
            Path::new("dev/null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        assert_eq!(
            fixups.script,
            "set_inode_field \"/etc/my file\" uid 0\n\
             set_inode_field \"/etc/my file\" gid 42\n\
             cd \"/dev\"\n\
             mknod \"null\" c 1 3\n\
             cd /\n\
             set_inode_field \"/dev/null\" mode 020666\n"
        );
        assert_eq!(fixups.skipped, 1);
    }
}
