//! `iotflow demo`: what a newcomer runs first. A local broker and the topics;
//! the windowed job of `jobs/demo.toml` (`iotflow run --job-file … -w 2`,
//! exactly once, this same binary: per-device statistics and per-site
//! percentiles) started first and left to run live; simulated devices at
//! several sites, with every kind of trouble, writing into it at a steady
//! rate while the job prints its progress; then a drain (SIGUSR1: read to the
//! end, close every window, commit, exit) and a summary checked three ways:
//! the simulator's bad records against the job's dead letters, the job's
//! windows against the output topics and the Parquet datasets, and the alerts
//! its rules raised over the devices' spells of trouble (`alerts`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use iotflow_ingest::producer::ProduceSummary;
use iotflow_redpanda::rskafka::client::Client;
use iotflow_redpanda::topics;
use iotflow_redpanda::{LocalBroker, Storage};

use crate::produce_cmd::{self, SimArgs};

mod alerts;

/// The demo's job, shipped in the repo and built into the binary.
const DEMO_JOB: &str = include_str!("../../jobs/demo.toml");
/// Its aggregations' topics and datasets, in its order.
const DEMO_OUTPUTS: [(&str, &str); 2] =
    [("iot.aggregates", "aggregates"), ("iot.site_1m", "site_1m")];
use crate::run_cmd::{RunSummary, end_offsets};
use crate::target::{SecurityArgs, Target};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this cluster instead of starting a local broker (e.g. Redpanda at 127.0.0.1:19092).
    /// The job starts at the topics' current end, so earlier runs' data is left alone.
    #[arg(long, env = "IOTFLOW_BROKERS", value_delimiter = ',')]
    brokers: Option<Vec<String>>,
    /// How to reach a secured --brokers cluster (the job started gets the same).
    #[command(flatten)]
    security: SecurityArgs,
    /// Partitions of the data topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Worker threads of the job.
    #[arg(short = 'w', long, default_value_t = 2)]
    workers: usize,
    /// Where the demo writes: the Parquet dataset, job state, broker log.
    #[arg(long, default_value = "data/demo")]
    dir: std::path::PathBuf,
    /// Longest wait for the job to finish once the devices stop.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    drain_timeout: Duration,
    /// Simulator flags, as for `produce`; the demo defaults to 300 devices at 4
    /// sites, 2 000 000 records at 100 000 records/s, 1 % duplicates, 0.5 % bad, 1 % late.
    #[command(flatten)]
    sim: SimArgs,
}

