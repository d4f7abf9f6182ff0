//! Secured clusters end to end, against real endpoints: TLS through a real
//! TLS terminator (stunnel) in front of the local broker, which advertises
//! the terminator's address; mutual TLS (the terminator requires a client
//! certificate); SASL SCRAM-SHA-256 and SCRAM-SHA-512 against tansu with
//! `--authentication` (users are created in its SQLite storage before it
//! starts requiring them; it offers no PLAIN there, so PLAIN is not tried);
//! SASL over TLS. Over each: produce → run → tail, and
//! librdkafka (confluent-kafka) reads what iotflow wrote over the same
//! endpoint. Every misconfiguration in one table, each refused with its
//! message within seconds. The exactly-once SIGKILL test over TLS.
//! Certificates are made by the test with openssl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod processes;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotflow_jobfile::KafkaSettings;
use iotflow_jobfile::kafka::{SaslMechanism, SecurityProtocol};
use iotflow_redpanda::{Brokers, Security};
use processes::{Owned, Pki, port, run, stunnel, tansu};

/// One way in: the address, the flags that reach it, and its processes.
struct Endpoint {
    name: &'static str,
    addr: String,
    flags: Vec<String>,
    settings: KafkaSettings,
    password: Option<String>,
    _procs: Vec<Owned>,
}

impl Endpoint {
    fn iotflow(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        c.args(args)
            .args(["--brokers", &self.addr])
            .args(&self.flags)
            .env_remove(iotflow_sink::failpoint::ENV)
            .stdin(Stdio::null());
        if let Some(p) = &self.password {
            c.env("IOTFLOW_SASL_PASSWORD", p);
        }
        c
    }

    fn brokers(&self) -> Brokers {
        Brokers::new(
            vec![self.addr.clone()],
            Security::new(&self.settings, self.password.clone()).unwrap(),
        )
    }

    /// Waits until the endpoint answers (the broker and the terminator are up).
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let out = run(self.iotflow(&["topics", "list"]).stderr(Stdio::piped()));
            if out.status.success() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}: never ready: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// librdkafka's settings for the same endpoint.
    fn librdkafka(&self) -> serde_json::Value {
        let mut conf = serde_json::json!({
            "bootstrap.servers": self.addr,
            "group.id": format!("check-{}", self.name),
            "auto.offset.reset": "earliest",
            "security.protocol": self.settings.security_protocol.unwrap_or_default().name(),
        });
        for (name, value) in self.settings.librdkafka() {
            conf[name] = value.into();
        }
        if let Some(p) = &self.password {
            conf["sasl.password"] = p.clone().into();
        }
        conf
    }
}

/// A misconfiguration: what, at which endpoint, the flags instead of its
/// own, the password, and what the error must say.
type Refusal<'a> = (&'a str, &'a Endpoint, Vec<String>, Option<&'a str>, &'a str);

const SCRAM_USERS: [(&str, &str, &str); 2] = [
    ("alice", "alice-secret", "scram256"),
    ("bob", "bob-secret", "scram512"),
];

/// The flags that state `s`.
fn flags(s: &KafkaSettings) -> Vec<String> {
    s.flags()
}

fn endpoint(
    name: &'static str,
    addr: String,
    settings: KafkaSettings,
    password: Option<&str>,
    procs: Vec<Owned>,
) -> Endpoint {
    Endpoint {
        name,
        addr,
        flags: flags(&settings),
        settings,
        password: password.map(str::to_owned),
        _procs: procs,
    }
}

