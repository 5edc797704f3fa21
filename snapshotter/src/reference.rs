//! Image references (`[domain/]path[:tag][@digest]`), parsed, validated and
//! normalised the way Docker and containerd do it: a missing domain means
//! `docker.io`, a one-component Docker Hub name gets `library/`, and `:latest`
//! is added when neither a tag nor a digest is given.
//! Runs in cairnd (the image side).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry used when a reference names none.
const DEFAULT_DOMAIN: &str = "docker.io";
/// An older spelling of Docker Hub, folded into [`DEFAULT_DOMAIN`].
const LEGACY_DOMAIN: &str = "index.docker.io";
/// The namespace of Docker Hub's official images.
const OFFICIAL_NAMESPACE: &str = "library";
/// The tag used when a reference has neither tag nor digest.
const DEFAULT_TAG: &str = "latest";
/// The longest name (domain and repository) a registry accepts.
const MAX_NAME_LEN: usize = 255;
/// The longest tag the distribution spec allows.
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference such as `busybox`, `user/app:1`,
    /// `registry.k8s.io/pause:3.9`, `127.0.0.1:5000/a/b` or `name@sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Reference> {
        parse_reference(s)
            .map_err(|why| Error::InvalidArgument(format!("invalid image reference {s:?}: {why}")))
    }

    /// The registry host, with port if any: `docker.io`, `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry: `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` is filled in only when no digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Domain and repository: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }

    /// `name:tag` (a RepoTag) when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest` with the tag dropped (a RepoDigest).
    pub fn with_digest(&self, d: &Digest) -> Reference {
        Reference {
            domain: self.domain.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(d.clone()),
        }
    }

    /// Docker's short form: `busybox:latest`, `user/app:1` for Docker Hub, the
    /// full form for every other registry.
    pub fn familiar(&self) -> String {
        let mut out = if self.domain == DEFAULT_DOMAIN {
            self.familiar_repository().to_string()
        } else {
            self.name()
        };
        self.push_suffix(&mut out);
        out
    }

    /// The Docker Hub repository without `library/` for official images.
    fn familiar_repository(&self) -> &str {
        match self.repository.split_once('/') {
            Some((OFFICIAL_NAMESPACE, rest)) if !rest.contains('/') => rest,
            _ => &self.repository,
        }
    }

    /// Appends `:tag` and `@digest` when present.
    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

/// True when `s` is an image ID or digest rather than a name: `sha256:<64 hex>`
/// or a bare 64-character lowercase hex string. Shorter ID prefixes are left to
/// the image store to resolve.
pub fn is_image_id(s: &str) -> bool {
    is_hex64(s) || Digest::parse(s).is_ok()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses a reference; the error is the reason only, the caller adds the input.
fn parse_reference(s: &str) -> std::result::Result<Reference, String> {
    if s.is_empty() {
        return Err("empty reference".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".into());
    }
    if is_hex64(s) {
        return Err("a 64-character hex string is an image ID, not a repository name".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => (rest, Some(Digest::parse(d).map_err(|e| e.to_string())?)),
        None => (s, None),
    };
    let (name, tag) = split_tag(rest);
    if let Some(tag) = tag {
        validate_tag(tag)?;
    }
    let (domain, path) = split_domain(name);
    let domain = match domain {
        Some(d) => {
            validate_domain(d)?;
            if d == LEGACY_DOMAIN {
                DEFAULT_DOMAIN
            } else {
                d
            }
        }
        None => DEFAULT_DOMAIN,
    };
    validate_path(path)?;
    let repository = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{path}")
    } else {
        path.to_string()
    };
    if domain.len() + 1 + repository.len() > MAX_NAME_LEN {
        return Err(format!(
            "repository name must not be longer than {MAX_NAME_LEN} characters"
        ));
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (None, Some(_)) => None,
    };
    Ok(Reference {
        domain: domain.to_string(),
        repository,
        tag,
        digest,
    })
}

/// Splits `name[:tag]`: a tag is whatever follows the last ':' after the last
/// '/' (a ':' before a '/' belongs to the domain's port).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let last_slash = s.rfind('/');
    match s.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&s[..colon], Some(&s[colon + 1..]))
        }
        _ => (s, None),
    }
}

/// Splits off the domain: the first component is one when it contains '.' or
/// ':' or is `localhost`.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("tag is longer than {MAX_TAG_LEN} characters"));
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let ok = word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-');
    if !ok {
        return Err(format!(
            "invalid tag {tag:?}: only letters, digits, '_', '.' and '-' are allowed, \
             and it must not start with '.' or '-'"
        ));
    }
    Ok(())
}

/// Checks `host[:port]`, where host is a DNS name, an IPv4 address or a
/// bracketed IPv6 address.
fn validate_domain(domain: &str) -> std::result::Result<(), String> {
    let (host_ok, port) = if let Some(inner) = domain.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(format!("invalid domain {domain:?}: unclosed '['"));
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("invalid domain {domain:?}")),
            },
        };
        (is_ipv6_literal(addr), port)
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (is_dns_name(host), Some(port)),
            None => (is_dns_name(domain), None),
        }
    };
    if !host_ok {
        return Err(format!("invalid domain {domain:?}"));
    }
    if let Some(port) = port {
        let numeric = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if !numeric || port.parse::<u16>().is_err() {
            return Err(format!(
                "invalid port {port:?} in domain {domain:?}: must be a number up to 65535"
            ));
        }
    }
    Ok(())
}