pub async fn run(mut args: DemoArgs) -> Result<()> {
    // Demo defaults that differ from `produce`: more devices, a steady live rate,
    // some of every kind of trouble.
    if args.sim.devices == 100 {
        args.sim.devices = 300;
    }
    // The demo job groups by site.
    if args.sim.sites == 0 {
        args.sim.sites = 4;
    }
    if args.sim.count.is_none() && args.sim.duration.is_none() {
        args.sim.count = Some(2_000_000);
    }
    args.sim.rate.get_or_insert(100_000.0);
    // Spells of trouble for the job's alert rules to find.
    if args.sim.episodes.is_empty() {
        args.sim.episodes = iotflow_ingest::episodes::EpisodeKind::ALL.to_vec();
    }
    for (ratio, default) in [
        (&mut args.sim.duplicates, 0.01),
        (&mut args.sim.bad, 0.005),
        (&mut args.sim.late, 0.01),
    ] {
        if *ratio == 0.0 {
            *ratio = default;
        }
    }
    let demo_started = Instant::now();
    println!("== iotflow demo ==");
    let mut _broker = None;
    let bootstrap = match args.brokers.clone() {
        Some(b) => b,
        None => {
            println!("1. starting the local tansu broker (memory storage)…");
            let b = LocalBroker::builder()
                .storage(Storage::Memory)
                .log_path(args.dir.join("tansu.log"))
                .start()
                .await
                .context("starting the local broker")?;
            println!("   broker on {} (log {})", b.addr(), b.log_path().display());
            let addr = b.bootstrap();
            _broker = Some(b);
            addr
        }
    };
    let bootstrap = match _broker {
        Some(_) => bootstrap.into(),
        None => {
            iotflow_redpanda::Brokers::new(bootstrap, args.security.security(&Default::default())?)
        }
    };
    let client: Client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30)).await?;
    let target = Target { bootstrap, client };
    println!("2. creating topics…");
    let outcomes = topics::create_topics(
        &target.client,
        &target.bootstrap,
        &topics::default_topics(args.partitions, 1),
    )
    .await?;
    for (name, outcome) in outcomes {
        println!("   {name}: {outcome:?}");
    }

    // Demo output only: each run starts from an empty dataset and empty job state,
    // under a job name of its own (a kept cluster still has the last run's commits).
    let parquet_dir = args.dir.join("parquet");
    let state_dir = args.dir.join("state");
    for dir in [&parquet_dir, &state_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let job_name = format!("demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));
    let job_file = args.dir.join("demo.toml");
    std::fs::create_dir_all(&args.dir)?;
    std::fs::write(&job_file, DEMO_JOB)
        .with_context(|| format!("writing {}", job_file.display()))?;
    let before = OutputOffsets::read(&target).await?;
    let alerts_before = alerts::offsets(&target).await?;
    let http = free_local_addr()?;
    println!(
        "3. starting the job {job_name} of {} (jobs/demo.toml): per-device stats in 10 s windows and \
         per-site percentiles per minute, {} workers, exactly once, from the end of {}…",
        job_file.display(),
        args.workers,
        topics::READINGS
    );
    let exe = std::env::current_exe().context("locating the iotflow binary")?;
    let mut job = tokio::process::Command::new(&exe)
        .args(["run", "--brokers", &target.bootstrap.join(",")])
        .args(args.security.forwarded())
        .envs(args.security.forwarded_env())
        .arg("--job-file")
        .arg(&job_file)
        .args(["-w", &args.workers.to_string(), "--start-at", "latest"])
        .args(["--http", &http.to_string(), "--progress-interval", "1s"])
        .arg("--parquet-dir")
        .arg(&parquet_dir)
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--job", &job_name, "--json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting `iotflow run`")?;
    wait_until_serving(&mut job, http).await?;
    println!(
        "   status page http://{http}/ and metrics http://{http}/metrics while it runs; \
         progress below: epochs, readings/s, lag per partition, watermark, dead letters"
    );

    let episodes: Vec<&str> = args.sim.episodes.iter().map(|e| e.code()).collect();
    println!(
        "4. {} devices × {} metrics writing {} records at {:.0} records/s \
         (duplicates {}, bad {}, late {}; spells of {}; event time runs ahead of the clock)…",
        args.sim.devices,
        args.sim.metrics.len(),
        args.sim.count.map_or_else(|| "-".into(), |c| c.to_string()),
        args.sim.rate.unwrap_or(0.0),
        args.sim.duplicates,
        args.sim.bad,
        args.sim.late,
        episodes.join(", ")
    );
    let produced = tokio::select! {
        produced = produce_cmd::produce_to(&target, topics::READINGS, args.partitions, &args.sim, None, false) => produced?,
        _ = tokio::signal::ctrl_c() => {
            // The job got the same Ctrl-C: it stops after its current epoch.
            let _ = job.wait().await;
            bail!("interrupted; the job stopped after its last committed epoch");
        }
    };
    println!(
        "   devices done: {} records ({} readings) in {:.1} s; draining the job (SIGUSR1)…",
        produced.records, produced.readings, produced.seconds
    );
    let pid = job
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        .context("the job has already exited")?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1)
        .context("asking the job to drain")?;
    let output = tokio::select! {
        out = tokio::time::timeout(args.drain_timeout, job.wait_with_output()) => out
            .map_err(|_| anyhow::anyhow!("the job did not finish within {:?} of the drain", args.drain_timeout))?
            .context("waiting for the job")?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted while the job drained"),
    };
    if !output.status.success() {
        bail!("`iotflow run` failed ({})", output.status);
    }
    let summary: RunSummary = serde_json::from_slice(&output.stdout)
        .context("reading the job's summary (`iotflow run --json`)")?;
    let after = OutputOffsets::read(&target).await?;
    let dataset = parquet_dir.join(iotflow_sink::parquet::DATASET);
    let (mut files, mut rows) = (0, 0);
    for (_, name) in DEMO_OUTPUTS {
        let (f, r) = parquet_dataset_size(&parquet_dir.join(name))?;
        (files, rows) = (files + f, rows + r);
    }

    println!(
        "5. summary ({:.1} s in all)",
        demo_started.elapsed().as_secs_f64()
    );
    let mut problems = print_summary(
        &produced,
        &summary,
        (after.aggregates - before.aggregates, after.dlq - before.dlq),
        (files, rows),
    );
    problems.extend(alerts::report(&target, &alerts_before, &parquet_dir, &episodes).await?);
    println!("   a sample of iot.site_1m (per site and metric, last minute):");
    print_site_sample(&target, before.sites_p0).await?;
    println!("   a sample of {} (full windows):", topics::AGGREGATES);
    print_aggregates_sample(&target, before.aggregates_p0, 8).await?;
    println!("6. where to look next:");
    for (what, how) in [
        (
            "the Parquet dataset",
            format!(
                "{}/{{aggregates,site_1m,alerts}}/*/*.parquet",
                parquet_dir.display()
            ),
        ),
        (
            "query it",
            format!(
                "duckdb -c \"select metric, count(*), avg(mean) from '{}/*/*.parquet' group by 1\"",
                dataset.display()
            ),
        ),
        (
            "the notebooks",
            "make notebooks  (aggregates, alerts, pipeline health; HTML in data/notebooks/)".into(),
        ),
        (
            "the pipeline log",
            format!(
                "{}/_pipeline/ (samples and commits, JSON lines)",
                parquet_dir.display()
            ),
        ),
        (
            "committed output live",
            "iotflow tail --brokers B --job NAME  (read-committed)".into(),
        ),
        (
            "alerts to a webhook",
            "iotflow notify --brokers B --webhook URL  (Alertmanager payload)".into(),
        ),
        (
            "Redpanda",
            "README \"Running against Redpanda\": iotflow demo --brokers 127.0.0.1:19092".into(),
        ),
    ] {
        println!("   {what:<22} {how}");
    }
    if !problems.is_empty() {
        bail!("the outputs disagree: {}", problems.join("; "));
    }
    Ok(())
}

