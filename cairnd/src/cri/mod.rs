//! The CRI server: `runtime.v1` RuntimeService and ImageService, the same services under
//! the older `runtime.v1alpha2` package names, and cairn's control API, all on one unix
//! socket.

mod alpha;
pub mod authority;
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
use cairn_snapshotter::error::ErrorKind;
use cairn_snapshotter::image::ImageService;

pub use alpha::AlphaLayer;

/// Maps an image-side error onto a gRPC status with the same message.
pub fn status(e: cairn_snapshotter::Error) -> tonic::Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => tonic::Status::not_found(msg),
        ErrorKind::InvalidArgument => tonic::Status::invalid_argument(msg),
        ErrorKind::AlreadyExists => tonic::Status::already_exists(msg),
        ErrorKind::FailedPrecondition => tonic::Status::failed_precondition(msg),
        ErrorKind::Unavailable => tonic::Status::unavailable(msg),
        ErrorKind::Unauthenticated => tonic::Status::unauthenticated(msg),
        ErrorKind::ResourceExhausted => tonic::Status::resource_exhausted(msg),
        ErrorKind::DataLoss => tonic::Status::data_loss(msg),
        ErrorKind::Internal => tonic::Status::internal(msg),
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
        .add_service(ControlServer::new(crate::control::Control::new(images)))
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
