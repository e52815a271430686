//! Why a blob read did not go as planned: the fill's errors, the disk's faults, and the reasons
//! a blob is streamed from the upstream without the cache (a pass-through).

use berth_shared::Digest;

use crate::metrics::FillFailure;
use crate::upstream::UpstreamError;

/// Why a blob is streamed from the upstream without being cached (`X-Berth-Cache: bypass`).
/// Every byte is still hashed and the last one held until the digest matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// The cache disk is degraded: no fill starts until it recovers.
    DiskDegraded,
    /// The blob does not fit in the whole disk budget.
    OverBudget,
    /// The fill this request followed lost its disk; the request goes on from the upstream.
    FillLostDisk,
}

impl PassReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PassReason::DiskDegraded => "the cache disk is degraded",
            PassReason::OverBudget => "the blob is larger than the disk budget",
            PassReason::FillLostDisk => "the fill lost its disk",
        }
    }
}

impl std::fmt::Display for PassReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the cache disk was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    CreateTemp,
    Write,
    Read,
    Publish,
}

impl DiskOp {
    fn as_str(self) -> &'static str {
        match self {
            DiskOp::CreateTemp => "creating a temp file",
            DiskOp::Write => "writing a temp file",
            DiskOp::Read => "reading",
            DiskOp::Publish => "publishing",
        }
    }
}

/// A failure of the cache disk.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", op.as_str())]
pub struct DiskFault {
    pub op: DiskOp,
    pub message: String,
}

impl DiskFault {
    pub fn new(op: DiskOp, e: impl std::fmt::Display) -> Self {
        DiskFault { op, message: e.to_string() }
    }
}

/// Why a blob's bytes could not be served complete and verified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream sent content with digest {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream body ended after {received} of {expected} bytes")]
    Truncated { expected: u64, received: u64 },
    #[error("upstream body is longer than its announced {expected} bytes")]
    TooLong { expected: u64 },
    #[error("cache disk failed: {0}")]
    Disk(#[from] DiskFault),
    #[error("upstream sent different bytes for the same digest on a second fetch")]
    Inconsistent,
    /// The fill stopped caching the blob. A reader of the fill goes on from the upstream
    /// (`BlobSource` does); a reader that cannot (a range checked against the fill) fails.
    #[error("not cached: {0}")]
    PassThrough(PassReason),
    /// The fill's task ended without telling its result (it panicked).
    #[error("the fill ended without a result")]
    Abandoned,
    /// A source was read at an offset it cannot serve (a bug, not a condition of the world).
    #[error("read at {offset}, the source is at {expected}")]
    OutOfOrder { offset: u64, expected: u64 },
}

impl FillError {
    /// Label for the `berth_edge_fill_failures_total` metric (a fill task's own failures).
    pub fn reason(&self) -> FillFailure {
        match self {
            FillError::Upstream(_) => FillFailure::Upstream,
            FillError::DigestMismatch { .. } | FillError::Inconsistent => FillFailure::DigestMismatch,
            FillError::Truncated { .. } | FillError::TooLong { .. } => FillFailure::Truncated,
            FillError::Disk(_) | FillError::PassThrough(_) | FillError::Abandoned | FillError::OutOfOrder { .. } => {
                FillFailure::Disk
            }
        }
    }

    /// Why a reader of a fill should go on from the upstream, if this error says it should:
    /// the fill's disk failed (its bytes did not), or the fill stopped caching.
    pub fn pass_reason(&self) -> Option<PassReason> {
        match self {
            FillError::Disk(_) => Some(PassReason::FillLostDisk),
            FillError::PassThrough(reason) => Some(*reason),
            _ => None,
        }
    }
}
