//! Manifest media types and the parts of manifests and indexes that a cache needs to read:
//! which blobs an image is made of, and which manifest serves which platform.

use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest media type Berth serves, in the order it asks an upstream for them when the
/// client sent no `Accept` header.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Largest manifest Berth fetches or caches (4 MiB, as in the distribution registry).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Whether a media type is an index (a list of per-platform manifests).
pub fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// A blob or manifest reference inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform an index entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether this platform matches a filter such as `linux/amd64` or `linux/arm64/v8`
    /// (a filter without a variant matches every variant).
    pub fn matches(&self, filter: &str) -> bool {
        let mut parts = filter.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && arch == Some(self.architecture.as_str())
            && variant.is_none_or(|v| self.variant.as_deref() == Some(v))
    }
}

/// A parsed manifest: an index of platform manifests, or one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Index { manifests: Vec<Descriptor> },
    Image { config: Descriptor, layers: Vec<Descriptor> },
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest has neither `manifests` nor `config` and `layers`")]
    UnknownShape,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let raw: RawManifest = serde_json::from_slice(bytes)?;
        match (raw.manifests, raw.config, raw.layers) {
            (Some(manifests), None, _) => Ok(Manifest::Index { manifests }),
            (None, Some(config), layers) => Ok(Manifest::Image { config, layers: layers.unwrap_or_default() }),
            _ => Err(ManifestError::UnknownShape),
        }
    }
}

/// The media type a manifest declares in its own `mediaType` field, or the one its shape implies
/// (OCI manifests may omit the field).
pub fn detect_media_type(bytes: &[u8]) -> Option<String> {
    let raw: RawManifest = serde_json::from_slice(bytes).ok()?;
    if let Some(media_type) = raw.media_type {
        return Some(media_type);
    }
    if raw.manifests.is_some() {
        Some(OCI_INDEX.to_owned())
    } else if raw.config.is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

/// The media type a manifest is served with, once its declared types and its content agree:
/// the `Content-Type` the upstream sent (when specific), the document's `mediaType` field and its
/// shape (an index has `manifests`; an image has `config` and `layers`, never both) must all say
/// the same kind, and each declared type must be one Berth serves. `Err` says what disagrees.
pub fn checked_media_type(bytes: &[u8], header: Option<&str>) -> Result<String, String> {
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
    let shape_is_index = match (&raw.manifests, &raw.config, &raw.layers) {
        (Some(_), None, None) => true,
        (None, Some(_), _) => false,
        (Some(_), _, _) => return Err("the document has both `manifests` and `config`/`layers`".into()),
        (None, None, _) => return Err("the document has neither `manifests` nor `config`".into()),
    };
    let declared = [("Content-Type", header), ("mediaType", raw.media_type.as_deref())];
    for (what, value) in declared {
        let Some(value) = value else { continue };
        if !MANIFEST_MEDIA_TYPES.contains(&value) {
            return Err(format!("{what} {value:?} is not a manifest type this mirror serves"));
        }
        if is_index_type(value) != shape_is_index {
            let shape = if shape_is_index { "an index" } else { "an image manifest" };
            return Err(format!("{what} says {value} but the document is {shape}"));
        }
    }
    let detected = if shape_is_index { OCI_INDEX } else { OCI_MANIFEST };
    Ok(header.or(raw.media_type.as_deref()).unwrap_or(detected).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn should_parse_an_index_with_platforms() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":11,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d('a'),
            d('b')
        );
        let Manifest::Index { manifests } = Manifest::parse(json.as_bytes()).unwrap() else { panic!() };
        assert_eq!(manifests.len(), 2);
        let arm = manifests[1].platform.as_ref().unwrap();
        assert!(arm.matches("linux/arm64") && arm.matches("linux/arm64/v8"));
        assert!(!arm.matches("linux/arm64/v7") && !arm.matches("linux/amd64"));
        assert_eq!(detect_media_type(json.as_bytes()).as_deref(), Some(OCI_INDEX));
    }

    #[test]
    fn should_parse_an_image_manifest_without_media_type() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":2}},"layers":[{{"digest":"{}","size":3}}]}}"#,
            d('c'),
            d('e')
        );
        let Manifest::Image { config, layers } = Manifest::parse(json.as_bytes()).unwrap() else { panic!() };
        assert_eq!(config.size, 2);
        assert_eq!(layers.len(), 1);
        assert_eq!(detect_media_type(json.as_bytes()).as_deref(), Some(OCI_MANIFEST));
    }

    #[test]
    fn should_refuse_declared_types_that_contradict_the_content() {
        let image =
            format!(r#"{{"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{}","size":2}},"layers":[]}}"#, d('c'));
        assert_eq!(checked_media_type(image.as_bytes(), None).unwrap(), DOCKER_MANIFEST);
        assert_eq!(checked_media_type(image.as_bytes(), Some(OCI_MANIFEST)).unwrap(), OCI_MANIFEST);
        assert!(checked_media_type(image.as_bytes(), Some(OCI_INDEX)).unwrap_err().contains("Content-Type"));
        let lying = image.replace(DOCKER_MANIFEST, DOCKER_MANIFEST_LIST);
        assert!(checked_media_type(lying.as_bytes(), None).unwrap_err().contains("mediaType"));
        let both = format!(r#"{{"manifests":[],"config":{{"digest":"{}","size":2}},"layers":[]}}"#, d('c'));
        assert!(checked_media_type(both.as_bytes(), None).unwrap_err().contains("both"));
        let unknown = image.replace(DOCKER_MANIFEST, "application/vnd.example+json");
        assert!(checked_media_type(unknown.as_bytes(), None).is_err());
        assert!(checked_media_type(b"{}", None).is_err());
        let index = r#"{"manifests":[]}"#;
        assert_eq!(checked_media_type(index.as_bytes(), None).unwrap(), OCI_INDEX);
    }

    #[test]
    fn should_reject_documents_that_are_not_manifests() {
        assert!(matches!(Manifest::parse(b"{}"), Err(ManifestError::UnknownShape)));
        assert!(matches!(Manifest::parse(b"not json"), Err(ManifestError::Json(_))));
        let bad_digest = r#"{"config":{"digest":"sha256:zz","size":1},"layers":[]}"#;
        assert!(Manifest::parse(bad_digest.as_bytes()).is_err());
    }
}
