//! Changes that can make the host run code later: git hooks and config, shell startup
//! files, CI definitions, editor tasks, and symlinks that lead outside the workspace or
//! into one of those paths. Apply skips them unless the caller names their path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use crate::change::FileType;

/// A run of path components that marks a sensitive path wherever it appears, at any depth.
/// The path itself and everything below it match.
struct Rule {
    components: &'static [&'static str],
    reason: &'static str,
}

const fn rule(components: &'static [&'static str], reason: &'static str) -> Rule {
    Rule { components, reason }
}

const GIT: &str = "git metadata, whose hooks and config run commands";
const SHELL: &str = "shell startup file, run by the next shell";
const CI: &str = "CI definition, run by the CI service";
const EDITOR: &str = "editor settings and tasks, which can run commands";

/// Paths whose contents run as code on the host or in CI. Rules match at any depth, because
/// nested repositories, per-directory direnv files and editors opened on a subdirectory
/// read them there too. Matching ignores ASCII case, for case-insensitive file systems.
const RULES: &[Rule] = &[
    rule(&[".git"], GIT),
    rule(
        &[".gitmodules"],
        "git submodule definitions, with URLs and update commands",
    ),
    rule(
        &[".gitattributes"],
        "git attributes, which select filter and diff commands",
    ),
    rule(&[".bashrc"], SHELL),
    rule(&[".bash_profile"], SHELL),
    rule(&[".bash_login"], SHELL),
    rule(&[".bash_logout"], SHELL),
    rule(&[".profile"], SHELL),
    rule(&[".zshrc"], SHELL),
    rule(&[".zshenv"], SHELL),
    rule(&[".zprofile"], SHELL),
    rule(&[".zlogin"], SHELL),
    rule(&[".zlogout"], SHELL),
    rule(&[".config", "fish"], SHELL),
    rule(
        &[".envrc"],
        "direnv file, run when a shell enters the directory",
    ),
    rule(&[".github", "workflows"], CI),
    rule(&[".github", "actions"], CI),
    rule(&[".gitlab-ci.yml"], CI),
    rule(&[".circleci"], CI),
    rule(&[".travis.yml"], CI),
    rule(&["Jenkinsfile"], CI),
    rule(&["azure-pipelines.yml"], CI),
    rule(&[".buildkite"], CI),
    rule(&[".vscode"], EDITOR),
    rule(&[".idea"], EDITOR),
    rule(&[".pre-commit-config.yaml"], "pre-commit hook definitions"),
    rule(&[".husky"], "git hooks installed by husky"),
    rule(
        &[".devcontainer"],
        "dev container definition, built and run by the editor",
    ),
    rule(&[".hg", "hgrc"], "Mercurial configuration, with hooks"),
    rule(&[".forgejo", "workflows"], CI),
    rule(&[".gitea", "workflows"], CI),
    rule(&["bitbucket-pipelines.yml"], CI),
    rule(&[".drone.yml"], CI),
    rule(&[".woodpecker.yml"], CI),
    rule(&[".woodpecker"], CI),
    rule(&[".yarnrc.yml"], PACKAGE_MANAGER),
    rule(&[".yarnrc"], PACKAGE_MANAGER),
    rule(&[".npmrc"], PACKAGE_MANAGER),
    rule(&[".pnpmfile.cjs"], PACKAGE_MANAGER),
    rule(&[".mise.toml"], TOOL),
    rule(&["mise.toml"], TOOL),
    rule(&[".mise"], TOOL),
    rule(&[".config", "mise"], TOOL),
    rule(
        &[".devcontainer.json"],
        "dev container definition, built and run by the editor",
    ),
    rule(&[".tool-versions"], TOOL),
    rule(&[".nvim.lua"], EDITOR),
    rule(&[".exrc"], EDITOR),
    rule(&[".vimrc"], EDITOR),
    rule(&[".dir-locals.el"], EDITOR),
    rule(&[".zed"], EDITOR),
    rule(&["lefthook.yml"], "git hooks installed by lefthook"),
    rule(&[".lefthook.yml"], "git hooks installed by lefthook"),
];

