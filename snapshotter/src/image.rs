//! The image service: pulls images into the snapshotter, answers what is stored, removes
//! images and collects garbage. It is what cairnd's CRI ImageService and cairn's control
//! API call; it owns the metadata store, the content store and the snapshotter.
//! Runs in cairnd (the image side).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, Mutex as AsyncMutex, OwnedMutexGuard, RwLock, Semaphore};

use crate::content::ContentStore;
use crate::digest::{chain_ids, Digest};
use crate::error::{Error, Result};
use crate::layer::{apply_layer, ChannelReader, LayerSpec};
use crate::manifest::{self, ImageConfig, ImageManifest, Manifest, Platform};
use crate::reference::{is_image_id, Reference};
use crate::registry::{self, Credentials, Endpoint, Registries, RegistrySettings};
use crate::snapshot::{Snapshotter, TempSnapshot, Usage};
use crate::store::{ImageRecord, LayerRecord, Store};

/// Settings of the image service.
#[derive(Debug, Clone)]
pub struct ImageServiceConfig {
    /// Persistent root (`/var/lib/cairn`).
    pub root: PathBuf,
    pub platform: Platform,
    pub max_concurrent_downloads: usize,
    pub registries: RegistrySettings,
}

/// An image as the CRI sees it.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub config: ImageConfig,
    /// The raw config JSON, for verbose status.
    pub config_json: Bytes,
}

