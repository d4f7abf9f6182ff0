//! Exactly once under crashes: a job SIGKILLed (at random moments, at every
//! failpoint of the commit protocol, after corrupting its latest snapshot, or
//! resumed with another worker count) and restarted until it finishes leaves
//! the same Kafka output (per partition, in order, headers included) and the
//! same Parquet dataset as a run never killed. `fixture` holds the broker and
//! the jobs; `disk` the full and read-only disks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod disk;
mod fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotflow_ingest::simulator::SimConfig;
use iotflow_redpanda::{TopicSpec, topics};
use iotflow_sink::failpoint::{self, Site};
use iotflow_sink::protocol::CommitRecord;

use common::{Partitions, RUN_BOUND, outputs as partitions};
use fixture::{Fixture, Moments, kills_wanted};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_the_output_of_a_run_never_killed() {
    sigkill_storm(Fixture::new().await, kills_wanted()).await;
}

/// With a checkpoint every 4 epochs, every restart replays up to 3 epochs
/// from the input before it stages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_sigkills_at_random_moments_leave_the_output_of_a_run_never_killed() {
    sigkill_storm(Fixture::new().await.with_checkpoints(4), kills_wanted() / 2).await;
}

async fn sigkill_storm(fx: Fixture, wanted: u32) {
    let fx = Arc::new(fx);
    fx.reference();
    let seed = std::env::var("IOTFLOW_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            nanos ^ (u64::from(std::process::id()) << 32) | 1
        });
    eprintln!("kill moments seed: {seed} (IOTFLOW_CHAOS_SEED to replay)");
    let mut moments = Moments(seed);
    // A reader following the committed output through all the kills.
    let tail_out = fx.dir.path().join("tail.jsonl");
    let mut tail = Command::new(env!("CARGO_BIN_EXE_iotflow"))
        .args(["tail", "--brokers", &fx.addr, "--topic", "chaos.aggregates"])
        .args(["--from-beginning", "--json"])
        .stdout(std::fs::File::create(&tail_out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut kills, mut runs) = (0u32, 0u32);
    let chaos = Arc::clone(&fx);
    let (kills, runs) = tokio::task::spawn_blocking(move || {
        loop {
            runs += 1;
            assert!(runs <= wanted + 50, "the job never finished");
            let mut child = chaos.command("chaos", 2).spawn().unwrap();
            if kills < wanted {
                // From right after start (recovery, staging) to well into a run.
                let at = Duration::from_millis(20 + moments.next_ms(900));
                let started = Instant::now();
                while started.elapsed() < at && child.try_wait().unwrap().is_none() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if child.try_wait().unwrap().is_none() {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    kills += 1;
                    continue;
                }
            }
            common::finish(child, &format!("run {runs} after {kills} kills"));
            return (kills, runs);
        }
    })
    .await
    .unwrap();
    eprintln!("{kills} kills, {runs} runs");
    assert!(kills >= wanted, "only {kills} kills landed");
    fx.assert_matches("chaos").await;

    // The tail saw whole committed epochs only: its output, which it only
    // ever appended to, is the reference's in commit order.
    let want = fx.reference_in_commit_order().await;
    let lines = || -> Vec<Vec<u8>> {
        std::fs::read(&tail_out)
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let started = Instant::now();
    while lines().len() < want.len() && started.elapsed() < RUN_BOUND {
        assert!(tail.try_wait().unwrap().is_none(), "the tail exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tail.kill().unwrap();
    let tail_err = tail.wait_with_output().unwrap().stderr;
    let got = lines();
    assert_eq!(
        got.len(),
        want.len(),
        "the tail showed {} aggregates, the reference has {}: {}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&tail_err)
    );
    assert!(
        got == want,
        "the tail's aggregates differ from the reference's"
    );
}

/// Every failpoint site, hit at its 1st, 2nd and 4th pass in successive
/// runs of one job: each crash there is survived, output as if never killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_protocol_step_leaves_the_output_of_a_run_never_killed() {
    crash_at_every_step(Fixture::new().await).await;
}

/// The same with a checkpoint every 4 epochs: commits between checkpoints
/// name the last one, and each restart replays the epochs since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_a_crash_at_every_protocol_step_leaves_the_output_of_a_run_never_killed() {
    crash_at_every_step(Fixture::new().await.with_checkpoints(4)).await;
}

async fn crash_at_every_step(fx: Fixture) {
    let fx = Arc::new(fx);
    fx.reference();
    // Runs that restored a checkpoint and replayed the epochs since.
    let mut replays = 0;
    for site in Site::ALL {
        let name = format!("fp-{}", site.name());
        let fx2 = Arc::clone(&fx);
        let job = name.clone();
        let (crashes, replayed) = tokio::task::spawn_blocking(move || {
            let (mut crashes, mut replays) = (0, 0);
            let replayed =
                |stderr: &str| usize::from(stderr.contains("are replayed from the input"));
            for pass in [1, 2, 4] {
                let spec = format!("{}@{pass}", site.name());
                let child = fx2
                    .command(&job, 2)
                    .env(failpoint::ENV, &spec)
                    .spawn()
                    .unwrap();
                let out = common::wait_bounded(child, &format!("{job} with {spec}"));
                let stderr = String::from_utf8_lossy(&out.stderr);
                replays += replayed(&stderr);
                if out.status.success() {
                    return (crashes, replays); // the job finished before passing there again
                }
                assert!(
                    out.status.code().is_none() && stderr.contains(&format!("failpoint {spec}")),
                    "{job} with {spec} failed instead of crashing there: {stderr}"
                );
                crashes += 1;
            }
            let out = common::finish(fx2.command(&job, 2).spawn().unwrap(), &job);
            replays += replayed(&String::from_utf8_lossy(&out.stderr));
            (crashes, replays)
        })
        .await
        .unwrap();
        eprintln!("{}: {crashes} crashes survived", site.name());
        assert!(crashes >= 2, "{}: only {crashes} crashes", site.name());
        fx.assert_matches(&name).await;
        replays += replayed;
    }
    if fx.checkpoint_every > 0 {
        eprintln!("{replays} runs replayed epochs after a checkpoint");
        assert!(replays >= 3, "only {replays} runs replayed anything");
    }
}

/// The latest commit's snapshots torn and bit-flipped: recovery notices,
/// falls back to the commit before, and the output is still the reference's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_latest_snapshot_falls_back_to_the_previous_commit() {
    let fx = Fixture::new().await;
    fx.reference();
    fx.kill_after_commits("corrupt", 2, 4).await;
    let commits = fx.commits("corrupt").await;
    let latest = commits.iter().max_by_key(|c| c.epoch).expect("some commit");
    assert!(
        commits.iter().any(|c| c.epoch < latest.epoch),
        "needs a commit to fall back to"
    );
    let [torn, flipped] = [0, 1].map(|w| {
        fx.state_dir("corrupt").join(
            &latest
                .snapshots
                .iter()
                .find(|s| s.worker == w)
                .unwrap()
                .path,
        )
    });
    let bytes = std::fs::read(&torn).unwrap();
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = std::fs::read(&flipped).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&flipped, &bytes).unwrap();

    let out = common::finish(fx.command("corrupt", 2).spawn().unwrap(), "the resumed run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "snapshots of epochs [{}] are damaged",
            latest.epoch
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "resuming after committed epoch {} ",
            latest.epoch - 1
        )),
        "{stderr}"
    );
    fx.assert_matches("corrupt").await;
}

