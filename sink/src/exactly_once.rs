//! The exactly-once sinks: the commit protocol (`protocol`) driven by the
//! dataflow's frontiers, with its I/O on the state directory, the progress
//! topic, the output partitions and the Parquet dataset.
//!
//! ```text
//!   every worker, frontier past e:
//!     Stage   outputs of e for its partitions ─▶ <state>/epochs/e/w<w>.out   (sealed, fsync)
//!             final windows of e              ─▶ <parquet>/.staging/*.parquet (fsync)
//!             its snapshot of e               ─▶ <state>/epochs/e/w<w>.snap  (sealed, fsync)
//!             ──Staged(e)──▶ worker 0
//!   worker 0, every Staged(e) in and every Published(e−1) back:
//!     Commit  CommitRecord(e) appended to the progress topic   ← the commit point
//!             Parquet files of e renamed into the dataset (+ dir fsync)
//!             ──Committed(e) (broadcast)──▶ every worker
//!   every worker:
//!     Publish its partitions' records of e, skipping what each tail shows is there
//!             ──Published(e), fed back +1──▶ Commit (the next commit waits for it)
//! ```
//!
//! So at most the latest commit can be partly published, and recovery
//! ([`finish_publishing`]) completes it from the staged files before the job
//! goes on with the next epoch. Records of an epoch go out in one
//! deterministic order per partition, each with its epoch and index in
//! headers: a partition's last record says exactly how far it got.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use iotflow_dataflow::job::{DeadRecord, Epoch, WindowResult, epoch_of, held_from};
use iotflow_dataflow::metrics::JobMetrics;
use iotflow_dataflow::operators::windows::Captures;
use iotflow_dataflow::sealed::{seal, unseal};
use iotflow_dataflow::snapshot::{Link, WorkerSnapshot, materialize};
use iotflow_dataflow::window::WindowSpec;
use iotflow_redpanda::partitioner::partition_for;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{ConnectLoop, Feedback};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;

use crate::failpoint::{self, Site};
use crate::kafka::{SinkError, aggregate_key, aggregate_record, record_failure, tail_mark};
use crate::parquet;
use crate::progress::{KEPT_COMMITS, ProgressLog};
use crate::protocol::{
    CommitRecord, EpochStaging, FileEntry, PendingEntry, PublishTarget, SnapshotEntry, Staged,
    TailMark, unpublished,
};
use crate::records::{AggregateRecord, DeadLetter, EPOCH_HEADER, INDEX_HEADER, JOB_HEADER};

/// Epoch directories under the state directory.
pub const EPOCHS: &str = "epochs";

/// Where and how the job commits.
#[derive(Debug, Clone)]
pub struct ExactlyOnceConfig {
    pub job: String,
    pub generation: u64,
    pub state_dir: PathBuf,
    pub parquet_dir: PathBuf,
    pub bootstrap: Vec<String>,
    pub progress_topic: String,
    /// The output topics with their partition counts: aggregates, then dead letters.
    pub topics: [(String, usize); 2],
    pub source_topic: String,
    pub roll: Roll,
    /// Which windows a snapshot chain's watermark has closed.
    pub window: WindowSpec,
    pub lateness_ms: i64,
    /// Deltas fold into a whole snapshot once they add up to this many bytes or
    /// the last whole one, whichever is more: recovery reads at most about
    /// twice the state, and writing costs at most about twice the deltas.
    pub fold_bytes: u64,
    /// No commit of this job exists (recovery planned a fresh start): none of
    /// its records can be on the output topics, so their tails are not read.
    pub fresh: bool,
}

impl ExactlyOnceConfig {
    /// When the window starting at `start` closes: its end plus the lateness.
    fn close_at(&self) -> impl Fn(i64) -> i64 + use<> {
        let (window, lateness) = (self.window, self.lateness_ms);
        move |start| window.end(start).saturating_add(lateness)
    }
}

/// A worker's snapshot chain as Stage writes it: whole snapshots, then deltas
/// until the deltas outweigh the whole one, then whole again.
#[derive(Debug, Clone, Copy, Default)]
struct Chain {
    last: Option<Link>,
    base: Epoch,
    base_bytes: u64,
    delta_bytes: u64,
}

/// The chain of snapshot files ending at `head` (worker `worker`'s), oldest
/// first, every link checked against the size and checksum its successor names.
fn load_chain(state_dir: &Path, worker: u32, head: Link) -> Result<Vec<WorkerSnapshot>, String> {
    let mut chain = Vec::new();
    let mut link = Some(head);
    while let Some(l) = link {
        let rel = snapshot_path(l.epoch, worker);
        let bytes = fs::read(state_dir.join(&rel)).map_err(|e| format!("{rel}: {e}"))?;
        if bytes.len() as u64 != l.bytes || crc32fast::hash(&bytes) != l.checksum {
            return Err(format!(
                "{rel}: size or checksum differs from what its successor names"
            ));
        }
        let snap = WorkerSnapshot::decode(&bytes).map_err(|e| format!("{rel}: {e}"))?;
        link = snap.previous;
        chain.push(snap);
    }
    chain.reverse();
    Ok(chain)
}

/// What a commit left for recovery, read back and checked.
#[derive(Debug)]
pub struct CommitState {
    /// Each worker's whole state (its chain put together), by worker.
    pub snapshots: Vec<WorkerSnapshot>,
    /// Each worker's final windows waiting for a Parquet roll.
    pub pending: Vec<(PendingEntry, Vec<AggregateRecord>)>,
}

