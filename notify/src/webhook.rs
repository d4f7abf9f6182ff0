//! The HTTP side: one POST per alert, through `ureq` (blocking; the caller
//! runs it off the async runtime). Statuses are answers, not errors: the
//! verdict on them is `delivery`'s.

use std::time::Duration;

use crate::NotifyError;

/// A webhook receiver.
#[derive(Debug)]
pub struct Webhook {
    agent: ureq::Agent,
    url: String,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered.
    Answered {
        status: u16,
        retry_after: Option<String>,
    },
    /// No answer: refused, reset, timed out, TLS failed…
    Failed(String),
}

impl Webhook {
    /// A receiver at `url` (http or https); each attempt may take `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, NotifyError> {
        let bad = |reason: String| NotifyError::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: ureq::http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            other => return Err(bad(format!("scheme {other:?}: use http or https"))),
        }
        if uri.host().is_none() {
            return Err(bad("no host".into()));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body` (JSON) with `Idempotency-Key: key`.
    pub fn post(&self, body: &[u8], key: &str) -> Attempt {
        let sent = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", key)
            .header("User-Agent", concat!("iotflow/", env!("CARGO_PKG_VERSION")))
            .send(body);
        match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Read (a bounded part of) the body so the connection can be reused.
                let _ = response
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_vec();
                Attempt::Answered {
                    status,
                    retry_after,
                }
            }
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        let t = Duration::from_secs(1);
        assert!(Webhook::new("http://127.0.0.1:9/hook", t).is_ok());
        assert!(Webhook::new("https://alerts.example/hook", t).is_ok());
        for bad in ["ftp://x/y", "127.0.0.1:9", "not a url", "http:///nohost"] {
            assert!(Webhook::new(bad, t).is_err(), "{bad}");
        }
    }
}
