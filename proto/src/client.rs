//! A gRPC channel to cairnd over its unix socket, for cairn's own clients (cairnctl, the
//! tests' harness, the benchmark). tonic wants a URI; the one given here is never dialled.

use std::path::Path;

use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to the gRPC server on the unix socket at `socket`.
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(connector)
        .await
}
