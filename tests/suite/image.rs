//! `airlock image`: import of root filesystems and pull from a local registry, on every
//! engine that scripts/test starts (Docker Engine and Podman's API service), with the result
//! checked in the image the engine stores, read back through the engine's API.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::harness::{binary, describe, make_node, stderr, stdout, unique_token};

/// Returns the engines' unix socket paths, from `AIRLOCK_TEST_DOCKER_SOCKETS`.
fn engine_sockets() -> Vec<PathBuf> {
    let Ok(addresses) = std::env::var("AIRLOCK_TEST_DOCKER_SOCKETS") else {
        panic!("AIRLOCK_TEST_DOCKER_SOCKETS is not set: run the tests with scripts/test, or run `scripts/test-engines start` and export the variables it prints");
    };
    let sockets: Vec<PathBuf> = addresses
        .split_whitespace()
        .map(|address| {
            let path = address.strip_prefix("unix://").unwrap_or(address);
            PathBuf::from(path)
        })
        .collect();
    for socket in &sockets {
        assert!(
            socket.exists(),
            "engine socket {socket:?} is missing: run scripts/test, or `scripts/test-engines start`"
        );
    }
    assert!(
        !sockets.is_empty(),
        "AIRLOCK_TEST_DOCKER_SOCKETS lists no socket"
    );
    sockets
}

/// Returns the local registry's HOST:PORT, from `AIRLOCK_TEST_REGISTRY`.
fn registry() -> String {
    std::env::var("AIRLOCK_TEST_REGISTRY").unwrap_or_else(|_| {
        panic!("AIRLOCK_TEST_REGISTRY is not set: run the tests with scripts/test, or run `scripts/test-engines start` and export the variables it prints")
    })
}

/// Returns the test registry's user and password, from `AIRLOCK_TEST_REGISTRY_LOGIN`.
fn registry_login() -> (String, String) {
    let login = std::env::var("AIRLOCK_TEST_REGISTRY_LOGIN").unwrap_or_else(|_| {
        panic!("AIRLOCK_TEST_REGISTRY_LOGIN is not set: run the tests with scripts/test, or run `scripts/test-engines start` and export the variables it prints")
    });
    let (user, password) = login.split_once(':').expect("USER:PASSWORD");
    (user.to_owned(), password.to_owned())
}

/// A Docker configuration directory whose `config.json` has a login for one registry, as
/// `docker login` writes it.
struct DockerConfig {
    dir: tempfile::TempDir,
}

impl DockerConfig {
    fn new(registry: &str, user: &str, password: &str) -> DockerConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = base64_encode(format!("{user}:{password}").as_bytes());
        let config = serde_json::json!({ "auths": { registry: { "auth": auth } } });
        fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        DockerConfig { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs `airlock ARGS` as root against the engine on `socket`, without any registry login.
fn airlock<S: AsRef<OsStr>>(socket: &Path, args: &[S]) -> Output {
    airlock_with_login(socket, args, None)
}

/// Runs `airlock ARGS` as root against the engine on `socket`. The only login file Airlock
/// finds is `docker_config`'s, if given: the variables that name the others point to an
/// empty directory.
fn airlock_with_login<S: AsRef<OsStr>>(
    socket: &Path,
    args: &[S],
    docker_config: Option<&DockerConfig>,
) -> Output {
    let empty = tempfile::tempdir().expect("tempdir");
    let config_dir = docker_config.map_or(empty.path(), |config| config.dir.path());
    Command::new(binary())
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", config_dir)
        .env("XDG_RUNTIME_DIR", empty.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run airlock")
}

/// Sends one request to the engine's API with curl and returns the status and the body.
fn engine_request(socket: &Path, method: &str, path: &str, headers: &[&str]) -> (u16, Vec<u8>) {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "300"])
        .args(["--write-out", "\n%{http_code}", "-X", method])
        .arg("--unix-socket")
        .arg(socket);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .arg(format!("http://engine/v1.41{path}"))
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {path}: {}",
        describe(&output)
    );
    let mut body = output.stdout;
    let newline = body
        .iter()
        .rposition(|byte| *byte == b'\n')
        .expect("status line");
    let status = String::from_utf8_lossy(&body[newline + 1..])
        .parse()
        .expect("status");
    body.truncate(newline);
    (status, body)
}