/// The state `commit` names: every worker's snapshot chain (each file's size
/// and checksum as its successor names, put together) and pending Parquet
/// rows. An error means the commit cannot be resumed from.
pub fn load_state(cfg: &ExactlyOnceConfig, commit: &CommitRecord) -> Result<CommitState, String> {
    if commit.snapshots.len() != commit.workers as usize {
        return Err(format!(
            "epoch {}: {} snapshots for {} workers",
            commit.epoch,
            commit.snapshots.len(),
            commit.workers
        ));
    }
    let mut snapshots = Vec::with_capacity(commit.snapshots.len());
    for entry in &commit.snapshots {
        let head = Link {
            epoch: snapshot_epoch(&entry.path)?,
            bytes: entry.bytes,
            checksum: entry.checksum,
        };
        let chain = load_chain(&cfg.state_dir, entry.worker, head)?;
        snapshots
            .push(materialize(chain, cfg.close_at()).map_err(|e| format!("{}: {e}", entry.path))?);
    }
    snapshots.sort_by_key(|s| s.worker);
    let pending = read_pending(&cfg.state_dir, &commit.pending)?;
    Ok(CommitState { snapshots, pending })
}

/// The epoch in a snapshot path (`epochs/<epoch>/w<worker>.snap`).
fn snapshot_epoch(path: &str) -> Result<Epoch, String> {
    path.split('/')
        .nth(1)
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| format!("{path}: not a snapshot path"))
}

/// When a worker's final windows go from segments into a Parquet file: at
/// `rows` pending rows, `epochs` epochs after the oldest, or at the end of the
/// input. Both count data and epochs, never time, so a replay rolls the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roll {
    pub rows: u64,
    pub epochs: u64,
}

impl Roll {
    /// Whether `rows` pending since epoch `since` roll at `epoch` (`last`: the input ended).
    pub fn due(&self, since: Epoch, rows: u64, epoch: Epoch, last: bool) -> bool {
        last || rows >= self.rows || epoch >= since.saturating_add(self.epochs)
    }
}

/// Where pending final windows live under the state directory.
pub const PENDING: &str = "parquet-pending";

/// A worker's final windows not yet rolled into a Parquet file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingRows {
    pub since: Option<u64>,
    pub rows: Vec<AggregateRecord>,
    /// The segment file of this run holding `rows` (relative to the state
    /// directory), and its length so far.
    segment: Option<(String, u64)>,
}

impl PendingRows {
    /// Rows restored from a commit; written to a segment of this run when it first stages.
    pub fn restored(since: u64, rows: Vec<AggregateRecord>) -> Self {
        Self {
            since: (!rows.is_empty()).then_some(since),
            rows,
            segment: None,
        }
    }

    /// Appends `rows` as one frame (length, then sealed JSON) to this run's
    /// segment, durably; the first frame starts a new file named after `epoch`.
    fn write_frame(
        &mut self,
        state_dir: &Path,
        worker: u32,
        epoch: Epoch,
        rows: &[AggregateRecord],
    ) -> std::io::Result<()> {
        let body = seal(&rows);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        match &mut self.segment {
            Some((rel, len)) => {
                let mut f = File::options().append(true).open(state_dir.join(&*rel))?;
                f.write_all(&frame)?;
                f.sync_data()?;
                *len += frame.len() as u64;
            }
            None => {
                let rel = format!("{PENDING}/w{worker:04}-e{epoch:012}.rows");
                let path = state_dir.join(&rel);
                let dir = path.parent().unwrap_or(state_dir);
                fs::create_dir_all(dir)?;
                let mut f = File::create(&path)?;
                f.write_all(&frame)?;
                f.sync_all()?;
                File::open(dir)?.sync_all()?;
                self.segment = Some((rel, frame.len() as u64));
            }
        }
        Ok(())
    }

    /// Writes the restored rows to this run's segment, at its first epoch.
    fn save_restored(
        &mut self,
        state_dir: &Path,
        worker: u32,
        epoch: Epoch,
    ) -> std::io::Result<()> {
        let rows = std::mem::take(&mut self.rows);
        let written = self.write_frame(state_dir, worker, epoch, &rows);
        self.rows = rows;
        written
    }

    /// Appends epoch `epoch`'s final windows to the segment, durably.
    fn append(
        &mut self,
        state_dir: &Path,
        worker: u32,
        epoch: Epoch,
        rows: Vec<AggregateRecord>,
    ) -> std::io::Result<()> {
        self.write_frame(state_dir, worker, epoch, &rows)?;
        self.since.get_or_insert(epoch);
        self.rows.extend(rows);
        Ok(())
    }
}

