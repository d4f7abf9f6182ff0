//! Which cluster a command talks to: `--brokers`, or the detached local broker
//! under `--home` (started on first use).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use iotflow_redpanda::rskafka::client::Client;
use iotflow_redpanda::{Storage, local};

/// Broker selection shared by every command that talks to Kafka.
#[derive(Debug, Clone, Args)]
pub struct BrokerSelect {
    /// Bootstrap brokers, comma-separated `host:port` (Redpanda, Kafka or tansu).
    /// Without it, the local broker under `--home` is used, started if needed.
    #[arg(long, env = "IOTFLOW_BROKERS", value_delimiter = ',')]
    pub brokers: Option<Vec<String>>,
}

/// A connected cluster and its bootstrap list.
pub struct Target {
    pub bootstrap: Vec<String>,
    pub client: Client,
}

impl BrokerSelect {
    pub async fn connect(&self, home: &Path) -> Result<Target> {
        let bootstrap = match &self.brokers {
            Some(b) if !b.is_empty() => b.clone(),
            _ => {
                let running = local::find_detached(home).await?;
                let broker = match running {
                    Some(b) => b,
                    None => {
                        let b = local::start_detached(home, Storage::Memory, None)
                            .await
                            .context("starting the local broker")?;
                        eprintln!(
                            "started the local broker on {} (pid {}, log {}); stop it with `iotflow broker stop`",
                            b.addr,
                            b.pid,
                            b.log.display()
                        );
                        b
                    }
                };
                vec![broker.addr]
            }
        };
        let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
            .await
            .with_context(|| format!("connecting to {}", bootstrap.join(",")))?;
        Ok(Target { bootstrap, client })
    }
}
