//! A sandbox cannot change host files it reaches through its streams, its devices or its
//! workspace: no mode changes through a redirected file or a device node, and no setuid or
//! setgid files, which would run as root on the host when Airlock runs as root. The tests of
//! streams, devices, setuid bits and workspace paths run against the docker backend too,
//! with probes in sh and Perl, which the docker test image has.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use super::harness::{describe, shell_quote, stderr, test_user, Caller, Workspace};
use super::targets::{root_targets, targets, Target};

/// Runs `airlock run BACKEND-OPTIONS ARGS` of `target` through a shell, with `redirections`
/// appended to it.
fn run_redirected(target: &Target, args: &[&str], redirections: &str) -> std::process::Output {
    let workspace = target.workspace();
    let (script, _delegation) = target.shell_command(args);
    Command::new("sh")
        .arg("-c")
        .arg(format!("{script} {redirections}"))
        .current_dir(workspace.path())
        .output()
        .expect("run airlock")
}

/// Creates a file in a fresh directory, owned by `caller`, with `mode`.
fn host_file(caller: Caller, mode: u32) -> (Workspace, std::path::PathBuf) {
    let dir = Workspace::new(caller);
    let path = dir.path().join("host-file");
    fs::write(&path, b"host data\n").unwrap();
    if caller != Caller::Root {
        let (uid, gid) = test_user();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

fn mode_of(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn redirected_input_file_keeps_mode() {
    for target in targets() {
        let (_dir, path) = host_file(target.host_caller(), 0o600);
        // The sandbox gets a pipe, so the fchmod reaches the pipe, never the host file.
        let probe = "chmod 0666, *STDIN; local $/; print <STDIN>";
        let redirect = format!("< {}", shell_quote(path.to_str().unwrap()));
        let output = run_redirected(&target, &["--", "perl", "-e", probe], &redirect);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        assert_eq!(output.stdout, b"host data\n", "{target:?}: input was lost");
        assert_eq!(
            mode_of(&path),
            0o600,
            "{target:?}: the host file's mode changed"
        );
    }
}

#[test]
fn redirected_output_file_never_setuid() {
    for target in targets() {
        let (_dir, path) = host_file(target.host_caller(), 0o644);
        let probe = "syswrite STDOUT, 'payload'; chmod 04755, *STDOUT or die \"fchmod: $!\\n\"";
        let redirect = format!("> {}", shell_quote(path.to_str().unwrap()));
        let output = run_redirected(&target, &["--", "perl", "-e", probe], &redirect);
        assert!(
            !output.status.success(),
            "{target:?}: fchmod succeeded: {}",
            describe(&output)
        );
        assert_eq!(
            mode_of(&path),
            0o644,
            "{target:?}: the host file's mode changed"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            b"payload",
            "{target:?}: output was lost"
        );
    }
}

#[test]
fn directory_as_input_rejected() {
    for target in targets() {
        let output = run_redirected(&target, &["--", "true"], "< /");
        assert_eq!(
            output.status.code(),
            Some(125),
            "{target:?}: {}",
            describe(&output)
        );
        let message = stderr(&output);
        assert!(
            message.contains("standard input is a directory"),
            "{target:?}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{target:?}: {message}");
    }
}

#[test]
fn device_nodes_keep_host_mode() {
    let before = mode_of("/dev/null".as_ref());
    for target in targets() {
        let output = target.sh("chmod 600 /dev/null /dev/zero /etc/shadow");
        assert!(
            !output.status.success(),
            "{target:?}: chmod succeeded: {}",
            describe(&output)
        );
        assert_eq!(
            mode_of("/dev/null".as_ref()),
            before,
            "{target:?}: /dev/null changed"
        );
    }
}

#[test]
fn setuid_files_cannot_be_made() {
    for target in targets() {
        let workspace = target.workspace();
        let script = "cp /bin/true made; chmod 4755 made; chmod g+s made; \
                      perl -e 'use Fcntl; sysopen(my $file, \"created\", O_CREAT | O_WRONLY, 06755) or die \"open: $!\\n\"'; \
                      test -e made";
        let args = ["--workspace-mode", "bind", "--", "sh", "-c", script];
        let output = target.run(&args, workspace.path());
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let made = workspace.path().join("made");
        assert_eq!(
            mode_of(&made) & 0o6000,
            0,
            "{target:?}: setuid or setgid bit set"
        );
        assert!(
            !workspace.path().join("created").exists(),
            "{target:?}: setuid create"
        );
        let message = stderr(&output);
        assert!(
            message.contains("Operation not permitted"),
            "{target:?}: {message}"
        );
    }
}

#[test]
fn root_inside_is_not_host_root() {
    let canary =
        std::path::Path::new("/etc").join(format!("airlock-canary-{}", std::process::id()));
    fs::write(&canary, b"root only\n").unwrap();
    fs::set_permissions(&canary, fs::Permissions::from_mode(0o600)).unwrap();
    let workspace = Workspace::new(Caller::Root);
    let script = format!(
        "cat {} && echo READ; awk '{{print $2}}' /proc/self/uid_map; touch made",
        canary.display()
    );
    let args = [
        "run",
        "--workspace-mode",
        "bind",
        "--",
        "sh",
        "-c",
        script.as_str(),
    ];
    let output = super::harness::run(Caller::Root, &args, workspace.path());
    fs::remove_file(&canary).unwrap();
    let stdout = super::harness::stdout(&output);
    assert!(
        !stdout.contains("READ"),
        "a root-only host file was readable: {stdout}"
    );
    let host_uid: u32 = stdout.trim().parse().expect("uid_map line");
    assert_ne!(host_uid, 0, "root inside is host root");
    let made = fs::metadata(workspace.path().join("made")).expect("workspace write");
    assert_eq!(
        made.uid(),
        0,
        "the workspace file belongs to its owner, host root"
    );
}

#[test]
fn user_workspace_keeps_its_owner_under_root() {
    let (uid, _) = test_user();
    let workspace = Workspace::new(Caller::User);
    let output = super::harness::run(
        Caller::Root,
        &["run", "--workspace-mode", "bind", "--", "touch", "made"],
        workspace.path(),
    );
    assert!(output.status.success(), "{}", describe(&output));
    let made = fs::metadata(workspace.path().join("made")).unwrap();
    assert_eq!(made.uid(), uid, "the file belongs to the workspace's owner");
}

#[test]
fn system_subdirectories_rejected_as_workspace() {
    let cwd = Workspace::new(Caller::Root);
    for target in root_targets() {
        for dir in ["/usr/local/bin", "/etc/ssh", "/root", "/dev/shm", "/home"] {
            if !std::path::Path::new(dir).is_dir() {
                continue;
            }
            let output = target.run(&["--workspace", dir, "--", "true"], cwd.path());
            assert_eq!(
                output.status.code(),
                Some(125),
                "{target:?} {dir}: {}",
                describe(&output)
            );
            assert!(
                stderr(&output).contains("must not write"),
                "{target:?} {dir}: {}",
                stderr(&output)
            );
        }
    }
}

#[test]
fn root_group_never_mapped() {
    // A directory the test user owns but whose group is still root, as after a plain chown.
    let workspace = Workspace::new(Caller::Root);
    let (uid, _) = test_user();
    std::os::unix::fs::chown(workspace.path(), Some(uid), Some(0)).unwrap();
    let args = [
        "run",
        "--",
        "sh",
        "-c",
        "awk '{print $2}' /proc/self/gid_map",
    ];
    let output = super::harness::run(Caller::Root, &args, workspace.path());
    assert!(output.status.success(), "{}", describe(&output));
    let host_gid: u32 = super::harness::stdout(&output)
        .trim()
        .parse()
        .expect("gid_map line");
    assert_ne!(host_gid, 0, "the sandbox's group is host group 0");
}

/// Bind-mounts a directory holding a canary file below `workspace/nested`; unmounted on drop.
struct NestedMount {
    target: std::path::PathBuf,
    _source: Workspace,
}

impl NestedMount {
    fn new(workspace: &std::path::Path) -> NestedMount {
        let source = Workspace::new(Caller::Root);
        fs::write(source.path().join("canary"), b"nested\n").unwrap();
        let target = workspace.join("nested");
        fs::create_dir(&target).unwrap();
        let status = Command::new("mount")
            .arg("--bind")
            .arg(source.path())
            .arg(&target)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount --bind failed");
        NestedMount {
            target,
            _source: source,
        }
    }
}

impl Drop for NestedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
    }
}

#[test]
fn nested_mounts_never_reach_sandbox() {
    for target in root_targets() {
        for owner in [Caller::Root, Caller::User] {
            let workspace = Workspace::new(owner);
            let _nested = NestedMount::new(workspace.path());
            let args = ["--", "sh", "-c", "cat nested/canary"];
            let output = target.run(&args, workspace.path());
            let seen = super::harness::stdout(&output);
            assert!(
                !seen.contains("nested"),
                "{target:?}, {owner:?}-owned: the nested mount came along"
            );
            // The overlay's lower layer shows mount points empty. Bound read-write, a user's
            // workspace with mount points inside is rejected by the namespace backend, whose
            // init binds it in a user namespace.
            if owner == Caller::User && matches!(target, Target::Namespace(_)) {
                let bind_args = [
                    "--workspace-mode",
                    "bind",
                    "--",
                    "sh",
                    "-c",
                    "cat nested/canary",
                ];
                let output = target.run(&bind_args, workspace.path());
                assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
                assert!(
                    stderr(&output).contains("mount points"),
                    "{}",
                    stderr(&output)
                );
            }
        }
    }
}

#[test]
fn root_refuses_workspace_symlink() {
    // A user-owned directory with a symlink to a root-only directory, as an attacker would
    // plant it in a project that root later runs.
    let victim = Workspace::new(Caller::Root);
    fs::set_permissions(victim.path(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(victim.path().join("config"), b"root only\n").unwrap();
    let attacker = Workspace::new(Caller::User);
    let link = attacker.path().join("project");
    std::os::unix::fs::symlink(victim.path(), &link).unwrap();
    let args = ["--workspace", link.to_str().unwrap(), "--", "cat", "config"];
    for target in root_targets() {
        let output = target.run(&args, attacker.path());
        assert_eq!(
            output.status.code(),
            Some(125),
            "{target:?}: {}",
            describe(&output)
        );
        assert!(
            !super::harness::stdout(&output).contains("root only"),
            "{target:?}: the link was followed"
        );
        assert!(
            stderr(&output).contains("goes through the symlink"),
            "{target:?}: {}",
            stderr(&output)
        );
    }
}

/// Overlayfs copies a file up with its mounter's credentials. Root runs Airlock on a
/// project of the test user that contains a file only root may read. Renaming it in the
/// sandbox must fail, because a copy in the upper layer would reach the project's owner
/// through `apply`.
#[test]
fn unreadable_file_never_copied_up() {
    let (uid, gid) = test_user();
    let user = format!("{uid}:{gid}");
    let cases: [&[&str]; 3] = [
        &[],
        &["--backend", "chroot"],
        &["--backend", "chroot", "--user", &user],
    ];
    for options in cases {
        let workspace = Workspace::new(Caller::User);
        let secret = workspace.path().join("secret");
        fs::write(&secret, b"only root reads this\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let mut args = vec!["run", "--workspace-mode", "overlay"];
        args.extend_from_slice(options);
        args.extend(["--", "sh", "-c", "mv secret moved && cat moved"]);
        let output = super::harness::run(Caller::Root, &args, workspace.path());
        let seen = super::harness::stdout(&output);
        assert!(
            !seen.contains("only root"),
            "{options:?}: {}",
            describe(&output)
        );
        assert_ne!(
            output.status.code(),
            Some(0),
            "{options:?}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains("Value too large"),
            "{options:?}: {}",
            describe(&output)
        );
    }
}
