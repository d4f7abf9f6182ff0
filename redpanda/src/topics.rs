//! Declarative topic specs and idempotent topic admin.
//!
//! ```text
//!   [TopicSpec] ──create_topics──▶ Metadata → controller ──CreateTopics(configs)──▶ broker
//!                                     │ INVALID_CONFIG? retry that topic without configs
//!                                     ▼ TOPIC_ALREADY_EXISTS = ok
//!                                  wait until metadata lists every partition
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rskafka::client::Client;
use rskafka::client::partition::UnknownTopicHandling;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::scan;
use crate::wire::{self, NewTopic};

/// The readings topic devices write to.
pub const READINGS: &str = "iot.readings";
/// Rejected and too-late input, with reasons.
pub const DLQ: &str = "iot.readings.dlq";
/// Window aggregates.
pub const AGGREGATES: &str = "iot.aggregates";
/// The commit log of the exactly-once protocol (one partition, compacted).
pub const PROGRESS: &str = "iot.progress";

/// What a topic should look like. Configs are Kafka topic configs
/// (`cleanup.policy`, `retention.ms`, …) applied where the broker accepts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    #[serde(default = "one")]
    pub replication: i16,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

fn one() -> i16 {
    1
}

impl TopicSpec {
    /// A topic with `partitions` partitions, replication 1 and broker-default configs.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: 1,
            configs: BTreeMap::new(),
        }
    }

    /// Sets the replication factor (3 is usual on a production Redpanda cluster).
    pub fn replication(mut self, replication: i16) -> Self {
        self.replication = replication;
        self
    }

    /// Adds one topic config.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// The four topics iotflow uses. `partitions` applies to the data topics;
/// the progress topic always has exactly one partition, is compacted and never
/// expires, because its last record is the job's commit point.
pub fn default_topics(partitions: i32, replication: i16) -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(READINGS, partitions).replication(replication),
        TopicSpec::new(DLQ, partitions).replication(replication),
        TopicSpec::new(AGGREGATES, partitions).replication(replication),
        TopicSpec::new(PROGRESS, 1)
            .replication(replication)
            .config("cleanup.policy", "compact")
            .config("retention.ms", "-1")
            .config("retention.bytes", "-1"),
    ]
}

/// What `create_topics` did for one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum CreateOutcome {
    Created,
    AlreadyExists,
    /// The broker rejected the configs; the topic was created with broker defaults.
    CreatedWithoutConfigs {
        reason: String,
    },
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "iotflow-admin";

/// Creates every spec that does not exist yet; existing topics are left as
/// they are (idempotent). Returns once metadata shows all their partitions.
pub async fn create_topics(
    client: &Client,
    bootstrap: impl Into<crate::Brokers>,
    specs: &[TopicSpec],
) -> Result<Vec<(String, CreateOutcome)>> {
    let bootstrap = &bootstrap.into();
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        let outcome = match bootstrap.security().sasl() {
            // The admin requests below speak no SASL.
            Some(_) => create_through(client, spec).await?,
            None => create_one(bootstrap, spec).await?,
        };
        tracing::info!(topic = %spec.name, partitions = spec.partitions, ?outcome, "topic ensured");
        outcomes.push((spec.name.clone(), outcome));
    }
    wait_for_partitions(client, specs).await?;
    Ok(outcomes)
}

async fn create_one(bootstrap: &crate::Brokers, spec: &TopicSpec) -> Result<CreateOutcome> {
    let with_configs = NewTopic {
        name: spec.name.clone(),
        partitions: spec.partitions,
        replication: spec.replication,
        configs: spec.configs.clone().into_iter().collect(),
    };
    let result = send_create(bootstrap, &with_configs).await?;
    match result.error_code {
        0 => Ok(CreateOutcome::Created),
        wire::TOPIC_ALREADY_EXISTS => Ok(CreateOutcome::AlreadyExists),
        code if !spec.configs.is_empty() && config_rejection(code) => {
            let reason = format!(
                "{} {}",
                wire::error_name(code),
                result.message.unwrap_or_default()
            );
            tracing::warn!(topic = %spec.name, %reason, "broker rejected topic configs; creating with defaults");
            let plain = NewTopic {
                configs: Vec::new(),
                ..with_configs
            };
            let retry = send_create(bootstrap, &plain).await?;
            match retry.error_code {
                0 | wire::TOPIC_ALREADY_EXISTS => Ok(CreateOutcome::CreatedWithoutConfigs {
                    reason: reason.trim().to_owned(),
                }),
                code => Err(create_error(&spec.name, code, retry.message)),
            }
        }
        code => Err(create_error(&spec.name, code, result.message)),
    }
}

/// Creates `spec` through rskafka's controller client (which authenticates
/// like every other connection), without configs: it cannot send them.
async fn create_through(client: &Client, spec: &TopicSpec) -> Result<CreateOutcome> {
    use rskafka::client::error::{Error as E, ProtocolError};
    let cluster = |source| Error::Cluster {
        op: "CreateTopics",
        source: Box::new(source),
    };
    let controller = client.controller_client().map_err(cluster)?;
    let timeout_ms = i32::try_from(ADMIN_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    match controller
        .create_topic(&spec.name, spec.partitions, spec.replication, timeout_ms)
        .await
    {
        Ok(()) if spec.configs.is_empty() => Ok(CreateOutcome::Created),
        Ok(()) => {
            let reason =
                "topic configs are not sent over SASL yet: create the topic beforehand to set them";
            tracing::warn!(topic = %spec.name, reason, "created with broker defaults");
            Ok(CreateOutcome::CreatedWithoutConfigs {
                reason: reason.into(),
            })
        }
        Err(E::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        }) => Ok(CreateOutcome::AlreadyExists),
        Err(e) => Err(cluster(e)),
    }
}

