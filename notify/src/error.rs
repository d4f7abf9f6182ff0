use std::path::PathBuf;

/// What can go wrong between a committed alert record and its receiver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("alert record is not an iotflow alert event: {reason}")]
    Record { reason: String },
    #[error("webhook URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("position file {}", path.display())]
    PositionIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("position file {} is not a position (remove it to start afresh)", path.display())]
    PositionFormat {
        path: PathBuf,
        source: serde_json::Error,
    },
}
