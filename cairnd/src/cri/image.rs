//! CRI ImageService over cairn's image service.
//! Runs in cairnd.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use cairn_proto::cri::{self, image_service_server::ImageService as CriImageService};
use cairn_snapshotter::image::{Image, ImageService};
use cairn_snapshotter::manifest::image_user;
use cairn_snapshotter::registry::Credentials;
use tonic::{Request, Response, Status};

use super::control::release_freed_memory;
use super::status;

pub struct Images {
    images: Arc<ImageService>,
}

impl Images {
    pub fn new(images: Arc<ImageService>) -> Self {
        Images { images }
    }
}

fn image_name(spec: Option<&cri::ImageSpec>, call: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "{call}: image name is empty"
        ))),
    }
}

/// The CRI message for a stored image.
pub fn to_cri(image: &Image) -> cri::Image {
    let (uid, username) = image_user(&image.config);
    cri::Image {
        id: image.record.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.record.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: image.record.id.clone(),
            ..Default::default()
        }),
        pinned: image.record.pinned,
    }
}

/// Credentials from CRI's AuthConfig: username/password, `auth` (base64 user:pass),
/// or a registry token.
pub fn credentials(auth: Option<&cri::AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::Anonymous);
    };
    if !a.registry_token.is_empty() {
        return Ok(Credentials::Bearer(a.registry_token.clone()));
    }
    if !a.username.is_empty() {
        return Ok(Credentials::Basic(a.username.clone(), a.password.clone()));
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth: not base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Status::invalid_argument("auth: not UTF-8 after base64 decoding"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth: expected base64 of user:password"))?;
        return Ok(Credentials::Basic(u.to_string(), p.to_string()));
    }
    if !a.identity_token.is_empty() {
        return Err(Status::invalid_argument(
            "auth: identity tokens (OAuth refresh tokens) are not supported yet; use username/password or registry_token",
        ));
    }
    Ok(Credentials::Anonymous)
}

#[tonic::async_trait]
impl CriImageService for Images {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => match self.images.resolve(&name) {
                Ok(found) => found.into_iter().collect(),
                // A filter that is not even a valid name matches nothing.
                Err(e) if e.kind() == cairn_snapshotter::error::ErrorKind::InvalidArgument => {
                    vec![]
                }
                Err(e) => return Err(status(e)),
            },
            None => self.images.list().map_err(status)?,
        };
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref(), "ImageStatus")?;
        // CRI: a missing image is an empty response, not an error.
        let Some(image) = self.images.resolve(&name).map_err(status)? else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let lowers = match image.record.top_chain_id() {
                Some(top) => self.images.snapshotter().lowers(top).map_err(status)?,
                None => Vec::new(),
            };
            info.insert("info".to_string(), verbose_info(&image, &lowers));
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(&image)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref(), "PullImage")?;
        let creds = credentials(req.auth.as_ref())?;
        let pulled = self.images.pull(&name, creds, None).await;
        release_freed_memory();
        let image = pulled.map_err(status)?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: image.record.id.clone(),
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_name(request.into_inner().image.as_ref(), "RemoveImage")?;
        let removed = self.images.remove(&name).await;
        release_freed_memory();
        removed.map_err(status)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = self.images.fs_usage().map_err(status)?;
        let fs = cri::FilesystemUsage {
            timestamp: time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.images.snapshotter().dir().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}

/// containerd-style verbose info: the image config and where it lives.
fn verbose_info(image: &Image, lowers: &[std::path::PathBuf]) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&image.config_json).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "imageSpec": config,
        "manifestDigest": image.record.manifest_digest,
        "manifestMediaType": image.record.manifest_media_type,
        "platform": image.record.platform,
        "chainID": image.record.top_chain_id(),
        "layers": image.record.layers,
        // The committed snapshot dirs of the image's rootfs, topmost first (overlay's
        // lowerdir order), for operators debugging a node.
        "snapshotDirs": lowers,
    })
    .to_string()
}
