//! CRI clients that are not cairn's: the Go one (`tests/clients/go`, grpc-go 1.33 and
//! golang/protobuf 1.3 from Debian, the generation kubelet 1.20 and crictl 1.26 link) and
//! the Python one (`tests/clients/python`, gRPC C-core through PyPI's `grpcio`). Both take
//! one unary CRI call as `SERVICE/METHOD` and a JSON request and print the JSON response,
//! so a test drives cairnd through them as it would through its own client.
//!
//! Their bindings are generated here from the CRI's `api.proto` (the `k8s-cri` crate's
//! copy, which cairn's own bindings come from): Go's with `protoc-gen-go`, Python's with
//! `grpcio-tools`. Everything built lands under `<target>/cri-clients/`, and Go's build
//! cache keeps rebuilds to about a second. `tests/setup.sh` installs what they need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

use crate::util::run_checked;

/// Where `tests/setup.sh` makes the Python virtualenv with `grpcio` and `grpcio-tools`.
pub const DEFAULT_VENV: &str = "/var/cache/cairn-tests/venv";
/// Debian's Go packages (golang-google-grpc-dev, golang-goprotobuf-dev).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// What one call answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The response, as JSON with the .proto's field names.
    Ok(serde_json::Value),
    /// A gRPC error status.
    Status { code: tonic::Code, message: String },
}

impl Reply {
    /// The response, or an error naming the status.
    pub fn ok(self) -> anyhow::Result<serde_json::Value> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Status { code, message } => bail!("{code:?}: {message}"),
        }
    }

    /// The status code (`Ok` for a response).
    pub fn code(&self) -> tonic::Code {
        match self {
            Reply::Ok(_) => tonic::Code::Ok,
            Reply::Status { code, .. } => *code,
        }
    }
}

/// The `:authority` a client sends over the unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// What the client library sends by itself: the socket path for grpc-go 1.33 (as
    /// kubelet ≤ 1.26 and crictl 1.26 dial), its %-encoding for C-core ≥ 1.57.
    Default,
    Localhost,
    /// An empty authority (Python only: grpc-go always sends one).
    Empty,
}

/// Which client library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    GrpcGo,
    CCore,
}

/// One of the two clients, ready to run.
#[derive(Debug, Clone)]
pub struct Client {
    library: Library,
    /// The Go binary, or the Python interpreter.
    program: PathBuf,
    /// For Python: the client script and the dir of the generated stubs.
    python: Option<(PathBuf, PathBuf)>,
}

impl Client {
    /// The Go client, built (once per test process) from `tests/clients/go`.
    pub fn go() -> anyhow::Result<Client> {
        static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let bin = BUILT
            .get_or_init(|| build_go().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        Ok(Client {
            library: Library::GrpcGo,
            program: bin,
            python: None,
        })
    }

    /// The Python client, with stubs generated (once per test process).
    pub fn python() -> anyhow::Result<Client> {
        static STUBS: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
        let (python, stubs) = STUBS
            .get_or_init(|| python_stubs().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        Ok(Client {
            library: Library::CCore,
            program: python,
            python: Some((source_dir().join("python/cri_client.py"), stubs)),
        })
    }

    pub fn library(&self) -> Library {
        self.library
    }

    /// Calls `method` (`RuntimeService/Version`) of CRI package `api` (`v1`,
    /// `v1alpha2`) on the socket with `request` (JSON), sending `authority`.
    pub fn call(
        &self,
        socket: &Path,
        api: &str,
        authority: Authority,
        method: &str,
        request: &serde_json::Value,
    ) -> anyhow::Result<Reply> {
        let mut cmd = Command::new(&self.program);
        let authority = match (self.library, authority) {
            (_, Authority::Default) if self.library == Library::GrpcGo => "path",
            (_, Authority::Default) => "default",
            (_, Authority::Localhost) => "localhost",
            (Library::CCore, Authority::Empty) => "empty",
            (Library::GrpcGo, Authority::Empty) => bail!("grpc-go always sends an authority"),
        };
        if let Some((script, stubs)) = &self.python {
            cmd.arg(script).arg("--stubs").arg(stubs);
        }
        cmd.arg(if self.python.is_some() {
            "--endpoint"
        } else {
            "-endpoint"
        })
        .arg(socket);
        cmd.arg(if self.python.is_some() {
            "--api"
        } else {
            "-api"
        })
        .arg(api);
        cmd.arg(if self.python.is_some() {
            "--authority"
        } else {
            "-authority"
        })
        .arg(authority);
        cmd.arg(method).arg(request.to_string());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.program.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => Ok(Reply::Ok(
                serde_json::from_str(stdout.trim()).with_context(|| {
                    format!(
                        "{:?} {method}: response is not JSON: {stdout}",
                        self.library
                    )
                })?,
            )),
            Some(3) => parse_status(&stdout).with_context(|| {
                format!("{:?} {method}: bad status line {stdout:?}", self.library)
            }),
            _ => bail!(
                "{:?} client failed on {method} ({}): {stdout}{stderr}",
                self.library,
                out.status
            ),
        }
    }
}

/// `code=<n> name=<NAME> message=<text>`.
fn parse_status(line: &str) -> anyhow::Result<Reply> {
    let line = line.trim();
    let rest = line.strip_prefix("code=").context("no code=")?;
    let (code, rest) = rest.split_once(' ').context("no name=")?;
    let code: i32 = code.parse().context("code is not a number")?;
    let message = rest
        .split_once(" message=")
        .map(|(_, m)| m.to_string())
        .unwrap_or_default();
    Ok(Reply::Status {
        code: tonic::Code::from(code),
        message,
    })
}

/// `tests/clients/`.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// `<target>/cri-clients/`, next to the test executables' `debug/`.
fn build_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let target = exe
        .ancestors()
        .find(|d| {
            d.file_name()
                .is_some_and(|n| n == "debug" || n == "release")
        })
        .and_then(Path::parent)
        .context("the test executable is not under a cargo target dir")?;
    let dir = target.join("cri-clients");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The dir holding the CRI's `v1.proto` and `v1alpha2.proto`: the `k8s-cri` crate's.
fn cri_proto_dir() -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = run_checked(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--offline",
                "--filter-platform",
            ])
            // This host's packages only: those a build fetched (the others may be absent).
            .arg(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
            .arg("--manifest-path")
            .arg(&workspace),
    )?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata is not JSON")?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "k8s-cri")
        .and_then(|p| p["manifest_path"].as_str())
        .context("k8s-cri is not in the workspace's dependencies")?;
    let dir = Path::new(manifest)
        .parent()
        .context("k8s-cri manifest has no dir")?
        .join("proto");
    if !dir.join("v1.proto").is_file() {
        bail!("{} has no v1.proto", dir.display());
    }
    Ok(dir)
}