/// produce → run → tail over `e`, and librdkafka reading the output.
fn round_trip(e: &Endpoint, dir: &Path) {
    let t = format!("{}.in", e.name.replace('_', "-"));
    let out = run(e
        .iotflow(&[
            "produce",
            "--topic",
            &t,
            "--partitions",
            "2",
            "--devices",
            "10",
        ])
        .args(["--count", "2000", "--json"]));
    assert!(
        out.status.success(),
        "{}: produce: {}",
        e.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let state = dir.join(e.name);
    let out = run(e
        .iotflow(&["run", "--input", &t, "--output-topic", &format!("{t}.agg")])
        .args([
            "--dlq",
            &format!("{t}.dlq"),
            "--progress-topic",
            &format!("{t}.progress"),
        ])
        .args([
            "--until-end",
            "--epoch-records",
            "100",
            "--json",
            "--progress-interval",
            "0",
        ])
        .arg("--state-dir")
        .arg(state.join("state"))
        .arg("--parquet-dir")
        .arg(state.join("parquet")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: run: {err}", e.name);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["records"], 2000, "{}", e.name);
    let windows = summary["windows_final"].as_u64().unwrap();
    assert!(windows > 0);
    let out = run(e
        .iotflow(&[
            "tail",
            "--topic",
            &format!("{t}.agg"),
            "--from-beginning",
            "--json",
        ])
        .args([
            "--exit-when-idle",
            "3s",
            "--progress-topic",
            &format!("{t}.progress"),
        ]));
    assert!(
        out.status.success(),
        "{}: tail: {}",
        e.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let tailed = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    assert_eq!(tailed, windows, "{}: tail", e.name);
    let out = run(&mut e.iotflow(&["scan", "--topic", &t, "--json"]));
    assert!(
        out.status.success(),
        "{}: scan: {}",
        e.name,
        String::from_utf8_lossy(&out.stderr)
    );

    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = r#"
import json, sys
from confluent_kafka import Consumer
conf, topic, want = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = Consumer(conf)
c.subscribe([topic])
n, empty = 0, 0
while n < want and empty < 30:
    m = c.poll(1.0)
    if m is None:
        empty += 1
        continue
    if m.error():
        raise SystemExit(f"librdkafka: {m.error()}")
    v = json.loads(m.value())
    assert v["aggregation"] == "aggregates" and v["final"], v
    n += 1
c.close()
print(n)
"#;
    let out = run(Command::new(&python)
        .args([
            "-c",
            script,
            &e.librdkafka().to_string(),
            &format!("{t}.agg"),
        ])
        .arg(windows.to_string()));
    assert!(
        out.status.success(),
        "{}: librdkafka ({}): {}",
        e.name,
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        windows.to_string(),
        "{}: librdkafka",
        e.name
    );
}

#[test]
fn secured_endpoints_carry_the_whole_pipeline_and_refuse_misconfigurations() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = || Some(PathBuf::from(pki.path("ca.pem")));

    let (b, t) = (port(), port());
    let tls = endpoint(
        "ssl",
        format!("127.0.0.1:{t}"),
        KafkaSettings {
            ssl_ca_location: ca(),
            ..KafkaSettings::with_protocol(SecurityProtocol::Ssl)
        },
        None,
        vec![
            tansu(dir.path(), b, &format!("127.0.0.1:{t}"), None),
            stunnel(&pki, t, b, false),
        ],
    );
    let (b, t) = (port(), port());
    let mtls = endpoint(
        "mtls",
        format!("127.0.0.1:{t}"),
        KafkaSettings {
            ssl_ca_location: ca(),
            ssl_certificate_location: Some(pki.path("client.pem").into()),
            ssl_key_location: Some(pki.path("client.key").into()),
            ..KafkaSettings::with_protocol(SecurityProtocol::Ssl)
        },
        None,
        vec![
            tansu(dir.path(), b, &format!("127.0.0.1:{t}"), None),
            stunnel(&pki, t, b, true),
        ],
    );
    let s = port();
    let sasl_broker = tansu(dir.path(), s, &format!("127.0.0.1:{s}"), Some(&SCRAM_USERS));
    let scram = |mechanism, user: &str| KafkaSettings {
        sasl_mechanism: Some(mechanism),
        sasl_username: Some(user.into()),
        ..KafkaSettings::with_protocol(SecurityProtocol::SaslPlaintext)
    };
    let scram256 = endpoint(
        "scram_256",
        format!("127.0.0.1:{s}"),
        scram(SaslMechanism::ScramSha256, "alice"),
        Some("alice-secret"),
        vec![sasl_broker],
    );
    let scram512 = endpoint(
        "scram_512",
        format!("127.0.0.1:{s}"),
        scram(SaslMechanism::ScramSha512, "bob"),
        Some("bob-secret"),
        Vec::new(),
    );
    let (b, t) = (port(), port());
    let sasl_ssl = endpoint(
        "sasl_ssl",
        format!("127.0.0.1:{t}"),
        KafkaSettings {
            ssl_ca_location: ca(),
            ..scram(SaslMechanism::ScramSha512, "bob")
        }
        .overridden_by(KafkaSettings::with_protocol(SecurityProtocol::SaslSsl)),
        Some("bob-secret"),
        vec![
            tansu(dir.path(), b, &format!("127.0.0.1:{t}"), Some(&SCRAM_USERS)),
            stunnel(&pki, t, b, false),
        ],
    );
    let endpoints = [&tls, &mtls, &scram256, &scram512, &sasl_ssl];
    for e in endpoints {
        e.wait_ready();
    }
    for e in endpoints {
        let started = Instant::now();
        round_trip(e, dir.path());
        eprintln!(
            "{}: produce → run → tail → librdkafka in {:?}",
            e.name,
            started.elapsed()
        );
    }

    // Misconfigurations: (endpoint, flags replacing its own, password, what the error says).
    let wrong = |e: &Endpoint| e.flags.clone();
    let cases: Vec<Refusal<'_>> = vec![
        (
            "wrong SCRAM password",
            &scram256,
            wrong(&scram256),
            Some("not-alice-secret"),
            "invalid proof",
        ),
        (
            "unknown SCRAM user",
            &scram512,
            flags(&scram(SaslMechanism::ScramSha512, "mallory")),
            Some("x"),
            "SASL",
        ),
        (
            "an untrusted server certificate",
            &tls,
            flags(&KafkaSettings {
                ssl_ca_location: Some(pki.path("other-ca.pem").into()),
                ..KafkaSettings::with_protocol(SecurityProtocol::Ssl)
            }),
            None,
            "invalid peer certificate",
        ),
        (
            "plaintext on a TLS port",
            &tls,
            Vec::new(),
            None,
            "if the port expects TLS",
        ),
        (
            "TLS on a plaintext port",
            &scram256,
            flags(&KafkaSettings {
                ssl_ca_location: ca(),
                ..KafkaSettings::with_protocol(SecurityProtocol::Ssl)
            }),
            None,
            "with ssl: ",
        ),
        (
            "mutual TLS without a client certificate",
            &mtls,
            wrong(&tls),
            None,
            "with ssl: ",
        ),
        (
            "SASL without a mechanism",
            &scram256,
            vec![
                "--security-protocol".into(),
                "sasl_plaintext".into(),
                "--sasl-username".into(),
                "alice".into(),
            ],
            Some("alice-secret"),
            "needs sasl-mechanism",
        ),
        (
            "SASL without a password",
            &scram256,
            wrong(&scram256),
            None,
            "needs sasl-password",
        ),
        (
            "a CA file that is not there",
            &tls,
            flags(&KafkaSettings {
                ssl_ca_location: Some("/nonexistent/ca.pem".into()),
                ..KafkaSettings::with_protocol(SecurityProtocol::Ssl)
            }),
            None,
            "ssl-ca-location /nonexistent/ca.pem",
        ),
        (
            "TLS settings on a plaintext connection",
            &scram256,
            vec!["--ssl-ca-location".into(), pki.path("ca.pem")],
            None,
            "does not use it",
        ),
    ];
    let mut table = Vec::new();
    for (what, e, case_flags, password, says) in cases {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        c.args([
            "run",
            "--input",
            "ssl.in",
            "--until-end",
            "--brokers",
            &e.addr,
        ])
        .args(&case_flags)
        .arg("--state-dir")
        .arg(dir.path().join("refused"))
        .env_remove("IOTFLOW_SASL_PASSWORD")
        .stdin(Stdio::null());
        if let Some(p) = password {
            c.env("IOTFLOW_SASL_PASSWORD", p);
        }
        let started = Instant::now();
        let out = run(&mut c);
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| l.starts_with("error"))
            .unwrap_or_default();
        assert!(!out.status.success(), "{what}: accepted: {err}");
        assert!(last.contains(says), "{what}: wanted `{says}` in: {err}");
        assert!(took < Duration::from_secs(10), "{what}: took {took:?}");
        assert!(
            !err.contains("resuming") && !err.contains("new job"),
            "{what}: the job started: {err}"
        );
        for p in ["alice-secret", "bob-secret", "not-alice-secret"] {
            assert!(!err.contains(p), "{what}: the password is shown: {err}");
        }
        table.push(format!("{what}: {took:.1?}: {last}"));
    }
    eprintln!("{}", table.join("\n"));

    // A job file's [kafka] names the password's variable; the flags add the rest.
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "name = \"from-file\"\n[input]\ntopic = \"scram-256.in\"\n[kafka]\nsecurity_protocol = \"sasl_plaintext\"\n\
         sasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"alice\"\nsasl_password_env = \"ALICE_PASSWORD\"\n\
         [[aggregation]]\nname = \"a\"\nwindow = \"tumbling 10s\"\ntopic = \"from-file.a\"\n",
    )
    .unwrap();
    let from_file = |password: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iotflow"));
        c.args(["run", "--brokers", &scram256.addr, "--job-file"])
            .arg(&job)
            .args([
                "--until-end",
                "--json",
                "--progress-interval",
                "0",
                "--state-dir",
            ])
            .arg(dir.path().join("from-file"))
            .arg("--parquet-dir")
            .arg(dir.path().join("from-file-parquet"))
            .env_remove("IOTFLOW_SASL_PASSWORD")
            .env_remove("ALICE_PASSWORD");
        if let Some(p) = password {
            c.env("ALICE_PASSWORD", p);
        }
        run(&mut c)
    };
    let out = from_file(None);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("sasl_password_env names ALICE_PASSWORD, which is not set")
    );
    let out = from_file(Some("alice-secret"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --help never shows the password from the environment.
    let help = run(Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args(["run", "--help"])
        .env("IOTFLOW_SASL_PASSWORD", "hunter2"));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--sasl-password") && !help.contains("hunter2"));

    // The demo against the secured cluster: its job gets the same settings.
    let demo = run(sasl_ssl
        .iotflow(&[
            "demo",
            "--count",
            "6000",
            "--rate",
            "20000",
            "--devices",
            "20",
        ])
        // Spells often enough for every alert rule of the demo to fire (as scripts/notebooks.sh).
        .args([
            "--sites",
            "3",
            "--episode-every",
            "2m",
            "--episode-length",
            "90s",
        ])
        .args(["--episode-share", "0.4"])
        .arg("--dir")
        .arg(dir.path().join("demo")));
    assert!(
        demo.status.success(),
        "the demo over sasl_ssl: {}{}",
        String::from_utf8_lossy(&demo.stdout),
        String::from_utf8_lossy(&demo.stderr)
    );

    sigkills_over_tls(&tls, dir.path());
}

/// The exactly-once SIGKILL test, over TLS: a job killed at moments through
/// its run ends with the records of a run never killed.
fn sigkills_over_tls(e: &Endpoint, dir: &Path) {
    let job = |name: &str| {
        let mut c = e.iotflow(&[
            "run",
            "--input",
            "ssl.in",
            "--output-topic",
            &format!("{name}.agg"),
        ]);
        c.args([
            "--dlq",
            &format!("{name}.dlq"),
            "--progress-topic",
            "ssl.progress",
        ])
        .args([
            "--until-end",
            "--epoch-records",
            "50",
            "--progress-interval",
            "0",
        ])
        .arg("--state-dir")
        .arg(dir.join(name).join("state"))
        .arg("--parquet-dir")
        .arg(dir.join(name).join("parquet"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        c
    };
    common::finish(job("clean").spawn().unwrap(), "the run never killed");
    let (kills, runs) = common::run_through_kills(|| job("killed").spawn().unwrap(), 6, (150, 97));
    assert!(kills >= 3, "only {kills} kills landed");
    let read = |topic: String| {
        let brokers = e.brokers();
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let client = iotflow_redpanda::connect(&brokers, Duration::from_secs(30)).await.unwrap();
            let mut all = Vec::new();
            for p in iotflow_redpanda::topics::describe_topic(&client, &topic).await.unwrap() {
                let pc = client
                    .partition_client(topic.as_str(), p.partition, iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling::Retry)
                    .await
                    .unwrap();
                let records = iotflow_redpanda::scan::read_range(&pc, p.earliest, p.high_watermark).await.unwrap();
                all.push(records.into_iter().map(|r| (r.record.key, r.record.value)).collect::<Vec<_>>());
            }
            all
        })
    };
    let (want, got) = (read("clean.agg".into()), read("killed.agg".into()));
    assert!(want.iter().any(|p| !p.is_empty()));
    assert!(
        got == want,
        "over TLS, {kills} SIGKILLs: the output differs from the run never killed"
    );
    eprintln!("over TLS: {kills} SIGKILLs in {runs} runs, output identical");
}
