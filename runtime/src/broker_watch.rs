//! A liveness bound on the broker, per process. rskafka has no request
//! timeout: a request on a connection whose link was cut (packets dropped,
//! no reset) waits until TCP gives up, about 15 minutes, and holds every
//! other process of the job back with it. So each process asks the cluster
//! for metadata over a fresh connection (the cached ones may be the very
//! connections that hang) every timeout/5; when none of those probes has
//! been answered for longer than the timeout, the caller stops the process,
//! naming the brokers. Stopping is the crash the commit protocol is built
//! for: a restart resumes from the last commit.
//!
//! ```text
//!   every timeout/5: connect + Metadata (fresh client, bounded by the tick) ──answered──▶ Silence::answered
//!   Silence::overdue(now) ──Some(silent)──▶ the caller stops the process, naming the brokers
//! ```
//!
//! `Silence` is the pure part; `watch` is the thin adapter.

use std::time::{Duration, Instant};

/// When something last answered, and how long a silence is allowed.
#[derive(Debug, Clone)]
pub struct Silence {
    timeout: Duration,
    last: Instant,
}

impl Silence {
    /// Starts counting at `now`: the first answer is also given the timeout.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self { timeout, last: now }
    }

    pub fn answered(&mut self, now: Instant) {
        self.last = self.last.max(now);
    }

    /// How long it has been silent, once that is longer than the timeout.
    pub fn overdue(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last);
        (silent > self.timeout).then_some(silent)
    }
}

/// Brokers that stopped answering: which, for how long, and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentBroker {
    pub brokers: Vec<String>,
    pub silent: Duration,
    /// The last probe's error, or that it got no answer in time.
    pub last_error: String,
}

/// Probes `brokers` until no probe was answered for longer than `timeout`;
/// returns that silence. Never returns while the brokers answer.
pub async fn watch(brokers: &iotflow_redpanda::Brokers, timeout: Duration) -> SilentBroker {
    let every = (timeout / 5).max(Duration::from_millis(50));
    let mut silence = Silence::new(timeout, Instant::now());
    let mut last_error = String::from("no probe answered yet");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // No retries inside a probe: the next tick is the retry.
        match tokio::time::timeout(every, iotflow_redpanda::connect_once(brokers)).await {
            Ok(Ok(_client)) => silence.answered(Instant::now()),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("no answer within {} ms", every.as_millis()),
        }
        if let Some(silent) = silence.overdue(Instant::now()) {
            return SilentBroker {
                brokers: brokers.to_vec(),
                silent,
                last_error,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_overdue_only_past_the_timeout_since_the_last_answer() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Silence::new(s(10), t0);
        assert_eq!(w.overdue(t0 + s(10)), None, "the start counts as an answer");
        assert_eq!(w.overdue(t0 + s(11)), Some(s(11)));
        w.answered(t0 + s(8));
        assert_eq!(w.overdue(t0 + s(17)), None);
        w.answered(t0 + s(3));
        assert_eq!(
            w.overdue(t0 + s(19)),
            Some(s(11)),
            "an answer older than the last one changes nothing"
        );
    }

    #[tokio::test]
    async fn a_port_nobody_answers_on_is_named_after_the_timeout() {
        // A bound port that never accepts (no listen): connects are refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let started = Instant::now();
        let silent = watch(&vec![addr.clone()].into(), Duration::from_millis(300)).await;
        assert_eq!(silent.brokers, vec![addr]);
        assert!(silent.silent > Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!silent.last_error.is_empty());
    }
}
