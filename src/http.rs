//! `run --http ADDR`: Prometheus metrics at `/metrics`, a status page at `/`
//! that refreshes itself, and `/healthz`. Served by hyper (HTTP/1.1, GET
//! only, one response per connection) with the limits a port anything on the
//! network can reach needs: headers read within 5 s, at most 16 KiB of them,
//! a connection over within 30 s, at most 256 connections at once (more wait
//! for a slot); the job never waits for the server.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iotflow_dataflow::JobMetrics;
use tokio::net::TcpListener;

/// Seconds of history behind the page's current rate.
const RATE_WINDOW: usize = 10;

/// What the page shows besides the metrics: when the job started and
/// recent (time, readings accepted) samples for a current rate.
struct PageState {
    metrics: Arc<JobMetrics>,
    started: Instant,
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl PageState {
    /// Readings per second over the last `RATE_WINDOW` seconds.
    fn recent_rate(&self) -> f64 {
        let now = (Instant::now(), self.metrics.readings_accepted.load(Relaxed));
        let oldest = self
            .samples
            .lock()
            .ok()
            .and_then(|s| s.front().copied())
            .unwrap_or((self.started, 0));
        let secs = now.0.duration_since(oldest.0).as_secs_f64().max(1e-3);
        now.1.saturating_sub(oldest.1) as f64 / secs
    }
}

/// Binds `addr` (port 0 picks a free one) and serves until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<JobMetrics>,
    started: Instant,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the status server to {addr}"))?;
    let bound = listener.local_addr()?;
    let state = Arc::new(PageState {
        metrics,
        started,
        samples: Mutex::new(VecDeque::new()),
    });
    let task = tokio::spawn(async move {
        let sampler = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let sample = (
                        Instant::now(),
                        state.metrics.readings_accepted.load(Relaxed),
                    );
                    if let Ok(mut s) = state.samples.lock() {
                        s.push_back(sample);
                        while s.len() > RATE_WINDOW + 1 {
                            s.pop_front();
                        }
                    }
                }
            })
        };
        let _stop_sampler = AbortOnDrop(sampler);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "status server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = answer(&request, &state);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Err(e)) => tracing::debug!(error = %e, "status request failed"),
                    Err(_) => tracing::debug!("status connection timed out"),
                    Ok(Ok(())) => {}
                }
                drop(slot);
            });
        }
    });
    Ok((bound, task))
}

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head taken (hyper's minimum buffer is 8 KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long one connection may last in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Aborts the sampler when the server task is aborted (and so dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The response to one request.
fn answer(
    request: &hyper::Request<hyper::body::Incoming>,
    state: &PageState,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            hyper::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.prometheus(),
        ),
        (&hyper::Method::GET, "/") => (
            hyper::StatusCode::OK,
            "text/html; charset=utf-8",
            status_page(state),
        ),
        (&hyper::Method::GET, "/healthz") => (hyper::StatusCode::OK, text, "ok\n".to_owned()),
        (&hyper::Method::GET, _) => (hyper::StatusCode::NOT_FOUND, text, "not found\n".to_owned()),
        _ => (
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            text,
            "GET only\n".to_owned(),
        ),
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The numbers a person watching the job wants, refreshed every 2 s.
fn status_page(state: &PageState) -> String {
    let m = &state.metrics;
    let secs = state.started.elapsed().as_secs_f64().max(1e-3);
    let accepted = m.readings_accepted.load(Relaxed);
    let wm = m.watermark_ms.load(Relaxed);
    let watermark = chrono::DateTime::from_timestamp_millis(wm)
        .filter(|_| wm != i64::MIN)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| "none yet".into());
    let mut rows = String::new();
    let mut row = |k: &str, v: String| {
        let _ = write!(
            rows,
            "<tr><th>{k}</th><td id=\"{}\">{v}</td></tr>",
            k.replace(' ', "-")
        );
    };
    row("uptime", format!("{secs:.0} s"));
    row("records in", m.records_in.load(Relaxed).to_string());
    row("readings accepted", accepted.to_string());
    row(
        "readings per second",
        format!(
            "{:.0} (last {RATE_WINDOW} s), {:.0} (since start)",
            state.recent_rate(),
            accepted as f64 / secs
        ),
    );
    row("watermark", watermark);
    if let Some(registry) = m.registry.get() {
        row(
            "schema registry",
            match registry.waiting() {
                Some((waited, why)) => format!(
                    "<b>paused for {:.0} s</b>: {}",
                    waited.as_secs_f64(),
                    escape(&why)
                ),
                None => "answering".to_owned(),
            },
        );
    }
    row("last epoch", m.last_epoch.load(Relaxed).to_string());
    let committed = m.last_committed_epoch.load(Relaxed);
    let commits = m.commits.load(Relaxed);
    row(
        "last committed epoch",
        if committed < 0 {
            "none yet".to_owned()
        } else {
            committed.to_string()
        },
    );
    row(
        "commit latency",
        if commits == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.0} ms mean, {:.0} ms max ({commits} commits)",
                m.commit_latency_micros_sum.load(Relaxed) as f64 / commits as f64 / 1e3,
                m.commit_latency_micros_max.load(Relaxed) as f64 / 1e3
            )
        },
    );
    row(
        "last snapshot",
        format!(
            "{:.1} KiB",
            m.snapshot_bytes_last.load(Relaxed) as f64 / 1024.0
        ),
    );
    row("final windows", m.windows_emitted.load(Relaxed).to_string());
    row("updates", m.updates_emitted.load(Relaxed).to_string());
    row("duplicates", m.duplicates.load(Relaxed).to_string());
    row(
        "window state updates",
        m.window_state_updates.load(Relaxed).to_string(),
    );
    let mut dead = String::new();
    for (reason, n) in m.rejected() {
        let _ = write!(dead, "<tr><th>{reason}</th><td>{n}</td></tr>");
    }
    if dead.is_empty() {
        dead.push_str("<tr><td colspan=2>none</td></tr>");
    }
    let mut aggregations = String::new();
    for (name, c) in m.aggregations() {
        let _ = write!(
            aggregations,
            "<tr><th>{name}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.windows, c.late_partial, c.filtered, c.missing_dimension
        );
    }
    if aggregations.is_empty() {
        aggregations.push_str("<tr><td colspan=5>no windows yet</td></tr>");
    }
    let alerts = active_alerts(m);
    let mut lag = String::new();
    for (p, n) in m.lag() {
        let _ = write!(lag, "<tr><th>partition {p}</th><td>{n}</td></tr>");
    }
    if lag.is_empty() {
        lag.push_str("<tr><td colspan=2>no partitions read yet</td></tr>");
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>iotflow status</title>
<style>
body {{ font: 15px system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; min-width: 24em; }}
th, td {{ text-align: left; padding: .25em 1em .25em 0; border-bottom: 1px solid #ddd; }}
th {{ width: 14em; }}
tr.critical td {{ color: #b00; font-weight: 600; }}
td {{ font-variant-numeric: tabular-nums; }}
</style></head>
<body><h1>iotflow run</h1>
<table>{rows}</table>
<h2>Active alerts</h2>{alerts}
<h2>Aggregations</h2><table><tr><th>name</th><th>final windows</th><th>late there</th><th>filtered</th><th>missing dimension</th></tr>{aggregations}</table>
<h2>Dead letters by reason</h2><table>{dead}</table>
<h2>Lag per partition (records)</h2><table>{lag}</table>
<p><a href="/metrics">/metrics</a> (Prometheus)</p>
</body></html>
"#
    )
}

/// `text` safe inside HTML (group values are the devices' own strings).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The table of alerts firing now (as committed), most severe first.
fn active_alerts(m: &JobMetrics) -> String {
    let active = m.active_alerts();
    if active.is_empty() {
        return "<p id=\"alerts\">none firing</p>".to_owned();
    }
    let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    let mut rows = String::new();
    for a in &active {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            rows,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&a.severity),
            escape(&a.severity),
            escape(&a.rule),
            escape(&labels.join(" ")),
            utc(a.since),
            a.window_end
                .map_or_else(|| "before restart".to_owned(), utc),
            number(a.value),
            number(a.threshold),
        );
    }
    format!(
        "<table id=\"alerts\"><tr><th>severity</th><th>alert</th><th>group</th><th>since (UTC)</th>\
         <th>latest window end</th><th>value</th><th>threshold</th></tr>{rows}</table>"
    )
}

#[cfg(test)]
mod tests {
    use iotflow_dataflow::metrics::AggregationCounts;

    use super::*;

    #[test]
    fn the_page_shows_each_aggregation_s_counts() {
        let metrics = Arc::new(JobMetrics::default());
        let state = PageState {
            metrics: Arc::clone(&metrics),
            started: Instant::now(),
            samples: Mutex::default(),
        };
        assert!(status_page(&state).contains("no windows yet"));
        let counts = AggregationCounts {
            windows: 12,
            late_partial: 3,
            filtered: 7,
            missing_dimension: 1,
        };
        metrics.add_aggregation("site_1m", counts);
        let page = status_page(&state);
        assert!(
            page.contains("<tr><th>site_1m</th><td>12</td><td>3</td><td>7</td><td>1</td></tr>"),
            "{page}"
        );
    }

    #[test]
    fn the_page_lists_committed_alerts_escaped() {
        use iotflow_dataflow::alert::AlertEvent;
        let metrics = JobMetrics::default();
        assert!(active_alerts(&metrics).contains("none firing"));
        let plan = iotflow_jobfile::parse(
            std::path::Path::new("job.toml"),
            "name = \"j\"\n[input]\ntopic = \"t\"\n[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 10s\"\ntopic = \"a\"\n\
             [[alert]]\nname = \"hot\"\non = \"a\"\nwhen = \"mean > 1\"\nseverity = \"critical\"\n",
        )
        .unwrap();
        let cfg = iotflow_dataflow::job::JobConfig::from_plan(&plan, Default::default()).unwrap();
        metrics.with_alert_board(|b| {
            b.describe(&cfg.alerts, &cfg.aggregations);
            b.stage(
                1,
                &[AlertEvent {
                    rule: 0,
                    group: "<pump>|temperature".into(),
                    firing: true,
                    window_start: 0,
                    window_end: 10_000,
                    value: Some(2.5),
                    threshold: Some(1.0),
                    since: 0,
                }],
            );
        });
        assert!(
            active_alerts(&metrics).contains("none firing"),
            "not committed yet"
        );
        metrics.with_alert_board(|b| b.committed(1));
        let table = active_alerts(&metrics);
        assert!(
            table.contains("<td>critical</td><td>hot</td><td>device_id=&lt;pump&gt; metric=temperature</td><td>1970-01-01 00:00:00</td>"),
            "{table}"
        );
        assert!(table.contains("<td>2.500</td><td>1.000</td>"), "{table}");
    }
}
