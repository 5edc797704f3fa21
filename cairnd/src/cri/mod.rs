//! The CRI server: `runtime.v1` RuntimeService and ImageService, the same services under
//! the older `runtime.v1alpha2` package names, and cairn's control API, all on one unix
//! socket.
//! Runs in cairnd.

mod alpha;
pub mod authority;
pub mod control;
mod deadline;
mod image;
mod runtime;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cairn_proto::control::control_server::ControlServer;
use cairn_proto::cri::image_service_server::ImageServiceServer;
use cairn_proto::cri::runtime_service_server::RuntimeServiceServer;
use cairn_snapshotter::image::ImageService;

pub use alpha::AlphaLayer;

/// Maps an image-side error onto a gRPC status with the same message.
pub fn status(e: cairn_snapshotter::Error) -> tonic::Status {
    crate::error::Error::from(e).into()
}

/// The one place cairnd's domain errors become gRPC codes.
impl From<crate::error::Error> for tonic::Status {
    fn from(e: crate::error::Error) -> tonic::Status {
        use crate::error::Code;
        let code = match e.code() {
            Code::NotFound => tonic::Code::NotFound,
            Code::AlreadyExists => tonic::Code::AlreadyExists,
            Code::InvalidArgument => tonic::Code::InvalidArgument,
            Code::FailedPrecondition => tonic::Code::FailedPrecondition,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Code::ResourceExhausted => tonic::Code::ResourceExhausted,
            Code::Unauthenticated => tonic::Code::Unauthenticated,
            Code::DataLoss => tonic::Code::DataLoss,
            Code::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.message())
    }
}

/// Binds the socket (mode 0660) and serves until `shutdown` resolves.
pub async fn serve(
    socket: &Path,
    images: Arc<ImageService>,
    runtime: Arc<crate::runtime::Runtime>,
    streaming: Arc<cairn_streaming::Server>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = bind(socket)?;
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(authority::AuthorityFix::new),
    );
    tracing::info!(socket = %socket.display(), "serving CRI");
    tonic::transport::Server::builder()
        .layer(AlphaLayer)
        .layer(deadline::DeadlineLayer)
        .add_service(RuntimeServiceServer::new(runtime::RuntimeApi::new(
            runtime, streaming,
        )))
        .add_service(ImageServiceServer::new(image::Images::new(images.clone())))
        .add_service(ControlServer::new(control::Control::new(images)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving CRI")?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// Binds a unix socket, refusing to steal one another daemon is serving on.
fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            anyhow::bail!("{} is in use by another process", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", socket.display()))?;
    Ok(listener)
}
