//! `iotflow notify` against a real local HTTP receiver that fails, delays
//! and refuses: every committed alert is delivered, nothing uncommitted
//! (a record forged onto the alert topic with an epoch no commit names),
//! a repeat only with the same idempotency key and body, and a SIGKILL
//! or a refusal in the middle resumes from the position file; fetch answers
//! lost on the way (a fault-injecting proxy in front of the broker) change
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, Kind};
use iotflow_notify::alertmanager::idempotency_key;
use iotflow_notify::{CommittedAlert, Receiver};
use iotflow_redpanda::rskafka::client::partition::{Compression, UnknownTopicHandling};
use iotflow_redpanda::rskafka::record::Record;
use iotflow_sink::records::{EPOCH_HEADER, JOB_HEADER};

/// How the receiver answers, switched by the test.
const FLAKY: u8 = 0;
const REFUSE: u8 = 1;
const HEALTHY: u8 = 2;

/// A webhook receiver: each request's idempotency key and body, and
/// whether it was taken (2xx). Under `FLAKY`, its n-th request fails in a
/// scripted way: 503 twice (once with `Retry-After`), a 200 that comes
/// after the client's timeout (taken here, a failure there: the client
/// sends it again), a dropped connection.
/// Requests taken: (idempotency key, body).
type Taken = Mutex<Vec<(String, Vec<u8>)>>;

struct Hook {
    url: String,
    mode: Arc<AtomicU8>,
    taken: Arc<Taken>,
    requests: Arc<AtomicUsize>,
}

impl Hook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (mode, taken, requests) = (
            Arc::new(AtomicU8::new(FLAKY)),
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicUsize::new(0)),
        );
        let (m, t, r) = (mode.clone(), taken.clone(), requests.clone());
        // Lives as long as the test process; it only ever accepts.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let n = r.fetch_add(1, SeqCst);
                let (m, t) = (m.clone(), t.clone());
                std::thread::spawn(move || answer(stream, n, m.load(SeqCst), &t));
            }
        });
        Self {
            url,
            mode,
            taken,
            requests,
        }
    }

    fn taken(&self) -> Vec<(String, Vec<u8>)> {
        self.taken.lock().unwrap().clone()
    }
}