fn image_exists(socket: &Path, name: &str) -> bool {
    let (status, body) = engine_request(socket, "GET", &format!("/images/{name}/json"), &[]);
    assert!(
        status == 200 || status == 404,
        "inspect {name}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    status == 200
}

/// Removes an image from one engine when dropped, whether the test passed or not.
struct ImageGuard<'a> {
    socket: &'a Path,
    name: String,
}

impl Drop for ImageGuard<'_> {
    fn drop(&mut self) {
        engine_request(
            self.socket,
            "DELETE",
            &format!("/images/{}?force=1", self.name),
            &[],
        );
    }
}

/// An entry of an image's file system, as the engine exports it.
#[derive(Debug)]
struct Stored {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<PathBuf>,
    device: Option<(u32, u32)>,
    content: Vec<u8>,
    xattrs: HashMap<String, Vec<u8>>,
}

/// Reads the file system of `name` from the engine: `GET /images/NAME/get` returns a
/// `docker save` archive whose layers are tar files; later layers win.
fn stored_files(socket: &Path, name: &str) -> HashMap<PathBuf, Stored> {
    let mut child = Command::new("curl")
        .args(["--silent", "--fail", "--max-time", "300", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://engine/v1.41/images/{name}/get"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("run curl");
    let mut files = HashMap::new();
    let mut saved = tar::Archive::new(child.stdout.take().expect("stdout"));
    for entry in saved.entries().expect("save archive") {
        let entry = entry.expect("save entry");
        let is_layer = entry.header().entry_type().is_file()
            && entry.path().expect("path").extension() == Some(OsStr::new("tar"));
        if is_layer {
            read_layer(entry, &mut files);
        }
    }
    assert!(
        child.wait().expect("wait for curl").success(),
        "export of {name} failed"
    );
    files
}

fn read_layer(layer: impl Read, files: &mut HashMap<PathBuf, Stored>) {
    let mut layer = tar::Archive::new(layer);
    for entry in layer.entries().expect("layer") {
        let mut entry = entry.expect("layer entry");
        let mut xattrs = HashMap::new();
        if let Some(extensions) = entry.pax_extensions().expect("pax") {
            for extension in extensions {
                let extension = extension.expect("pax record");
                if let Some(key) = extension.key().expect("key").strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(key.to_owned(), extension.value_bytes().to_vec());
                }
            }
        }
        let header = entry.header().clone();
        let path = entry.path().expect("path").into_owned();
        let path = path.strip_prefix("./").map(Path::to_owned).unwrap_or(path);
        let kind = header.entry_type();
        let device = matches!(kind, tar::EntryType::Char | tar::EntryType::Block).then(|| {
            let major = header.device_major().unwrap().unwrap();
            let minor = header.device_minor().unwrap().unwrap();
            (major, minor)
        });
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("content");
        let stored = Stored {
            kind,
            mode: header.mode().expect("mode"),
            uid: header.uid().expect("uid"),
            gid: header.gid().expect("gid"),
            link: header.link_name().expect("link").map(|link| {
                // A hard link names an archive path, which GNU tar writes with `./`.
                match (kind, link.strip_prefix("./")) {
                    (tar::EntryType::Link, Ok(stripped)) => stripped.to_owned(),
                    _ => link.into_owned(),
                }
            }),
            device,
            content,
            xattrs,
        };
        files.insert(path, stored);
    }
}

fn entry<'a>(files: &'a HashMap<PathBuf, Stored>, path: &str) -> &'a Stored {
    files.get(Path::new(path)).unwrap_or_else(|| {
        let mut paths: Vec<_> = files.keys().collect();
        paths.sort();
        panic!("no {path:?} in the image; it holds {paths:?}")
    })
}