fn is_ipv6_literal(addr: &str) -> bool {
    !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
}

/// Dot-separated labels of letters, digits and inner '-'.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks the repository path: '/'-separated components of lowercase letters
/// and digits joined by '.', '_', '__' or runs of '-'.
fn validate_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name".into());
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err("empty path component (a leading, trailing or doubled '/')".into());
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("repository name must be lowercase".into());
        }
        if !is_path_component(component) {
            return Err(format!(
                "invalid path component {component:?}: use lowercase letters and digits \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    struct Case {
        input: String,
        display: String,
        domain: &'static str,
        repository: &'static str,
        tag: Option<&'static str>,
        digest: bool,
        familiar: String,
    }

    fn case(
        input: &str,
        display: &str,
        domain: &'static str,
        repository: &'static str,
        tag: Option<&'static str>,
        familiar: &str,
    ) -> Case {
        Case {
            input: input.into(),
            display: display.into(),
            domain,
            repository,
            tag,
            digest: input.contains('@'),
            familiar: familiar.into(),
        }
    }

    #[test]
    fn parses_and_normalises() {
        let d = format!("sha256:{}", hex('a'));
        let cases = vec![
            case(
                "busybox",
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
                "busybox:latest",
            ),
            case(
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                "busybox:1.36",
            ),
            case(
                "user/app",
                "docker.io/user/app:latest",
                "docker.io",
                "user/app",
                Some("latest"),
                "user/app:latest",
            ),
            case(
                "user/app:1",
                "docker.io/user/app:1",
                "docker.io",
                "user/app",
                Some("1"),
                "user/app:1",
            ),
            case(
                "library/busybox",
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
                "busybox:latest",
            ),
            case(
                "docker.io/busybox",
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
                "busybox:latest",
            ),
            case(
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
                "busybox:latest",
            ),
            case(
                "index.docker.io/x",
                "docker.io/library/x:latest",
                "docker.io",
                "library/x",
                Some("latest"),
                "x:latest",
            ),
            case(
                "index.docker.io/u/x:2",
                "docker.io/u/x:2",
                "docker.io",
                "u/x",
                Some("2"),
                "u/x:2",
            ),
            case(
                "docker.io/library/a/b",
                "docker.io/library/a/b:latest",
                "docker.io",
                "library/a/b",
                Some("latest"),
                "library/a/b:latest",
            ),
            case(
                "127.0.0.1:5000/a/b",
                "127.0.0.1:5000/a/b:latest",
                "127.0.0.1:5000",
                "a/b",
                Some("latest"),
                "127.0.0.1:5000/a/b:latest",
            ),
            case(
                "127.0.0.1:5000/a:v1",
                "127.0.0.1:5000/a:v1",
                "127.0.0.1:5000",
                "a",
                Some("v1"),
                "127.0.0.1:5000/a:v1",
            ),
            case(
                "localhost/a",
                "localhost/a:latest",
                "localhost",
                "a",
                Some("latest"),
                "localhost/a:latest",
            ),
            case(
                "localhost:5000/a",
                "localhost:5000/a:latest",
                "localhost:5000",
                "a",
                Some("latest"),
                "localhost:5000/a:latest",
            ),
            case(
                "localhost:5000",
                "docker.io/library/localhost:5000",
                "docker.io",
                "library/localhost",
                Some("5000"),
                "localhost:5000",
            ),
            case(
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io",
                "pause",
                Some("3.9"),
                "registry.k8s.io/pause:3.9",
            ),
            case(
                "quay.io/a/b/c-d__e.f:x_Y.z-1",
                "quay.io/a/b/c-d__e.f:x_Y.z-1",
                "quay.io",
                "a/b/c-d__e.f",
                Some("x_Y.z-1"),
                "quay.io/a/b/c-d__e.f:x_Y.z-1",
            ),
            case(
                "[::1]:5000/a",
                "[::1]:5000/a:latest",
                "[::1]:5000",
                "a",
                Some("latest"),
                "[::1]:5000/a:latest",
            ),
            case(
                "[fe80::1]/a",
                "[fe80::1]/a:latest",
                "[fe80::1]",
                "a",
                Some("latest"),
                "[fe80::1]/a:latest",
            ),
            case(
                "Example.COM/a",
                "Example.COM/a:latest",
                "Example.COM",
                "a",
                Some("latest"),
                "Example.COM/a:latest",
            ),
            case(
                "a---b/c",
                "docker.io/a---b/c:latest",
                "docker.io",
                "a---b/c",
                Some("latest"),
                "a---b/c:latest",
            ),
            case(
                "sha256",
                "docker.io/library/sha256:latest",
                "docker.io",
                "library/sha256",
                Some("latest"),
                "sha256:latest",
            ),
            case(
                &format!("busybox@{d}"),
                &format!("docker.io/library/busybox@{d}"),
                "docker.io",
                "library/busybox",
                None,
                &format!("busybox@{d}"),
            ),
            case(
                &format!("busybox:1@{d}"),
                &format!("docker.io/library/busybox:1@{d}"),
                "docker.io",
                "library/busybox",
                Some("1"),
                &format!("busybox:1@{d}"),
            ),
            case(
                &format!("localhost:5000/a@{d}"),
                &format!("localhost:5000/a@{d}"),
                "localhost:5000",
                "a",
                None,
                &format!("localhost:5000/a@{d}"),
            ),
        ];
        for c in cases {
            let r = Reference::parse(&c.input).unwrap_or_else(|e| panic!("{}: {e}", c.input));
            assert_eq!(r.to_string(), c.display, "display of {}", c.input);
            assert_eq!(r.domain(), c.domain, "domain of {}", c.input);
            assert_eq!(r.repository(), c.repository, "repository of {}", c.input);
            assert_eq!(r.tag(), c.tag, "tag of {}", c.input);
            assert_eq!(r.digest().is_some(), c.digest, "digest of {}", c.input);
            assert_eq!(r.familiar(), c.familiar, "familiar of {}", c.input);
            assert_eq!(r.name(), format!("{}/{}", c.domain, c.repository));
            // Round trip: the normalised form parses to the same reference,
            // and so does the familiar form.
            assert_eq!(
                Reference::parse(&c.display).unwrap(),
                r,
                "reparse of {}",
                c.display
            );
            assert_eq!(
                Reference::parse(&c.familiar).unwrap(),
                r,
                "reparse of {}",
                c.familiar
            );
            assert_eq!(c.input.parse::<Reference>().unwrap(), r);
        }
    }

    #[test]
    fn rejects_invalid() {
        let long_tag = "t".repeat(129);
        let long_name = format!("example.com/{}", "a".repeat(250));
        let cases: Vec<String> = vec![
            "".into(),
            "Busybox".into(),
            "user/App".into(),
            "UPPER/app".into(),
            "a b".into(),
            " busybox".into(),
            "busybox ".into(),
            "a\tb".into(),
            "busybox:".into(),
            "busybox:-x".into(),
            "busybox:.x".into(),
            "busybox:a+b".into(),
            "busybox:a/b".into(),
            format!("busybox:{long_tag}"),
            "busybox@".into(),
            "busybox@sha256:abc".into(),
            format!("busybox@md5:{}", hex('a')),
            format!("busybox@sha256:{}", hex('A')),
            "a/".into(),
            "/a".into(),
            "a//b".into(),
            "example.com/".into(),
            "example.com//a".into(),
            "-a".into(),
            "a-".into(),
            "a.".into(),
            "a..b".into(),
            "a___b".into(),
            "a_-b".into(),
            "a$b".into(),
            "example.com:port/a".into(),
            "example.com:/a".into(),
            "example.com:99999/a".into(),
            "-example.com/a".into(),
            "exa_mple.com/a".into(),
            "example..com/a".into(),
            "[::1/a".into(),
            "[]:5000/a".into(),
            "[::1]x/a".into(),
            "[::1]:5000".into(),
            "@sha256:x".into(),
            ":tag".into(),
            long_name,
            hex('a'),
        ];
        for input in cases {
            match Reference::parse(&input) {
                Err(Error::InvalidArgument(msg)) => {
                    assert!(
                        msg.contains(&format!("{input:?}")),
                        "{msg} should name {input:?}"
                    )
                }
                other => panic!("{input:?}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn with_digest_drops_tag() {
        let d = Digest::of(b"manifest");
        let r = Reference::parse("registry.k8s.io/pause:3.9").unwrap();
        let pinned = r.with_digest(&d);
        assert_eq!(pinned.to_string(), format!("registry.k8s.io/pause@{d}"));
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned.digest(), Some(&d));
        assert_eq!(pinned.tagged(), None);
        assert_eq!(r.tagged().unwrap(), "registry.k8s.io/pause:3.9");
    }

    #[test]
    fn tagged_and_digest_only() {
        let d = format!("sha256:{}", hex('b'));
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tagged(), None);
        assert_eq!(r.digest().unwrap().to_string(), d);
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.tagged().unwrap(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn max_length_tag_is_accepted() {
        let tag = "t".repeat(128);
        let r = Reference::parse(&format!("busybox:{tag}")).unwrap();
        assert_eq!(r.tag(), Some(tag.as_str()));
        let r = Reference::parse("busybox:_x").unwrap();
        assert_eq!(r.tag(), Some("_x"));
    }

    #[test]
    fn image_ids() {
        assert!(is_image_id(&hex('a')));
        assert!(is_image_id(&format!("sha256:{}", hex('0'))));
        assert!(!is_image_id("busybox"));
        assert!(!is_image_id(&hex('a')[..12]));
        assert!(!is_image_id(&hex('A')));
        assert!(!is_image_id(&format!("sha256:{}", &hex('a')[..63])));
        assert!(!is_image_id(&format!("md5:{}", hex('a'))));
    }
}