/// Prints the summary table; returns the checks that failed.
fn print_summary(
    produced: &ProduceSummary,
    job: &RunSummary,
    (kafka_aggregates, kafka_dlq): (i64, i64),
    (files, parquet_rows): (usize, i64),
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            problems.push(format!("{what}: {detail}"));
        }
        if ok { "ok" } else { "MISMATCH" }
    };
    let class = |name: &str| produced.by_class.get(name).copied().unwrap_or(0);
    println!("   readings in");
    println!(
        "     devices wrote      {:>10} records {:>10} readings (incl. {} duplicates, {} bad, {} late records)",
        produced.records,
        produced.readings,
        class("duplicate"),
        produced
            .by_class
            .iter()
            .filter(|(k, _)| k.starts_with("bad:"))
            .map(|(_, n)| n)
            .sum::<u64>(),
        class("late")
    );
    let read_ok = check(
        "records read",
        job.records == produced.records,
        format!(
            "the job read {}, devices wrote {}",
            job.records, produced.records
        ),
    );
    println!(
        "     the job read       {:>10} records  [{read_ok}]",
        job.records
    );
    println!(
        "     accepted           {:>10} records {:>10} readings, {} duplicate readings dropped, {:.0} readings/s",
        job.records_accepted,
        job.readings_accepted,
        job.duplicates,
        job.readings_accepted as f64 / job.seconds.max(1e-9)
    );
    println!("   dead letters by reason (devices sent → the job dead-lettered)");
    let mut reasons: Vec<&str> = job.rejected.keys().map(String::as_str).collect();
    for c in produced.by_class.keys() {
        if let Some(r) = c.strip_prefix("bad:")
            && !reasons.contains(&r)
        {
            reasons.push(r);
        }
    }
    reasons.sort_unstable();
    for reason in reasons {
        let got = job.rejected.get(reason).copied().unwrap_or(0);
        if reason == "late" {
            // Late by the simulator means 60 s behind; late for the job means every
            // window of the reading was already final: related, not equal.
            println!(
                "     {reason:<22} {:>8} → {got:>8}  (too late for any open window)",
                class("late")
            );
        } else {
            let sent = class(&format!("bad:{reason}"));
            let verdict = check(
                reason,
                sent == got,
                format!("{sent} sent, {got} dead-lettered"),
            );
            println!("     {reason:<22} {sent:>8} → {got:>8}  [{verdict}]");
        }
    }
    let dead_total: u64 = job.rejected.values().sum();
    let dlq_ok = check(
        "dead-letter topic",
        i64::try_from(dead_total).is_ok_and(|d| d == kafka_dlq),
        format!("{kafka_dlq} records on the topic, {dead_total} counted"),
    );
    println!(
        "     on {:<19} {kafka_dlq:>8} records  [{dlq_ok}]",
        topics::DLQ
    );
    println!("   aggregates out (each window exactly once)");
    let windows = i64::try_from(job.windows_final).unwrap_or(i64::MAX);
    println!("     final windows      {windows:>10}  (both aggregations)");
    let kafka_ok = check(
        "output topics",
        kafka_aggregates == windows,
        format!("{kafka_aggregates} records for {windows} windows"),
    );
    println!("     on the topics      {kafka_aggregates:>10} records  [{kafka_ok}]");
    let parquet_ok = check(
        "Parquet",
        parquet_rows == windows,
        format!("{parquet_rows} rows for {windows} windows"),
    );
    println!("     in Parquet         {parquet_rows:>10} rows in {files} files  [{parquet_ok}]");
    if let (Some(epoch), Some(mean), Some(max)) = (
        job.last_committed_epoch,
        job.commit_latency_ms_mean,
        job.commit_latency_ms_max,
    ) {
        println!(
            "   commits: through epoch {epoch} ({} commits), latency {mean:.0} ms mean, {max:.0} ms max",
            job.commits
        );
    }
    problems
}