/// Secret content of a host file that a symlink in the imported tree points to.
const CANARY: &[u8] = b"airlock-image-canary-5d41402a";

/// A root filesystem with one of each kind of entry, and a canary file outside it.
struct TestTree {
    dir: tempfile::TempDir,
}

impl TestTree {
    fn new() -> TestTree {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let canary = dir.path().join("canary");
        fs::write(&canary, CANARY).unwrap();
        for sub in ["etc", "bin", "dev", "private"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(root.join("etc/hostname"), b"airlock\n").unwrap();
        fs::write(root.join("etc/owned"), b"owned\n").unwrap();
        std::os::unix::fs::chown(root.join("etc/owned"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(root.join("etc/owned"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(root.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(root.join("bin/tool"), root.join("bin/tool-link")).unwrap();
        symlink("tool", root.join("bin/alias")).unwrap();
        symlink(&canary, root.join("escape")).unwrap();
        symlink("../../canary", root.join("etc/relative-escape")).unwrap();
        fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        make_node(
            &root.join("dev/null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        make_node(&root.join("dev/fifo"), libc::S_IFIFO | 0o600, 0);
        set_xattr(&root.join("etc/hostname"), "user.airlock", b"kept");
        TestTree { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Checks every kind of entry in the image the engine stores.
    fn check_stored(&self, socket: &Path, name: &str) {
        let files = stored_files(socket, name);
        let context = format!("{name} in {socket:?}");

        assert_eq!(
            entry(&files, "etc/hostname").content,
            b"airlock\n",
            "{context}"
        );
        assert_eq!(entry(&files, "etc/hostname").mode, 0o644, "{context}");
        assert_eq!(
            entry(&files, "etc/hostname")
                .xattrs
                .get("user.airlock")
                .map(Vec::as_slice),
            Some(&b"kept"[..]),
            "{context}"
        );
        let owned = entry(&files, "etc/owned");
        assert_eq!(
            (owned.uid, owned.gid, owned.mode),
            (1234, 5678, 0o640),
            "{context}"
        );
        // The name archived first is the file and the other a hard link to it. Airlock's walk
        // is sorted, but GNU tar follows the directory's order.
        let (tool, tool_link) = (entry(&files, "bin/tool"), entry(&files, "bin/tool-link"));
        let (file, link, first) = match tool.kind {
            tar::EntryType::Link => (tool_link, tool, "bin/tool-link"),
            _ => (tool, tool_link, "bin/tool"),
        };
        assert_eq!(file.content, b"#!/bin/sh\necho tool\n", "{context}");
        assert_eq!(file.mode, 0o4755, "{context}");
        assert_eq!(link.kind, tar::EntryType::Link, "{context}");
        assert_eq!(link.link.as_deref(), Some(Path::new(first)), "{context}");
        let alias = entry(&files, "bin/alias");
        assert_eq!(alias.kind, tar::EntryType::Symlink, "{context}");
        assert_eq!(alias.link.as_deref(), Some(Path::new("tool")), "{context}");
        assert_eq!(entry(&files, "private").mode, 0o700, "{context}");
        assert_eq!(
            entry(&files, "private").kind,
            tar::EntryType::Directory,
            "{context}"
        );
        let null = entry(&files, "dev/null");
        assert_eq!(
            (null.kind, null.device),
            (tar::EntryType::Char, Some((1, 3))),
            "{context}"
        );
        assert_eq!(
            entry(&files, "dev/fifo").kind,
            tar::EntryType::Fifo,
            "{context}"
        );

        let escape = entry(&files, "escape");
        assert_eq!(escape.kind, tar::EntryType::Symlink, "{context}");
        assert_eq!(
            escape.link.as_deref(),
            Some(self.dir.path().join("canary").as_path()),
            "{context}"
        );
        assert_eq!(
            entry(&files, "etc/relative-escape").kind,
            tar::EntryType::Symlink
        );
        for (path, stored) in &files {
            let leaked = stored.content.windows(CANARY.len()).any(|w| w == CANARY);
            assert!(
                !leaked,
                "{context}: {path:?} holds the host file behind a symlink"
            );
        }
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
    let result = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(result, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// Imports `source` as `name` into the engine on `socket` and checks the reported id.
fn import(socket: &Path, source: &Path, name: &str) {
    let output = airlock(
        socket,
        &[
            OsStr::new("image"),
            "import".as_ref(),
            source.as_os_str(),
            name.as_ref(),
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{name} in {socket:?}: {}",
        describe(&output)
    );
    let id = stdout(&output);
    assert!(id.trim().starts_with("sha256:"), "{}", describe(&output));
    assert!(
        image_exists(socket, name),
        "{name} missing after the import into {socket:?}"
    );
}

#[test]
fn import_directory_keeps_every_entry_kind() {
    let tree = TestTree::new();
    for socket in engine_sockets() {
        let name = format!("airlock-test/import-{}:dir", unique_token());
        let _guard = ImageGuard {
            socket: &socket,
            name: name.clone(),
        };
        import(&socket, &tree.root(), &name);
        tree.check_stored(&socket, &name);

        let listed = airlock(&socket, &["image", "ls", "--json"]);
        assert_eq!(listed.status.code(), Some(0), "{}", describe(&listed));
        let images: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        let found = images.as_array().unwrap().iter().any(|image| {
            image["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|tag| tag.as_str().unwrap().ends_with(&name))
        });
        assert!(
            found,
            "{name} not listed by `image ls` of {socket:?}: {images}"
        );
    }
}

/// Builds a tar archive of the test tree with GNU tar, and compresses it with each format's
/// encoder.
fn tarballs(tree: &TestTree) -> Vec<(&'static str, Vec<u8>)> {
    let output = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(tree.root())
        .args(["-cf", "-", "."])
        .output()
        .expect("run tar");
    assert!(output.status.success(), "tar: {}", describe(&output));
    let plain = output.stdout;

    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &plain).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd = ruzstd::encoding::compress_to_vec(
        plain.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut plain.as_slice(), &mut xz).unwrap();
    vec![
        ("tar", plain),
        ("tar.gz", gzip),
        ("tar.zst", zstd),
        ("tar.xz", xz),
    ]
}

#[test]
fn import_tarball_in_each_compression() {
    let tree = TestTree::new();
    let tarballs = tarballs(&tree);
    for socket in engine_sockets() {
        for (extension, bytes) in &tarballs {
            let path = tree.dir.path().join(format!("rootfs.{extension}"));
            fs::write(&path, bytes).unwrap();
            let tag = extension.replace('.', "-");
            let name = format!("airlock-test/import-{}:{tag}", unique_token());
            let _guard = ImageGuard {
                socket: &socket,
                name: name.clone(),
            };
            import(&socket, &path, &name);
            tree.check_stored(&socket, &name);
        }
    }
}

#[test]
fn import_debootstrap_tree() {
    let Ok(rootfs) = std::env::var("AIRLOCK_TEST_ROOTFS") else {
        panic!("AIRLOCK_TEST_ROOTFS is not set: run the tests with scripts/test, which builds the Debian tree");
    };
    for socket in engine_sockets() {
        let name = format!("airlock-test/debootstrap-{}:bookworm", unique_token());
        let _guard = ImageGuard {
            socket: &socket,
            name: name.clone(),
        };
        import(&socket, Path::new(&rootfs), &name);
        let files = stored_files(&socket, &name);
        let context = format!("{name} in {socket:?}");
        // bookworm's merged /usr: /bin is a symlink.
        let bin = entry(&files, "bin");
        assert_eq!(bin.kind, tar::EntryType::Symlink, "{context}");
        assert_eq!(bin.link.as_deref(), Some(Path::new("usr/bin")), "{context}");
        assert_eq!(entry(&files, "usr/bin/passwd").mode, 0o4755, "{context}");
        assert_eq!(entry(&files, "tmp").mode, 0o1777, "{context}");
        let os_release = &entry(&files, "usr/lib/os-release").content;
        let os_release = String::from_utf8_lossy(os_release);
        assert!(os_release.contains("bookworm"), "{context}: {os_release}");
    }
}

/// Unmounts a file system mounted by a test when dropped.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A chroot tree often has the host's /proc or /dev mounted inside: the import stores the
/// mount point as an empty directory, as `tar --one-file-system` does, and nothing below it.
#[test]
fn import_skips_mounted_file_systems() {
    let tree = TestTree::new();
    let mount_point = tree.root().join("mnt");
    fs::create_dir(&mount_point).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "airlock-test", "--"])
        .arg(&mount_point)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a tmpfs on {mount_point:?}");
    let _mounted = MountGuard(mount_point.clone());
    fs::write(mount_point.join("host-file"), CANARY).unwrap();

    for socket in engine_sockets() {
        let name = format!("airlock-test/mounts-{}", unique_token());
        let _guard = ImageGuard {
            socket: &socket,
            name: name.clone(),
        };
        import(&socket, &tree.root(), &name);
        let files = stored_files(&socket, &name);
        assert_eq!(
            entry(&files, "mnt").kind,
            tar::EntryType::Directory,
            "{socket:?}"
        );
        assert!(
            !files.contains_key(Path::new("mnt/host-file")),
            "{socket:?}: the import descended into a mounted file system"
        );
        assert_eq!(
            entry(&files, "etc/hostname").content,
            b"airlock\n",
            "{socket:?}"
        );
    }
}

#[test]
fn import_missing_path_is_named() {
    for socket in engine_sockets() {
        let output = airlock(
            &socket,
            &[
                "image",
                "import",
                "/nonexistent/airlock-rootfs",
                "airlock-test/missing",
            ],
        );
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        assert!(
            message.contains("\"/nonexistent/airlock-rootfs\" does not exist"),
            "{message}"
        );
    }
}

#[test]
fn import_invalid_name_names_rule() {
    let tree = TestTree::new();
    for socket in engine_sockets() {
        let output = airlock(
            &socket,
            &[
                OsStr::new("image"),
                "import".as_ref(),
                tree.root().as_os_str(),
                "Airlock/Test".as_ref(),
            ],
        );
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        assert!(
            message.contains("invalid image name \"Airlock/Test\""),
            "{message}"
        );
        assert!(message.contains("lowercase"), "{message}");
    }
}

#[test]
fn import_text_file_is_not_a_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    fs::write(&path, "not an archive\n".repeat(100)).unwrap();
    for socket in engine_sockets() {
        let name = format!("airlock-test/text-{}", unique_token());
        let output = airlock(
            &socket,
            &[
                OsStr::new("image"),
                "import".as_ref(),
                path.as_os_str(),
                name.as_ref(),
            ],
        );
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        assert!(
            stderr(&output).contains("is not a tar archive"),
            "{}",
            describe(&output)
        );
        assert!(
            !image_exists(&socket, &name),
            "{name} was created from a text file"
        );
    }
}

/// Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH cannot read a file of mode 0000:
/// the import must fail, name the file, and leave no image behind.
#[test]
fn import_unreadable_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/readable"), b"x").unwrap();
    let secret = root.join("etc/unreadable");
    fs::write(&secret, b"x").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    for socket in engine_sockets() {
        let name = format!("airlock-test/unreadable-{}", unique_token());
        let output = Command::new("setpriv")
            .args([
                "--bounding-set=-dac_override,-dac_read_search",
                "--inh-caps=-all",
                "--",
            ])
            .arg(binary())
            .args([
                OsStr::new("image"),
                "import".as_ref(),
                root.as_os_str(),
                name.as_ref(),
            ])
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv");
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        assert!(message.contains(&format!("{secret:?}")), "{message}");
        assert!(message.contains("Permission denied"), "{message}");
        assert!(
            !image_exists(&socket, &name),
            "{name} exists after a failed import"
        );
    }
}

/// Pushes `repository:tag` from the engine to the test registry through the engine's API.
fn push(socket: &Path, repository: &str, tag: &str) {
    let (user, password) = registry_login();
    let credentials = serde_json::json!({
        "username": user,
        "password": password,
        "serveraddress": registry(),
    });
    let header = format!(
        "X-Registry-Auth: {}",
        base64_encode(credentials.to_string().as_bytes())
    );
    let (status, body) = engine_request(
        socket,
        "POST",
        &format!("/images/{repository}/push?tag={tag}"),
        &[&header],
    );
    let body = String::from_utf8_lossy(&body);
    assert_eq!(
        status, 200,
        "push {repository}:{tag} from {socket:?}: {body}"
    );
    assert!(
        !body.contains("server gave HTTP response to HTTPS client"),
        "{socket:?} does not treat the test registry as insecure, because it was started without the registries.conf of the test run: restart the engines with `scripts/test-engines stop` and `scripts/test-engines start`\n{body}"
    );
    assert!(
        !body.contains("\"error\""),
        "push {repository}:{tag} from {socket:?}: {body}"
    );
}

/// Deletes a repository's tag from the test registry when dropped, so that repeated runs do
/// not pile up manifests. Blobs stay until the registry's garbage collection.
struct RegistryTagGuard {
    registry: String,
    path: String,
    tag: String,
}

impl Drop for RegistryTagGuard {
    fn drop(&mut self) {
        let url = format!("http://{}/v2/{}/manifests/", self.registry, self.path);
        let accept = "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
        let (user, password) = registry_login();
        let login = format!("{user}:{password}");
        let Ok(head) = Command::new("curl")
            .args(["--silent", "--head", "--max-time", "10", "-H", accept])
            .args(["--user", &login])
            .arg(format!("{url}{}", self.tag))
            .output()
        else {
            return;
        };
        let headers = String::from_utf8_lossy(&head.stdout);
        let digest = headers.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_owned())
        });
        if let Some(digest) = digest {
            let _ = Command::new("curl")
                .args(["--silent", "--max-time", "10", "-X", "DELETE"])
                .args(["--user", &login])
                .arg(format!("{url}{digest}"))
                .output();
        }
    }
}

#[test]
fn pull_restores_pushed_image() {
    let tree = TestTree::new();
    let registry = registry();
    let (user, password) = registry_login();
    let login = DockerConfig::new(&registry, &user, &password);
    for socket in engine_sockets() {
        let repository = format!("{registry}/airlock-test/pull-{}", unique_token());
        let name = format!("{repository}:v1");
        let _pushed = RegistryTagGuard {
            registry: registry.clone(),
            path: repository[registry.len() + 1..].to_owned(),
            tag: "v1".to_owned(),
        };
        let _guard = ImageGuard {
            socket: &socket,
            name: name.clone(),
        };
        import(&socket, &tree.root(), &name);
        push(&socket, &repository, "v1");
        let removed = airlock(&socket, &["image", "rm", &name]);
        assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
        assert!(
            !image_exists(&socket, &name),
            "{name} still in {socket:?} after rm"
        );

        let pulled = airlock_with_login(&socket, &["image", "pull", &name], Some(&login));
        assert_eq!(
            pulled.status.code(),
            Some(0),
            "{socket:?}: {}",
            describe(&pulled)
        );
        assert!(
            stdout(&pulled).trim().starts_with("sha256:"),
            "{}",
            describe(&pulled)
        );
        // stderr is not a terminal here: plain progress lines, no redraw sequences.
        let progress = stderr(&pulled);
        assert!(
            progress.contains(&format!("airlock: pulled {name}")),
            "{progress}"
        );
        assert!(
            !progress.contains('\r') && !progress.contains('\x1b'),
            "{progress:?}"
        );
        assert!(
            image_exists(&socket, &name),
            "{name} missing after the pull"
        );
        tree.check_stored(&socket, &name);

        // On a terminal, the pull draws a progress bar instead of the plain lines.
        let removed = airlock(&socket, &["image", "rm", &name]);
        assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
        let transcript = pull_on_terminal(&socket, &name, &login);
        assert!(
            transcript.contains(&format!("pulling {name}: ")),
            "{socket:?}: {transcript:?}"
        );
        assert!(transcript.contains('\x1b'), "{socket:?}: {transcript:?}");
        assert!(transcript.contains("sha256:"), "{socket:?}: {transcript:?}");
        assert!(
            !transcript.contains(&format!("airlock: pull {name}: ")),
            "{socket:?}: plain progress lines on a terminal: {transcript:?}"
        );
        assert!(
            image_exists(&socket, &name),
            "{name} missing after the pull on a terminal"
        );
    }
}

/// Runs `airlock image pull NAME` on a terminal of its own, which script(1) gives it, and
/// returns what the terminal received.
fn pull_on_terminal(socket: &Path, name: &str, login: &DockerConfig) -> String {
    let empty = tempfile::tempdir().expect("tempdir");
    let command = format!("{} image pull {name}", binary().display());
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", login.dir.path())
        .env("XDG_RUNTIME_DIR", empty.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::piped())
        .output()
        .expect("run script");
    assert_eq!(
        output.status.code(),
        Some(0),
        "pull {name} on a terminal: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn pull_closed_port_is_unreachable() {
    // A port that was free a moment ago, so nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    for socket in engine_sockets() {
        let reference = format!("127.0.0.1:{port}/airlock-test/nothing:v1");
        let output = airlock(&socket, &["image", "pull", &reference]);
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        let expected = format!("cannot reach the registry 127.0.0.1:{port} to pull {reference}");
        assert!(message.contains(&expected), "{socket:?}: {message}");
    }
}

#[test]
fn pull_unknown_image_is_not_found() {
    let registry = registry();
    let (user, password) = registry_login();
    let login = DockerConfig::new(&registry, &user, &password);
    for socket in engine_sockets() {
        let reference = format!("{registry}/airlock-test/never-pushed-{}:v1", unique_token());
        let output = airlock_with_login(&socket, &["image", "pull", &reference], Some(&login));
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        let expected = format!("image {reference} not found in the registry {registry}");
        assert!(message.contains(&expected), "{socket:?}: {message}");
    }
}

#[test]
fn pull_without_login_names_fix() {
    let registry = registry();
    for socket in engine_sockets() {
        let reference = format!("{registry}/airlock-test/private-{}:v1", unique_token());
        let output = airlock(&socket, &["image", "pull", &reference]);
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        let expected = format!("the registry {registry} requires credentials to pull {reference}");
        assert!(message.contains(&expected), "{socket:?}: {message}");
        let fix = format!("docker login {registry}");
        assert!(message.contains(&fix), "{socket:?}: {message}");
    }
}

#[test]
fn pull_wrong_password_names_login_file() {
    let registry = registry();
    let (user, _) = registry_login();
    let login = DockerConfig::new(&registry, &user, "not-the-password");
    for socket in engine_sockets() {
        let reference = format!("{registry}/airlock-test/private-{}:v1", unique_token());
        let output = airlock_with_login(&socket, &["image", "pull", &reference], Some(&login));
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        let expected = format!(
            "the registry {registry} rejected the credentials of {user:?} from {:?}",
            login.file()
        );
        assert!(message.contains(&expected), "{socket:?}: {message}");
        assert!(!message.contains("not-the-password"), "{message}");
    }
}

#[test]
fn rm_unknown_image_fails() {
    for socket in engine_sockets() {
        let name = format!("airlock-test/never-imported-{}:v1", unique_token());
        let output = airlock(&socket, &["image", "rm", &name]);
        assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
        let message = stderr(&output);
        assert!(
            message.contains(&format!("image {name} not found")),
            "{message}"
        );
    }
}
