//! The shipped pipeline-health rules (`deploy/prometheus/`): `promtool`
//! checks them and runs their unit tests, then a real Prometheus scrapes a
//! real two-process job. Quiet input fires the input-rate rule and nothing
//! else; a stopped peer (SIGSTOP) while input keeps arriving fires the
//! commit-stall rule. Prometheus gets the rules with every duration divided
//! by [`SPEEDUP`] (the rules state time only in `for:` and range
//! selectors), so the test takes seconds, not minutes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iotflow_redpanda::Storage;
use iotflow_redpanda::local::free_port;

const SPEEDUP: u64 = 12;
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/iotflow.rules.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/iotflow.rules.test.yml"
);

fn tool(name: &str) -> Command {
    let found = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is missing: `make test` installs Debian's prometheus package"
    );
    Command::new(name)
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = tool("promtool").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `rules` with every `for:` and range-selector duration divided by `by`.
fn sped_up(rules: &str, by: u64) -> String {
    let seconds = |n: u64, unit: char| match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        other => panic!("unit {other}"),
    };
    let scale = |d: &str| {
        let (n, unit) = d.split_at(d.len() - 1);
        let s = seconds(n.parse().unwrap(), unit.chars().next().unwrap());
        assert_eq!(s % by, 0, "{d} does not divide by {by}");
        format!("{}s", s / by)
    };
    let mut out = String::new();
    for line in rules.lines() {
        let mut line = line.to_owned();
        if let Some(d) = line.trim_start().strip_prefix("for: ") {
            line = line.replace(&format!("for: {d}"), &format!("for: {}", scale(d)));
        }
        let mut rest = line.as_str();
        let mut rebuilt = String::new();
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find(']').map(|c| open + c) else {
                break;
            };
            let inside = &rest[open + 1..close];
            rebuilt.push_str(&rest[..=open]);
            let is_duration = inside.len() > 1
                && inside[..inside.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                && inside.ends_with(['s', 'm', 'h']);
            if is_duration {
                rebuilt.push_str(&scale(inside));
            } else {
                rebuilt.push_str(inside);
            }
            rest = &rest[close..];
        }
        rebuilt.push_str(rest);
        out.push_str(&rebuilt);
        out.push('\n');
    }
    out
}

#[test]
fn speeding_up_touches_only_durations() {
    let r = "# [[alert]] [x]\n      - alert: X\n        expr: rate(a[2m]) > 0 and b[10m]\n        for: 1m\n";
    assert_eq!(
        sped_up(r, 12),
        "# [[alert]] [x]\n      - alert: X\n        expr: rate(a[10s]) > 0 and b[50s]\n        for: 5s\n"
    );
}

/// Processes this test started, killed when it ends however it ends.
#[derive(Default)]
struct Children(BTreeMap<&'static str, Child>);

impl Children {
    fn start(&mut self, name: &'static str, mut c: Command) {
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.0.insert(name, child);
    }

    fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.0.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, name: &str, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.0[name].id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.0) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn iotflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iotflow"))
}

/// Devices writing from event time `start` on.
fn producer(addr: &str, input: &str, start: &str) -> Command {
    let mut c = iotflow();
    c.args([
        "produce",
        "--brokers",
        addr,
        "--topic",
        input,
        "--start",
        start,
    ])
    .args(["--partitions", "2", "--devices", "50", "--rate", "1000"])
    // Small requests: input arrives steadily, not in bursts seconds apart.
    .args(["--batch-records", "50"])
    .args(["--duration", "10m"]);
    c
}

/// Prometheus' answer to `path` (JSON `data`).
fn api(prometheus: &str, path: &str) -> Option<serde_json::Value> {
    let mut r = ureq::get(&format!("http://{prometheus}{path}"))
        .call()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.body_mut().read_to_vec().ok()?).ok()?;
    Some(v["data"].clone())
}

