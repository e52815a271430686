//! Manifests. By digest: immutable, verified, stored on disk as `<media type>\n<bytes>`.
//! By tag: tag→digest mappings kept for the upstream's `tag_ttl`, then revalidated with a HEAD;
//! while the upstream fails, the last known mapping is served up to `stale_if_error` old.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_shared::manifest::{MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES};
use berth_shared::{Digest, RepositoryName, Tag};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, StatusCode};

use super::disk::DiskStore;
use super::flight::{Flight, Waiting};
use super::memory::{MemoryObject, MemoryTier};
use super::{blocking, EntryKey};
use crate::metrics::Metrics;
use crate::registry::AcceptList;
use crate::upstream::{Upstream, UpstreamError, UpstreamResponse};

const DIGEST_HEADER: &str = "docker-content-digest";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("manifest of {size} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { size: u64 },
    #[error("upstream sent a manifest with digest {actual}, not {expected}")]
    DigestMismatch { expected: Box<Digest>, actual: Box<Digest> },
    #[error("the manifest is {media_type}, which the request's Accept header does not allow")]
    NotAcceptable { media_type: String },
    #[error("upstream sent an invalid manifest response: {0}")]
    Invalid(String),
    #[error("cache disk failed: {0}")]
    Disk(String),
}

/// A manifest's bytes with its identity.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: Arc<str>,
    pub bytes: Bytes,
}

/// What a tag points at, and when the upstream last confirmed it.
#[derive(Debug, Clone)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    confirmed: Instant,
}

/// How a tag lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within `tag_ttl`: no upstream request.
    Fresh,
    /// Confirmed (or changed) by the upstream just now.
    Revalidated,
    /// The upstream failed; the last known mapping was used.
    Stale,
}

/// How a manifest body was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Memory,
    Disk,
    Fetched,
    Coalesced,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TagKey {
    upstream: String,
    repository: RepositoryName,
    tag: Tag,
    accept: AcceptList,
}

/// A tag lookup's result, shared by the requests that coalesced on it.
type TagResult = Result<(TagEntry, Freshness), ManifestError>;

/// The manifest cache.
pub struct ManifestCache {
    store: Arc<DiskStore>,
    memory: Arc<MemoryTier>,
    metrics: Arc<Metrics>,
    tags: moka::sync::Cache<TagKey, TagEntry>,
    tag_flight: Flight<TagKey, Waiting<TagResult>>,
    /// Keyed by upstream and repository too: a request for another repository that the
    /// upstream refuses must not fail this one.
    digest_flight: Flight<(String, RepositoryName, Digest), Waiting<Result<StoredManifest, ManifestError>>>,
}

impl ManifestCache {
    pub fn new(store: Arc<DiskStore>, memory: Arc<MemoryTier>, metrics: Arc<Metrics>) -> Arc<Self> {
        let tags = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(Duration::from_secs(7 * 24 * 3600))
            .support_invalidation_closures()
            .build();
        Arc::new(ManifestCache {
            store,
            memory,
            metrics,
            tags,
            tag_flight: Flight::default(),
            digest_flight: Flight::default(),
        })
    }