/// End offsets of the aggregations' topics and the dead letters', summed,
/// and partition 0's of each aggregation's topic.
struct OutputOffsets {
    aggregates: i64,
    aggregates_p0: i64,
    sites_p0: i64,
    dlq: i64,
}

impl OutputOffsets {
    async fn read(target: &Target) -> Result<Self> {
        let mut aggregates = 0;
        let mut p0 = Vec::new();
        for (topic, _) in DEMO_OUTPUTS {
            // A cluster's first demo run creates the site topic itself.
            let ends = match topics::partitions_of(&target.client, topic).await? {
                Some(_) => end_offsets(&target.client, topic).await?,
                None => BTreeMap::new(),
            };
            aggregates += ends.values().sum::<i64>();
            p0.push(ends.get(&0).copied().unwrap_or(0));
        }
        let dlq = end_offsets(&target.client, topics::DLQ).await?;
        Ok(Self {
            aggregates,
            aggregates_p0: p0[0],
            sites_p0: p0[1],
            dlq: dlq.values().sum(),
        })
    }
}

/// The last minute's windows of `iot.site_1m` on partition 0, from `from` on.
async fn print_site_sample(target: &Target, from: i64) -> Result<()> {
    use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
    let pc = target
        .client
        .partition_client(DEMO_OUTPUTS[1].0, 0, UnknownTopicHandling::Retry)
        .await
        .context("connecting to the site topic")?;
    let (_, end) = iotflow_redpanda::scan::offsets(&pc).await?;
    let records = iotflow_redpanda::scan::read_range(&pc, from, end).await?;
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = records
        .iter()
        .filter_map(|r| r.record.value.as_deref())
        .filter_map(|v| serde_json::from_slice(v).ok())
        .collect();
    let last = rows.iter().filter_map(|r| r["window_start"].as_i64()).max();
    println!(
        "     {:<8} {:<12} {:<20} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "site", "metric", "window start (UTC)", "n", "mean", "p50", "p95", "p99"
    );
    for r in rows
        .iter()
        .filter(|r| r["window_start"].as_i64() == last)
        .take(8)
    {
        let start = r["window_start"]
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "     {:<8} {:<12} {:<20} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            r["site"].as_str().unwrap_or_default(),
            r["metric"].as_str().unwrap_or_default(),
            start,
            r["count"],
            f("mean"),
            f("p50"),
            f("p95"),
            f("p99")
        );
    }
    Ok(())
}

