use std::path::Path;

use super::{path_reason, reason};
use crate::change::FileType;

#[test]
fn rules_match_at_any_depth() {
    let sensitive = [
        ".git/hooks/pre-commit",
        ".git/config",
        "vendor/lib/.git/hooks/post-checkout",
        ".gitmodules",
        "sub/.gitattributes",
        ".bashrc",
        "deep/er/.bashrc",
        "home/.zshenv",
        ".config/fish/config.fish",
        "x/.config/fish/functions/ls.fish",
        "app/.envrc",
        ".github/workflows/x.yml",
        ".github/actions/setup/action.yml",
        ".gitlab-ci.yml",
        ".circleci/config.yml",
        "Jenkinsfile",
        ".vscode/tasks.json",
        ".idea/workspace.xml",
        ".pre-commit-config.yaml",
        ".husky/pre-push",
        ".devcontainer/devcontainer.json",
        ".GIT/HOOKS/pre-commit",
    ];
    for path in sensitive {
        assert!(
            path_reason(Path::new(path)).is_some(),
            "{path} is not flagged"
        );
    }
}

#[test]
fn ordinary_paths_are_not_sensitive() {
    let ordinary = [
        "src/main.rs",
        ".github/CODEOWNERS",
        ".github",
        ".config/nvim/init.lua",
        "git/hooks.rs",
        ".gitignore",
        "bashrc",
        "notes.bashrc",
        "fish/config.fish",
    ];
    for path in ordinary {
        assert_eq!(path_reason(Path::new(path)), None, "{path} is flagged");
    }
}

#[test]
fn symlink_to_absolute_path_is_sensitive() {
    let target = Path::new("/etc/passwd");
    assert!(reason(Path::new("docs/passwd"), FileType::Symlink, Some(target)).is_some());
}

#[test]
fn symlink_leaving_workspace_is_sensitive() {
    let escaping = Path::new("../../outside");
    assert!(reason(Path::new("a/link"), FileType::Symlink, Some(escaping)).is_some());
    let inside = Path::new("b/file");
    assert_eq!(
        reason(Path::new("a/link"), FileType::Symlink, Some(inside)),
        None
    );
}

#[test]
fn symlink_climbing_through_another_link_is_sensitive() {
    // `b` may itself be a link to `.`, so `b/b/..` can leave the workspace.
    let climbing = Path::new("b/b/..");
    assert!(reason(Path::new("up"), FileType::Symlink, Some(climbing)).is_some());
    let sibling = Path::new("../b/file");
    assert!(reason(Path::new("a/link"), FileType::Symlink, Some(sibling)).is_some());
}

#[test]
fn symlink_into_git_dir_is_sensitive() {
    let target = Path::new("../.git/hooks/pre-commit");
    assert!(reason(Path::new("docs/hook"), FileType::Symlink, Some(target)).is_some());
    let target = Path::new("../.git");
    assert!(reason(Path::new("docs/repo"), FileType::Symlink, Some(target)).is_some());
}

#[test]
fn symlink_standing_for_github_dir_is_sensitive() {
    let target = Path::new("elsewhere");
    assert!(reason(Path::new(".github"), FileType::Symlink, Some(target)).is_some());
    assert!(reason(Path::new("x/.config"), FileType::Symlink, Some(target)).is_some());
    assert_eq!(reason(Path::new(".github"), FileType::Dir, None), None);
}