/// The state directory damaged file by file — a snapshot or a pending-rows
/// segment of the latest commit truncated, bit-flipped, emptied, deleted or
/// swapped with the commit before's — is never read as good state: the
/// resumed run falls back to an earlier commit, or rebuilds the segment from
/// the output topic (and either way its output is the reference's), or
/// stops with a message naming the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_damaged_file_by_file_is_caught() {
    let fx = Fixture::new().await.keeping_rows_pending();
    fx.reference();
    type Damage = fn(&Path, &Path);
    let damages: [(&str, Damage); 5] = [
        ("truncated", |f, _| {
            let b = std::fs::read(f).unwrap();
            std::fs::write(f, &b[..b.len() / 2]).unwrap();
        }),
        ("bit-flipped", |f, _| {
            let mut b = std::fs::read(f).unwrap();
            let at = b.len() / 3;
            b[at] ^= 0x10;
            std::fs::write(f, &b).unwrap();
        }),
        ("zero-length", |f, _| std::fs::write(f, b"").unwrap()),
        ("missing", |f, _| std::fs::remove_file(f).unwrap()),
        ("swapped with the commit before's", |f, before| {
            std::fs::copy(before, f).unwrap();
        }),
    ];
    let mut report = Vec::new();
    for kind in ["snapshot", "pending segment"] {
        for (what, damage) in damages {
            let name = format!("damage{}", report.len());
            // Killed once the latest commit names the kind of file to damage;
            // unbounded, so the end of the input never rolls the rows away first.
            let live = fx.command_on(&name, 2, &fx.input);
            fx.kill_once(live, &name, |commits| {
                let latest = commits.iter().max_by_key(|c| c.epoch);
                commits.len() >= 4
                    && latest.is_some_and(|c| match kind {
                        "snapshot" => c.snapshots.iter().any(|s| s.worker == 0),
                        _ => c.pending.iter().any(|p| p.worker == 0 && p.rows > 0),
                    })
            })
            .await;
            let commits = fx.commits(&name).await;
            let latest = commits.iter().max_by_key(|c| c.epoch).unwrap();
            let before = commits
                .iter()
                .filter(|c| c.epoch < latest.epoch)
                .max_by_key(|c| c.epoch)
                .expect("a commit to fall back to");
            let file = |c: &CommitRecord| -> Option<PathBuf> {
                let path = match kind {
                    "snapshot" => c.snapshots.iter().find(|s| s.worker == 0)?.path.clone(),
                    _ => c.pending.iter().find(|p| p.worker == 0)?.path.clone(),
                };
                Some(fx.state_dir(&name).join(path))
            };
            let (Some(target), Some(earlier)) = (file(latest), file(before)) else {
                report.push(format!("{kind} {what}: the latest commit has no such file"));
                continue;
            };
            if target == earlier && what.starts_with("swapped") {
                // A segment shared by both commits: a swap would change nothing.
                report.push(format!("{kind} {what}: one segment for both commits"));
                continue;
            }
            damage(&target, &earlier);
            let out =
                common::wait_bounded(fx.command(&name, 2).spawn().unwrap(), "the resumed run");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let fell_back = (0..latest.epoch)
                .any(|e| stderr.contains(&format!("resuming after committed epoch {e} ")));
            let rebuilt = stderr.contains("damaged pending segment rebuilt from the output topic");
            match (out.status.success(), fell_back || rebuilt) {
                (true, true) => {
                    fx.assert_matches(&name).await;
                    let how = if rebuilt {
                        "rebuilt from the topic"
                    } else {
                        "fell back"
                    };
                    report.push(format!("{kind} {what}: {how}"));
                }
                (false, _) => {
                    let last = stderr
                        .lines()
                        .rev()
                        .find(|l| l.contains("error"))
                        .unwrap_or("");
                    // The message names the file that is broken.
                    let named = target.file_name().unwrap().to_str().unwrap();
                    assert!(
                        last.contains(named),
                        "{kind} {what}: stopped without naming {named}:\n{stderr}"
                    );
                    report.push(format!("{kind} {what}: stopped: {last}"));
                }
                (true, false) => panic!(
                    "{kind} {what}: resumed from the damaged commit as if nothing happened:\n{stderr}"
                ),
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        report
            .iter()
            .filter(|r| r.contains("fell back") || r.contains("stopped") || r.contains("rebuilt"))
            .count()
            >= 5,
        "too few cases damaged anything: {report:#?}"
    );
    // A segment's rows are on the output topic: it is never a reason to stop.
    let segments: Vec<&String> = report
        .iter()
        .filter(|r| r.starts_with("pending segment"))
        .collect();
    assert!(
        !segments.iter().any(|r| r.contains("stopped")),
        "{report:#?}"
    );
    assert!(
        segments.iter().filter(|r| r.contains("rebuilt")).count() >= 2,
        "too few segments damaged: {report:#?}"
    );
}

/// Killed with one worker, resumed with two: the snapshots are re-sharded and
/// the Kafka output is the reference's; the Parquet dataset holds the same
/// rows (file names carry the worker, so the files themselves differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_one_worker_resumes_with_two() {
    rescale(Fixture::new().await).await;
}