    /// A manifest by digest, from disk or fetched (once, for all concurrent requests) and
    /// verified. The client must accept its media type.
    pub async fn by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repository: &RepositoryName,
        digest: Digest,
        accept: &AcceptList,
    ) -> Result<(StoredManifest, Found), ManifestError> {
        refuse_if_nothing_acceptable(accept)?;
        let key = EntryKey::manifest(digest);
        let stored = match self.memory_copy(digest) {
            Some(m) => Some((m, Found::Memory)),
            None => read_stored(&self.store, digest).await.map(|m| (m, Found::Disk)),
        };
        let (manifest, found) = match stored {
            Some(found) => found,
            None => {
                let fetch = fetch_by_digest(
                    Arc::clone(upstream),
                    repository.clone(),
                    digest,
                    accept.upstream_header(),
                    Arc::clone(&self.store),
                    Arc::clone(&self.metrics),
                );
                let (result, joined) = self
                    .digest_flight
                    .run((upstream.name.clone(), repository.clone(), digest), || fetch, |e| Err(ManifestError::Disk(e)))
                    .await;
                (result?, if joined { Found::Coalesced } else { Found::Fetched })
            }
        };
        if found != Found::Memory {
            let media_type = Some(Arc::clone(&manifest.media_type));
            self.memory.insert(key, MemoryObject { bytes: manifest.bytes.clone(), media_type });
        }
        if !accept.accepts(&manifest.media_type) {
            return Err(ManifestError::NotAcceptable { media_type: manifest.media_type.to_string() });
        }
        Ok((manifest, found))
    }

    /// The manifest from the memory tier, if it is there and the client accepts its type: what
    /// `by_digest` answers with `Found::Memory` (and only that; every other case is its own).
    pub fn in_memory(&self, digest: Digest, accept: &AcceptList) -> Option<StoredManifest> {
        refuse_if_nothing_acceptable(accept).ok()?;
        self.memory_copy(digest).filter(|m| accept.accepts(&m.media_type))
    }

    fn memory_copy(&self, digest: Digest) -> Option<StoredManifest> {
        let object = self.memory.get(&EntryKey::manifest(digest))?;
        Some(StoredManifest { digest, media_type: object.media_type?, bytes: object.bytes })
    }

    /// Resolves a tag to a digest: from the mapping while fresh, else by asking the upstream.
    pub async fn resolve_tag(
        &self,
        upstream: &Arc<Upstream>,
        repository: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
    ) -> Result<(TagEntry, Freshness), ManifestError> {
        refuse_if_nothing_acceptable(accept)?;
        let key = TagKey {
            upstream: upstream.name.clone(),
            repository: repository.clone(),
            tag: tag.clone(),
            accept: *accept,
        };
        let previous = self.tags.get(&key);
        if let Some(entry) = previous.as_ref().filter(|e| e.confirmed.elapsed() < upstream.config.tag_ttl.get()) {
            return Ok((entry.clone(), Freshness::Fresh));
        }
        let job = revalidate(RevalidateJob {
            upstream: Arc::clone(upstream),
            key: key.clone(),
            previous,
            tags: self.tags.clone(),
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.metrics),
        });
        let (result, _) = self.tag_flight.run(key, || job, |e| Err(ManifestError::Disk(e))).await;
        let (entry, freshness) = result?;
        if !accept.accepts(&entry.media_type) {
            return Err(ManifestError::NotAcceptable { media_type: entry.media_type });
        }
        Ok((entry, freshness))
    }

    /// Drops a manifest from every tier.
    pub async fn purge(&self, digest: Digest) -> bool {
        let key = EntryKey::manifest(digest);
        self.memory.remove(&key);
        self.store.remove(key).await
    }

    /// Forgets every mapping of a tag (all Accept variants), so the next pull revalidates.
    pub fn invalidate_tag(&self, upstream: &str, repository: &RepositoryName, tag: &Tag) {
        let (upstream, repository, tag) = (upstream.to_owned(), repository.clone(), tag.clone());
        self.invalidate_where(move |k| k.upstream == upstream && k.repository == repository && k.tag == tag);
    }

    /// Forgets every tag mapping of a repository.
    pub fn invalidate_repository(&self, upstream: &str, repository: &RepositoryName) {
        let (upstream, repository) = (upstream.to_owned(), repository.clone());
        self.invalidate_where(move |k| k.upstream == upstream && k.repository == repository);
    }

    /// Forgets every tag mapping.
    pub fn invalidate_all_tags(&self) {
        self.tags.invalidate_all();
    }

    /// Mappings matching `predicate` are no longer returned from now on.
    fn invalidate_where(&self, predicate: impl Fn(&TagKey) -> bool + Send + Sync + 'static) {
        if let Err(e) = self.tags.invalidate_entries_if(move |k, _| predicate(k)) {
            // Only possible without `support_invalidation_closures`: drop everything instead.
            tracing::warn!(error = %e, "selective tag invalidation unavailable: dropping all tag mappings");
            self.tags.invalidate_all();
        }
    }
}

/// A client that named only media types Berth does not serve gets a refusal, not an upstream
/// request.
fn refuse_if_nothing_acceptable(accept: &AcceptList) -> Result<(), ManifestError> {
    if !accept.is_unspecified() && accept.upstream_header().is_empty() {
        return Err(ManifestError::NotAcceptable { media_type: "any manifest type this mirror serves".into() });
    }
    Ok(())
}

