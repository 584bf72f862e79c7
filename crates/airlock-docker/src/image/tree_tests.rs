use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;

use super::*;

/// An entry read back from an archive.
#[derive(Debug)]
struct Read {
    kind: EntryType,
    mode: u32,
    uid: u64,
    link: Option<PathBuf>,
    content: Vec<u8>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn read_archive(bytes: &[u8]) -> HashMap<PathBuf, Read> {
    let mut archive = tar::Archive::new(bytes);
    let mut entries = HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().unwrap() {
            for extension in extensions {
                let extension = extension.unwrap();
                if let Some(name) = extension.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_owned(), extension.value_bytes().to_vec()));
                }
            }
        }
        let header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let link = entry.link_name().unwrap().map(|link| link.into_owned());
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        let read = Read {
            kind: header.entry_type(),
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            link,
            content,
            xattrs,
        };
        entries.insert(path, read);
    }
    entries
}

#[test]
fn tree_keeps_modes_links_and_long_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("bin")).unwrap();
    fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-again")).unwrap();
    symlink("tool", root.join("bin/alias")).unwrap();
    symlink("/etc/hostname", root.join("outside")).unwrap();
    let long = "d".repeat(120);
    fs::write(root.join(&long), b"long").unwrap();

    let mut out = Vec::new();
    let summary = write_tree(root, &mut out).unwrap();
    let entries = read_archive(&out);

    assert_eq!(summary.entries, 7);
    assert_eq!(entries[&PathBuf::from("./")].kind, EntryType::Directory);
    let tool = &entries[&PathBuf::from("bin/tool")];
    assert_eq!(tool.mode, 0o4755);
    assert_eq!(tool.content, b"#!/bin/sh\n");
    let again = &entries[&PathBuf::from("bin/tool-again")];
    assert_eq!(again.kind, EntryType::Link);
    assert_eq!(again.link.as_deref(), Some(Path::new("bin/tool")));
    let alias = &entries[&PathBuf::from("bin/alias")];
    assert_eq!(alias.kind, EntryType::Symlink);
    assert_eq!(alias.link.as_deref(), Some(Path::new("tool")));
    let outside = &entries[&PathBuf::from("outside")];
    assert_eq!(outside.kind, EntryType::Symlink);
    assert!(
        outside.content.is_empty(),
        "a symlink is stored, never followed"
    );
    assert_eq!(entries[&PathBuf::from(&long)].content, b"long");
}

#[test]
fn tree_keeps_owners_devices_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("owned"), b"x").unwrap();
    std::os::unix::fs::chown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    let device = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        device,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("pipe"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let xattr_set = rustix::fs::setxattr(
        root.join("owned"),
        "user.airlock",
        b"value",
        rustix::fs::XattrFlags::empty(),
    );

    let mut out = Vec::new();
    write_tree(root, &mut out).unwrap();
    let entries = read_archive(&out);

    assert_eq!(entries[&PathBuf::from("owned")].uid, 1234);
    assert_eq!(entries[&PathBuf::from("null")].kind, EntryType::Char);
    assert_eq!(entries[&PathBuf::from("pipe")].kind, EntryType::Fifo);
    assert_eq!(entries[&PathBuf::from("pipe")].mode, 0o600);
    if xattr_set.is_ok() {
        assert_eq!(
            entries[&PathBuf::from("owned")].xattrs,
            [("user.airlock".to_owned(), b"value".to_vec())]
        );
    }
}

#[test]
fn pax_record_length_counts_its_own_digits() {
    // Lengths around 100 and 1000 gain a digit once the prefix's own digits are counted.
    for value_length in [0, 1, 80, 81, 82, 83, 84, 980, 990, 995, 996, 997, 998, 999] {
        let value = vec![b'v'; value_length];
        let records = pax_xattr_records(&[(OsString::from("a"), value)]);
        let text = String::from_utf8(records.clone()).unwrap();
        let (length, _) = text.split_once(' ').unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), records.len(), "{text:?}");
    }
}

#[test]
fn missing_root_is_named() {
    let error = write_tree(Path::new("/nonexistent/airlock-tree"), Vec::new()).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/airlock-tree"),
        "{error}"
    );
}