/// The same with a checkpoint every 4 epochs: the checkpoint's state is
/// re-sharded, and the epochs since are replayed by two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_a_job_killed_with_one_worker_resumes_with_two() {
    rescale(Fixture::new().await.with_checkpoints(4)).await;
}

async fn rescale(fx: Fixture) {
    fx.reference();
    fx.kill_after_commits("rescale", 1, 3).await;
    assert!(
        fx.commits("rescale").await.iter().all(|c| c.workers == 1),
        "the first run had one worker"
    );
    let out = common::finish(fx.command("rescale", 2).spawn().unwrap(), "the resumed run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming with 2"), "{stderr}");
    fx.assert_kafka_matches("rescale").await;
    let rows = |name: &str| {
        let mut rows: Vec<common::Row> = common::parquet_rows(&fx.parquet_dir(name))
            .into_iter()
            .flat_map(|(_, r)| r)
            .collect();
        rows.sort();
        rows
    };
    let want = rows("reference");
    assert!(!want.is_empty());
    assert_eq!(rows("rescale"), want);
}

/// The broker (SQLite storage) SIGKILLed and restarted under a running job,
/// three times, each after the job committed more: the job rides it out or
/// fails and is started again; the output is a run never killed's. Epochs
/// of 20 records give the job hundreds of commits, so it is still running
/// at the third restart (with 100-record epochs it could finish first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_run_leaves_the_output_of_a_run_never_killed() {
    const EPOCH_RECORDS: u32 = 20;
    let fx = Fixture::durable().await;
    common::finish(
        fx.command_with("reference20", 2, EPOCH_RECORDS)
            .spawn()
            .unwrap(),
        "the reference run",
    );
    let (mut runs, mut restarts) = (0, 0);
    loop {
        runs += 1;
        assert!(runs <= 10, "the job never finished");
        let mut child = fx
            .command_with("restart", 2, EPOCH_RECORDS)
            .spawn()
            .unwrap();
        while restarts < 3 {
            let committed = fx.commits("restart").await.len();
            let started = Instant::now();
            while fx.commits("restart").await.len() <= committed {
                assert!(started.elapsed() < RUN_BOUND, "the job did not commit");
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            fx.kill_broker();
            tokio::time::sleep(Duration::from_millis(500)).await;
            fx.start_broker().await;
            restarts += 1;
        }
        let out = common::wait_bounded(child, &format!("run {runs}"));
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "run {runs} failed across the broker restart: {}",
            stderr.lines().last().unwrap_or_default()
        );
    }
    eprintln!("{restarts} broker restarts, {runs} runs");
    assert_eq!(restarts, 3);
    fx.assert_matches_run("restart", "reference20").await;
}

