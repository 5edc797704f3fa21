//! The registry client: which endpoints serve a registry (mirrors, then the registry
//! itself), how to reach each (HTTP or HTTPS, CA, verification), credentials, and the two
//! requests a pull needs — a manifest and a blob stream — built on `oci-client`.
//! Runs in cairnd (the image side).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::ACCEPTED_MANIFESTS;
use crate::reference::Reference;

/// Settings of one registry host, from the daemon's config.
#[derive(Debug, Clone, Default)]
pub struct RegistryHost {
    /// Mirror endpoints (`http://host:port` or `https://host`), tried in order before the registry.
    pub mirrors: Vec<String>,
    /// Plain HTTP allowed and TLS certificates not verified.
    pub insecure: bool,
    /// An extra CA (PEM) trusted for this registry and its mirrors.
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials used when the CRI request carries none.
    pub credentials: Option<(String, String)>,
}

/// Registry settings for the whole node.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub hosts: BTreeMap<String, RegistryHost>,
    /// localhost and 127.0.0.0/8 are insecure unless configured otherwise (as Docker treats them).
    pub insecure_localhost: bool,
    pub connect_timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            hosts: BTreeMap::new(),
            insecure_localhost: true,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Credentials for one pull, from CRI's `AuthConfig`.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic(String, String),
    /// A registry token used as-is (CRI `registry_token`).
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic(u, _) => write!(f, "Basic({u}, <redacted>)"),
            Credentials::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// A fingerprint that tells credentials apart without keeping them readable.
    fn fingerprint(&self) -> String {
        let text = match self {
            Credentials::Anonymous => String::new(),
            Credentials::Basic(u, p) => format!("basic\0{u}\0{p}"),
            Credentials::Bearer(t) => format!("bearer\0{t}"),
        };
        Digest::of(text.as_bytes()).hex().to_string()
    }

    fn to_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic(u, p) => RegistryAuth::Basic(u.clone(), p.clone()),
            Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// How one registry (and its mirrors) is reached, and as whom.
struct Access {
    insecure: bool,
    ca_pem: Option<Vec<u8>>,
    /// Fingerprint of the credentials.
    who: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    Http,
    Https,
}

/// One place a repository can be fetched from.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    scheme: Scheme,
    mirror: bool,
    client: Arc<oci_client::Client>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url())
    }
}

impl Endpoint {
    /// `http://host` or `https://host`, for messages.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}", self.host)
    }

    fn oci_ref(&self, reference: &Reference, digest: Option<&Digest>) -> oci_client::Reference {
        // The upstream docker.io is served by index.docker.io; oci-client maps that
        // itself. Mirrors are addressed as they are, repository path kept.
        let host = self.host.clone();
        let repo = reference.repository().to_string();
        match (digest.or(reference.digest()), reference.tag()) {
            (Some(d), _) => oci_client::Reference::with_digest(host, repo, d.to_string()),
            (None, t) => oci_client::Reference::with_tag(host, repo, t.unwrap_or("latest").into()),
        }
    }
}

/// A fetched manifest (or index) and where it came from.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub endpoint: Endpoint,
    pub body: Bytes,
    pub digest: Digest,
}

/// A blob's byte stream, not yet verified.
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// (host, scheme, is a mirror, credentials fingerprint).
type ClientKey = (String, Scheme, bool, String);

/// All registries of the node: endpoint resolution and one HTTP client per endpoint,
/// kept so that connections and bearer tokens are reused across pulls.
pub struct Registries {
    settings: RegistrySettings,
    /// Keyed by credentials too: oci-client keeps the first credentials it saw for a host.
    clients: Mutex<HashMap<ClientKey, Arc<oci_client::Client>>>,
}