/// A loopback address with a port free right now, for the job's status server.
fn free_local_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Waits until the job serves its status page: by then it has planned its start
/// and handles SIGUSR1. Fails if it exits first.
async fn wait_until_serving(job: &mut tokio::process::Child, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = job.try_wait()? {
            bail!("`iotflow run` exited before it started ({status})");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the job did not start serving {addr} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (files, rows) of the Parquet dataset under `dir`, from the files' footers.
fn parquet_dataset_size(dir: &Path) -> Result<(usize, i64)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let (mut files, mut rows) = (0, 0);
    let Ok(days) = std::fs::read_dir(dir) else {
        return Ok((0, 0));
    };
    for day in days {
        for f in std::fs::read_dir(day?.path())? {
            let path = f?.path();
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let reader = SerializedFileReader::new(file)
                .with_context(|| format!("reading {}", path.display()))?;
            rows += reader.metadata().file_metadata().num_rows();
            files += 1;
        }
    }
    Ok((files, rows))
}

/// Up to `n` aggregates of partition 0 from `from` on, windows of 5 readings or more.
async fn print_aggregates_sample(target: &Target, from: i64, n: usize) -> Result<()> {
    use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
    let pc = target
        .client
        .partition_client(topics::AGGREGATES, 0, UnknownTopicHandling::Retry)
        .await
        .context("connecting to the aggregates topic")?;
    let (_, end) = iotflow_redpanda::scan::offsets(&pc).await?;
    let records = iotflow_redpanda::scan::read_range(&pc, from, end.min(from + 2_000)).await?;
    println!(
        "     {:<10} {:<12} {:<20} {:>5} {:>9} {:>9} {:>9} {:>8}",
        "device", "metric", "window start (UTC)", "n", "mean", "min", "max", "stddev"
    );
    let full = records
        .iter()
        .filter_map(|r| r.record.value.as_deref())
        .filter_map(|v| serde_json::from_slice::<iotflow_sink::records::AggregateRecord>(v).ok())
        .filter(|a| a.count >= 5);
    let mut per_metric: BTreeMap<String, usize> = BTreeMap::new();
    let mut shown = 0;
    for a in full {
        // A few of each metric rather than the first n of one.
        let seen = per_metric.entry(a.metric.to_string()).or_default();
        if *seen >= n.div_ceil(3) || shown >= n {
            continue;
        }
        *seen += 1;
        shown += 1;
        let start = chrono::DateTime::from_timestamp_millis(a.window_start)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        println!(
            "     {:<10} {:<12} {:<20} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>8.4}",
            a.device_id, a.metric, start, a.count, a.mean, a.min, a.max, a.stddev
        );
    }
    Ok(())
}