const PACKAGE_MANAGER: &str = "package manager configuration, which can run scripts";
const TOOL: &str = "tool manager configuration, which selects the programs that run";

const ABSOLUTE_LINK: &str = "symlink to an absolute path";
const ESCAPING_LINK: &str = "symlink that leads outside the workspace";
const CLIMBING_LINK: &str = "symlink whose target climbs with `..`";
const LINK_TO_SENSITIVE: &str = "symlink to a sensitive path";
const LINK_FOR_SENSITIVE_DIR: &str = "symlink in place of a directory with sensitive files";

/// Returns why `path`, relative to the workspace, is sensitive by its name alone.
pub fn path_reason(path: &Path) -> Option<&'static str> {
    let names = normal_names(path);
    RULES
        .iter()
        .find(|rule| contains_run(&names, rule.components))
        .map(|rule| rule.reason)
}

/// Returns why a change to `path` is sensitive. A symlink (with its `symlink_target`) is
/// also sensitive when its target is absolute or leaves the workspace, when the target
/// resolves to a sensitive path, or when the link is where a rule expects a directory
/// (`.github` as a link would let CI read workflows from anywhere). Targets are resolved
/// lexically: a target that goes through another symlink is judged by its text.
pub fn reason(
    path: &Path,
    file_type: FileType,
    symlink_target: Option<&Path>,
) -> Option<&'static str> {
    if let Some(reason) = path_reason(path) {
        return Some(reason);
    }
    if file_type != FileType::Symlink {
        return None;
    }
    if ends_with_rule_prefix(&normal_names(path)) {
        return Some(LINK_FOR_SENSITIVE_DIR);
    }
    let target = symlink_target?;
    if target.has_root() {
        return Some(ABSOLUTE_LINK);
    }
    // A `..` after a symlink component can leave the workspace in a way that no lexical
    // resolution detects, so any link that climbs is flagged.
    if target
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return Some(CLIMBING_LINK);
    }
    let Some(resolved) = resolve_in_workspace(path, target) else {
        return Some(ESCAPING_LINK);
    };
    let resolved: Vec<&OsStr> = resolved.iter().map(|name| OsStr::new(*name)).collect();
    let into_sensitive = RULES
        .iter()
        .any(|rule| contains_run(&resolved, rule.components));
    if into_sensitive || ends_with_rule_prefix(&resolved) {
        return Some(LINK_TO_SENSITIVE);
    }
    None
}

fn normal_names(path: &Path) -> Vec<&OsStr> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

fn same_name(name: &OsStr, expected: &str) -> bool {
    name.as_bytes().eq_ignore_ascii_case(expected.as_bytes())
}

/// Returns whether `names` contains `run` as consecutive components.
fn contains_run(names: &[&OsStr], run: &[&str]) -> bool {
    names.windows(run.len()).any(|window| {
        window
            .iter()
            .zip(run)
            .all(|(name, expected)| same_name(name, expected))
    })
}

/// Returns whether `names` ends with a proper prefix of a rule's components, such as `.github` for
/// the rule `.github/workflows`.
fn ends_with_rule_prefix(names: &[&OsStr]) -> bool {
    RULES.iter().any(|rule| {
        (1..rule.components.len()).any(|len| {
            let prefix = &rule.components[..len];
            names.len() >= len && contains_run(&names[names.len() - len..], prefix)
        })
    })
}

/// Resolves a relative symlink `target` from the directory of the link at `link`, by text
/// alone, and returns its components from the workspace root, or `None` when `..` climbs
/// above the root.
fn resolve_in_workspace<'p>(link: &'p Path, target: &'p Path) -> Option<Vec<&'p OsStr>> {
    let mut resolved: Vec<&OsStr> = normal_names(link.parent().unwrap_or(Path::new("")));
    for component in target.components() {
        match component {
            Component::Normal(name) => resolved.push(name),
            Component::ParentDir => {
                resolved.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(resolved)
}

#[cfg(test)]
mod tests;
