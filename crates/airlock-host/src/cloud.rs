//! Cloud credentials, checked for presence only: no value is printed and no endpoint is
//! contacted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::Fact;

/// Reports where AWS credentials would come from, in the order the AWS SDKs look: the
/// environment, then the shared credentials file of `AWS_PROFILE` or the default profile.
/// `env` reads a variable and `home` is the caller's home directory.
pub fn aws_fact(env: &dyn Fn(&str) -> Option<OsString>, home: Option<&Path>) -> Fact {
    let (id, name) = ("aws_credentials", "AWS credentials");
    let is_set = |variable: &str| env(variable).is_some_and(|value| !value.is_empty());
    let mut sources = Vec::new();
    match (is_set("AWS_ACCESS_KEY_ID"), is_set("AWS_SECRET_ACCESS_KEY")) {
        (true, true) => {
            sources.push("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment".into())
        }
        (true, false) | (false, true) => {
            return Fact::broken(
                id,
                name,
                "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set",
                "set both, or unset both to use the shared credentials file",
            );
        }
        (false, false) => {}
    }
    if is_set("AWS_PROFILE") {
        sources.push("AWS_PROFILE is set".to_owned());
    }
    if let Some(file) = credentials_file(env, home).filter(|file| file.is_file()) {
        sources.push(format!("{} exists", file.display()));
    }
    if sources.is_empty() {
        return Fact::missing(
            id,
            name,
            "none in the environment or in a shared credentials file",
            "only the cloud backend needs them: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or run `aws configure`",
        );
    }
    Fact::ok(
        id,
        name,
        format!("{} (values not read)", sources.join("; ")),
    )
}

/// Returns the shared credentials file: `AWS_SHARED_CREDENTIALS_FILE`, else
/// ~/.aws/credentials.
fn credentials_file(
    env: &dyn Fn(&str) -> Option<OsString>,
    home: Option<&Path>,
) -> Option<PathBuf> {
    env("AWS_SHARED_CREDENTIALS_FILE")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .or_else(|| home.map(|home| home.join(".aws/credentials")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn environment_keys_count_without_showing_values() {
        let env = env_of(vec![
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ]);
        let fact = aws_fact(&env, None);
        assert_eq!(fact.status, Status::Ok);
        assert!(!fact.detail.contains(SECRET), "{}", fact.detail);
        assert!(
            !fact.detail.contains("AKIAIOSFODNN7EXAMPLE"),
            "{}",
            fact.detail
        );
    }

    #[test]
    fn half_set_keys_are_broken() {
        let env = env_of(vec![("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE".into())]);
        assert_eq!(aws_fact(&env, None).status, Status::Broken);
    }

    #[test]
    fn shared_credentials_file_is_found_in_home() {
        let home = tempfile::tempdir().unwrap();
        let env = env_of(vec![]);
        assert_eq!(aws_fact(&env, Some(home.path())).status, Status::Missing);
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        let file = home.path().join(".aws/credentials");
        std::fs::write(
            &file,
            format!("[default]\naws_secret_access_key = {SECRET}\n"),
        )
        .unwrap();
        let fact = aws_fact(&env, Some(home.path()));
        assert_eq!(fact.status, Status::Ok);
        assert!(
            fact.detail.contains(".aws/credentials exists"),
            "{}",
            fact.detail
        );
        assert!(!fact.detail.contains(SECRET));
    }

    #[test]
    fn shared_credentials_file_variable_wins_over_home() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(&file, "[default]\n").unwrap();
        let env = env_of(vec![(
            "AWS_SHARED_CREDENTIALS_FILE",
            file.display().to_string(),
        )]);
        let fact = aws_fact(&env, Some(Path::new("/nonexistent")));
        assert_eq!(fact.status, Status::Ok);
        assert!(fact.detail.contains("creds exists"), "{}", fact.detail);
    }
}
