//! Which cluster a command talks to: `--brokers`, or the detached local broker
//! under `--home` (started on first use).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use iotflow_jobfile::KafkaSettings;
use iotflow_jobfile::kafka::{SaslMechanism, SecurityProtocol};
use iotflow_redpanda::rskafka::client::Client;
use iotflow_redpanda::{Brokers, Security, Storage, local};

/// Broker selection shared by every command that talks to Kafka.
#[derive(Debug, Clone, Args)]
pub struct BrokerSelect {
    /// Bootstrap brokers, comma-separated `host:port` (Redpanda, Kafka or tansu).
    /// Without it, the local broker under `--home` is used, started if needed.
    #[arg(long, env = "IOTFLOW_BROKERS", value_delimiter = ',')]
    pub brokers: Option<Vec<String>>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// How to reach a secured cluster, with librdkafka's names (a job file's
/// `[kafka]` section states the same; each flag given overrides it).
#[derive(Debug, Clone, Default, Args)]
pub struct SecurityArgs {
    /// plaintext, ssl, sasl_plaintext or sasl_ssl [default: plaintext].
    #[arg(long, env = "IOTFLOW_SECURITY_PROTOCOL")]
    pub security_protocol: Option<SecurityProtocol>,
    /// PEM file of the CA certificates to trust (TLS) [default: the Mozilla roots].
    #[arg(long, env = "IOTFLOW_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM file of this client's certificate chain (mutual TLS; with --ssl-key-location).
    #[arg(long, env = "IOTFLOW_SSL_CERTIFICATE_LOCATION")]
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM file of this client's private key (mutual TLS).
    #[arg(long, env = "IOTFLOW_SSL_KEY_LOCATION")]
    pub ssl_key_location: Option<PathBuf>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "IOTFLOW_SASL_MECHANISM")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user.
    #[arg(long, env = "IOTFLOW_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// Better given as IOTFLOW_SASL_PASSWORD: a flag shows in the process list.
    #[arg(long, env = "IOTFLOW_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<Password>,
}

/// A password: parsed from its flag, never printed.
#[derive(Clone)]
pub struct Password(pub(crate) String);

impl std::str::FromStr for Password {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Password(s.to_owned()))
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl SecurityArgs {
    fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            security_protocol: self.security_protocol,
            ssl_ca_location: self.ssl_ca_location.clone(),
            ssl_certificate_location: self.ssl_certificate_location.clone(),
            ssl_key_location: self.ssl_key_location.clone(),
            sasl_mechanism: self.sasl_mechanism,
            sasl_username: self.sasl_username.clone(),
            sasl_password_env: None,
        }
    }

    /// These settings as flags, for an `iotflow` started by this one (the
    /// password goes by [`Self::forwarded_env`]).
    pub fn forwarded(&self) -> Vec<String> {
        self.settings().flags()
    }

    /// The password for an `iotflow` started by this one, in its environment.
    pub fn forwarded_env(&self) -> Vec<(&'static str, String)> {
        self.sasl_password
            .iter()
            .map(|p| ("IOTFLOW_SASL_PASSWORD", p.0.clone()))
            .collect()
    }

    /// The security the flags over `file` state, its password read.
    pub fn security(&self, file: &KafkaSettings) -> Result<Security> {
        let settings = file.clone().overridden_by(self.settings());
        let password = match (&self.sasl_password, &settings.sasl_password_env) {
            (Some(p), _) => Some(p.0.clone()),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .with_context(|| format!("sasl_password_env names {var}, which is not set"))?,
            ),
            (None, None) => None,
        };
        Ok(Security::new(&settings, password)?)
    }

    fn secured(&self) -> bool {
        self.settings().secured() || self.sasl_password.is_some()
    }
}

/// A connected cluster and its bootstrap list.
pub struct Target {
    pub bootstrap: Brokers,
    pub client: Client,
}

impl BrokerSelect {
    pub async fn connect(&self, home: &Path) -> Result<Target> {
        self.connect_with(home, &KafkaSettings::default()).await
    }

    /// [`Self::connect`] with a job file's `[kafka]` settings under the flags.
    pub async fn connect_with(&self, home: &Path, file: &KafkaSettings) -> Result<Target> {
        let addrs = match &self.brokers {
            Some(b) if !b.is_empty() => b.clone(),
            _ if self.security.secured() || file.secured() => {
                bail!(
                    "the local broker speaks plaintext only: name the secured cluster with --brokers"
                )
            }
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
        let bootstrap = Brokers::new(addrs, self.security.security(file)?);
        // Once, without retries: a wrong password, an untrusted certificate or
        // a plaintext client on a TLS port fails now, not after the deadline.
        // Bounded: a TLS handshake with a plaintext port never ends by itself.
        let checked =
            tokio::time::timeout(CHECK_TIMEOUT, iotflow_redpanda::connect_once(&bootstrap));
        let failure = match checked.await {
            Ok(Err(e)) if !e.is_unreachable() => Some(root_cause(&e)),
            Ok(_) => None,
            // Plain TCP: a broker still starting, or frozen; wait for it as ever.
            Err(_) if !bootstrap.security().protocol().tls() => None,
            Err(_) => Some(format!("no answer in {} s", CHECK_TIMEOUT.as_secs())),
        };
        if let Some(failure) = failure {
            bail!(
                "cannot connect to {} with {}: {failure} ({})",
                bootstrap.join(","),
                bootstrap.security(),
                connection_hint(bootstrap.security())
            );
        }
        let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
            .await
            .with_context(|| format!("connecting to {}", bootstrap.join(",")))?;
        Ok(Target { bootstrap, client })
    }
}

/// How long the first connection (handshakes, authentication, one metadata
/// request) may take before the settings are called wrong.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What to check when a connection fails for other reasons than the broker
/// not being there.
fn connection_hint(security: &Security) -> &'static str {
    match security.protocol() {
        SecurityProtocol::Plaintext => {
            "if the port expects TLS or SASL: --security-protocol ssl, sasl_plaintext or sasl_ssl"
        }
        _ => {
            "check that the port speaks this protocol, the CA, the client certificate and the SASL settings"
        }
    }
}

/// The innermost cause: rskafka repeats its whole chain in every message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
