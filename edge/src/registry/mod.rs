//! The OCI pull API's rules: which requests exist, how they name an upstream, a repository and a
//! digest, ranges and content negotiation, and the one mapping from errors to responses.

pub mod accept;
pub mod error;
pub mod range;
pub mod route;

pub use accept::AcceptList;
pub use error::ApiError;
pub use range::ByteRange;
pub use route::{Route, Router, Target};