/// Progress of a pull, for cairnctl's progress bar.
#[derive(Debug, Clone)]
pub enum PullEvent {
    /// The manifest is known: its layers and their sizes.
    Resolved {
        manifest: String,
        layers: Vec<(String, u64)>,
    },
    /// Bytes of one layer received so far.
    Layer {
        digest: String,
        current: u64,
        total: u64,
        status: LayerStatus,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStatus {
    /// Already stored (its chain is on disk): nothing to fetch.
    Present,
    Downloading,
    Done,
}

type Progress = Option<mpsc::Sender<PullEvent>>;

/// Disk usage of the store, per image and per snapshot.
#[derive(Debug, Clone, Default)]
pub struct DiskUsage {
    pub images: Vec<ImageUsage>,
    pub snapshots: Vec<SnapshotUsage>,
    pub total_bytes: u64,
    pub content_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ImageUsage {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub size_bytes: u64,
    pub unique_bytes: u64,
    pub shared_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct SnapshotUsage {
    pub key: String,
    pub kind: String,
    pub parent: String,
    pub bytes: u64,
    pub inodes: u64,
    pub users: u32,
}

/// Per-key async locks: one pull per reference at a time, one unpack per chain ID.
#[derive(Default)]
struct KeyedLocks {
    map: std::sync::Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, v| Arc::strong_count(v) > 1);
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}

/// The image service.
pub struct ImageService {
    store: Arc<Store>,
    content: ContentStore,
    snapshots: Arc<Snapshotter>,
    registries: Registries,
    platform: Platform,
    downloads: Arc<Semaphore>,
    pulls: KeyedLocks,
    layers: Arc<KeyedLocks>,
    /// Pulls hold it shared; garbage collection exclusively, so it never deletes a
    /// snapshot a pull is about to reference.
    gc: RwLock<()>,
    root: PathBuf,
}

use cairn_kernel::process::now_ns;

impl ImageService {
    /// Opens the stores under `root`, cleaning up whatever a crash left half-done.
    pub fn open(config: ImageServiceConfig) -> Result<Arc<ImageService>> {
        let root = &config.root;
        std::fs::create_dir_all(root).map_err(|e| Error::io("creating", root, e))?;
        let store = Arc::new(Store::open(&root.join("meta.redb"))?);
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Arc::new(Snapshotter::open(&root.join("snapshots"), store.clone())?);
        Ok(Arc::new(ImageService {
            store,
            content,
            snapshots,
            registries: Registries::new(config.registries),
            platform: config.platform,
            downloads: Arc::new(Semaphore::new(config.max_concurrent_downloads.max(1))),
            pulls: KeyedLocks::default(),
            layers: Arc::new(KeyedLocks::default()),
            gc: RwLock::new(()),
            root: config.root,
        }))
    }

    pub fn snapshotter(&self) -> &Arc<Snapshotter> {
        &self.snapshots
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    pub(crate) fn content_store(&self) -> &ContentStore {
        &self.content
    }

    pub(crate) fn store_handle(&self) -> &Store {
        &self.store
    }

    /// The metadata store, shared with the runtime side for pod and container records.
    pub fn metadata(&self) -> &Arc<Store> {
        &self.store
    }

    /// Unpacks layers under the GC guard (for import).
    pub(crate) async fn unpack_layers_locked(
        &self,
        source: &LayerSource,
        specs: &[LayerSpec],
        chains: &[Digest],
    ) -> Result<()> {
        let _no_gc = self.gc.read().await;
        self.unpack_layers(source, specs, chains, &None).await
    }

    /// Pulls `reference` and returns the stored image.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Credentials,
        progress: Progress,
    ) -> Result<Image> {
        let r = Reference::parse(reference)?;
        let _one_at_a_time = self.pulls.lock(&r.to_string()).await;
        let _no_gc = self.gc.read().await;
        let credentials = match credentials {
            Credentials::Anonymous => self
                .registries
                .configured_credentials(r.domain())
                .unwrap_or_default(),
            c => c,
        };
        let top = self.registries.fetch_manifest(&r, &credentials).await?;
        if let Some(image) = self.already_present(&r, &top.digest)? {
            tracing::info!(reference = %r, id = %image.record.id, "image already present");
            return Ok(image);
        }
        let (manifest_digest, manifest, mut known) =
            self.resolve_platform(&r, &top, &credentials).await?;
        known.push(top.digest.to_string());
        if let Some(image) = self.already_present(&r, &manifest_digest)? {
            self.store
                .put_image(&image.record, &self.refs_for(&r, &top.digest), &known)?;
            return self.image(&image.record.id);
        }
        let image = self
            .fetch_image(
                &r,
                &top.endpoint,
                &manifest_digest,
                &manifest,
                &credentials,
                &progress,
            )
            .await?;
        let mut record = image;
        record.created_ns = now_ns();
        self.store
            .put_image(&record, &self.refs_for(&r, &top.digest), &known)?;
        tracing::info!(reference = %r, id = %record.id, "pulled image");
        self.image(&record.id)
    }

    /// The references a pull of `r` (resolving to `top`) records: the tag and name@digest.
    fn refs_for(&self, r: &Reference, top: &Digest) -> Vec<String> {
        let mut refs = vec![r.with_digest(top).to_string()];
        if let Some(t) = r.tagged() {
            refs.push(t);
        }
        refs
    }

    /// If `digest` is a manifest we already unpacked, records the reference and returns it.
    fn already_present(&self, r: &Reference, digest: &Digest) -> Result<Option<Image>> {
        let Some(id) = self.store.manifest_image(&digest.to_string())? else {
            return Ok(None);
        };
        let Some(record) = self.store.image(&id)? else {
            return Ok(None);
        };
        let complete = match record.top_chain_id() {
            Some(top) => self.snapshots.get(top)?.is_some(),
            None => true,
        };
        if !complete {
            return Ok(None);
        }
        self.store
            .put_image(&record, &self.refs_for(r, digest), &[digest.to_string()])?;
        Ok(Some(self.image(&id)?))
    }

    /// Follows an index to this node's platform; returns the image manifest, its digest and
    /// the digests that lead to it.
    async fn resolve_platform(
        &self,
        r: &Reference,
        top: &registry::FetchedManifest,
        credentials: &Credentials,
    ) -> Result<(Digest, ImageManifest, Vec<String>)> {
        match manifest::parse_manifest(None, &top.body).map_err(|e| e.context(r))? {
            Manifest::Image(m) => {
                self.content.write(&top.digest, &top.body)?;
                Ok((top.digest.clone(), m, vec![]))
            }
            Manifest::Index { manifests, .. } => {
                let desc = manifest::select_platform(&manifests, &self.platform)
                    .map_err(|e| e.context(r))?
                    .clone();
                let child =
                    registry::fetch_manifest_at(&top.endpoint, r, Some(&desc.digest), credentials)
                        .await?;
                let m = match manifest::parse_manifest(Some(&desc.media_type), &child.body)
                    .map_err(|e| e.context(r))?
                {
                    Manifest::Image(m) => m,
                    Manifest::Index { .. } => {
                        return Err(Error::InvalidArgument(format!(
                            "{r}: index entry {} for {} is itself an index",
                            desc.digest, self.platform
                        )))
                    }
                };
                self.content.write(&top.digest, &top.body)?;
                self.content.write(&child.digest, &child.body)?;
                Ok((child.digest, m, vec![desc.digest.to_string()]))
            }
        }
    }

    /// Fetches config and layers of one image manifest; returns its record (not yet stored).
    async fn fetch_image(
        &self,
        r: &Reference,
        ep: &Endpoint,
        manifest_digest: &Digest,
        m: &ImageManifest,
        credentials: &Credentials,
        progress: &Progress,
    ) -> Result<ImageRecord> {
        let compressions = m
            .layers
            .iter()
            .map(|l| manifest::layer_compression(&l.media_type).map_err(|e| e.context(r)))
            .collect::<Result<Vec<_>>>()?;
        let config_digest = m.config.digest.clone();
        let config_bytes = match self.content.read(&config_digest) {
            Ok(b) => Bytes::from(b),
            Err(_) => registry::fetch_blob_bytes(ep, r, &config_digest, credentials).await?,
        };
        let config = manifest::parse_config(&config_bytes).map_err(|e| e.context(r))?;
        let diff_ids = config.diff_ids().map_err(|e| e.context(r))?;
        if diff_ids.len() != m.layers.len() {
            return Err(Error::BadContent(format!(
                "{r}: manifest has {} layers but config lists {} diff IDs",
                m.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        if let Some(tx) = progress {
            let layers = m
                .layers
                .iter()
                .map(|l| (l.digest.to_string(), l.size))
                .collect();
            let _ = tx
                .send(PullEvent::Resolved {
                    manifest: manifest_digest.to_string(),
                    layers,
                })
                .await;
        }
        let specs: Vec<LayerSpec> = m
            .layers
            .iter()
            .zip(&compressions)
            .zip(&diff_ids)
            .map(|((l, c), d)| LayerSpec {
                digest: l.digest.clone(),
                size: l.size,
                compression: *c,
                diff_id: d.clone(),
            })
            .collect();
        let source = LayerSource::Registry {
            endpoint: ep.clone(),
            reference: r.clone(),
            credentials: credentials.clone(),
        };
        self.unpack_layers(&source, &specs, &chains, progress)
            .await?;
        self.content.write(&config_digest, &config_bytes)?;
        let layers = specs
            .iter()
            .zip(&chains)
            .zip(&m.layers)
            .map(|((s, c), l)| LayerRecord {
                digest: s.digest.to_string(),
                media_type: l.media_type.clone(),
                size: s.size,
                diff_id: s.diff_id.to_string(),
                chain_id: c.to_string(),
            })
            .collect::<Vec<_>>();
        Ok(ImageRecord {
            id: config_digest.to_string(),
            manifest_digest: manifest_digest.to_string(),
            manifest_media_type: m.media_type.clone(),
            config_size: m.config.size,
            size: m.config.size + layers.iter().map(|l| l.size).sum::<u64>(),
            layers,
            platform: self.platform.to_string(),
            created_ns: now_ns(),
            pinned: false,
        })
    }

    /// Makes sure every chain of `chains` is a committed snapshot: missing layers are
    /// fetched and unpacked in parallel (bounded), then committed bottom-up.
    async fn unpack_layers(
        &self,
        source: &LayerSource,
        specs: &[LayerSpec],
        chains: &[Digest],
        progress: &Progress,
    ) -> Result<()> {
        let mut tasks = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let key = chains[i].to_string();
            let guard = self.layers.lock(&key).await;
            if self.snapshots.get(&key)?.is_some() {
                send(progress, spec, spec.size, LayerStatus::Present).await;
                tasks.push(None);
                continue;
            }
            let parents = match i {
                0 => Vec::new(),
                _ => self
                    .snapshots
                    .lowers(&chains[i - 1].to_string())
                    .unwrap_or_default(),
            };
            let temp = self.snapshots.temp()?;
            let task = tokio::spawn(fetch_and_unpack(
                source.clone(),
                spec.clone(),
                temp,
                parents,
                self.downloads.clone(),
                progress.clone(),
            ));
            tasks.push(Some((task, guard)));
        }
        let mut first_error = None;
        for (i, task) in tasks.into_iter().enumerate() {
            let Some((task, _guard)) = task else { continue };
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(Error::Internal(format!("layer task: {e}"))),
            };
            if first_error.is_some() {
                continue;
            }
            match result {
                Ok(temp) => {
                    let parent = (i > 0).then(|| chains[i - 1].to_string());
                    if let Err(e) =
                        self.snapshots
                            .commit(temp, &chains[i].to_string(), parent.as_deref())
                    {
                        first_error = Some(e);
                    }
                }
                Err(e) => first_error = Some(e),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Builds the CRI view of a stored image.
    pub fn image(&self, id: &str) -> Result<Image> {
        let record = self
            .store
            .image(id)?
            .ok_or_else(|| Error::NotFound(format!("image {id} not found")))?;
        let refs = self.store.refs_of(id)?;
        self.view(record, &refs)
    }

    fn view(&self, record: ImageRecord, refs: &[String]) -> Result<Image> {
        let config_digest = Digest::parse(&record.id)?;
        let config_json = Bytes::from(self.content.read(&config_digest)?);
        let config = manifest::parse_config(&config_json)?;
        let (repo_digests, repo_tags): (Vec<String>, Vec<String>) =
            refs.iter().cloned().partition(|r| r.contains('@'));
        Ok(Image {
            record,
            repo_tags,
            repo_digests,
            config,
            config_json,
        })
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<Image>> {
        let refs = self.store.refs()?;
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (r, id) in refs {
            by_id.entry(id).or_default().push(r);
        }
        let mut out = Vec::new();
        for record in self.store.images()? {
            let refs = by_id.remove(&record.id).unwrap_or_default();
            out.push(self.view(record, &refs)?);
        }
        Ok(out)
    }

    /// Finds an image by ID (`sha256:<hex>`, bare hex, or a unique prefix of 12+ chars),
    /// by tag or by digest reference. `Ok(None)` when there is no such image.
    pub fn resolve(&self, name: &str) -> Result<Option<Image>> {
        if let Some(id) = self.resolve_id(name)? {
            return Ok(Some(self.image(&id)?));
        }
        let r = Reference::parse(name)?;
        if let Some(id) = self.store.resolve_ref(&r.to_string())? {
            return Ok(Some(self.image(&id)?));
        }
        Ok(None)
    }

    fn resolve_id(&self, name: &str) -> Result<Option<String>> {
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let looks_like_id = is_image_id(name)
            || (hex.len() >= 12 && hex.len() < 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !looks_like_id {
            return Ok(None);
        }
        let matches: Vec<String> = self
            .store
            .images()?
            .into_iter()
            .map(|i| i.id)
            .filter(|id| id.trim_start_matches("sha256:").starts_with(hex))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.into_iter().next()),
            _ => Err(Error::InvalidArgument(format!(
                "image ID prefix {name} is ambiguous"
            ))),
        }
    }

    /// Removes the image `name` (an ID, a tag or a digest reference) names, with every
    /// reference to it (its other tags, in any registry, and its digests), as containerd's
    /// CRI does: kubelet's image GC and critest expect the image gone. Removing what is
    /// not there is not an error, as kubelet retries removals.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let _gc = self.gc.write().await;
        let id = match self.resolve_id(name)? {
            Some(id) => Some(id),
            // An image ID no image has (critest and kubelet remove by ID).
            None if is_image_id(name) => None,
            None => self
                .store
                .resolve_ref(&Reference::parse(name)?.to_string())?,
        };
        let Some(id) = id else {
            return Ok(());
        };
        self.store.remove_image(&id)?;
        self.collect_garbage()
    }

    /// Deletes snapshots and content that no image (and no active snapshot) uses.
    pub fn collect_garbage(&self) -> Result<()> {
        let images = self.store.images()?;
        let mut keep_snapshots: HashSet<String> = HashSet::new();
        let mut keep_content: HashSet<String> = HashSet::new();
        for img in &images {
            keep_snapshots.extend(img.layers.iter().map(|l| l.chain_id.clone()));
            keep_content.insert(img.id.clone());
            keep_content.insert(img.manifest_digest.clone());
        }
        // Indexes that lead to a kept image.
        for (_, id) in self.store.refs()? {
            keep_content.insert(id);
        }
        let snapshots = self.snapshots.list()?;
        for s in &snapshots {
            if s.kind == crate::store::SnapshotKind::Active {
                // Containers keep their whole chain.
                let mut cur = s.parent.clone();
                while let Some(k) = cur {
                    cur = snapshots
                        .iter()
                        .find(|x| x.key == k)
                        .and_then(|x| x.parent.clone());
                    keep_snapshots.insert(k);
                }
            }
        }
        // Remove from the top of each chain down, so parents go after their children.
        let mut removable: Vec<_> = snapshots
            .iter()
            .filter(|s| s.kind == crate::store::SnapshotKind::Committed)
            .filter(|s| !keep_snapshots.contains(&s.key))
            .collect();
        removable.sort_by_key(|s| std::cmp::Reverse(depth(&snapshots, &s.key)));
        for s in removable {
            tracing::debug!(snapshot = %s.key, "collecting unused snapshot");
            self.snapshots.remove(&s.key)?;
        }
        let manifest_digests = self.manifest_digests_in_use(&images)?;
        for d in self.content.list()? {
            let ds = d.to_string();
            if !keep_content.contains(&ds) && !manifest_digests.contains(&ds) {
                self.content.remove(&d)?;
            }
        }
        Ok(())
    }

    fn manifest_digests_in_use(&self, images: &[ImageRecord]) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for img in images {
            out.insert(img.manifest_digest.clone());
        }
        for (r, _) in self.store.refs()? {
            if let Some((_, d)) = r.split_once('@') {
                out.insert(d.to_string());
            }
        }
        Ok(out)
    }

    /// Bytes and inodes the image store uses on disk (snapshots and content).
    pub fn fs_usage(&self) -> Result<Usage> {
        let mut u = self.content.usage()?;
        for s in self.snapshots.list()? {
            let su = self.snapshots.usage(&s.key)?;
            u.bytes += su.bytes;
            u.inodes += su.inodes;
        }
        Ok(u)
    }

    /// Per-image and per-snapshot usage: what each image uses alone and what it shares.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let images = self.list()?;
        let snapshots = self.snapshots.list()?;
        let mut users: HashMap<String, u32> = HashMap::new();
        for img in &images {
            for l in &img.record.layers {
                *users.entry(l.chain_id.clone()).or_default() += 1;
            }
        }
        let mut out = DiskUsage::default();
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for s in &snapshots {
            let u = self.snapshots.usage(&s.key)?;
            sizes.insert(s.key.clone(), u.bytes);
            out.total_bytes += u.bytes;
            out.snapshots.push(SnapshotUsage {
                key: s.key.clone(),
                kind: format!("{:?}", s.kind).to_lowercase(),
                parent: s.parent.clone().unwrap_or_default(),
                bytes: u.bytes,
                inodes: u.inodes,
                users: users.get(&s.key).copied().unwrap_or(0),
            });
        }
        for img in &images {
            let mut iu = ImageUsage {
                id: img.record.id.clone(),
                repo_tags: img.repo_tags.clone(),
                size_bytes: 0,
                unique_bytes: 0,
                shared_bytes: 0,
            };
            for l in &img.record.layers {
                let b = sizes.get(&l.chain_id).copied().unwrap_or(0);
                iu.size_bytes += b;
                if users.get(&l.chain_id).copied().unwrap_or(0) > 1 {
                    iu.shared_bytes += b;
                } else {
                    iu.unique_bytes += b;
                }
            }
            out.images.push(iu);
        }
        out.content_bytes = self.content.usage()?.bytes;
        Ok(out)
    }
}

fn depth(all: &[crate::store::SnapshotRecord], key: &str) -> usize {
    let mut d = 0;
    let mut cur = all
        .iter()
        .find(|s| s.key == key)
        .and_then(|s| s.parent.clone());
    while let Some(k) = cur {
        d += 1;
        cur = all
            .iter()
            .find(|s| s.key == k)
            .and_then(|s| s.parent.clone());
    }
    d
}

async fn send(progress: &Progress, spec: &LayerSpec, current: u64, status: LayerStatus) {
    if let Some(tx) = progress {
        let _ = tx
            .send(PullEvent::Layer {
                digest: spec.digest.to_string(),
                current,
                total: spec.size,
                status,
            })
            .await;
    }
}

/// Where layer bytes come from.
#[derive(Clone)]
pub(crate) enum LayerSource {
    Registry {
        endpoint: Endpoint,
        reference: Reference,
        credentials: Credentials,
    },
    /// Layer files on this node (an imported archive), by layer digest.
    Local {
        paths: Arc<HashMap<String, PathBuf>>,
    },
}

/// Fetches one layer and unpacks it into `temp`, returning it for commit.
async fn fetch_and_unpack(
    source: LayerSource,
    spec: LayerSpec,
    temp: TempSnapshot,
    parents: Vec<PathBuf>,
    downloads: Arc<Semaphore>,
    progress: Progress,
) -> Result<TempSnapshot> {
    let _slot = downloads
        .acquire_owned()
        .await
        .map_err(|_| Error::Internal("download limiter closed".into()))?;
    let target = temp.fs();
    match source {
        LayerSource::Local { paths } => {
            let path = paths
                .get(&spec.digest.to_string())
                .cloned()
                .ok_or_else(|| {
                    Error::NotFound(format!("layer {} not in the archive", spec.digest))
                })?;
            let spec2 = spec.clone();
            tokio::task::spawn_blocking(move || {
                let f =
                    std::fs::File::open(&path).map_err(|e| Error::io("opening layer", &path, e))?;
                apply_layer(
                    std::io::BufReader::with_capacity(1 << 20, f),
                    &spec2,
                    &target,
                    &parents,
                )
            })
            .await
            .map_err(|e| Error::Internal(format!("unpack task: {e}")))??;
        }
        LayerSource::Registry {
            endpoint,
            reference,
            credentials,
        } => {
            let mut stream =
                registry::open_blob(&endpoint, &reference, &spec.digest, &credentials).await?;
            let (tx, rx) = mpsc::channel(16);
            let spec2 = spec.clone();
            let unpack = tokio::task::spawn_blocking(move || {
                apply_layer(ChannelReader::new(rx), &spec2, &target, &parents)
            });
            let mut received = 0u64;
            let mut reported = 0u64;
            send(&progress, &spec, 0, LayerStatus::Downloading).await;
            while let Some(chunk) = stream.next().await {
                let item = match chunk {
                    Ok(b) => {
                        received += b.len() as u64;
                        Ok(b)
                    }
                    Err(e) => Err(stream_error(e, &spec)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break; // the unpacker stopped (it reports why) or the stream failed
                }
                if received - reported >= 1 << 20 {
                    reported = received;
                    if let Some(p) = &progress {
                        let _ = p.try_send(PullEvent::Layer {
                            digest: spec.digest.to_string(),
                            current: received,
                            total: spec.size,
                            status: LayerStatus::Downloading,
                        });
                    }
                }
            }
            drop(tx);
            unpack
                .await
                .map_err(|e| Error::Internal(format!("unpack task: {e}")))??;
        }
    }
    send(&progress, &spec, spec.size, LayerStatus::Done).await;
    Ok(temp)
}

/// A failed chunk of a blob download: oci-client's own digest check says the content is
/// bad, anything else means the registry could not deliver it.
fn stream_error(e: std::io::Error, spec: &LayerSpec) -> Error {
    let digest_problem = e
        .get_ref()
        .map(|i| i.to_string().to_lowercase().contains("digest"))
        .unwrap_or(false);
    if digest_problem {
        Error::BadContent(format!("layer {}: {e}", spec.digest))
    } else {
        Error::Unavailable(format!("layer {}: download failed: {e}", spec.digest))
    }
}