/// A live job started with `--start-at latest` on a topic that already holds
/// data reads only what arrives after its start; SIGUSR1 drains it: it reads
/// to the end of that moment, closes every window, commits and exits 0, with
/// the output of a bounded run over just those records, byte for byte. Its
/// pipeline log ends with a `drained` sample that agrees with its summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_live_job_equals_a_bounded_run_over_what_it_read() {
    use std::io::BufRead;
    let fx = Fixture::new().await;
    let client = iotflow_redpanda::connect(&fx.bootstrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let later = SimConfig {
        devices: 30,
        interval_ms: 200,
        seed: 12,
        start_ms: SimConfig::default().start_ms + 3_600_000,
        duplicate_ratio: 0.02,
        bad_ratio: 0.01,
        ..SimConfig::default()
    };
    let alone = common::unique("later");
    topics::create_topics(
        &client,
        &fx.bootstrap(),
        &[TopicSpec::new(alone.as_str(), 2)],
    )
    .await
    .unwrap();
    common::produce_sim(&client, &alone, later.clone(), 4_000).await;
    common::finish(
        fx.command_on("reference", 2, &alone)
            .arg("--until-end")
            .spawn()
            .unwrap(),
        "the bounded run",
    );

    let mut live = fx
        .command_on("drained", 2, &fx.input)
        .args(["--start-at", "latest", "--http", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, serving) = std::sync::mpsc::channel();
    let stderr = live.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.starts_with("status page:") {
                let _ = tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    serving
        .recv_timeout(RUN_BOUND)
        .expect("the live job serves its status page");
    common::produce_sim(&client, &fx.input, later, 4_000).await;
    let pid = rustix::process::Pid::from_child(&live);
    rustix::process::kill_process(pid, rustix::process::Signal::USR1).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = live.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < RUN_BOUND,
            "the drained job did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut live.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr = log.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("draining"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["records"], 4_000, "only what came after the start");
    let bootstrap = fx.bootstrap();
    let want = partitions(&bootstrap, "reference.aggregates").await;
    assert!(want.values().any(|p| !p.is_empty()));
    assert!(partitions(&bootstrap, "drained.aggregates").await == want);
    // Dead letters name their source topic and offset, which differ here.
    use iotflow_sink::records::{SOURCE_OFFSET_HEADER, SOURCE_TOPIC_HEADER};
    let dead = |mut p: Partitions| {
        for records in p.values_mut() {
            for (_, _, headers) in records.iter_mut() {
                assert!(headers.remove(SOURCE_TOPIC_HEADER).is_some());
                assert!(headers.remove(SOURCE_OFFSET_HEADER).is_some());
            }
        }
        p
    };
    let want = dead(partitions(&bootstrap, "reference.dlq").await);
    assert!(want.values().any(|p| !p.is_empty()));
    assert!(dead(partitions(&bootstrap, "drained.dlq").await) == want);
    let want = common::files(&fx.parquet_dir("reference"));
    assert!(!want.is_empty());
    assert!(
        common::files(&fx.parquet_dir("drained")) == want,
        "Parquet bytes differ"
    );

    let pipeline = fx.parquet_dir("drained").join("_pipeline");
    let lines = |file: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(pipeline.join(file))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let last = lines("samples-p0.jsonl").pop().unwrap();
    assert_eq!(last["end"], "drained");
    assert_eq!(last["records_in"], 4_000);
    assert_eq!(last["windows_emitted"], summary["windows_final"]);
    let epochs: Vec<u64> = lines("commits-p0.jsonl")
        .iter()
        .map(|c| c["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(
        epochs,
        (0..=summary["last_committed_epoch"].as_u64().unwrap()).collect::<Vec<_>>(),
        "every commit logged once, in order"
    );
}