/// The rows the segments of `entries` hold: the frames in each file's first
/// `bytes` bytes (a torn frame past them is a crash's, never committed).
pub fn read_pending(
    state_dir: &Path,
    entries: &[PendingEntry],
) -> Result<Vec<(PendingEntry, Vec<AggregateRecord>)>, String> {
    let mut out = Vec::new();
    for e in entries {
        let path = state_dir.join(&e.path);
        let place = |what: &str| format!("{}: {what}", path.display());
        let bytes = fs::read(&path).map_err(|err| place(&err.to_string()))?;
        let mut rest = bytes.get(..e.bytes as usize).ok_or_else(|| {
            place(&format!(
                "{} bytes, the commit names {}",
                bytes.len(),
                e.bytes
            ))
        })?;
        let mut rows = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_at_checked(4)
                .ok_or_else(|| place("a torn frame"))?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (body, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| place("a torn frame"))?;
            rows.extend(
                unseal::<Vec<AggregateRecord>>(body).map_err(|err| place(&err.to_string()))?,
            );
            rest = tail;
        }
        if rows.len() as u64 != e.rows {
            return Err(place(&format!(
                "{} pending rows, the commit names {}",
                rows.len(),
                e.rows
            )));
        }
        out.push((e.clone(), rows));
    }
    Ok(out)
}

/// The epoch a segment file name carries (`w0001-e000000000012.rows`).
fn segment_epoch(name: &str) -> Option<Epoch> {
    name.split_once("-e")?.1.split('.').next()?.parse().ok()
}

const AGGREGATES: u8 = 0;
const DEAD_LETTERS: u8 = 1;

/// One output record, staged before it is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Index into [`ExactlyOnceConfig::topics`].
    pub topic: u8,
    pub partition: i32,
    /// The publish order within (topic, partition): aggregates by key, dead
    /// letters by source position.
    pub order: (String, i32, i64),
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
    pub timestamp_ms: i64,
}

impl Outgoing {
    fn record(&self, epoch: Epoch, index: u64, job: &str) -> Record {
        let mut headers = self.headers.clone();
        headers.insert(JOB_HEADER.to_owned(), job.as_bytes().to_vec());
        headers.insert(EPOCH_HEADER.to_owned(), epoch.to_string().into_bytes());
        headers.insert(INDEX_HEADER.to_owned(), index.to_string().into_bytes());
        Record {
            key: self.key.clone(),
            value: Some(self.value.clone()),
            headers,
            timestamp: Utc
                .timestamp_millis_opt(self.timestamp_ms)
                .single()
                .unwrap_or_default(),
        }
    }
}

/// What a worker tells the committer about an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StagedMsg {
    worker: u32,
    staged: Staged,
}

fn epoch_dir(state_dir: &Path, epoch: Epoch) -> PathBuf {
    state_dir.join(EPOCHS).join(format!("{epoch:012}"))
}

fn outputs_path(state_dir: &Path, epoch: Epoch, worker: u32) -> PathBuf {
    epoch_dir(state_dir, epoch).join(format!("w{worker:04}.out"))
}

/// Where worker `worker`'s snapshot of `epoch` lives, relative to the state directory.
pub fn snapshot_path(epoch: Epoch, worker: u32) -> String {
    format!("{EPOCHS}/{epoch:012}/w{worker:04}.snap")
}

