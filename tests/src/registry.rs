//! A private Docker registry (Debian's `docker-registry`, distribution 2.8) per test.
//!
//! [`Registry::start`] writes a config into a fresh temp dir (filesystem storage inside it,
//! deletes enabled, a free port on 127.0.0.1, optional self-signed TLS and htpasswd auth),
//! runs `docker-registry serve CONFIG` with stdout and stderr going to `registry.log` in that
//! dir, and returns once `GET /v2/` answers 200 or 401. Dropping the [`Registry`] stops the
//! process (SIGTERM, SIGKILL after 2 s) and removes the dir.
//!
//! # Access log
//!
//! distribution 2.8 writes one Apache "combined" line to stdout per HTTP request, after the
//! response has been sent, whatever its status (401s and HEADs included):
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:07:02:34 +0000] "GET /v2/_catalog HTTP/1.1" 200 20 "" "curl/7.88.1"
//! ```
//!
//! Its logrus lines (`level=info msg="response completed" http.request.method=GET
//! http.request.uri=...`) are not written for every request (not for 401s, for one), so
//! [`Registry::requests`] and [`Registry::count_requests`] parse the combined lines only.
//! Because the line is written after the response, a client may see the response a moment
//! before the line exists: use [`Registry::wait_for_requests`] when counting right after a
//! request returned.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

use crate::util::{free_port, run_checked, stop_child, tail};

/// How long [`Registry::start`] waits for `GET /v2/` to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a start is retried on a fresh port when the port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// What kind of registry to start.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1 and localhost.
    pub tls: bool,
    /// Require HTTP basic auth with this user and password (bcrypt htpasswd file).
    /// distribution 2.8 accepts htpasswd over plain HTTP too.
    pub htpasswd: Option<(String, String)>,
}

impl RegistryOptions {
    /// Plain HTTP, no auth.
    pub fn plain() -> Self {
        Self::default()
    }

    /// HTTPS with a self-signed certificate, no auth.
    pub fn tls() -> Self {
        Self {
            tls: true,
            htpasswd: None,
        }
    }

    /// Adds basic auth with `user` and `pass`.
    pub fn with_auth(mut self, user: &str, pass: &str) -> Self {
        self.htpasswd = Some((user.to_string(), pass.to_string()));
        self
    }
}

/// One request from the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// HTTP method, e.g. `GET`, `HEAD`.
    pub method: String,
    /// Request URI as sent, e.g. `/v2/busybox/manifests/latest`.
    pub uri: String,
    /// Response status code.
    pub status: u16,
}

/// A running private registry; stopped and deleted on drop.
pub struct Registry {
    dir: TempDir,
    child: Child,
    port: u16,
    opts: RegistryOptions,
}

impl Registry {
    /// Starts a registry on a free port of 127.0.0.1 and waits (up to 10 s) until it answers.
    pub fn start(opts: RegistryOptions) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-registry-")
            .tempdir()
            .context("cannot create the registry's temp dir")?;
        if opts.tls {
            make_certificate(dir.path())?;
        }
        if let Some((user, pass)) = &opts.htpasswd {
            make_htpasswd(dir.path(), user, pass)?;
        }
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_and_wait(dir.path(), port, &opts) {
                Ok(child) => {
                    return Ok(Registry {
                        dir,
                        child,
                        port,
                        opts,
                    })
                }
                Err(StartError::PortTaken(err)) => last_err = Some(err),
                Err(StartError::Other(err)) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    /// `127.0.0.1:PORT`, the registry host as it appears in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// `HOST/name`, e.g. `reference("busybox:1")` is `127.0.0.1:PORT/busybox:1`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.opts.tls
    }

    /// The user and password the registry requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.opts
            .htpasswd
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The CA (PEM) that signed the registry's certificate; `None` without TLS.
    pub fn ca_pem_path(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.dir.path().join("tls/ca.pem"))
    }

    /// A directory holding only `ca.crt` (the certificate), for skopeo's `--*-cert-dir`.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.dir.path().join("certs.d"))
    }

    /// The file the registry's stdout and stderr go to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Root of the registry's filesystem storage (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of blob `digest` (`sha256:HEX`); overwrite it to
    /// serve corrupt content, delete it to make the blob vanish.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    /// Every request in the access log so far, oldest first.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// How many requests with method `method` and a URI containing `path_contains` the
    /// access log holds, e.g. `count_requests("GET", "/manifests/")`.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.uri.contains(path_contains))
            .count()
    }

    /// Waits up to `timeout` until [`Registry::count_requests`] reaches `at_least`, and
    /// returns the count it saw last. Lets the log catch up with responses already received.
    pub fn wait_for_requests(
        &self,
        method: &str,
        path_contains: &str,
        at_least: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count_requests(method, path_contains);
            if n >= at_least || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// PID of the registry process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

/// Why one start attempt failed.
enum StartError {
    /// The port was taken between picking and binding it: try another.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

/// Writes the config for `port`, spawns the registry and waits until it answers.
fn spawn_and_wait(dir: &Path, port: u16, opts: &RegistryOptions) -> Result<Child, StartError> {
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yaml(dir, port, opts))
        .with_context(|| format!("cannot write {}", config.display()))
        .map_err(StartError::Other)?;
    let log_path = dir.join("registry.log");
    let mut child = spawn(&config, &log_path).map_err(StartError::Other)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = tail(&log_path, 20);
            let err = anyhow::anyhow!("docker-registry exited with {status} on start:\n{log}");
            if log.contains("address already in use") {
                return Err(StartError::PortTaken(err));
            }
            return Err(StartError::Other(err));
        }
        if probe(dir, port, opts.tls) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            stop_child(&mut child, Duration::from_secs(2));
            return Err(StartError::Other(anyhow::anyhow!(
                "docker-registry on port {port} did not answer GET /v2/ within {START_TIMEOUT:?}:\n{}",
                tail(&log_path, 20)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns `docker-registry serve CONFIG` with stdout and stderr appended to `log_path`.
fn spawn(config: &Path, log_path: &Path) -> anyhow::Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_err = log.try_clone().context("cannot dup the registry log fd")?;
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .context("cannot run docker-registry (is Debian's docker-registry package installed?)")
}

/// The registry's YAML config.
fn config_yaml(dir: &Path, port: u16, opts: &RegistryOptions) -> String {
    let dir = dir.display();
    let mut yaml = format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {dir}/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: cairn-tests
"
    );
    if opts.tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {dir}/tls/cert.pem\n    key: {dir}/tls/key.pem\n"
        ));
    }
    if opts.htpasswd.is_some() {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: cairn-tests\n    path: {dir}/htpasswd\n"
        ));
    }
    yaml
}

