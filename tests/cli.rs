//! The CLI contract: the foreground broker, and the detached local broker that
//! commands without `--brokers` find and share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

#[test]
fn help_names_every_subcommand() {
    let help = common::stdout(&common::iotflow(&["--help"]));
    for sub in ["broker", "topics", "produce", "scan", "demo"] {
        assert!(help.contains(sub), "{sub} missing from --help:\n{help}");
    }
    let produce = common::stdout(&common::iotflow(&["produce", "--help"]));
    for flag in [
        "--brokers",
        "--topic",
        "--devices",
        "--interval",
        "--count",
        "--duration",
        "--rate",
        "--seed",
        "--start",
        "--format",
        "--duplicates",
        "--bad",
        "--late",
    ] {
        assert!(produce.contains(flag), "{flag} missing from produce --help");
    }
    let bad = common::iotflow_unchecked(&["produce", "--count", "1", "--duration", "1s"]);
    assert!(!bad.status.success(), "--count and --duration conflict");
}

#[test]
fn the_allocator_returns_freed_pages_from_a_background_thread() {
    // Built in through `.cargo/config.toml`; jemalloc prints its options at exit when asked.
    let out = Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(stats.contains(option), "{option} missing from:\n{stats}");
    }
}

#[test]
fn the_fetch_read_ahead_is_documented_and_never_unbounded() {
    let run = common::stdout(&common::iotflow(&["run", "--help"]));
    assert!(
        run.contains("--fetch-buffer-bytes") && run.contains("IOTFLOW_FETCH_BUFFER_BYTES"),
        "{run}"
    );
    // The fetcher reads 0 as "no bound": refused before anything starts.
    let zero = common::iotflow_unchecked(&[
        "run",
        "--brokers",
        "127.0.0.1:1",
        "--fetch-buffer-bytes",
        "0",
        "--until-end",
    ]);
    assert!(!zero.status.success());
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(err.contains("--fetch-buffer-bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_broker_prints_its_address_and_stops_on_sigterm() {
    let home = tempfile::tempdir().unwrap();
    let port = iotflow_redpanda::local::free_port().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args([
            "--home",
            home.path().to_str().unwrap(),
            "broker",
            "--port",
            &port,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), format!("127.0.0.1:{port}"));
    iotflow_redpanda::local::answers_metadata(line.trim())
        .await
        .unwrap();

    kill_process(Pid::from_child(&child), Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "broker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        iotflow_redpanda::local::answers_metadata(line.trim())
            .await
            .is_err(),
        "tansu stopped too"
    );
    assert!(
        home.path().join("broker/tansu-foreground.log").exists(),
        "broker log kept"
    );
}

#[test]
fn commands_without_brokers_share_one_detached_local_broker() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let addr = common::stdout(&common::iotflow(&["--home", h, "broker", "--detach"]));
    let addr = addr.trim();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let result = std::panic::catch_unwind(|| {
        let status = common::stdout(&common::iotflow(&["--home", h, "broker", "status"]));
        assert!(status.contains(addr), "{status}");
        let created = common::stdout(&common::iotflow(&["--home", h, "topics", "create"]));
        assert_eq!(created.matches("created").count(), 4, "{created}");
        common::iotflow(&[
            "--home", h, "produce", "--count", "3000", "--bad", "0.1", "--json",
        ]);
        let scan: serde_json::Value = serde_json::from_str(&common::stdout(&common::iotflow(&[
            "--home", h, "scan", "--json",
        ])))
        .unwrap();
        assert_eq!(scan["counts"]["records"], 3000);
        let rejected: u64 = scan["counts"]["rejected"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(rejected > 200 && rejected < 400, "{rejected}");
    });
    let stopped = common::stdout(&common::iotflow(&["--home", h, "broker", "stop"]));
    assert!(stopped.contains(addr), "{stopped}");
    assert!(
        common::stdout(&common::iotflow(&["--home", h, "broker", "status"]))
            .contains("no local broker")
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Security flags are for a cluster named with `--brokers`: the local broker
/// is plaintext on loopback, and saying otherwise is refused before it starts.
#[test]
fn security_settings_without_brokers_are_refused() {
    let home = tempfile::tempdir().unwrap();
    for (cmd, flags) in [
        (&["topics", "list"][..], &["--security-protocol", "ssl"][..]),
        (&["produce", "--count", "1"], &["--sasl-username", "u"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_iotflow"))
            .arg("--home")
            .arg(home.path())
            .args(cmd)
            .args(flags)
            .env_remove("IOTFLOW_BROKERS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd:?} {flags:?}: {err}");
        assert!(
            err.contains("the local broker speaks plaintext only"),
            "{err}"
        );
    }
    assert!(
        !home.path().join("broker").exists(),
        "no local broker was started"
    );
}

#[test]
fn registry_settings_are_checked_before_any_broker_and_the_password_never_shows() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("avro.toml");
    std::fs::write(
        &job,
        "name = \"j\"\n[input]\nformat = \"avro\"\n[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"t\"\n",
    )
    .unwrap();
    let job = job.to_string_lossy().into_owned();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let input = input.to_string_lossy().into_owned();
    let output = dir.path().join("out").to_string_lossy().into_owned();
    for (args, says) in [
        (
            vec!["run", "--job-file", &job],
            "input format avro reads schemas from a registry: add --schema-registry URL",
        ),
        (
            vec![
                "run",
                "--input-format",
                "avro",
                "--schema-registry",
                "registry:8081",
            ],
            "scheme None, use http or https",
        ),
        (
            vec![
                "run",
                "--input-format",
                "avro",
                "--schema-registry",
                "http://127.0.0.1:9",
                "--schema-registry-username",
                "u",
            ],
            "basic auth needs both a username and a password",
        ),
        (
            vec![
                "run",
                "--input-format",
                "thrift",
                "--schema-registry",
                "http://127.0.0.1:9",
            ],
            "unknown format `thrift`: one of json, avro, protobuf, json-schema",
        ),
        (
            vec!["produce", "--count", "1", "--encoding", "avro"],
            "--encoding avro registers its schema: add --schema-registry URL",
        ),
        (
            vec!["run", "--output-format", "avro"],
            "aggregation aggregates writes Avro: add --schema-registry URL",
        ),
        (
            vec!["aggregate-file", &input, &output, "--job-file", &job],
            "input format avro is for topics",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_iotflow"))
            .arg("--home")
            .arg(home.path())
            .args(&args)
            .env_remove("IOTFLOW_BROKERS")
            .env_remove("IOTFLOW_SCHEMA_REGISTRY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(
        !home.path().join("broker").exists(),
        "no local broker was started"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args(["run", "--help"])
        .env("IOTFLOW_SCHEMA_REGISTRY_PASSWORD", "hunter2")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--schema-registry-password") && !help.contains("hunter2"));
}
