use std::fs;
use std::path::PathBuf;

use airlock_workspace::discard;

use super::common::*;

#[test]
fn discard_empties_upper_and_work() {
    let layers = Layers::new();
    write(&layers.outside.join("victim.txt"), "victim\n");
    write(&layers.upper.join("src/new.rs"), "x\n");
    whiteout(&layers.upper.join("gone.txt"));
    link(
        layers.outside.to_str().unwrap(),
        &layers.upper.join("escape"),
    );
    link(
        layers.outside.join("victim.txt").to_str().unwrap(),
        &layers.upper.join("victim"),
    );
    fifo(&layers.upper.join("pipe"));
    write(&layers.upper.join("locked/inner.txt"), "x\n");
    chmod(&layers.upper.join("locked"), 0o000);
    mkdir(&layers.work.join("work"));
    whiteout(&layers.work.join("work/#8"));
    chmod(&layers.work.join("work"), 0o000);

    discard(&layers.upper, &layers.work).unwrap();

    assert_eq!(fs::read_dir(&layers.upper).unwrap().count(), 0);
    assert_eq!(fs::read_dir(&layers.work).unwrap().count(), 0);
    assert_eq!(read(&layers.outside.join("victim.txt")), "victim\n");
}

#[test]
fn discard_removes_very_deep_nesting() {
    let layers = Layers::new();
    let mut deep = PathBuf::new();
    for _ in 0..300 {
        deep.push("d");
    }
    write(&layers.upper.join(&deep).join("file"), "x\n");

    discard(&layers.upper, &layers.work).unwrap();

    assert_eq!(fs::read_dir(&layers.upper).unwrap().count(), 0);
}
