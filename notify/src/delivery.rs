//! What a receiver's answer means, and how long to wait before trying again.
//!
//! Delivery is at least once: an alert is retried until the receiver takes
//! it, so a receiver that is down for an hour gets every alert when it
//! returns. Only an answer that says the request itself is wrong (a 4xx
//! other than 408 Request Timeout and 429 Too Many Requests) stops retrying;
//! what happens then is the caller's choice (stop, or skip and say so).

use std::time::Duration;

/// The outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again, after at least `after` when the receiver said so (`Retry-After`).
    Retry {
        after: Option<Duration>,
    },
    /// The receiver refuses this request; sending it again will not help.
    Rejected,
}

/// The verdict on an HTTP answer with status `status` and `Retry-After` header `retry_after`.
pub fn verdict(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry {
            after: retry_after.and_then(|v| v.trim().parse::<u64>().ok().map(Duration::from_secs)),
        },
        // 1xx/3xx here mean a receiver we do not understand: retrying is the
        // safe side of at least once.
        100..=199 | 300..=399 => Verdict::Retry { after: None },
        _ => Verdict::Rejected,
    }
}

/// Exponential backoff: `initial`, doubling, at most `max`; a receiver's
/// `Retry-After` is honoured up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt.
    pub fn delay(&mut self, hint: Option<Duration>) -> Duration {
        let wait = hint.map_or(self.next, |h| h.max(self.next)).min(self.max);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a delivery: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_delivered_retry_and_rejected() {
        assert_eq!(verdict(200, None), Verdict::Delivered);
        assert_eq!(verdict(204, None), Verdict::Delivered);
        assert_eq!(verdict(500, None), Verdict::Retry { after: None });
        assert_eq!(
            verdict(503, Some(" 7 ")),
            Verdict::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            verdict(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Verdict::Retry { after: None }
        );
        assert_eq!(verdict(408, None), Verdict::Retry { after: None });
        assert_eq!(verdict(302, None), Verdict::Retry { after: None });
        assert_eq!(verdict(400, None), Verdict::Rejected);
        assert_eq!(verdict(404, None), Verdict::Rejected);
    }

    #[test]
    fn backoff_doubles_to_its_cap_honours_hints_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let waits: Vec<_> = (0..6).map(|_| b.delay(None)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000].map(ms));
        b.reset();
        assert_eq!(b.delay(Some(ms(300))), ms(300));
        assert_eq!(b.delay(Some(ms(50_000))), ms(1000));
        b.reset();
        assert_eq!(b.delay(None), ms(100));
    }
}