/// Makes a private CA (`tls/ca.pem`) and a server certificate signed by it
/// (`tls/cert.pem` + `tls/key.pem`, for IP 127.0.0.1 and localhost), and copies the CA to
/// `certs.d/ca.crt`. Strict TLS stacks (rustls) refuse a CA certificate used as the
/// server's own, so the two are kept apart as on a real registry.
fn make_certificate(dir: &Path) -> anyhow::Result<()> {
    let tls = dir.join("tls");
    let certs_d = dir.join("certs.d");
    for d in [&tls, &certs_d] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let ca = tls.join("ca.pem");
    let ca_key = tls.join("ca-key.pem");
    run_checked(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=cairn-tests CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    )?;
    let csr = tls.join("server.csr");
    run_checked(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(tls.join("key.pem"))
            .arg("-out")
            .arg(&csr),
    )?;
    let ext = tls.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .with_context(|| format!("cannot write {}", ext.display()))?;
    run_checked(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "2"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(tls.join("cert.pem")),
    )?;
    let copy = certs_d.join("ca.crt");
    std::fs::copy(&ca, &copy)
        .with_context(|| format!("cannot copy {} to {}", ca.display(), copy.display()))?;
    Ok(())
}

/// Writes `htpasswd` with a bcrypt entry for `user`.
fn make_htpasswd(dir: &Path, user: &str, pass: &str) -> anyhow::Result<()> {
    let out = run_checked(Command::new("htpasswd").args(["-Bbn", user, pass]))?;
    let path = dir.join("htpasswd");
    std::fs::write(&path, &out.stdout).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether `GET /v2/` on the port answers 200 or 401.
fn probe(dir: &Path, port: u16, tls: bool) -> bool {
    if TcpStream::connect(("127.0.0.1", port)).is_err() {
        return false;
    }
    let response = if tls {
        probe_tls(dir, port)
    } else {
        probe_plain(port)
    };
    response.is_some_and(|r| is_ready_status(&r))
}

/// `HTTP/1.x 200` or `HTTP/1.x 401` at the start of a response.
fn is_ready_status(response: &str) -> bool {
    let mut parts = response.split_whitespace();
    let proto_ok = parts.next().is_some_and(|p| p.starts_with("HTTP/1."));
    proto_ok && matches!(parts.next(), Some("200") | Some("401"))
}

/// Sends `GET /v2/` over plain HTTP and returns the response head.
fn probe_plain(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends `GET /v2/` over TLS with `openssl s_client`, verifying the certificate.
fn probe_tls(dir: &Path, port: u16) -> Option<String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(dir.join("tls/ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let req = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if let Some(mut stdin) = child.stdin.take() {
        // `-quiet` implies `-ign_eof`: closing stdin does not end the connection early.
        let _ = stdin.write_all(req.as_bytes());
    }
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let n = stdout.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::util::kill_child(&mut child);
    reader.join().ok()
}

/// Parses one access-log line: `IP - USER [DATE] "METHOD URI PROTO" STATUS SIZE ...`.
fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split(' ');
    let method = req.next()?;
    let uri = req.next()?;
    let proto = req.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessLogEntry {
        method: method.to_string(),
        uri: uri.to_string(),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_log_lines() {
        let line = r#"127.0.0.1 - - [22/Nov/2026:07:02:34 +0000] "GET /v2/a/manifests/v1 HTTP/1.1" 401 87 "" "curl/7.88.1""#;
        let e = parse_access_line(line).unwrap();
        assert_eq!(e.method, "GET");
        assert_eq!(e.uri, "/v2/a/manifests/v1");
        assert_eq!(e.status, 401);
        let logrus = r#"time="2026" level=info msg="response completed" http.request.method=GET"#;
        assert!(parse_access_line(logrus).is_none());
    }

    #[test]
    fn ready_status() {
        assert!(is_ready_status("HTTP/1.0 401 Unauthorized\r\n"));
        assert!(is_ready_status("HTTP/1.1 200 OK\r\n"));
        assert!(!is_ready_status("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!is_ready_status(""));
    }
}