fn answer(stream: TcpStream, n: usize, mode: u8, taken: &Taken) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut key, mut length) = (String::new(), 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "idempotency-key" => key = value.trim().to_owned(),
                "content-length" => length = value.trim().parse().unwrap(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let status = match (mode, n) {
        (REFUSE, _) => "400 Bad Request",
        (FLAKY, 1) => "503 Service Unavailable\r\nRetry-After: 1",
        (FLAKY, 2) => "503 Service Unavailable",
        (FLAKY, 4) => {
            // Taken, but answered after the client gave up on it.
            taken.lock().unwrap().push((key, body));
            std::thread::sleep(Duration::from_millis(1500));
            "200 OK"
        }
        (FLAKY, 6) => return, // the connection dropped without an answer
        _ => {
            taken.lock().unwrap().push((key, body));
            "200 OK"
        }
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// A job whose two rules fire and resolve often over a troubled simulation.
fn job_file(dir: &std::path::Path, name: &str, input: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
[input]
topic = "{input}"
[output]
dead_letter_topic = "{name}.dlq"
alerts_topic = "{name}.alerts"

[[aggregation]]
name = "aggregates"
window = "tumbling 10s"
topic = "{name}.aggregates"

[[alert]]
name = "warm"
on = "aggregates"
when = "mean > 21.5 and metric == 'temperature'"
clear = "mean < 21.3"
severity = "warning"

[[alert]]
name = "silent"
on = "aggregates"
absent_for = "30s"
"#
        ),
    )
    .unwrap();
    path
}

fn notify(addr: &str, hook: &Hook, topic: &str, position: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
    c.args(["notify", "--brokers", addr, "--webhook", &hook.url])
        .args(["--topic", topic, "--from-beginning"])
        .args([
            "--timeout",
            "500ms",
            "--backoff",
            "50ms",
            "--backoff-max",
            "1s",
        ])
        .args(["--exit-when-idle", "3s", "--external-url", "http://status/"])
        .arg("--position")
        .arg(position)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn kill_once(mut child: Child, hook: &Hook, after: usize) {
    let started = Instant::now();
    while hook.taken().len() < after {
        assert!(
            child.try_wait().unwrap().is_none(),
            "notify ended before it was killed"
        );
        assert!(started.elapsed() < common::RUN_BOUND, "notify stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_delivers_every_committed_alert_through_failures_kills_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    // Everyone talks to the broker through a fault-injecting proxy it advertises.
    let (broker, proxy) = common::broker_behind_proxy(dir.path()).await;
    let addr = proxy.addr.clone();
    let input = common::seeded_input(
        &broker.bootstrap(),
        "notifyin",
        common::troubled_sim(23, 90_000),
        8_000,
    )
    .await;
    let name = common::unique("notifying");
    let mut run = Command::new(env!("CARGO_BIN_EXE_iotflow"));
    run.args(["run", "--brokers", &addr, "--job-file"])
        .arg(job_file(dir.path(), &name, &input))
        .args(["--epoch-records", "200", "--until-end", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--parquet-dir")
        .arg(dir.path().join("parquet"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    common::finish(run.spawn().unwrap(), "the run");

    // What the job committed: every record on its alert topic (it ended cleanly).
    let topic = format!("{name}.alerts");
    let committed: Vec<(Vec<u8>, Vec<u8>)> = common::read_topic(&broker.bootstrap(), &topic)
        .await
        .into_values()
        .flatten()
        .map(|r| {
            (
                r.record.key.unwrap_or_default(),
                r.record.value.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        committed.len() >= 10,
        "only {} alerts: the test proves little",
        committed.len()
    );
    // A record no commit names: a reader that is not read-committed would deliver it.
    let (mut forged_key, forged_value) = committed[0].clone();
    forged_key.push(b'9');
    let forged_value = String::from_utf8(forged_value)
        .unwrap()
        .replace("\"since\":", "\"since\":1");
    let client = iotflow_redpanda::connect(&broker.bootstrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let pc = client
        .partition_client(topic.as_str(), 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let forged = Record {
        key: Some(forged_key),
        value: Some(forged_value.clone().into_bytes()),
        headers: BTreeMap::from([
            (JOB_HEADER.to_owned(), name.clone().into_bytes()),
            (EPOCH_HEADER.to_owned(), b"999999".to_vec()),
        ]),
        timestamp: chrono::Utc::now(),
    };
    pc.produce(vec![forged], Compression::NoCompression)
        .await
        .unwrap();

    let hook = Hook::start();
    let position = dir.path().join("notify.position.json");
    // Fetch answers lost while notify reads the progress and alert topics.
    proxy.inject(Kind::Fetch, 3, Fault::DropAnswer);
    proxy.inject(Kind::Fetch, 8, Fault::Reset);
    // 1. A flaky receiver, and a SIGKILL halfway.
    kill_once(
        notify(&addr, &hook, &topic, &position).spawn().unwrap(),
        &hook,
        committed.len() / 2,
    );
    // 2. A receiver that refuses: notify stops, naming it, and keeps its place.
    hook.mode.store(REFUSE, SeqCst);
    let before = hook.taken().len();
    let refused = common::wait_bounded(
        notify(&addr, &hook, &topic, &position).spawn().unwrap(),
        "notify against a refusing receiver",
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("refused"),
        "{err}"
    );
    assert_eq!(hook.taken().len(), before);
    // 3. A healthy receiver: the rest.
    hook.mode.store(HEALTHY, SeqCst);
    common::finish(
        notify(&addr, &hook, &topic, &position).spawn().unwrap(),
        "notify",
    );
    // 4. Nothing is left: a rerun sends nothing.
    let requests = hook.requests.load(SeqCst);
    common::finish(
        notify(&addr, &hook, &topic, &position).spawn().unwrap(),
        "notify again",
    );
    assert_eq!(hook.requests.load(SeqCst), requests);

    let receiver = Receiver {
        name: "iotflow".into(),
        external_url: "http://status/".into(),
    };
    let mut want = BTreeMap::new();
    for (key, value) in &committed {
        let alert = CommittedAlert::parse(value).unwrap();
        let body = serde_json::to_vec(&alert.payload(&receiver)).unwrap();
        want.insert(idempotency_key(&name, key, alert.firing), body);
    }
    assert_eq!(want.len(), committed.len(), "idempotency keys collide");
    let taken = hook.taken();
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut repeats = 0;
    for (key, body) in &taken {
        let expected = want
            .get(key)
            .unwrap_or_else(|| panic!("{key} was never committed"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(body).unwrap(),
            serde_json::from_slice::<serde_json::Value>(expected).unwrap(),
            "{key}"
        );
        if let Some(earlier) = seen.insert(key.clone(), body.clone()) {
            assert_eq!(&earlier, body, "a repeat of {key} differs");
            repeats += 1;
        }
    }
    assert_eq!(
        seen.keys().collect::<BTreeSet<_>>(),
        want.keys().collect::<BTreeSet<_>>(),
        "delivered ≠ committed"
    );
    // The answer that came too late was taken twice.
    assert!(repeats >= 1, "no repeat: the late answer was not retried");
    assert_eq!(
        proxy.fired().len(),
        2,
        "not every fetch fault met its request"
    );
    assert!(
        taken.len() <= committed.len() + 3,
        "{} deliveries of {} alerts: more repeats than the failures explain",
        taken.len(),
        committed.len()
    );
}