impl Registries {
    pub fn new(settings: RegistrySettings) -> Self {
        // TLS uses rustls with the ring provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The credentials configured for a registry host, if any.
    pub fn configured_credentials(&self, domain: &str) -> Option<Credentials> {
        let (u, p) = self.settings.hosts.get(domain)?.credentials.clone()?;
        Some(Credentials::Basic(u, p))
    }

    /// The endpoints to try for `domain`, in order: its mirrors, then itself (over HTTPS,
    /// then plain HTTP if the registry is insecure).
    pub fn endpoints(&self, domain: &str, credentials: &Credentials) -> Result<Vec<Endpoint>> {
        let host = self.settings.hosts.get(domain).cloned().unwrap_or_default();
        let access = Access {
            insecure: host.insecure || (self.settings.insecure_localhost && is_local(domain)),
            ca_pem: host.ca_pem.clone(),
            who: credentials.fingerprint(),
        };
        let mut out = Vec::new();
        for mirror in &host.mirrors {
            let (scheme, mhost) = split_url(mirror)?;
            out.push(self.endpoint(&mhost, scheme, true, &access)?);
        }
        out.push(self.endpoint(domain, Scheme::Https, false, &access)?);
        if access.insecure {
            out.push(self.endpoint(domain, Scheme::Http, false, &access)?);
        }
        Ok(out)
    }

    fn endpoint(
        &self,
        host: &str,
        scheme: Scheme,
        mirror: bool,
        access: &Access,
    ) -> Result<Endpoint> {
        let key = (host.to_string(), scheme, mirror, access.who.clone());
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| Error::Internal("registry client cache poisoned".into()))?;
        let client = clients
            .entry(key)
            .or_insert_with(|| Arc::new(self.make_client(scheme, access)))
            .clone();
        Ok(Endpoint {
            host: host.to_string(),
            scheme,
            mirror,
            client,
        })
    }

    fn make_client(&self, scheme: Scheme, access: &Access) -> oci_client::Client {
        let config = ClientConfig {
            protocol: match scheme {
                Scheme::Http => ClientProtocol::Http,
                Scheme::Https => ClientProtocol::Https,
            },
            accept_invalid_certificates: access.insecure,
            extra_root_certificates: access
                .ca_pem
                .as_ref()
                .map(|pem| {
                    vec![Certificate {
                        encoding: CertificateEncoding::Pem,
                        data: pem.to_vec(),
                    }]
                })
                .unwrap_or_default(),
            connect_timeout: Some(self.settings.connect_timeout),
            read_timeout: Some(Duration::from_secs(60)),
            max_concurrent_download: 16,
            user_agent: concat!("cairn/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        oci_client::Client::new(config)
    }

    /// Fetches the manifest `reference` names, trying each endpoint in order.
    /// A mirror that fails in any way is skipped; the registry's own answer decides.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        credentials: &Credentials,
    ) -> Result<FetchedManifest> {
        let endpoints = self.endpoints(reference.domain(), credentials)?;
        let mut last = None;
        for ep in endpoints {
            match fetch_manifest_at(&ep, reference, None, credentials).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::debug!(endpoint = %ep.url(), error = %e, "manifest fetch failed");
                    let retry = ep.mirror || matches!(e, Error::Unavailable(_));
                    last = Some(e);
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Unavailable(format!("no endpoint for registry {}", reference.domain()))
        }))
    }
}

/// Fetches a manifest by tag (or by `digest` when given) from one endpoint, checking its digest.
pub async fn fetch_manifest_at(
    ep: &Endpoint,
    reference: &Reference,
    digest: Option<&Digest>,
    credentials: &Credentials,
) -> Result<FetchedManifest> {
    let oref = ep.oci_ref(reference, digest);
    let what = format!("manifest of {reference} at {}", ep.url());
    let (body, got) = ep
        .client
        .pull_manifest_raw(&oref, &credentials.to_auth(), ACCEPTED_MANIFESTS)
        .await
        .map_err(|e| classify(e, &what))?;
    let computed = Digest::of(&body);
    if let Some(want) = digest.or(reference.digest()) {
        if *want != computed {
            return Err(Error::BadContent(format!(
                "{what}: digest mismatch: expected {want}, got {computed}"
            )));
        }
    }
    tracing::debug!(%what, digest = %got, "fetched manifest");
    Ok(FetchedManifest {
        endpoint: ep.clone(),
        body,
        digest: computed,
    })
}

/// Fetches a small blob (a config) whole, checking its digest.
pub async fn fetch_blob_bytes(
    ep: &Endpoint,
    reference: &Reference,
    digest: &Digest,
    credentials: &Credentials,
) -> Result<Bytes> {
    use futures::TryStreamExt;
    let mut stream = open_blob(ep, reference, digest, credentials).await?;
    let mut buf = Vec::new();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| Error::Unavailable(format!("blob {digest} of {reference}: {e}")))?
    {
        buf.extend_from_slice(&chunk);
    }
    let got = Digest::of(&buf);
    if got != *digest {
        return Err(Error::BadContent(format!(
            "blob {digest} of {reference}: digest mismatch: got {got}"
        )));
    }
    Ok(Bytes::from(buf))
}

