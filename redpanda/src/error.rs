//! Errors of the broker layer. Each variant says whose fault it is (the user's
//! configuration, the environment, the broker) and whether a retry can help.

use std::path::PathBuf;
use std::time::Duration;

/// Errors from connecting to, administering or launching a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No bootstrap broker answered (environment; retry may help).
    #[error("cannot connect to Kafka bootstrap brokers {brokers:?} ({security}): {source}")]
    Connect {
        brokers: Vec<String>,
        /// The protocol (and SASL mechanism and user), never the password.
        security: String,
        #[source]
        source: Box<rskafka::client::error::Error>,
    },

    /// A request about one topic or partition failed (broker; see `is_retriable`).
    #[error("{op} on {topic}/{partition} failed: {source}")]
    Partition {
        op: &'static str,
        topic: String,
        partition: i32,
        #[source]
        source: Box<rskafka::client::error::Error>,
    },

    /// A cluster-wide request (metadata, topic listing) failed.
    #[error("{op} failed: {source}")]
    Cluster {
        op: &'static str,
        #[source]
        source: Box<rskafka::client::error::Error>,
    },

    /// The broker refused to create a topic (user configuration or broker limits).
    #[error("creating topic {topic} failed: Kafka error {code} ({name}){message}")]
    CreateTopic {
        topic: String,
        code: i16,
        name: &'static str,
        message: String,
    },

    /// The broker answered with bytes we could not decode (broker or version mismatch).
    #[error("unexpected reply from broker {addr} to {api}: {detail}")]
    Protocol {
        addr: String,
        api: &'static str,
        detail: String,
    },

    /// Plain socket I/O towards a broker (environment; retry may help).
    #[error("talking to broker {addr}: {source}")]
    Socket {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// Installing the tansu broker with `cargo install` failed (environment).
    #[error("installing tansu into {root} failed ({status}); the build log is {log}")]
    InstallFailed {
        root: PathBuf,
        status: String,
        log: PathBuf,
    },

    /// A file or process operation of the local broker failed (environment).
    #[error("{what} ({path}): {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The local broker process exited before it answered (environment; see its log).
    #[error("local broker exited during start-up ({status}); its log is {log}:\n{tail}")]
    BrokerExited {
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// The local broker did not answer Metadata in time (environment; see its log).
    #[error(
        "local broker on {addr} did not answer within {waited:?} (last error: {last_error}); its log is {log}"
    )]
    NotReady {
        addr: String,
        waited: Duration,
        last_error: String,
        log: PathBuf,
    },

    /// Fetch returned nothing for offsets below the high watermark (broker).
    #[error(
        "{topic}/{partition}: no records returned at offset {offset} although the partition ends at {end}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        offset: i64,
        end: i64,
    },

    /// A runtime file describing a detached local broker is unreadable (environment).
    #[error("local broker state file {path} is invalid: {detail}")]
    StateFile { path: PathBuf, detail: String },
}

impl Error {
    /// Whether the same call may succeed when tried again later.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Socket { .. } | Error::NotReady { .. } => true,
            Error::Partition { source, .. } | Error::Cluster { source, .. } => {
                is_retriable_kafka(source)
            }
            _ => false,
        }
    }

    /// Whether a fetch asked for an offset the partition no longer (or not yet)
    /// holds: retention deleted it, or the topic was recreated.
    pub fn is_offset_out_of_range(&self) -> bool {
        matches!(
            self,
            Error::Partition { source, .. } if matches!(
                **source,
                rskafka::client::error::Error::ServerError {
                    protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                    ..
                }
            )
        )
    }

    /// Whether nothing answered at all (refused, unreachable, timed out): the
    /// broker is not up yet, unlike a TLS or SASL failure, which it was.
    pub fn is_unreachable(&self) -> bool {
        use std::io::ErrorKind as K;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return matches!(
                    io.kind(),
                    K::ConnectionRefused
                        | K::HostUnreachable
                        | K::NetworkUnreachable
                        | K::TimedOut
                        | K::AddrNotAvailable
                );
            }
            cause = e.source();
        }
        false
    }
}

/// Whether an rskafka error is transient: connection trouble, timeouts, or a
/// server error Kafka itself classifies as retriable.
pub fn is_retriable_kafka(err: &rskafka::client::error::Error) -> bool {
    use rskafka::client::error::{Error as E, ProtocolError as P};
    match err {
        E::Connection(_) | E::Request(_) | E::Timeout | E::RetryFailed(_) => true,
        E::ServerError { protocol_error, .. } => matches!(
            protocol_error,
            P::NotLeaderOrFollower
                | P::LeaderNotAvailable
                | P::RequestTimedOut
                | P::NetworkException
                | P::NotEnoughReplicas
                | P::NotEnoughReplicasAfterAppend
                | P::CoordinatorLoadInProgress
                | P::UnknownTopicOrPartition
                | P::KafkaStorageError
                | P::ThrottlingQuotaExceeded
        ),
        _ => false,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
