use airlock_workspace::{patch, MAX_PATCH_FILE_SIZE};

use super::common::*;

fn render(layers: &Layers) -> String {
    let changes = layers.diff();
    let mut out = Vec::new();
    patch(&layers.lower, &layers.upper, &changes, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn text_change_is_a_unified_diff() {
    let layers = Layers::new();
    write(&layers.lower.join("src/lib.rs"), "one\ntwo\nthree\n");
    write(&layers.upper.join("src/lib.rs"), "one\n2\nthree\n");
    write(&layers.upper.join("added.txt"), "hello");
    write(&layers.lower.join("gone.txt"), "bye\n");
    whiteout(&layers.upper.join("gone.txt"));

    let expected = "\
diff a/added.txt b/added.txt
new file mode 100644
--- /dev/null
+++ b/added.txt
@@ -0,0 +1 @@
+hello
\\ No newline at end of file
diff a/gone.txt b/gone.txt
deleted file mode 100644
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff a/src/lib.rs b/src/lib.rs
--- a/src/lib.rs
+++ b/src/lib.rs
@@ -1,3 +1,3 @@
 one
-two
+2
 three
";
    assert_eq!(render(&layers), expected);
}

#[test]
fn binary_change_is_one_line() {
    let layers = Layers::new();
    write_bytes(&layers.lower.join("image.bin"), b"\x00\x01\x02");
    write_bytes(&layers.upper.join("image.bin"), b"\x00\x01\x03");
    write_bytes(&layers.upper.join("latin1.txt"), b"caf\xe9\n");

    let expected = "\
diff a/image.bin b/image.bin
Binary files a/image.bin and b/image.bin differ
diff a/latin1.txt b/latin1.txt
new file mode 100644
Binary files /dev/null and b/latin1.txt differ
";
    assert_eq!(render(&layers), expected);
}

#[test]
fn large_file_is_marked_not_diffed() {
    let layers = Layers::new();
    let size = MAX_PATCH_FILE_SIZE as usize + 1;
    write(&layers.upper.join("big.txt"), &"x".repeat(size));

    let output = render(&layers);

    assert!(
        output.contains(&format!("too large for a patch ({size} bytes")),
        "{output}"
    );
    assert!(!output.contains("+xxx"));
}

#[test]
fn symlink_shows_its_target() {
    let layers = Layers::new();
    link("/etc/passwd", &layers.upper.join("passwd"));

    let expected = "\
diff a/passwd b/passwd
# SENSITIVE: symlink to an absolute path. Apply writes it only when its path is named.
new file mode 120000
--- /dev/null
+++ b/passwd
@@ -0,0 +1 @@
+/etc/passwd
\\ No newline at end of file
";
    assert_eq!(render(&layers), expected);
}

#[test]
fn sensitive_change_carries_marker() {
    let layers = Layers::new();
    mkdir(&layers.lower.join(".git/hooks"));
    write(&layers.upper.join(".git/hooks/pre-commit"), "#!/bin/sh\n");

    let output = render(&layers);

    let marker = "# SENSITIVE: git metadata, whose hooks and config run commands.";
    assert!(output.contains(marker), "{output}");
}

#[test]
fn mode_change_shows_old_and_new_mode() {
    let layers = Layers::new();
    write(&layers.lower.join("run.sh"), "echo\n");
    write(&layers.upper.join("run.sh"), "echo\n");
    chmod(&layers.upper.join("run.sh"), 0o755);

    let expected = "\
diff a/run.sh b/run.sh
old mode 100644
new mode 100755
";
    assert_eq!(render(&layers), expected);
}

#[test]
fn newline_in_name_cannot_forge_header() {
    let layers = Layers::new();
    write(&layers.upper.join("x\n+++ forged"), "x\n");

    let output = render(&layers);

    let header = "diff \"a/x\\n+++ forged\" \"b/x\\n+++ forged\"\n";
    assert!(output.starts_with(header), "{output}");
    assert!(!output.lines().any(|line| line == "+++ forged"), "{output}");
}