/// Opens a blob as a stream of bytes; the caller verifies the digest as it reads.
pub async fn open_blob(
    ep: &Endpoint,
    reference: &Reference,
    digest: &Digest,
    credentials: &Credentials,
) -> Result<BlobStream> {
    let oref = ep.oci_ref(reference, None);
    let what = format!("blob {digest} of {reference} at {}", ep.url());
    // Authenticate (or reuse the cached token) before asking for the blob.
    ep.client
        .auth(
            &oref,
            &credentials.to_auth(),
            oci_client::RegistryOperation::Pull,
        )
        .await
        .map_err(|e| classify(e, &what))?;
    let digest_str = digest.to_string();
    let sized = ep
        .client
        .pull_blob_stream(&oref, digest_str.as_str())
        .await
        .map_err(|e| classify(e, &what))?;
    Ok(sized.stream)
}

/// Maps an oci-client error onto cairn's error kinds, naming what was being fetched.
fn classify(e: OciDistributionError, what: &str) -> Error {
    match e {
        OciDistributionError::ImageManifestNotFoundError(m) => {
            Error::NotFound(format!("{what}: not found: {m}"))
        }
        OciDistributionError::AuthenticationFailure(m) => {
            Error::Unauthenticated(format!("{what}: authentication failed: {m}"))
        }
        OciDistributionError::UnauthorizedError { url } => {
            Error::Unauthenticated(format!("{what}: not authorized ({url})"))
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            });
            let denied = envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
            if not_found {
                Error::NotFound(format!("{what}: not found: {envelope} ({url})"))
            } else if denied {
                Error::Unauthenticated(format!("{what}: {envelope} ({url})"))
            } else {
                Error::InvalidArgument(format!("{what}: registry refused: {envelope} ({url})"))
            }
        }
        OciDistributionError::ServerError { code, url, message } => match code {
            404 => Error::NotFound(format!("{what}: not found ({url})")),
            401 | 403 => Error::Unauthenticated(format!("{what}: HTTP {code} ({url})")),
            400..=499 => Error::InvalidArgument(format!("{what}: HTTP {code}: {message}")),
            _ => Error::Unavailable(format!("{what}: registry error HTTP {code}: {message}")),
        },
        OciDistributionError::RequestError(e) => {
            Error::Unavailable(format!("{what}: registry unreachable: {}", error_chain(&e)))
        }
        OciDistributionError::IoError(e) => Error::Unavailable(format!("{what}: {e}")),
        OciDistributionError::DigestError(e) => Error::BadContent(format!("{what}: {e}")),
        OciDistributionError::UnsupportedMediaTypeError(m) => {
            Error::InvalidArgument(format!("{what}: unsupported media type {m}"))
        }
        other => Error::Unavailable(format!("{what}: {other}")),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn split_url(url: &str) -> Result<(Scheme, String)> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(Error::InvalidArgument(format!(
            "mirror {url:?}: must start with http:// or https://"
        )));
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "mirror {url:?}: expected scheme://host[:port] without a path"
        )));
    }
    Ok((scheme, host.to_string()))
}

/// localhost and loopback addresses, with or without a port.
fn is_local(domain: &str) -> bool {
    let host = match domain.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => domain,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        assert!(is_local("localhost"));
        assert!(is_local("localhost:5000"));
        assert!(is_local("127.0.0.1:5000"));
        assert!(is_local("127.1.2.3"));
        assert!(is_local("[::1]:5000"));
        assert!(!is_local("docker.io"));
        assert!(!is_local("10.0.0.1:5000"));
    }

    #[test]
    fn endpoints_in_order() {
        let mut settings = RegistrySettings::default();
        settings.hosts.insert(
            "docker.io".into(),
            RegistryHost {
                mirrors: vec!["http://127.0.0.1:5000".into(), "https://m.example/".into()],
                ..Default::default()
            },
        );
        let r = Registries::new(settings);
        let eps: Vec<String> = r
            .endpoints("docker.io", &Credentials::Anonymous)
            .unwrap()
            .iter()
            .map(|e| e.url())
            .collect();
        assert_eq!(
            eps,
            vec![
                "http://127.0.0.1:5000",
                "https://m.example",
                "https://docker.io"
            ]
        );
        let eps: Vec<String> = r
            .endpoints("127.0.0.1:9", &Credentials::Anonymous)
            .unwrap()
            .iter()
            .map(|e| e.url())
            .collect();
        assert_eq!(eps, vec!["https://127.0.0.1:9", "http://127.0.0.1:9"]);
    }

    #[test]
    fn bad_mirror_urls() {
        assert!(split_url("ftp://x").is_err());
        assert!(split_url("http://x/path").is_err());
        assert!(split_url("http://").is_err());
    }
}