/// Generates the Go bindings and builds the client in GOPATH mode against Debian's Go
/// packages (as kubelet 1.20 builds).
fn build_go() -> anyhow::Result<PathBuf> {
    let needs = "the Go client needs golang-go, golang-google-grpc-dev, golang-goprotobuf-dev \
                 and protobuf-compiler: run tests/setup.sh";
    if !Path::new(DEBIAN_GOPATH)
        .join("src/google.golang.org/grpc")
        .is_dir()
    {
        bail!("{DEBIAN_GOPATH}/src/google.golang.org/grpc is missing: {needs}");
    }
    let protos = cri_proto_dir()?;
    let dir = build_dir()?.join("go");
    let gopath = dir.join("gopath");
    let src = gopath.join("src");
    std::fs::create_dir_all(src.join("cairn.test/cri-client"))?;
    // Each file separately: protoc-gen-go 1.3 wants one Go package per run.
    for proto in ["v1.proto", "v1alpha2.proto"] {
        run_checked(
            Command::new("protoc")
                .arg("-I")
                .arg(&protos)
                .arg(format!("--go_out=plugins=grpc:{}", src.display()))
                .arg(proto),
        )
        .with_context(|| format!("protoc for {proto} ({needs})"))?;
    }
    std::fs::copy(
        source_dir().join("go/main.go"),
        src.join("cairn.test/cri-client/main.go"),
    )?;
    let bin = dir.join("cri-client");
    let tmp = dir.join(format!("cri-client.tmp-{}", std::process::id()));
    run_checked(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&tmp)
            .arg("cairn.test/cri-client")
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:{DEBIAN_GOPATH}", gopath.display()))
            .env("GOCACHE", dir.join("cache"))
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0"),
    )
    .with_context(|| format!("go build of the CRI client ({needs})"))?;
    std::fs::rename(&tmp, &bin)?;
    Ok(bin)
}

/// The virtualenv's Python and the stubs generated with its `grpcio-tools`.
fn python_stubs() -> anyhow::Result<(PathBuf, PathBuf)> {
    let venv = std::env::var_os("CAIRN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    let python = venv.join("bin/python3");
    if !python.is_file() {
        bail!(
            "{} is missing: the Python client needs a virtualenv with grpcio and \
             grpcio-tools (run tests/setup.sh, or set CAIRN_TEST_VENV)",
            python.display()
        );
    }
    let protos = cri_proto_dir()?;
    let stubs = build_dir()?.join(format!("python-{}", std::process::id()));
    std::fs::create_dir_all(&stubs)?;
    for proto in ["v1.proto", "v1alpha2.proto"] {
        run_checked(
            Command::new(&python)
                .args(["-m", "grpc_tools.protoc", "-I"])
                .arg(&protos)
                .arg(format!("--python_out={}", stubs.display()))
                .arg(proto),
        )
        .context("grpc_tools.protoc (is grpcio-tools installed in the virtualenv?)")?;
    }
    Ok((python, stubs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status("code=5 name=NotFound message=container x not found\n").unwrap(),
            Reply::Status {
                code: tonic::Code::NotFound,
                message: "container x not found".into()
            }
        );
        assert_eq!(
            parse_status("code=3 name=INVALID_ARGUMENT message=")
                .unwrap()
                .code(),
            tonic::Code::InvalidArgument
        );
        assert!(parse_status("garbage").is_err());
    }
}
