//! Types shared by the Berth edge and distributor: OCI digests, repository names, references,
//! media types and manifest parsing, and the byte-size and duration formats used in config.
//!
//! Pure types and parsing, no async runtime; the only I/O is reading config files and secrets.

pub mod config_file;
pub mod digest;
pub mod duration;
pub mod image_ref;
pub mod manifest;
pub mod name;
pub mod protocol;
pub mod reference;
pub mod secret;
pub mod size;
pub mod time;
pub mod tls;
pub mod url;
pub mod x509;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use duration::{DurationError, HumanDuration};
pub use image_ref::{ImageReference, ImageReferenceError};
pub use name::{NameError, RepositoryName};
pub use reference::{Reference, ReferenceError, Tag};
pub use size::{ByteSize, SizeError};