/// Epochs with a directory under `<state>/epochs`.
pub fn staged_epochs(state_dir: &Path) -> std::io::Result<BTreeSet<Epoch>> {
    let dir = state_dir.join(EPOCHS);
    let mut out = BTreeSet::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                if let Some(e) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.insert(e);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Removes what an epoch staged: its directory and its Parquet staging files.
pub fn discard_epoch(state_dir: &Path, parquet_dir: &Path, epoch: Epoch) -> std::io::Result<()> {
    match fs::remove_dir_all(epoch_dir(state_dir, epoch)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let staging = parquet_dir.join(parquet::STAGING);
    let prefix = format!("e{epoch:012}-");
    if let Ok(entries) = fs::read_dir(&staging) {
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` durably: file fsync, then its directory's.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_durably_via(path, bytes, None)
}

/// [`write_durably`], passing `halfway` once half of the bytes are written.
fn write_durably_via(path: &Path, bytes: &[u8], halfway: Option<Site>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    f.write_all(first)?;
    if let Some(site) = halfway {
        f.flush()?;
        failpoint::hit(site);
    }
    f.write_all(rest)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Removes pending segments of epochs up to `upto` that none of `kept` (the
/// latest commits, the ones recovery may still fall back to) names.
fn collect_segments(state_dir: &Path, upto: Epoch, kept: &[CommitRecord]) -> std::io::Result<()> {
    let named: BTreeSet<&str> = kept
        .iter()
        .flat_map(|c| &c.pending)
        .map(|p| p.path.as_str())
        .collect();
    let dir = state_dir.join(PENDING);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let rel = format!("{PENDING}/{name}");
        if segment_epoch(&name).is_some_and(|e| e <= upto) && !named.contains(rel.as_str()) {
            fs::remove_file(dir.join(&name))?;
        }
    }
    Ok(())
}

/// Publishing clients for the output topics, on a runtime of their own.
struct Clients {
    runtime: tokio::runtime::Runtime,
    /// `[topic index][partition]`, retrying requests: for reading tails.
    partitions: Vec<Vec<PartitionClient>>,
    /// The same partitions on a client that tries each request once: for producing.
    producers: Vec<Vec<PartitionClient>>,
    /// Where each partition's tail of this job's records stands, once read.
    tails: BTreeMap<(u8, i32), Option<TailMark>>,
    progress: Option<ProgressLog>,
    job: String,
    fresh: bool,
}

fn client_of(
    all: &[Vec<PartitionClient>],
    topic: u8,
    partition: i32,
) -> Result<&PartitionClient, String> {
    all.get(topic as usize)
        .and_then(|t| t.get(partition as usize))
        .ok_or_else(|| format!("no client for topic {topic} partition {partition}"))
}

/// How long publishing one partition's share of an epoch may keep failing
/// (e.g. through a broker restart) before the job stops.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);

impl Clients {
    fn connect(cfg: &ExactlyOnceConfig, progress: bool) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("sink runtime: {e}"))?;
        let (partitions, producers, progress) = runtime.block_on(async {
            let client = iotflow_redpanda::connect(&cfg.bootstrap, Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            let once = iotflow_redpanda::connect_once(&cfg.bootstrap)
                .await
                .map_err(|e| e.to_string())?;
            let (mut all, mut producers) = (Vec::new(), Vec::new());
            for (topic, n) in &cfg.topics {
                let (mut pcs, mut prods) = (Vec::new(), Vec::new());
                for p in 0..*n as i32 {
                    for (c, list) in [(&client, &mut pcs), (&once, &mut prods)] {
                        list.push(
                            c.partition_client(topic.as_str(), p, UnknownTopicHandling::Retry)
                                .await
                                .map_err(|e| format!("{topic}/{p}: {e}"))?,
                        );
                    }
                }
                all.push(pcs);
                producers.push(prods);
            }
            let progress = if progress {
                Some(
                    ProgressLog::open(&client, &cfg.progress_topic)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            } else {
                None
            };
            Ok::<_, String>((all, producers, progress))
        })?;
        Ok(Self {
            runtime,
            partitions,
            producers,
            tails: BTreeMap::new(),
            progress,
            job: cfg.job.clone(),
            fresh: cfg.fresh,
        })
    }

    /// Publishes `records` (one epoch's, in publish order) of each partition,
    /// skipping the prefix its tail shows is already there. A failed produce
    /// may still have stored its records, so before each retry the tail is
    /// read again: a retry never repeats what is there.
    fn publish(&mut self, epoch: Epoch, records: &[Outgoing]) -> Result<(), String> {
        let mut by_partition: BTreeMap<(u8, i32), Vec<&Outgoing>> = BTreeMap::new();
        for r in records {
            by_partition
                .entry((r.topic, r.partition))
                .or_default()
                .push(r);
        }
        let Clients {
            runtime,
            partitions,
            producers,
            tails,
            job,
            fresh,
            ..
        } = self;
        for ((topic, partition), list) in by_partition {
            let (reader, producer) = (
                client_of(partitions, topic, partition)?,
                client_of(producers, topic, partition)?,
            );
            let started = Instant::now();
            let mut backoff = Duration::from_millis(50);
            let tail = loop {
                let tail = match tails.get(&(topic, partition)) {
                    Some(t) => *t,
                    None if *fresh => None,
                    None => runtime.block_on(tail_mark(reader, job))?,
                };
                let todo = unpublished(tail, epoch, list.len() as u64);
                let batch: Vec<Record> = todo
                    .clone()
                    .map(|i| list[i as usize].record(epoch, i, job))
                    .collect();
                let produced = batch.chunks(5_000).try_for_each(|chunk| {
                    runtime
                        .block_on(producer.produce(chunk.to_vec(), Compression::NoCompression))
                        .map(|_| failpoint::hit(Site::PublishBatch))
                });
                match produced {
                    Ok(()) => break tail,
                    Err(e) if started.elapsed() < PUBLISH_DEADLINE => {
                        tracing::warn!(
                            topic = producer.topic(),
                            partition,
                            epoch,
                            error = %e,
                            "produce failed; reading the tail again before retrying"
                        );
                        tails.remove(&(topic, partition));
                        *fresh = false;
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        return Err(format!(
                            "producing to {}/{}: {e}",
                            producer.topic(),
                            producer.partition()
                        ));
                    }
                }
            };
            let last = TailMark {
                epoch,
                index: list.len() as u64 - 1,
            };
            tails.insert((topic, partition), Some(tail.map_or(last, |t| t.max(last))));
        }
        Ok(())
    }

    fn append(&self, commit: &CommitRecord) -> Result<(), String> {
        let log = self
            .progress
            .as_ref()
            .ok_or_else(|| "no progress log on this worker".to_owned())?;
        self.runtime
            .block_on(log.append(commit))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Completes the publishing of `commit` (the latest commit found at start):
/// its staged records and Parquet files, all idempotent.
pub fn finish_publishing(cfg: &ExactlyOnceConfig, commit: &CommitRecord) -> Result<(), String> {
    let mut clients = Clients::connect(cfg, false)?;
    let mut records: Vec<Outgoing> = Vec::new();
    for w in 0..commit.workers {
        let path = outputs_path(&cfg.state_dir, commit.epoch, w);
        match fs::read(&path) {
            Ok(bytes) => records.extend(
                unseal::<Vec<Outgoing>>(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            // A worker with nothing to publish in that epoch wrote no file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    let staged: u64 = records.len() as u64;
    let expected: u64 = commit.publish.iter().map(|t| t.records).sum();
    if staged != expected {
        return Err(format!(
            "epoch {}: {staged} staged records on disk, the commit names {expected}",
            commit.epoch
        ));
    }
    clients.publish(commit.epoch, &records)?;
    publish_files(cfg, &commit.files)
}

fn publish_files(cfg: &ExactlyOnceConfig, files: &[FileEntry]) -> Result<(), String> {
    let staging = cfg.parquet_dir.join(parquet::STAGING);
    for f in files {
        parquet::publish(&staging, &cfg.parquet_dir, f).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The aggregate's outgoing record.
fn aggregate_outgoing(
    r: &WindowResult,
    epoch: Epoch,
    partitions: usize,
) -> Result<Outgoing, String> {
    let (key, record) = aggregate_record(r, epoch)?;
    Ok(Outgoing {
        topic: AGGREGATES,
        partition: partition_for(key.as_bytes(), partitions.max(1)) as i32,
        order: (key, 0, 0),
        key: record.key,
        value: record.value.unwrap_or_default(),
        headers: BTreeMap::new(),
        timestamp_ms: r.window_end,
    })
}

fn dead_outgoing(d: DeadRecord, source_topic: &str, partitions: usize) -> Outgoing {
    let source = (d.record.partition, d.record.offset);
    let letter = DeadLetter {
        reason: d.reason.code(),
        source_topic: source_topic.to_owned(),
        source_partition: d.record.partition,
        source_offset: d.record.offset,
        key: d.record.key,
        payload: d.record.value.to_vec(),
    };
    let headers = letter.headers();
    Outgoing {
        topic: DEAD_LETTERS,
        partition: (source.0.unsigned_abs() as usize % partitions.max(1)) as i32,
        order: (String::new(), source.0, source.1),
        key: letter.key,
        value: letter.payload,
        headers,
        timestamp_ms: 0,
    }
}

/// Attaches the exactly-once sinks to a worker's dataflow, starting at epoch
/// `start`; `captures` are this worker's snapshots. Returns the stream of
/// published epochs (for the sources' backpressure).
#[allow(clippy::too_many_arguments)]
pub fn commit_outputs<'scope>(
    results: Stream<'scope, Epoch, Vec<WindowResult>>,
    dead: Stream<'scope, Epoch, Vec<DeadRecord>>,
    captures: Captures,
    start: Epoch,
    cfg: ExactlyOnceConfig,
    error: SinkError,
    stop: Arc<AtomicBool>,
    metrics: Arc<JobMetrics>,
    restored: PendingRows,
) -> Stream<'scope, Epoch, Vec<Epoch>> {
    let scope = results.scope();
    let (worker, workers) = (scope.index() as u32, scope.peers() as u32);
    use timely::dataflow::operators::vec::Map;
    let agg_partitions = cfg.topics[0].1;
    let dlq_partitions = cfg.topics[1].1;
    let source_topic = cfg.source_topic.clone();
    let outgoing_dead = dead.map(move |d| dead_outgoing(d, &source_topic, dlq_partitions));
    // Staged records stay in memory until published; files are for recovery.
    let held: Rc<RefCell<BTreeMap<Epoch, Vec<Outgoing>>>> = Rc::default();
    // When worker 0 began staging each epoch, for its commit latency; only
    // worker 0 commits (and takes entries out), so only it records them.
    let staging_began: Rc<RefCell<BTreeMap<Epoch, Instant>>> = Rc::default();

    // ---- Stage ----
    let mut builder = OperatorBuilder::new("Stage".to_owned(), scope);
    // Partition p of either topic is published by worker p % workers.
    let mut aggs_in = builder.new_input(
        results.clone(),
        Exchange::new(move |r: &WindowResult| {
            partition_for(aggregate_key(r).as_bytes(), agg_partitions.max(1)) as u64
        }),
    );
    let mut dead_in = builder.new_input(
        outgoing_dead,
        Exchange::new(|o: &Outgoing| o.partition as u64),
    );
    let mut finals_in = builder.new_input(results, Pipeline);
    let (staged_out, staged) = builder.new_output::<Vec<StagedMsg>>();
    let mut staged_out = OutputBuilder::from(staged_out);
    {
        let (cfg, error, stop, held, began, metrics) = (
            cfg.clone(),
            error.clone(),
            Arc::clone(&stop),
            Rc::clone(&held),
            Rc::clone(&staging_began),
            Arc::clone(&metrics),
        );
        builder.build(move |caps| {
            let mut caps = held_from(caps, start);
            let mut next = start;
            let mut outgoing: BTreeMap<Epoch, Vec<Outgoing>> = BTreeMap::new();
            let mut finals: BTreeMap<Epoch, Vec<AggregateRecord>> = BTreeMap::new();
            let mut pending = restored;
            let mut chain = Chain::default();
            move |frontiers| {
                let mut encode_error = None;
                aggs_in.for_each(|time, data| {
                    let e = epoch_of(&time);
                    let list = outgoing.entry(e).or_default();
                    for r in data.iter() {
                        match aggregate_outgoing(r, e, agg_partitions) {
                            Ok(o) => list.push(o),
                            Err(err) => encode_error = Some(err),
                        }
                    }
                });
                if let Some(e) = encode_error {
                    record_failure(&error, &stop, e);
                }
                dead_in.for_each(|time, data| {
                    outgoing.entry(epoch_of(&time)).or_default().append(data);
                });
                finals_in.for_each(|time, data| {
                    let e = epoch_of(&time);
                    finals.entry(e).or_default().extend(
                        data.iter()
                            .filter(|r| r.is_final)
                            .map(|r| AggregateRecord::of(r, e)),
                    );
                });
                while let Some([cap]) = caps.as_deref_mut() {
                    if frontiers.iter().any(|f| f.less_equal(&next)) {
                        break;
                    }
                    if stop.load(Ordering::Relaxed) {
                        caps = None;
                        break;
                    }
                    let mut records = outgoing.remove(&next).unwrap_or_default();
                    records.sort_by(|a, b| {
                        (a.topic, a.partition, &a.order).cmp(&(b.topic, b.partition, &b.order))
                    });
                    let epoch_finals = finals.remove(&next).unwrap_or_default();
                    // Nothing more will ever arrive: roll whatever is pending.
                    let last = frontiers.iter().all(|f| f.is_empty())
                        && outgoing.is_empty()
                        && finals.is_empty();
                    if worker == 0 {
                        began.borrow_mut().insert(next, Instant::now());
                    }
                    match stage(
                        &cfg,
                        next,
                        worker,
                        &records,
                        (epoch_finals, &mut pending, last),
                        (&captures, &mut chain),
                        &metrics,
                    ) {
                        Ok(staged) => {
                            failpoint::hit(Site::AfterStage);
                            held.borrow_mut().insert(next, records);
                            staged_out
                                .activate()
                                .session(&cap)
                                .give(StagedMsg { worker, staged });
                        }
                        Err(e) => {
                            record_failure(&error, &stop, format!("staging epoch {next}: {e}"));
                            caps = None;
                            break;
                        }
                    }
                    if frontiers.iter().all(|f| f.is_empty()) && outgoing.is_empty() {
                        caps = None;
                        break;
                    }
                    next += 1;
                    cap.downgrade(&next);
                }
            }
        });
    }

    // ---- Commit (worker 0) ----
    let (ack_handle, acks) = scope.feedback::<Vec<Epoch>>(1);
    let mut builder = OperatorBuilder::new("Commit".to_owned(), scope);
    let mut staged_in = builder.new_input(staged, Exchange::new(|_: &StagedMsg| 0));
    let mut acks_in = builder.new_input(acks, Exchange::new(|_: &Epoch| 0));
    // Acks only hold commits back and never lead to output: connected, acks and
    // commits would chase each other's frontiers forever.
    let (committed_out, committed) = builder.new_output_connection::<Vec<Epoch>, _>([(
        0,
        timely::progress::Antichain::from_elem(Default::default()),
    )]);
    let mut committed_out = OutputBuilder::from(committed_out);
    {
        let (cfg, error, stop) = (cfg.clone(), error.clone(), Arc::clone(&stop));
        let (began, metrics) = (staging_began, Arc::clone(&metrics));
        let built = Instant::now();
        builder.build(move |caps| {
            let mut caps = held_from(caps, start);
            let mut next = start;
            let mut pending: BTreeMap<Epoch, Vec<StagedMsg>> = BTreeMap::new();
            let mut clients: Option<Clients> = None;
            let mut kept: std::collections::VecDeque<CommitRecord> = Default::default();
            move |frontiers| {
                staged_in.for_each(|time, data| {
                    pending.entry(epoch_of(&time)).or_default().append(data)
                });
                acks_in.for_each(|_, _| {});
                while let Some([cap]) = caps.as_deref_mut() {
                    // Epoch e commits once all of it is staged and e − 1 is published
                    // (acks of e − 1 arrive at e).
                    if frontiers.iter().any(|f| f.less_equal(&next)) {
                        break;
                    }
                    if stop.load(Ordering::Relaxed) {
                        caps = None;
                        break;
                    }
                    let msgs = pending.remove(&next).unwrap_or_default();
                    if worker == 0 && msgs.len() != workers as usize {
                        // A worker only skips staging when it stops (its own error or
                        // a stop anywhere in the job): this epoch never commits.
                        tracing::warn!(
                            epoch = next,
                            staged = msgs.len(),
                            "not every worker staged; stopping commits"
                        );
                        caps = None;
                        break;
                    }
                    if worker == 0 {
                        let result = (|| {
                            let mut staging = EpochStaging::new(next, workers);
                            for m in msgs {
                                staging
                                    .stage(m.worker, m.staged)
                                    .map_err(|e| e.to_string())?;
                            }
                            let commit = staging
                                .commit(&cfg.job, cfg.generation)
                                .ok_or_else(|| format!("epoch {next}: not every worker staged"))?;
                            if clients.is_none() {
                                clients = Some(Clients::connect(&cfg, true)?);
                            }
                            let Some(c) = clients.as_ref() else {
                                return Err("no clients".to_owned());
                            };
                            failpoint::hit(Site::BeforeCommit);
                            c.append(&commit)?;
                            failpoint::hit(Site::AfterCommit);
                            let began = began.borrow_mut().remove(&next);
                            metrics.observe_commit(
                                next,
                                began.map_or(Duration::ZERO, |b| b.elapsed()),
                            );
                            if metrics.commits.load(Ordering::Relaxed) == 1 {
                                tracing::info!(
                                    epoch = next,
                                    after_ms = built.elapsed().as_millis() as u64,
                                    "first commit of this run"
                                );
                            }
                            tracing::debug!(
                                epoch = next,
                                generation = cfg.generation,
                                offsets = ?commit.source_offsets,
                                "committed"
                            );
                            publish_files(&cfg, &commit.files)?;
                            // Older epochs are published: keep the last few for fallback.
                            kept.push_back(commit);
                            if kept.len() > KEPT_COMMITS as usize {
                                kept.pop_front();
                            }
                            if kept.len() == KEPT_COMMITS as usize {
                                collect_segments(&cfg.state_dir, next, kept.make_contiguous())
                                    .map_err(|e| format!("{PENDING}: {e}"))?;
                            }
                            // Only with KEPT_COMMITS of this run in view: a restart's
                            // first snapshot is whole, so their chains start in this run.
                            let oldest_base = kept
                                .iter()
                                .flat_map(|c| &c.snapshots)
                                .map(|s| s.base)
                                .min()
                                .filter(|_| kept.len() == KEPT_COMMITS as usize)
                                .unwrap_or(0);
                            if let Some(old) = next
                                .checked_sub(KEPT_COMMITS)
                                .map(|old| old.min(oldest_base.saturating_sub(1)))
                                .filter(|_| oldest_base > 0)
                            {
                                for e in staged_epochs(&cfg.state_dir)
                                    .map_err(|e| e.to_string())?
                                    .range(..=old)
                                {
                                    discard_epoch(&cfg.state_dir, &cfg.parquet_dir, *e)
                                        .map_err(|e| e.to_string())?;
                                }
                            }
                            Ok::<_, String>(())
                        })();
                        if let Err(e) = result {
                            record_failure(&error, &stop, format!("committing epoch {next}: {e}"));
                            caps = None;
                            break;
                        }
                        committed_out.activate().session(&cap).give(next);
                    }
                    if frontiers[0].is_empty() && pending.is_empty() {
                        caps = None;
                        break;
                    }
                    next += 1;
                    cap.downgrade(&next);
                }
            }
        });
    }

    // ---- Publish ----
    let mut builder = OperatorBuilder::new("Publish".to_owned(), scope);
    let mut committed_in = builder.new_input(committed.broadcast(), Pipeline);
    let (acks_out, acks) = builder.new_output::<Vec<Epoch>>();
    let mut acks_out = OutputBuilder::from(acks_out);
    {
        builder.build(move |caps| {
            let mut caps = held_from(caps, start);
            let mut clients: Option<Clients> = None;
            let mut todo: BTreeMap<Epoch, ()> = BTreeMap::new();
            move |frontiers| {
                committed_in.for_each(|_, data| {
                    for e in data.drain(..) {
                        todo.insert(e, ());
                    }
                });
                let Some([cap]) = caps.as_deref_mut() else {
                    return;
                };
                while let Some((&epoch, ())) = todo.first_key_value() {
                    if stop.load(Ordering::Relaxed) {
                        caps = None;
                        return;
                    }
                    todo.remove(&epoch);
                    let records = held.borrow_mut().remove(&epoch).unwrap_or_default();
                    // Everything older was committed (and so published) before.
                    held.borrow_mut().retain(|e, _| *e > epoch);
                    if !records.is_empty() {
                        if clients.is_none() {
                            match Clients::connect(&cfg, false) {
                                Ok(c) => clients = Some(c),
                                Err(e) => {
                                    record_failure(&error, &stop, e);
                                    caps = None;
                                    return;
                                }
                            }
                        }
                        if let Some(c) = clients.as_mut()
                            && let Err(e) = c.publish(epoch, &records)
                        {
                            record_failure(&error, &stop, format!("publishing epoch {epoch}: {e}"));
                            caps = None;
                            return;
                        }
                    }
                    // The ack is stamped with its epoch; the commit of epoch + 1 waits for it.
                    let at = cap.delayed(&epoch.max(*cap.time()));
                    acks_out.activate().session(&at).give(epoch);
                }
                match frontiers[0].frontier().first() {
                    Some(f) => {
                        let to = (*f).max(*cap.time());
                        cap.downgrade(&to);
                    }
                    None => caps = None,
                }
            }
        });
    }
    acks.clone().connect_loop(ack_handle);
    acks
}

/// Writes one worker's share of epoch `epoch` durably and says what it wrote.
fn stage(
    cfg: &ExactlyOnceConfig,
    epoch: Epoch,
    worker: u32,
    records: &[Outgoing],
    (finals, pending, last): (Vec<AggregateRecord>, &mut PendingRows, bool),
    (captures, chain): (&Captures, &mut Chain),
    metrics: &JobMetrics,
) -> Result<Staged, String> {
    let mut snapshot = captures
        .borrow_mut()
        .take(epoch)
        .ok_or_else(|| format!("no snapshot of epoch {epoch} on worker {worker}"))?;
    if snapshot.previous.is_some() {
        let Some(last) = chain.last.filter(|l| l.epoch + 1 == epoch) else {
            return Err(format!(
                "worker {worker}: no snapshot of epoch {} to chain to",
                epoch.saturating_sub(1)
            ));
        };
        snapshot.previous = Some(last);
        if chain.delta_bytes >= chain.base_bytes.max(cfg.fold_bytes) {
            let mut whole = load_chain(&cfg.state_dir, worker, last)?;
            whole.push(snapshot);
            snapshot = materialize(whole, cfg.close_at()).map_err(|e| e.to_string())?;
        }
    }
    let mut staged = Staged::default();
    for r in &snapshot.reports {
        staged.source_offsets.insert(r.partition, r.next_offset);
    }
    if !records.is_empty() {
        let path = outputs_path(&cfg.state_dir, epoch, worker);
        write_durably(&path, &seal(&records)).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut by_partition: BTreeMap<(u8, i32), (u64, crc32fast::Hasher)> = BTreeMap::new();
        for r in records {
            let (n, h) = by_partition.entry((r.topic, r.partition)).or_default();
            *n += 1;
            h.update(&r.value);
        }
        for ((topic, partition), (n, h)) in by_partition {
            staged.publish.push(PublishTarget {
                topic: cfg.topics[topic as usize].0.clone(),
                partition,
                records: n,
                checksum: h.finalize(),
            });
        }
    }
    let segment_err = |e: std::io::Error| format!("{PENDING} of epoch {epoch}: {e}");
    if pending.segment.is_none() && !pending.rows.is_empty() {
        // Restored rows: this run's own segment for them.
        pending
            .save_restored(&cfg.state_dir, worker, epoch)
            .map_err(segment_err)?;
    }
    let finals: Vec<AggregateRecord> = finals.into_iter().filter(|r| r.is_final).collect();
    if !finals.is_empty() {
        pending
            .append(&cfg.state_dir, worker, epoch, finals)
            .map_err(segment_err)?;
    }
    if let Some(since) = pending.since
        && cfg.roll.due(since, pending.rows.len() as u64, epoch, last)
    {
        let staging = cfg.parquet_dir.join(parquet::STAGING);
        staged.files = parquet::stage_rows(&staging, epoch, since, worker, &pending.rows)
            .map_err(|e| e.to_string())?;
        *pending = PendingRows::default();
    }
    staged.pending = pending
        .since
        .zip(pending.segment.clone())
        .map(|(since, (path, bytes))| PendingEntry {
            worker,
            since,
            rows: pending.rows.len() as u64,
            path,
            bytes,
        });
    let bytes = snapshot.encode();
    metrics
        .snapshot_bytes_last
        .store(bytes.len() as u64, Ordering::Relaxed);
    let link = Link {
        epoch,
        bytes: bytes.len() as u64,
        checksum: crc32fast::hash(&bytes),
    };
    let rel = snapshot_path(epoch, worker);
    write_durably_via(&cfg.state_dir.join(&rel), &bytes, Some(Site::MidSnapshot))
        .map_err(|e| format!("{rel}: {e}"))?;
    if snapshot.previous.is_none() {
        (chain.base, chain.base_bytes, chain.delta_bytes) = (epoch, link.bytes, 0);
    } else {
        chain.delta_bytes += link.bytes;
    }
    chain.last = Some(link);
    staged.snapshot = Some(SnapshotEntry {
        worker,
        path: rel,
        bytes: link.bytes,
        checksum: link.checksum,
        base: chain.base,
    });
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roll_is_due_at_the_row_limit_the_age_limit_or_the_end() {
        let roll = Roll {
            rows: 100,
            epochs: 10,
        };
        assert!(!roll.due(5, 99, 14, false));
        assert!(roll.due(5, 100, 6, false), "rows");
        assert!(roll.due(5, 1, 15, false), "age");
        assert!(roll.due(5, 1, 6, true), "end of input");
    }

    fn row(device: &str) -> AggregateRecord {
        AggregateRecord {
            device_id: device.into(),
            metric: "t".into(),
            window_start: 0,
            window_end: 10,
            count: 1,
            sum: 1.0,
            min: 1.0,
            max: 1.0,
            mean: 1.0,
            stddev: 0.0,
            first_ts: 1,
            last_ts: 1,
            is_final: true,
            epoch: 3,
        }
    }

    #[test]
    fn pending_rows_are_the_committed_frames_of_their_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut pending = PendingRows::restored(2, vec![row("a")]);
        pending.save_restored(dir.path(), 1, 5).unwrap();
        pending
            .append(dir.path(), 1, 5, vec![row("b"), row("c")])
            .unwrap();
        let (path, bytes) = pending.segment.clone().unwrap();
        let entry = PendingEntry {
            worker: 1,
            since: 2,
            rows: 3,
            path: path.clone(),
            bytes,
        };
        let read = read_pending(dir.path(), std::slice::from_ref(&entry)).unwrap();
        assert_eq!(read[0].1, vec![row("a"), row("b"), row("c")]);
        // A crash's torn frame past the committed length is not read.
        pending.append(dir.path(), 1, 6, vec![row("d")]).unwrap();
        let file = dir.path().join(&path);
        let full = fs::read(&file).unwrap();
        fs::write(&file, &full[..full.len() - 3]).unwrap();
        assert_eq!(
            read_pending(dir.path(), std::slice::from_ref(&entry)).unwrap()[0]
                .1
                .len(),
            3
        );
        // Within the committed length, damage and miscounts are refused.
        let short = PendingEntry {
            bytes: bytes - 1,
            ..entry.clone()
        };
        assert!(read_pending(dir.path(), &[short]).is_err());
        let miscounted = PendingEntry {
            rows: 4,
            ..entry.clone()
        };
        assert!(read_pending(dir.path(), &[miscounted]).is_err());
        let mut flipped = full.clone();
        flipped[10] ^= 1;
        fs::write(&file, &flipped).unwrap();
        assert!(read_pending(dir.path(), &[entry]).is_err());
    }

    #[test]
    fn segment_names_carry_their_epoch() {
        assert_eq!(segment_epoch("w0001-e000000000012.rows"), Some(12));
        assert_eq!(segment_epoch("w0000-e000000000003.tmp"), Some(3));
        assert_eq!(segment_epoch("LOCK"), None);
    }
}