fn config_rejection(code: i16) -> bool {
    // INVALID_CONFIG, INVALID_REQUEST, POLICY_VIOLATION: the topic itself is fine.
    matches!(code, 40 | 42 | 44)
}

fn create_error(topic: &str, code: i16, message: Option<String>) -> Error {
    Error::CreateTopic {
        topic: topic.to_owned(),
        code,
        name: wire::error_name(code),
        message: message.map(|m| format!(": {m}")).unwrap_or_default(),
    }
}

/// Sends CreateTopics to the controller, found through any bootstrap broker.
async fn send_create(bootstrap: &crate::Brokers, topic: &NewTopic) -> Result<wire::TopicResult> {
    let mut last_err = None;
    for attempt in 0..5 {
        for addr in bootstrap.iter() {
            let controller = match controller_of(addr, bootstrap).await {
                Ok(c) => c,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let request = wire::encode_create_topics(
                attempt + 1,
                CLIENT_ID,
                std::slice::from_ref(topic),
                ADMIN_TIMEOUT,
            );
            let tls = bootstrap.security().tls();
            let body =
                match wire::call(&controller, "CreateTopics", &request, ADMIN_TIMEOUT, tls).await {
                    Ok(b) => b,
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                };
            let results = wire::decode_create_topics(&body).map_err(|detail| Error::Protocol {
                addr: controller.clone(),
                api: "CreateTopics",
                detail,
            })?;
            let result = results
                .into_iter()
                .find(|r| r.name == topic.name)
                .ok_or_else(|| Error::Protocol {
                    addr: controller.clone(),
                    api: "CreateTopics",
                    detail: format!("no result for topic {}", topic.name),
                })?;
            if result.error_code == wire::NOT_CONTROLLER {
                // The controller moved between our Metadata and CreateTopics; ask again.
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                break;
            }
            return Ok(result);
        }
    }
    Err(last_err.unwrap_or_else(|| create_error(&topic.name, wire::NOT_CONTROLLER, None)))
}

async fn controller_of(addr: &str, bootstrap: &crate::Brokers) -> Result<String> {
    let body = wire::call(
        addr,
        "Metadata",
        &wire::encode_metadata(0, CLIENT_ID),
        ADMIN_TIMEOUT,
        bootstrap.security().tls(),
    )
    .await?;
    let info = wire::decode_metadata(&body).map_err(|detail| Error::Protocol {
        addr: addr.to_owned(),
        api: "Metadata",
        detail,
    })?;
    Ok(info.controller_addr().unwrap_or(addr).to_owned())
}

async fn wait_for_partitions(client: &Client, specs: &[TopicSpec]) -> Result<()> {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let listed = list_topics(client).await?;
        let missing: Vec<&str> = specs
            .iter()
            .filter(|s| {
                !listed
                    .iter()
                    .any(|t| t.name == s.name && t.partitions.len() >= s.partitions as usize)
            })
            .map(|s| s.name.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::CreateTopic {
                topic: missing.join(","),
                code: 7,
                name: wire::error_name(7),
                message: ": created but not visible in metadata".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One topic as metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<i32>,
}

/// All topics the cluster knows, sorted by name.
pub async fn list_topics(client: &Client) -> Result<Vec<TopicInfo>> {
    let mut topics: Vec<TopicInfo> = client
        .list_topics()
        .await
        .map_err(|source| Error::Cluster {
            op: "list topics",
            source: Box::new(source),
        })?
        .into_iter()
        .map(|t| TopicInfo {
            name: t.name,
            partitions: t.partitions.into_iter().collect(),
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

/// The partitions of `topic`, or `None` if the cluster does not know it.
pub async fn partitions_of(client: &Client, topic: &str) -> Result<Option<Vec<i32>>> {
    Ok(list_topics(client)
        .await?
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions))
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub earliest: i64,
    pub high_watermark: i64,
}

/// Partitions of `topic` with their earliest offset and high watermark.
pub async fn describe_topic(client: &Client, topic: &str) -> Result<Vec<PartitionOffsets>> {
    let info = list_topics(client)
        .await?
        .into_iter()
        .find(|t| t.name == topic)
        .ok_or_else(|| Error::CreateTopic {
            topic: topic.to_owned(),
            code: 3,
            name: "UNKNOWN_TOPIC_OR_PARTITION",
            message: String::new(),
        })?;
    let mut out = Vec::with_capacity(info.partitions.len());
    for partition in info.partitions {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|source| Error::Partition {
                op: "connect",
                topic: topic.to_owned(),
                partition,
                source: Box::new(source),
            })?;
        let (earliest, high_watermark) = scan::offsets(&pc).await?;
        out.push(PartitionOffsets {
            partition,
            earliest,
            high_watermark,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_topic_is_single_partition_compacted_and_never_expires() {
        let topics = default_topics(8, 3);
        let progress = topics.iter().find(|t| t.name == PROGRESS).unwrap();
        assert_eq!(progress.partitions, 1);
        assert_eq!(progress.replication, 3);
        assert_eq!(progress.configs["cleanup.policy"], "compact");
        assert_eq!(progress.configs["retention.ms"], "-1");
        let readings = topics.iter().find(|t| t.name == READINGS).unwrap();
        assert_eq!(readings.partitions, 8);
    }

    #[test]
    fn specs_reject_unknown_fields() {
        let ok: TopicSpec = serde_json::from_str(r#"{"name":"a","partitions":2}"#).unwrap();
        assert_eq!(ok, TopicSpec::new("a", 2));
        assert!(
            serde_json::from_str::<TopicSpec>(r#"{"name":"a","partitions":2,"partition":1}"#)
                .is_err()
        );
    }
}
