//! Broker access for iotflow: everything that talks to a Kafka-protocol broker
//! outside the dataflow itself.
//!
//! ```text
//!   connect ──▶ rskafka Client (Redpanda, Kafka or the local tansu broker)
//!   topics  ──▶ declarative TopicSpec, idempotent create (with configs), list, describe
//!   scan    ──▶ read partitions to their high watermark
//!   local   ──▶ tansu as a child process on a free loopback port (install, start, stop)
//! ```
//!
//! Nothing here assumes the local broker: it is one more bootstrap address.

mod error;
pub mod install;
pub mod local;
pub mod partitioner;
pub mod scan;
pub mod security;
pub mod topics;
pub mod wire;

use std::time::Duration;

pub use error::{Error, Result, is_retriable_kafka};
pub use local::{LocalBroker, LocalBrokerBuilder, Storage};
pub use rskafka;
pub use security::{Brokers, Security, SecurityError};
pub use topics::{TopicSpec, default_topics};

use rskafka::BackoffConfig;
use rskafka::client::{Client, ClientBuilder};

/// A client whose requests are tried once: a produce whose answer is lost
/// (the broker went away after storing it) fails instead of being sent again
/// behind the caller's back, so a caller that must not duplicate records can
/// look at the partition before it retries.
pub async fn connect_once(brokers: impl Into<Brokers>) -> Result<Client> {
    connect(brokers, Duration::ZERO).await
}

/// Connects to a cluster through `brokers` (`host:port` each, and how to
/// reach them; a plain address list: plaintext). Requests retry with backoff
/// for up to `deadline` before they fail.
pub async fn connect(brokers: impl Into<Brokers>, deadline: Duration) -> Result<Client> {
    let brokers: Brokers = brokers.into();
    let mut builder = ClientBuilder::new(brokers.to_vec())
        .client_id("iotflow")
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
            deadline: Some(deadline),
        });
    if let Some(tls) = brokers.security().tls() {
        builder = builder.tls_config(tls);
    }
    if let Some(sasl) = brokers.security().sasl() {
        builder = builder.sasl_config(sasl);
    }
    builder.build().await.map_err(|source| Error::Connect {
        brokers: brokers.to_vec(),
        security: brokers.security().to_string(),
        source: Box::new(source),
    })
}
