//! How long recovery takes to read a job's history from a progress topic
//! holding `COMMITS` commits of that job (a week-old job on a broker that does
//! not compact, such as tansu): the whole topic from its start (what recovery
//! and `tail` did before) against reading back from the end
//! (`ProgressLog::read_history`). Not a test: `make bench-exactly-once` runs
//! it and prints the figures.
//!
//! ```text
//!   cargo run --release -p iotflow-sink --example progress_history -- BROKER [COMMITS]
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use iotflow_redpanda::topics::{self, TopicSpec};
use iotflow_sink::progress::ProgressLog;
use iotflow_sink::protocol::{
    CommitRecord, EpochStaging, Plan, PublishTarget, SnapshotEntry, Staged, plan_recovery,
};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;

/// A commit as the committer writes it: two workers, four output partitions.
fn commit(epoch: u64, log_from: Option<i64>) -> Result<CommitRecord, String> {
    let mut staging = EpochStaging::new(epoch, 2);
    for worker in 0..2u32 {
        let staged = Staged {
            publish: (0..2)
                .map(|p| PublishTarget {
                    topic: "iot.aggregates".into(),
                    partition: (worker * 2 + p) as i32,
                    records: 900,
                    checksum: 7,
                })
                .collect(),
            snapshot: Some(SnapshotEntry {
                worker,
                path: format!("epochs/{epoch:012}/w{worker:04}.snap"),
                bytes: 40_000,
                checksum: 9,
                base: epoch - epoch % 8,
            }),
            source_offsets: BTreeMap::from([(worker as i32, epoch as i64 * 1000)]),
            ..Staged::default()
        };
        staging.stage(worker, staged).map_err(|e| e.to_string())?;
    }
    let mut record = staging
        .commit("week-old-job", 1)
        .ok_or("not every worker staged")?;
    record.unpublished_from = Some(epoch.saturating_sub(1));
    record.log_from = log_from;
    Ok(record)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let broker = args
        .next()
        .ok_or("usage: progress_history BROKER [COMMITS]")?;
    let commits: u64 = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let bootstrap = vec![broker];
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30)).await?;
    let topic = format!("bench.progress.{}", std::process::id());
    topics::create_topics(&client, &bootstrap, &[TopicSpec::new(topic.as_str(), 1)]).await?;
    let pc = client
        .partition_client(topic.as_str(), 0, UnknownTopicHandling::Retry)
        .await?;
    // Offsets are dense on a fresh topic: commit e lands at offset e.
    let written = Instant::now();
    for chunk in (0..commits).collect::<Vec<_>>().chunks(5_000) {
        let records = chunk
            .iter()
            .map(|&e| {
                let log_from = Some(e.saturating_sub(2) as i64);
                Ok(Record {
                    key: Some(format!("week-old-job/{}", e % 3).into_bytes()),
                    value: Some(commit(e, log_from)?.encode()?),
                    headers: BTreeMap::new(),
                    timestamp: chrono::Utc::now(),
                })
            })
            .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
        pc.produce(records, Compression::NoCompression).await?;
    }
    println!(
        "{commits} commit records written in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let log = ProgressLog::open(&client, &topic).await?;
    let plan = |records: &[CommitRecord]| match plan_recovery(
        "week-old-job",
        records,
        &Default::default(),
        |_| true,
    ) {
        Plan::Resume { from, .. } => Some(from.epoch),
        Plan::Fresh { .. } => None,
    };
    let started = Instant::now();
    let (all, _) = log.read_all().await?;
    let whole = (started.elapsed(), plan(&all), all.len());
    let started = Instant::now();
    let history = log.read_history("week-old-job").await?;
    let read: Vec<CommitRecord> = history.commits.into_iter().map(|(_, c)| c).collect();
    let from_end = (started.elapsed(), plan(&read), history.records_read);
    println!(
        "whole topic:   {:>8.1} ms, {:>6} records read, resumes after epoch {:?}",
        whole.0.as_secs_f64() * 1e3,
        whole.2,
        whole.1
    );
    println!(
        "from the end:  {:>8.1} ms, {:>6} records read, resumes after epoch {:?}",
        from_end.0.as_secs_f64() * 1e3,
        from_end.2,
        from_end.1
    );
    if whole.1 != from_end.1 {
        return Err("the two reads plan different resumptions".into());
    }
    Ok(())
}