/// Alert name → state ("pending" or "firing").
fn alerts(prometheus: &str) -> BTreeMap<String, String> {
    let Some(data) = api(prometheus, "/api/v1/alerts") else {
        return BTreeMap::new();
    };
    data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn scalar(prometheus: &str, query: &str) -> Option<f64> {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let data = api(prometheus, &format!("/api/v1/query?query={q}"))?;
    data["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wait_for(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    started.elapsed()
}

fn prometheus_config(dir: &Path, targets: &[String]) -> PathBuf {
    let rules = dir.join("rules.yml");
    std::fs::write(
        &rules,
        sped_up(&std::fs::read_to_string(RULES).unwrap(), SPEEDUP),
    )
    .unwrap();
    let config = dir.join("prometheus.yml");
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 900ms\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: iotflow\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_input_fires_only_the_input_rule_and_a_stopped_peer_fires_the_commit_stall() {
    tool("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(Storage::Memory).await;
    let addr = broker.addr().to_owned();
    let input = common::unique("health");
    let mut children = Children::default();
    children.start("producer", producer(&addr, &input, "2025-11-22T05:00:00Z"));

    let hostfile = dir.path().join("hosts");
    let peers = [free_port().unwrap(), free_port().unwrap()];
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", peers[0], peers[1]),
    )
    .unwrap();
    let http: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port().unwrap()))
        .collect();
    // The job waits for its input topic, which the producer creates.
    wait_for("the input topic", Duration::from_secs(60), || {
        common::stdout(&common::iotflow(&["topics", "list", "--brokers", &addr])).contains(&input)
    });
    for (p, name) in ["job-0", "job-1"].into_iter().enumerate() {
        let mut job = iotflow();
        job.args(["run", "--brokers", &addr, "--input", &input])
            .args(["--output-topic", &format!("{input}.out")])
            .args([
                "--dlq",
                &format!("{input}.dlq"),
                "--epoch-interval",
                "250ms",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--parquet-dir")
            .arg(dir.path().join("parquet"))
            .args(["-n", "2", "-p", &p.to_string(), "--hostfile"])
            .arg(&hostfile)
            .args(["--http", &http[p]])
            // The peer watchdog would stop process 0 too (and then nothing is
            // scraped): off, this stands for a stall no watchdog sees.
            .args(["--peer-timeout", "0s"])
            // Event time runs 20× faster than the wall clock here, so a partition
            // that went idle while the producer was down and rejoins a tenth of a
            // second after the other one brings readings the watermark has passed
            // (late, dead-lettered): no partition goes idle in this test.
            .args(["--idle-timeout", "1h"]);
        children.start(name, job);
    }
    let prometheus_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let mut prometheus = tool("prometheus");
    prometheus
        .arg(format!(
            "--config.file={}",
            prometheus_config(dir.path(), &http).display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prometheus_addr}"));
    children.start("prometheus", prometheus);
    let p = prometheus_addr.as_str();

    // Healthy: both processes scraped, commits flowing, input arriving, nothing firing.
    wait_for("a healthy scraped job", Duration::from_secs(90), || {
        scalar(p, "sum(up{job=\"iotflow\"})") == Some(2.0)
            && scalar(p, "sum(increase(iotflow_commits_total[5s]))").is_some_and(|n| n > 0.0)
            && scalar(p, "sum(rate(iotflow_partition_end_offset[10s]))").is_some_and(|r| r > 0.0)
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(alerts(p), BTreeMap::new(), "a healthy job raises nothing");

    // 1. Quiet input: the devices stop; the job is fine.
    children.kill("producer");
    let quiet = wait_for("IotflowInputQuiet firing", Duration::from_secs(90), || {
        alerts(p).get("IotflowInputQuiet").map(String::as_str) == Some("firing")
    });
    for _ in 0..8 {
        let now = alerts(p);
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            ["IotflowInputQuiet"],
            "quiet input must raise the input rule alone: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // 2. Input again, then a peer stops: commits stop while input keeps arriving.
    // Later event times: a restarted producer's readings are not late.
    children.start("producer", producer(&addr, &input, "2025-11-23T05:00:00Z"));
    wait_for(
        "IotflowInputQuiet resolved",
        Duration::from_secs(90),
        || !alerts(p).contains_key("IotflowInputQuiet"),
    );
    children.signal("job-1", rustix::process::Signal::STOP);
    let stalled = wait_for(
        "IotflowCommitsStalled firing",
        Duration::from_secs(120),
        || alerts(p).get("IotflowCommitsStalled").map(String::as_str) == Some("firing"),
    );
    let raised = alerts(p);
    for quiet in ["IotflowInputQuiet", "IotflowDeadLetterRateHigh"] {
        assert!(
            !raised.contains_key(quiet),
            "input kept arriving, and clean: {raised:?}"
        );
    }
    eprintln!(
        "rules sped up {SPEEDUP}×: input quiet fired {:.1}s after the producer stopped \
         ({:.0}s at production speed); commits stalled fired {:.1}s after SIGSTOP ({:.0}s); \
         alerts then: {raised:?}",
        quiet.as_secs_f64(),
        quiet.as_secs_f64() * SPEEDUP as f64,
        stalled.as_secs_f64(),
        stalled.as_secs_f64() * SPEEDUP as f64,
    );
    children.signal("job-1", rustix::process::Signal::CONT);
}
