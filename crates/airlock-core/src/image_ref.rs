//! Image references, checked against the grammar of Docker's `distribution/reference`
//! package before any request reaches the engine, so that a bad name fails with the rule it
//! breaks rather than with the engine's own message.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*
//! domain     := host [ ":" port ]         a first part with "." or ":", or "localhost"
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" 64 lowercase hex digits
//! ```

use std::fmt;

/// Maximum length of a name that Docker accepts, domain included, in bytes.
const MAX_NAME_LENGTH: usize = 255;

/// Maximum length of a tag, in bytes.
const MAX_TAG_LENGTH: usize = 128;

/// The rule a rejected reference breaks, as printed in the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRule {
    Empty,
    TooLong,
    Component(String),
    Domain(String),
    Tag(String),
    Digest(String),
    DigestNotAllowed,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRule::Empty => write!(f, "a name is required"),
            NameRule::TooLong => write!(
                f,
                "a name may be at most {MAX_NAME_LENGTH} characters long, the registry host included"
            ),
            NameRule::Component(part) => write!(
                f,
                "path component {part:?} must be lowercase letters and digits, separated by one `.`, one or two `_`, or any number of `-`"
            ),
            NameRule::Domain(part) => write!(
                f,
                "registry host {part:?} must be a host name or IPv4 address with an optional :PORT"
            ),
            NameRule::Tag(tag) => write!(
                f,
                "tag {tag:?} must be 1 to {MAX_TAG_LENGTH} letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
            ),
            NameRule::Digest(digest) => write!(
                f,
                "digest {digest:?} must be sha256: followed by 64 lowercase hexadecimal digits"
            ),
            NameRule::DigestNotAllowed => {
                write!(f, "an imported image gets a tag, not a digest")
            }
        }
    }
}

