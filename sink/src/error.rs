//! The sinks' errors: what failed, where (file, topic/partition, epoch), whose
//! fault it is, and whether trying again can help.

use std::path::PathBuf;

use iotflow_dataflow::snapshot::SnapshotError;

use crate::parquet::ParquetSinkError;
use crate::progress::ProgressError;
use crate::protocol::ProtocolError;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The configuration or the input: fix it and start again.
    User,
    /// The disk, the network, the broker: may pass.
    Environment,
    /// A broken invariant of ours: a bug.
    Ours,
}

/// What can go wrong committing and publishing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{topic}/{partition}: {detail}")]
    Broker {
        topic: String,
        partition: i32,
        detail: String,
    },
    #[error("connecting to the brokers: {0}")]
    Connect(String),
    #[error("{path}: {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error("epoch {epoch}: {problem}")]
    Inconsistent { epoch: u64, problem: String },
    #[error("encoding {what}: {detail}")]
    Encode { what: String, detail: String },
    #[error(
        "{topic}/{partition} offset {offset}: a record without iotflow's epoch/index headers; another writer uses this partition"
    )]
    ForeignRecord {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("{step} epoch {epoch}: {source}")]
    Step {
        step: &'static str,
        epoch: u64,
        #[source]
        source: Box<SinkError>,
    },
    #[error("the {0} thread stopped")]
    ThreadGone(&'static str),
    #[error("another iotflow instance is running on state directory {} (lock {})", state_dir.display(), lock.display())]
    Locked { state_dir: PathBuf, lock: PathBuf },
    #[error("job {job} has commits on {topic} but the state of none of them in {} is intact: {damage}; refusing to start from scratch (move the state directory away to do that)", state_dir.display())]
    NoIntactState {
        job: String,
        topic: String,
        state_dir: PathBuf,
        /// What is damaged or missing, file by file.
        damage: String,
    },
    #[error(transparent)]
    Parquet(#[from] ParquetSinkError),
    #[error(transparent)]
    Progress(#[from] ProgressError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{path}: {source}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
}

impl SinkError {
    /// `self`, said to have happened at `step` of `epoch`.
    pub fn at(self, step: &'static str, epoch: u64) -> Self {
        Self::Step {
            step,
            epoch,
            source: Box::new(self),
        }
    }

    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Step { source, .. } => source.fault(),
            Self::Io { .. } | Self::Broker { .. } | Self::Connect(_) | Self::Progress(_) => {
                Fault::Environment
            }
            Self::Parquet(ParquetSinkError::Io { .. }) => Fault::Environment,
            Self::Damaged { .. } | Self::Snapshot { .. } | Self::NoIntactState { .. } => {
                Fault::Environment
            }
            Self::ForeignRecord { .. } | Self::Locked { .. } => Fault::User,
            _ => Fault::Ours,
        }
    }

    /// Whether the same step may succeed if tried again (after a restart).
    pub fn is_retriable(&self) -> bool {
        if let Self::Step { source, .. } = self {
            return source.is_retriable();
        }
        matches!(
            self,
            Self::Io { .. }
                | Self::Broker { .. }
                | Self::Connect(_)
                | Self::Progress(_)
                | Self::Parquet(ParquetSinkError::Io { .. })
        )
    }

    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whose_fault_and_whether_a_retry_helps() {
        let io = SinkError::io("writing", "/x")(std::io::Error::other("full"));
        assert_eq!((io.fault(), io.is_retriable()), (Fault::Environment, true));
        assert_eq!(io.to_string(), "writing /x: full");
        let foreign = SinkError::ForeignRecord {
            topic: "t".into(),
            partition: 1,
            offset: 9,
        };
        assert_eq!(
            (foreign.fault(), foreign.is_retriable()),
            (Fault::User, false)
        );
        let bug = SinkError::Inconsistent {
            epoch: 3,
            problem: "x".into(),
        };
        assert_eq!((bug.fault(), bug.is_retriable()), (Fault::Ours, false));
    }
}
