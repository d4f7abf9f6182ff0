//! `iotflow demo`: what a newcomer runs first: a local broker, the topics,
//! simulated devices with every kind of trouble, a read-back audit of what
//! landed, then the windowed job over it (`iotflow run --until-end -w 2`, the
//! same binary) and a sample of the aggregates it wrote.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use iotflow_redpanda::rskafka::client::Client;
use iotflow_redpanda::topics;
use iotflow_redpanda::{LocalBroker, Storage};

use crate::produce_cmd::{self, SimArgs};
use crate::scan_cmd;
use crate::target::Target;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this cluster instead of starting a local broker (e.g. Redpanda at 127.0.0.1:19092).
    #[arg(long, env = "IOTFLOW_BROKERS", value_delimiter = ',')]
    brokers: Option<Vec<String>>,
    /// Partitions of the data topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Log file of the demo's local broker.
    #[arg(long, default_value = "data/demo/tansu.log")]
    broker_log: std::path::PathBuf,
    #[command(flatten)]
    sim: SimArgs,
}

pub async fn run(mut args: DemoArgs) -> Result<()> {
    // Demo defaults that differ from `produce`: more devices and some of every kind of trouble.
    if args.sim.devices == 100 {
        args.sim.devices = 300;
    }
    if args.sim.count.is_none() && args.sim.duration.is_none() {
        args.sim.count = Some(300_000);
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
    println!("== iotflow demo ==");
    let mut _broker = None;
    let bootstrap = match args.brokers.clone() {
        Some(b) => b,
        None => {
            println!("1. starting the local tansu broker (memory storage)…");
            let b = LocalBroker::builder()
                .storage(Storage::Memory)
                .log_path(&args.broker_log)
                .start()
                .await
                .context("starting the local broker")?;
            println!("   broker on {} (log {})", b.addr(), b.log_path().display());
            let addr = b.bootstrap();
            _broker = Some(b);
            addr
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
    println!(
        "3. simulating {} devices × {} metrics (duplicates {}, bad {}, late {})…",
        args.sim.devices,
        args.sim.metrics.len(),
        args.sim.duplicates,
        args.sim.bad,
        args.sim.late
    );
    let summary =
        produce_cmd::produce_to(&target, topics::READINGS, args.partitions, &args.sim).await?;
    produce_cmd::print_summary(topics::READINGS, &summary);
    println!("4. reading {} back…", topics::READINGS);
    let report = scan_cmd::scan_topic(&target, topics::READINGS, Duration::from_secs(30)).await?;
    scan_cmd::print_report(&report);

    println!(
        "5. running the dataflow: 10 s tumbling windows, 2 workers, epochs of 1,000 records per partition, until the end of the input…"
    );
    let exe = std::env::current_exe().context("locating the iotflow binary")?;
    // Demo output only: a rerun starts from an empty dataset and empty job state,
    // under a job name of its own (a kept cluster still has the last run's commits).
    let parquet_dir = std::path::Path::new(DEMO_PARQUET);
    for dir in [DEMO_PARQUET, DEMO_STATE] {
        let dir = std::path::Path::new(dir);
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let job = format!("demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));
    let status = tokio::process::Command::new(&exe)
        .args([
            "run",
            "--brokers",
            &target.bootstrap.join(","),
            "--until-end",
            // A backlog: record-count epochs keep the watermark close to the data
            // (time epochs would swallow the whole backlog in a few epochs).
            "--epoch-records",
            "1000",
            "-w",
            "2",
            "--parquet-dir",
            DEMO_PARQUET,
            "--state-dir",
            DEMO_STATE,
            "--job",
            &job,
        ])
        .status()
        .await
        .context("starting `iotflow run`")?;
    if !status.success() {
        anyhow::bail!("`iotflow run` failed ({status})");
    }
    println!("6. a sample of {}:", topics::AGGREGATES);
    print_aggregates_sample(&target, 8).await?;
    let (files, rows) = parquet_dataset_size(&parquet_dir.join(iotflow_sink::parquet::DATASET))?;
    println!(
        "7. Parquet: {rows} final windows in {files} files under {DEMO_PARQUET}/aggregates/date=*/ \
         (e.g. duckdb -c \"select metric, count(*), avg(mean) from '{DEMO_PARQUET}/aggregates/*/*.parquet' group by 1\")"
    );
    println!(
        "done. Next: `iotflow run --help`, `iotflow produce --help`, and docs/brokers.md for Redpanda."
    );
    Ok(())
}

/// Where the demo's job writes its Parquet dataset.
const DEMO_PARQUET: &str = "data/demo/parquet";
const DEMO_STATE: &str = "data/demo/state";

/// (files, rows) of the Parquet dataset under `dir`, from the files' footers.
fn parquet_dataset_size(dir: &std::path::Path) -> Result<(usize, i64)> {
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

/// The first `n` aggregates of partition 0 as a small table.
async fn print_aggregates_sample(target: &Target, n: usize) -> Result<()> {
    use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
    let pc = target
        .client
        .partition_client(topics::AGGREGATES, 0, UnknownTopicHandling::Retry)
        .await
        .context("connecting to the aggregates topic")?;
    let (earliest, end) = iotflow_redpanda::scan::offsets(&pc).await?;
    let records =
        iotflow_redpanda::scan::read_range(&pc, earliest, end.min(earliest + n as i64)).await?;
    println!(
        "   {:<10} {:<12} {:<20} {:>5} {:>9} {:>9} {:>9} {:>8}",
        "device", "metric", "window start (UTC)", "n", "mean", "min", "max", "stddev"
    );
    for r in records {
        let Some(value) = r.record.value else {
            continue;
        };
        let Ok(a) = serde_json::from_slice::<iotflow_sink::records::AggregateRecord>(&value) else {
            continue;
        };
        let start = chrono::DateTime::from_timestamp_millis(a.window_start)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        println!(
            "   {:<10} {:<12} {:<20} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>8.4}",
            a.device_id, a.metric, start, a.count, a.mean, a.min, a.max, a.stddev
        );
    }
    Ok(())
}
