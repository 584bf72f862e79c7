use super::quote;

#[test]
fn quote_leaves_plain_paths_alone() {
    assert_eq!(quote("a/", b"src/main.rs"), "a/src/main.rs");
    assert_eq!(quote("b/", b"with space"), "b/with space");
}

#[test]
fn quote_escapes_newline_that_would_forge_header() {
    let forged = b"x\n+++ b/.bashrc";
    assert_eq!(quote("a/", forged), "\"a/x\\n+++ b/.bashrc\"");
}

#[test]
fn quote_escapes_non_ascii_and_quotes() {
    assert_eq!(quote("", "é".as_bytes()), "\"\\303\\251\"");
    assert_eq!(quote("", b"a\"b\\c"), "\"a\\\"b\\\\c\"");
    // U+202E RIGHT-TO-LEFT OVERRIDE, which could make a name display reversed.
    assert_eq!(quote("", "\u{202e}".as_bytes()), "\"\\342\\200\\256\"");
}
