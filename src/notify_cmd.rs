//! `iotflow notify`: follows a job's committed alert events (as `tail`
//! does) and POSTs each one to a webhook in Alertmanager's payload, one
//! alert per request, retrying with backoff until the receiver takes it.
//! Its position is saved after every delivery, so a restart resumes with
//! the first alert not yet delivered: at least once to the receiver (a
//! crash re-sends at most the one in flight, with the same
//! `Idempotency-Key`), never an alert that is not committed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use iotflow_notify::alertmanager::idempotency_key;
use iotflow_notify::delivery::verdict;
use iotflow_notify::{Attempt, Backoff, CommittedAlert, Receiver, Verdict, Webhook, position};
use iotflow_redpanda::topics;
use serde::{Deserialize, Serialize};

use crate::follow::{CommittedEpoch, Follower, Resume, Start};
use crate::registry_args::{RegistryArgs, as_json};
use crate::target::BrokerSelect;

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub select: BrokerSelect,
    /// Webhook receiver URL (http or https), e.g. an Alertmanager-compatible receiver.
    #[arg(long, env = "IOTFLOW_WEBHOOK")]
    pub webhook: String,
    /// Alert events in Avro (`[output] alerts_format = "avro"`) are read with
    /// their schemas from --schema-registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Alert topic to follow (the job file's `[output] alerts_topic`).
    #[arg(long, env = "IOTFLOW_ALERTS_TOPIC", default_value = iotflow_jobfile::alert::DEFAULT_ALERTS_TOPIC)]
    pub topic: String,
    /// Topic with the commit records.
    #[arg(long, env = "IOTFLOW_PROGRESS_TOPIC", default_value = topics::PROGRESS)]
    pub progress_topic: String,
    /// Job to follow [default: the job of the newest commit that publishes to `--topic`].
    #[arg(long)]
    pub job: Option<String>,
    /// File keeping the position (rewritten after every delivery) [default: HOME/notify/TOPIC.position.json].
    #[arg(long, env = "IOTFLOW_NOTIFY_POSITION")]
    pub position: Option<PathBuf>,
    /// Without a saved position: deliver every committed alert still in the topic, not only new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// How long one attempt may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// First wait after a failed attempt; it doubles with each failure.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub backoff: Duration,
    /// Longest wait between attempts (also caps a receiver's `Retry-After`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// On a 4xx refusal (other than 408/429), log it and go on to the next alert instead of stopping.
    #[arg(long)]
    pub skip_rejected: bool,
    /// The payload's `receiver` name.
    #[arg(long, default_value = "iotflow")]
    pub receiver: String,
    /// The payload's `externalURL` and `generatorURL` (e.g. the job's status page).
    #[arg(long, default_value = "")]
    pub external_url: String,
    /// Exit once no committed epoch came for this long (e.g. `10s`) [default: follow forever].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub exit_when_idle: Option<Duration>,
}

/// What the position file holds: epochs before `resume.epoch` are
/// delivered, and the first `delivered` alerts of `resume.epoch`.
#[derive(Debug, Serialize, Deserialize)]
struct Position {
    resume: Resume,
    delivered: u64,
}

pub async fn run(home: &Path, args: NotifyArgs) -> Result<()> {
    let webhook = std::sync::Arc::new(Webhook::new(&args.webhook, args.timeout)?);
    let decoder = args.registry.output_decoder()?;
    let position_path = args.position.clone().unwrap_or_else(|| {
        home.join("notify")
            .join(format!("{}.position.json", args.topic))
    });
    let saved: Option<Position> = position::load(&position_path)?;
    let target = args.select.connect(home).await?;
    let (start, mut skip) = match saved {
        Some(p) => {
            eprintln!(
                "resuming job {} at epoch {} (+{} delivered) from {}",
                p.resume.job,
                p.resume.epoch,
                p.delivered,
                position_path.display()
            );
            (Start::At(p.resume), p.delivered)
        }
        None if args.from_beginning => (Start::Beginning, 0),
        None => (Start::Now, 0),
    };
    let mut follower = Follower::open(
        &target.client,
        &args.topic,
        &args.progress_topic,
        args.job.clone(),
        start,
        args.exit_when_idle,
    )
    .await?;
    let receiver = Receiver {
        name: args.receiver.clone(),
        external_url: args.external_url.clone(),
    };
    let mut backoff = Backoff::new(args.backoff, args.backoff_max);
    while let Some(epoch) = follower.next().await? {
        let CommittedEpoch {
            epoch: number,
            records,
            at,
            after,
        } = epoch;
        let first = usize::try_from(std::mem::take(&mut skip)).unwrap_or(usize::MAX);
        for (i, (_, r)) in records.iter().enumerate().skip(first) {
            let value = as_json(
                r.record.value.as_deref().unwrap_or_default(),
                decoder.as_ref(),
            );
            let alert = CommittedAlert::parse(&value)
                .with_context(|| format!("{}: epoch {number}, offset {}", args.topic, r.offset))?;
            let key = idempotency_key(
                &at.job,
                r.record.key.as_deref().unwrap_or_default(),
                alert.firing,
            );
            let body = serde_json::to_vec(&alert.payload(&receiver))?;
            deliver(&webhook, &body, &key, &mut backoff, args.skip_rejected).await?;
            println!(
                "{} {} {} since {} (epoch {number})",
                alert.alert,
                if alert.firing { "firing" } else { "resolved" },
                alert
                    .group
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                alert.since
            );
            let delivered = i as u64 + 1;
            let saved = Position {
                resume: at.clone(),
                delivered,
            };
            position::save(&position_path, &saved)?;
        }
        let done = Position {
            resume: after,
            delivered: 0,
        };
        position::save(&position_path, &done)?;
    }
    Ok(())
}

/// POSTs one alert until the receiver takes it (or refuses it for good).
async fn deliver(
    webhook: &std::sync::Arc<Webhook>,
    body: &[u8],
    key: &str,
    backoff: &mut Backoff,
    skip_rejected: bool,
) -> Result<()> {
    for attempt in 1u64.. {
        let (hook, payload, k) = (
            std::sync::Arc::clone(webhook),
            body.to_vec(),
            key.to_owned(),
        );
        let answer = tokio::task::spawn_blocking(move || hook.post(&payload, &k)).await?;
        let (judged, what) = match &answer {
            Attempt::Answered {
                status,
                retry_after,
            } => (
                verdict(*status, retry_after.as_deref()),
                format!("HTTP {status}"),
            ),
            Attempt::Failed(e) => (Verdict::Retry { after: None }, e.clone()),
        };
        match judged {
            Verdict::Delivered => {
                backoff.reset();
                return Ok(());
            }
            Verdict::Rejected if skip_rejected => {
                tracing::error!(key, answer = what, "the receiver refused an alert; skipped");
                return Ok(());
            }
            Verdict::Rejected => bail!(
                "{} refused alert {key} ({what}); the position is kept, so a restart retries it \
                 (--skip-rejected goes on past refusals)",
                webhook.url()
            ),
            Verdict::Retry { after } => {
                let wait = backoff.delay(after);
                tracing::warn!(
                    key,
                    attempt,
                    answer = what,
                    ?wait,
                    "delivery failed; retrying"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(())
}
