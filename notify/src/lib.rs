//! Alert notifications: the committed alert events of a job delivered to a
//! webhook in Alertmanager's payload, so receivers built for Prometheus
//! alerts (PagerDuty, Opsgenie, Slack bridges, `alertmanager-webhook-*`)
//! work unchanged.
//!
//! ```text
//!   committed alert record ──CommittedAlert::parse──▶ payload (v4, one alert)
//!        ──Webhook::post (Idempotency-Key)──▶ verdict: delivered | retry (backoff) | rejected
//!        ──position::save──▶ the next one
//! ```
//!
//! The pure parts (payload, verdicts, backoff) are plain functions; the
//! HTTP client and the position file are thin adapters. Following the
//! committed output of the job is the binary's (it shares it with `tail`).

pub mod alertmanager;
pub mod delivery;
pub mod error;
pub mod position;
pub mod webhook;

pub use alertmanager::{CommittedAlert, Receiver};
pub use delivery::{Backoff, Verdict};
pub use error::NotifyError;
pub use webhook::{Attempt, Webhook};