/// A parsed image reference: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host with its port, when the reference names one.
    pub domain: Option<String>,
    /// The repository path below the registry, such as `library/debian`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference to pull: a name with an optional tag and an optional digest.
    pub fn parse(reference: &str) -> Result<ImageRef, NameRule> {
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(check_digest(digest)?)),
            None => (reference, None),
        };
        let (name, tag) = split_tag(rest);
        let tag = tag.map(check_tag).transpose()?;
        let (domain, path) = split_domain(name);
        if path.is_empty() {
            return Err(NameRule::Empty);
        }
        if name.len() > MAX_NAME_LENGTH {
            return Err(NameRule::TooLong);
        }
        if let Some(domain) = domain {
            check_domain(domain)?;
        }
        for component in path.split('/') {
            check_component(component)?;
        }
        Ok(ImageRef {
            domain: domain.map(str::to_owned),
            path: path.to_owned(),
            tag,
            digest,
        })
    }

    /// Parses the name an import gives its image: a name with an optional tag, no digest.
    pub fn parse_for_import(name: &str) -> Result<ImageRef, NameRule> {
        let parsed = ImageRef::parse(name)?;
        if parsed.digest.is_some() {
            return Err(NameRule::DigestNotAllowed);
        }
        Ok(parsed)
    }

    /// Returns the repository: the reference without its tag and digest.
    pub fn repository(&self) -> String {
        match &self.domain {
            Some(domain) => format!("{domain}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// Returns the tag, or `latest` when the reference gives neither a tag nor a digest, as
    /// Docker's client assumes. The engine API itself would pull every tag of the repository.
    pub fn tag_or_latest(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `name:tag`; a colon before the last `/` belongs to a registry port.
fn split_tag(reference: &str) -> (&str, Option<&str>) {
    let last_slash = reference.rfind('/').map_or(0, |index| index + 1);
    match reference[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (&reference[..colon], Some(&reference[colon + 1..]))
        }
        None => (reference, None),
    }
}

/// Splits the registry host off as Docker does: the first part is a host when it contains
/// `.` or `:`, or is `localhost`.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn check_component(component: &str) -> Result<(), NameRule> {
    let invalid = || NameRule::Component(component.to_owned());
    let bytes = component.as_bytes();
    let alphanumeric = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    if bytes.is_empty() || !alphanumeric(bytes[0]) || !alphanumeric(bytes[bytes.len() - 1]) {
        return Err(invalid());
    }
    let mut index = 0;
    while index < bytes.len() {
        if alphanumeric(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !alphanumeric(bytes[index]) {
            index += 1;
        }
        let separator = &component[start..index];
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return Err(invalid());
        }
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), NameRule> {
    let invalid = || NameRule::Domain(domain.to_owned());
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(invalid());
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<String, NameRule> {
    let word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let bytes = tag.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LENGTH
        && word(bytes[0])
        && bytes.iter().all(|b| word(*b) || *b == b'.' || *b == b'-');
    if valid {
        Ok(tag.to_owned())
    } else {
        Err(NameRule::Tag(tag.to_owned()))
    }
}

fn check_digest(digest: &str) -> Result<String, NameRule> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    let valid = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(digest.to_owned())
    } else {
        Err(NameRule::Digest(digest.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_port_is_not_a_tag() {
        let parsed = ImageRef::parse("127.0.0.1:5000/airlock/test").unwrap();
        assert_eq!(parsed.domain.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(parsed.path, "airlock/test");
        assert_eq!(parsed.tag, None);
        assert_eq!(parsed.tag_or_latest(), Some("latest"));

        let tagged = ImageRef::parse("127.0.0.1:5000/airlock/test:v1.2").unwrap();
        assert_eq!(tagged.tag.as_deref(), Some("v1.2"));
        assert_eq!(tagged.to_string(), "127.0.0.1:5000/airlock/test:v1.2");
    }

    #[test]
    fn short_names_have_no_domain() {
        let parsed = ImageRef::parse("debian:bookworm").unwrap();
        assert_eq!(parsed.domain, None);
        assert_eq!(parsed.repository(), "debian");
        let localhost = ImageRef::parse("localhost/tools").unwrap();
        assert_eq!(localhost.domain.as_deref(), Some("localhost"));
    }

    #[test]
    fn digest_pins_without_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let parsed = ImageRef::parse(&format!("debian@{digest}")).unwrap();
        assert_eq!(parsed.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(parsed.tag_or_latest(), None);
        assert_eq!(
            ImageRef::parse_for_import(&format!("debian@{digest}")),
            Err(NameRule::DigestNotAllowed)
        );
    }

    #[test]
    fn invalid_names_name_the_broken_rule() {
        let cases = [
            ("", NameRule::Empty),
            ("Debian", NameRule::Component("Debian".into())),
            ("a//b", NameRule::Component("".into())),
            ("a/-b", NameRule::Component("-b".into())),
            ("a/b.", NameRule::Component("b.".into())),
            ("a/b...c", NameRule::Component("b...c".into())),
            ("a/b___c", NameRule::Component("b___c".into())),
            ("debian:", NameRule::Tag("".into())),
            ("debian:.hidden", NameRule::Tag(".hidden".into())),
            ("debian:a b", NameRule::Tag("a b".into())),
            ("host_x.io/a", NameRule::Domain("host_x.io".into())),
            ("host.io:port/a", NameRule::Domain("host.io:port".into())),
            ("debian@sha256:abc", NameRule::Digest("sha256:abc".into())),
        ];
        for (name, rule) in cases {
            assert_eq!(ImageRef::parse(name), Err(rule), "{name:?}");
        }
        let long = format!("a/{}", "b".repeat(MAX_NAME_LENGTH));
        assert_eq!(ImageRef::parse(&long), Err(NameRule::TooLong));
        let long_tag = format!("a:{}", "t".repeat(MAX_TAG_LENGTH + 1));
        assert!(matches!(ImageRef::parse(&long_tag), Err(NameRule::Tag(_))));
    }

    #[test]
    fn separators_follow_docker_grammar() {
        for name in ["a/b-c", "a/b--c", "a/b_c", "a/b__c", "a/b.c", "a0/9b"] {
            assert!(ImageRef::parse(name).is_ok(), "{name:?}");
        }
    }
}