struct RevalidateJob {
    upstream: Arc<Upstream>,
    key: TagKey,
    previous: Option<TagEntry>,
    tags: moka::sync::Cache<TagKey, TagEntry>,
    store: Arc<DiskStore>,
    metrics: Arc<Metrics>,
}

/// Asks the upstream what the tag points at now (HEAD; GET when HEAD lacks the digest).
async fn revalidate(job: RevalidateJob) -> Result<(TagEntry, Freshness), ManifestError> {
    let RevalidateJob { upstream, key, previous, tags, store, metrics } = job;
    let path = format!("manifests/{}", key.tag);
    let accept = key.accept.upstream_header();
    metrics.upstream_request(&upstream.name, crate::metrics::UpstreamRequest::ManifestHead);
    let head = upstream.fetch(Method::HEAD, &key.repository, &path, Some(&accept)).await;
    let entry = match head {
        Ok(response) => match entry_from_head(&response) {
            Some(entry) => entry,
            None => {
                metrics.upstream_request(&upstream.name, crate::metrics::UpstreamRequest::Manifest);
                let mut response = upstream.fetch(Method::GET, &key.repository, &path, Some(&accept)).await?;
                let manifest = receive(&mut response, None, &upstream.name, &metrics).await?;
                let entry = TagEntry {
                    digest: manifest.digest,
                    media_type: manifest.media_type.to_string(),
                    size: manifest.bytes.len() as u64,
                    confirmed: Instant::now(),
                };
                keep(&store, &manifest).await;
                entry
            }
        },
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
            tags.invalidate(&key);
            return Err(e.into());
        }
        Err(e) if e.is_unavailable() => {
            let stale_limit = upstream.config.stale_if_error.get();
            return match previous.filter(|p| p.confirmed.elapsed() <= stale_limit) {
                Some(p) => {
                    tracing::warn!(error = %e, tag = %key.tag, repository = %key.repository, "upstream failed: serving the last known tag mapping");
                    Ok((p, Freshness::Stale))
                }
                None => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    tags.insert(key, entry.clone());
    Ok((entry, Freshness::Revalidated))
}

/// A tag mapping from a HEAD; `None` (then the manifest is fetched and checked whole) unless the
/// HEAD names a digest, a size and a manifest media type.
fn entry_from_head(response: &UpstreamResponse) -> Option<TagEntry> {
    let digest: Digest = response.header(DIGEST_HEADER)?.parse().ok()?;
    let media_type = media_type_header(response).filter(|t| MANIFEST_MEDIA_TYPES.contains(&t.as_str()))?;
    let size: u64 = response.header(CONTENT_LENGTH)?.parse().ok()?;
    if size > MAX_MANIFEST_BYTES {
        return None;
    }
    Some(TagEntry { digest, media_type, size, confirmed: Instant::now() })
}

fn media_type_header(response: &UpstreamResponse) -> Option<String> {
    let value = response.header(CONTENT_TYPE)?.split(';').next()?.trim().to_ascii_lowercase();
    let generic =
        value.is_empty() || value == "application/json" || value == "text/plain" || value == "application/octet-stream";
    (!generic).then_some(value)
}

async fn fetch_by_digest(
    upstream: Arc<Upstream>,
    repository: RepositoryName,
    digest: Digest,
    accept: String,
    store: Arc<DiskStore>,
    metrics: Arc<Metrics>,
) -> Result<StoredManifest, ManifestError> {
    metrics.upstream_request(&upstream.name, crate::metrics::UpstreamRequest::Manifest);
    let path = format!("manifests/{digest}");
    let mut response = upstream.fetch(Method::GET, &repository, &path, Some(&accept)).await?;
    let manifest = receive(&mut response, Some(digest), &upstream.name, &metrics).await?;
    keep(&store, &manifest).await;
    Ok(manifest)
}

/// Reads a manifest body (bounded), hashes it, and checks it against what it must be.
async fn receive(
    response: &mut UpstreamResponse,
    expected: Option<Digest>,
    upstream: &str,
    metrics: &Metrics,
) -> Result<StoredManifest, ManifestError> {
    if let Some(size) = response.content_length().filter(|s| *s > MAX_MANIFEST_BYTES) {
        return Err(ManifestError::TooLarge { size });
    }
    let bytes = response
        .body
        .collect_limited(MAX_MANIFEST_BYTES)
        .await
        .map_err(|source| UpstreamError::Client { upstream: upstream.to_owned(), source })?
        .ok_or(ManifestError::TooLarge { size: MAX_MANIFEST_BYTES + 1 })?;
    metrics.upstream_bytes.with_label_values(&[upstream]).inc_by(bytes.len() as u64);
    // Hashed with the algorithm of the digest it must match (sha256 for a tag).
    let with = |d: &Digest| {
        if d.kind() == berth_shared::Algorithm::Sha256 {
            Digest::of(&bytes)
        } else {
            Digest::of_with(d.kind(), &bytes)
        }
    };
    let actual = expected.as_ref().map_or_else(|| Digest::of(&bytes), with);
    let announced = response.header(DIGEST_HEADER).and_then(|d| d.parse::<Digest>().ok());
    for expected in expected.into_iter().chain(announced) {
        let actual = if expected.kind() == actual.kind() { actual } else { with(&expected) };
        if expected != actual {
            metrics.digest_mismatches.inc();
            return Err(ManifestError::DigestMismatch { expected: Box::new(expected), actual: Box::new(actual) });
        }
    }
    // Declared types and content must agree, or the manifest is refused and nothing is kept.
    let media_type = berth_shared::manifest::checked_media_type(&bytes, media_type_header(response).as_deref())
        .map_err(|why| {
            metrics.invalid_manifests.inc();
            ManifestError::Invalid(why)
        })?;
    Ok(StoredManifest { digest: actual, media_type: media_type.into(), bytes: Bytes::from(bytes) })
}

/// Reads and verifies a stored manifest; a damaged file is dropped.
async fn read_stored(store: &Arc<DiskStore>, digest: Digest) -> Option<StoredManifest> {
    let key = EntryKey::manifest(digest);
    let (file, size) = store.open_entry(key).await?;
    let content = blocking(move || {
        use std::io::Read;
        let mut buf = Vec::with_capacity(size as usize);
        (&*file).read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await
    .ok();
    let parsed = content.and_then(|c| {
        let newline = c.iter().position(|b| *b == b'\n')?;
        let media_type: Arc<str> = std::str::from_utf8(&c[..newline]).ok()?.into();
        let bytes = Bytes::copy_from_slice(&c[newline + 1..]);
        (Digest::of_with(digest.kind(), &bytes) == digest).then_some(StoredManifest { digest, media_type, bytes })
    });
    if parsed.is_none() {
        tracing::warn!(%digest, "stored manifest does not verify: dropped");
        store.remove(key).await;
    }
    parsed
}

/// Stores a verified manifest; a disk failure is logged, and the manifest still served.
async fn keep(store: &Arc<DiskStore>, manifest: &StoredManifest) {
    if let Err(e) = write_stored(store, manifest).await {
        tracing::warn!(digest = %manifest.digest, error = %e, "manifest not cached");
    }
}

async fn write_stored(store: &Arc<DiskStore>, manifest: &StoredManifest) -> Result<(), ManifestError> {
    let key = EntryKey::manifest(manifest.digest);
    if store.contains(&key).is_some() {
        return Ok(());
    }
    let mut content = Vec::with_capacity(manifest.media_type.len() + 1 + manifest.bytes.len());
    content.extend_from_slice(manifest.media_type.as_bytes());
    content.push(b'\n');
    content.extend_from_slice(&manifest.bytes);
    let size = content.len() as u64;
    let store = Arc::clone(store);
    blocking(move || {
        use std::io::Write;
        let Ok(reservation) = store.reserve(size) else {
            return Ok(()); // served, not cached: larger than the whole budget
        };
        let (path, mut file) = store.create_temp()?;
        let written = file.write_all(&content).and_then(|_| file.sync_data());
        if let Err(e) = written.and_then(|_| store.publish(&path, key, size, reservation)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    })
    .await
    .map_err(|e| ManifestError::Disk(e.to_string()))
}
