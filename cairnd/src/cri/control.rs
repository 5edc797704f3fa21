//! cairn's control API: what CRI cannot express — pull progress, image import and disk
//! usage — served beside CRI on the same socket, so the daemon stays the store's only owner.
//! Runs in cairnd.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::control::{self as pb, control_server};
use cairn_snapshotter::image::{ImageService, LayerStatus, PullEvent};
use cairn_snapshotter::registry::Credentials;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::status;

pub struct Control {
    images: Arc<ImageService>,
}

impl Control {
    pub fn new(images: Arc<ImageService>) -> Self {
        Control { images }
    }
}

/// Hands the heap that a pull, an import or a garbage collection freed back to the kernel,
/// in the background: glibc keeps freed memory in its arenas, so their big buffers (layer
/// downloads, decompression) would otherwise stay in cairnd's RSS for good.
pub(crate) fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only gives free pages of the heap back to the kernel.
        unsafe { libc::malloc_trim(0) };
    });
}

fn progress_message(e: PullEvent) -> pb::PullProgress {
    match e {
        PullEvent::Resolved { manifest, layers } => pb::PullProgress {
            phase: "resolved".into(),
            digest: manifest,
            total: layers.iter().map(|(_, s)| s).sum(),
            current: layers.len() as u64,
            ..Default::default()
        },
        PullEvent::Layer {
            digest,
            current,
            total,
            status,
        } => pb::PullProgress {
            phase: "layer".into(),
            digest,
            current,
            total,
            status: match status {
                LayerStatus::Present => "present",
                LayerStatus::Downloading => "downloading",
                LayerStatus::Done => "done",
            }
            .into(),
            ..Default::default()
        },
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullProgress, Status>> + Send>>;

#[tonic::async_trait]
impl control_server::Control for Control {
    type PullImageStream = PullStream;

    async fn pull_image(
        &self,
        request: Request<pb::PullImageRequest>,
    ) -> Result<Response<PullStream>, Status> {
        let req = request.into_inner();
        if req.image.trim().is_empty() {
            return Err(Status::invalid_argument("PullImage: image name is empty"));
        }
        let creds = match req.username.is_empty() {
            true => Credentials::Anonymous,
            false => Credentials::Basic(req.username, req.password),
        };
        let (events_tx, mut events_rx) = mpsc::channel(64);
        let images = self.images.clone();
        let image = req.image.clone();
        // The pull goes on even if the client goes away: the store stays consistent either way.
        let pull = tokio::spawn(async move {
            let pulled = images.pull(&image, creds, Some(events_tx)).await;
            release_freed_memory();
            pulled
        });
        let stream = async_stream::stream! {
            yield Ok(pb::PullProgress { phase: "resolving".into(), ..Default::default() });
            while let Some(e) = events_rx.recv().await {
                yield Ok(progress_message(e));
            }
            match pull.await {
                Ok(Ok(img)) => yield Ok(pb::PullProgress {
                    phase: "done".into(),
                    image_id: img.record.id.clone(),
                    repo_tags: img.repo_tags.clone(),
                    repo_digests: img.repo_digests.clone(),
                    ..Default::default()
                }),
                Ok(Err(e)) => yield Err(status(e)),
                Err(e) => yield Err(Status::internal(format!("pull task: {e}"))),
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import_image(
        &self,
        request: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        let req = request.into_inner();
        let name = (!req.name.is_empty()).then_some(req.name.as_str());
        let imported = self
            .images
            .import(std::path::Path::new(&req.path), name)
            .await;
        release_freed_memory();
        let imported = imported.map_err(status)?;
        Ok(Response::new(pb::ImportImageResponse {
            images: imported
                .into_iter()
                .map(|i| pb::ImportedImage {
                    image_id: i.record.id,
                    repo_tags: i.repo_tags,
                })
                .collect(),
        }))
    }

    async fn disk_usage(
        &self,
        _request: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<pb::DiskUsageResponse>, Status> {
        let du = self.images.disk_usage().map_err(status)?;
        Ok(Response::new(pb::DiskUsageResponse {
            images: du
                .images
                .into_iter()
                .map(|i| pb::ImageUsage {
                    image_id: i.id,
                    repo_tags: i.repo_tags,
                    size_bytes: i.size_bytes,
                    unique_bytes: i.unique_bytes,
                    shared_bytes: i.shared_bytes,
                })
                .collect(),
            snapshots: du
                .snapshots
                .into_iter()
                .map(|s| pb::SnapshotUsage {
                    key: s.key,
                    kind: s.kind,
                    parent: s.parent,
                    bytes: s.bytes,
                    inodes: s.inodes,
                    users: s.users,
                })
                .collect(),
            total_bytes: du.total_bytes,
            content_bytes: du.content_bytes,
        }))
    }
}
