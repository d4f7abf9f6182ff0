//! Sources that cut their input into epochs by position, not by time.
//!
//! ```text
//!   OwnedInput { per_epoch } ──ordinal / per_epoch = epoch──▶ SourceEvent::Record@epoch
//!   every owned input done with epoch e ──▶ SourceEvent::Status per input @e ──▶ next epoch
//! ```
//!
//! An input is a whole partition (ordinal = position in the partition,
//! `per_epoch` records) or one worker's share of a file (ordinal = byte offset
//! of the line, `per_epoch` bytes; share w of epoch e is the w-th slice of the
//! epoch's byte range). Either way epoch boundaries depend only on the data, so
//! results do not depend on how many workers read it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::iter::Peekable;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::job::{Backpressure, Epoch, LineBatch, PartitionStatus, RawRecord, SourceEvent};
use crate::watermark::ShareState;

/// Records handed to the source per activation, so other operators get to run.
const BATCH: usize = 2_048;
/// Lines per [`LineBatch`] of a file input.
const LINES_PER_BATCH: usize = 512;
/// How soon a source held back by backpressure looks again.
pub(crate) const GATE_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// What an input yields: one record, or a batch of lines that all lie in the
/// epoch of the first (its ordinal).
#[derive(Debug)]
pub enum Piece {
    Record(RawRecord),
    Lines(LineBatch),
    /// A Parquet file's rows.
    Rows(crate::parquet_file::RowBatch),
}

/// One input owned by this worker.
pub struct OwnedInput {
    pub partition: i32,
    pub share: u32,
    pub shares: u32,
    /// Ordinal units per epoch: records for partitions, bytes for files.
    pub per_epoch: u64,
    /// `(ordinal, piece)` in ordinal order.
    pub records: Box<dyn Iterator<Item = (u64, Piece)>>,
}

impl std::fmt::Debug for OwnedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedInput")
            .field("partition", &self.partition)
            .field("share", &self.share)
            .field("shares", &self.shares)
            .field("per_epoch", &self.per_epoch)
            .finish_non_exhaustive()
    }
}

struct Cursor {
    partition: i32,
    share: u32,
    shares: u32,
    per_epoch: u64,
    records: Peekable<Box<dyn Iterator<Item = (u64, Piece)>>>,
    next_offset: i64,
}

impl Cursor {
    fn epoch_of(&self, ordinal: u64) -> Epoch {
        ordinal / self.per_epoch.max(1)
    }
}

/// A source over `inputs`, each cutting epochs by its own `per_epoch`.
pub fn chunked_source<'scope>(
    scope: Scope<'scope, Epoch>,
    inputs: Vec<OwnedInput>,
    gate: Backpressure,
) -> Stream<'scope, Epoch, Vec<SourceEvent>> {
    source(scope, "ChunkedSource", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut epoch: Epoch = 0;
        let mut cursors: Vec<Cursor> = inputs
            .into_iter()
            .map(|i| Cursor {
                partition: i.partition,
                share: i.share,
                shares: i.shares,
                per_epoch: i.per_epoch,
                records: i.records.peekable(),
                next_offset: 0,
            })
            .collect();
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            if cursors.is_empty() {
                cap = None;
                return;
            }
            if !gate.admits(epoch) {
                activator.activate_after(GATE_RETRY);
                return;
            }
            let mut budget = BATCH;
            {
                let mut session = output.session(c);
                for cur in cursors.iter_mut() {
                    let per = cur.per_epoch.max(1);
                    while budget > 0 {
                        match cur.records.next_if(|(ord, _)| ord / per <= epoch) {
                            Some((_, Piece::Record(rec))) => {
                                cur.next_offset = rec.offset + 1;
                                session.give(SourceEvent::Record(rec));
                                budget -= 1;
                            }
                            Some((_, Piece::Lines(lines))) => {
                                if let Some(last) = lines.last_offset() {
                                    cur.next_offset = last + 1;
                                }
                                budget = budget.saturating_sub(lines.spans.len());
                                session.give(SourceEvent::Lines(lines));
                            }
                            Some((_, Piece::Rows(rows))) => {
                                cur.next_offset = rows.base + rows.len() as i64;
                                budget = budget.saturating_sub(rows.len());
                                session.give(SourceEvent::Rows(rows));
                            }
                            None => break,
                        }
                    }
                }
            }
            let epoch_done = cursors.iter_mut().all(|cur| {
                let next = cur.records.peek().map(|(ord, _)| *ord);
                next.is_none_or(|ord| cur.epoch_of(ord) > epoch)
            });
            if epoch_done {
                let mut finished = true;
                let mut session = output.session(c);
                for cur in cursors.iter_mut() {
                    let exhausted = cur.records.peek().is_none();
                    finished &= exhausted;
                    session.give(SourceEvent::Status(PartitionStatus {
                        partition: cur.partition,
                        share: cur.share,
                        shares: cur.shares,
                        state: if exhausted {
                            ShareState::Finished
                        } else {
                            ShareState::Active
                        },
                        next_offset: cur.next_offset,
                    }));
                }
                drop(session);
                if finished {
                    cap = None;
                    return;
                }
                epoch += 1;
                c.downgrade(&epoch);
            }
            activator.activate();
        }
    })
}

/// The first I/O error a file input hit, if any (the iterator just ends there).
pub type InputError = Arc<Mutex<Option<(PathBuf, std::io::Error)>>>;

/// This worker's share of a JSON-lines file, as partition 0 with offset = the
/// line's byte offset. Epoch e covers lines starting in `[e·B, (e+1)·B)`; share
/// w of `shares` takes the lines starting in the w-th slice of that range and
/// reads only those bytes (plus the tail of its last line). Blank lines are skipped.
pub fn jsonl_share(
    path: &Path,
    share: u32,
    shares: u32,
    epoch_bytes: u64,
    error: InputError,
) -> std::io::Result<OwnedInput> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader = ShareReader {
        file,
        size,
        epoch_bytes: epoch_bytes.max(1),
        share: u64::from(share),
        shares: u64::from(shares.max(1)),
        epoch: 0,
        buf: Bytes::new(),
        base: 0,
        pos: 0,
    };
    let path = path.to_owned();
    let iter = std::iter::from_fn(move || match reader.next_batch() {
        Ok(batch) => batch.map(|(ord, lines)| (ord, Piece::Lines(lines))),
        Err(e) => {
            if let Ok(mut slot) = error.lock() {
                slot.get_or_insert((path.clone(), e));
            }
            None
        }
    });
    Ok(OwnedInput {
        partition: 0,
        share,
        shares,
        per_epoch: epoch_bytes.max(1),
        records: Box::new(iter),
    })
}

struct ShareReader {
    file: File,
    size: u64,
    epoch_bytes: u64,
    share: u64,
    shares: u64,
    epoch: u64,
    buf: Bytes,
    /// File offset of `buf[0]`.
    base: u64,
    pos: usize,
}

impl ShareReader {
    /// Up to [`LINES_PER_BATCH`] lines of the loaded slice (so of one epoch),
    /// and the ordinal (byte offset) of the first.
    fn next_batch(&mut self) -> std::io::Result<Option<(u64, LineBatch)>> {
        loop {
            let mut spans = Vec::with_capacity(LINES_PER_BATCH);
            let buf = &self.buf[..];
            // One vectorised scan over the rest of the slice, not a search per line.
            let mut newlines = memchr::memchr_iter(b'\n', buf.get(self.pos..).unwrap_or_default());
            let from = self.pos;
            while self.pos < buf.len() && spans.len() < LINES_PER_BATCH {
                let start = self.pos;
                let line_end = newlines.next().map_or(buf.len(), |i| from + i);
                self.pos = line_end + 1;
                let mut end = line_end;
                while end > start && buf[end - 1] == b'\r' {
                    end -= 1;
                }
                // Only the first byte of a record: a blank line is rare, a full scan is not free.
                if buf[start..end].first().is_none_or(u8::is_ascii_whitespace)
                    && buf[start..end].iter().all(u8::is_ascii_whitespace)
                {
                    continue;
                }
                // `load_next_range` keeps buffers below 4 GiB.
                spans.push((start as u32, end as u32));
            }
            if let Some(&(first, _)) = spans.first() {
                let batch = LineBatch {
                    partition: 0,
                    base: self.base as i64,
                    buf: self.buf.clone(),
                    spans,
                    numbered: false,
                };
                return Ok(Some((self.base + u64::from(first), batch)));
            }
            if !self.load_next_range()? {
                return Ok(None);
            }
        }
    }

    /// Loads the lines starting in this share's slice of the next epoch with any.
    fn load_next_range(&mut self) -> std::io::Result<bool> {
        loop {
            let epoch_start = self.epoch * self.epoch_bytes;
            if epoch_start >= self.size {
                return Ok(false);
            }
            let slice = self.epoch_bytes / self.shares;
            let start = epoch_start + self.share * slice;
            let end = if self.share + 1 == self.shares {
                epoch_start + self.epoch_bytes
            } else {
                start + slice
            }
            .min(self.size);
            self.epoch += 1;
            if start >= end {
                continue;
            }
            // A line that began before `start` belongs to the previous slice.
            let mut skip_first = false;
            if start > 0 {
                let mut prev = [0u8; 1];
                self.file.read_exact_at(&mut prev, start - 1)?;
                skip_first = prev[0] != b'\n';
            }
            // Read into spare capacity: zeroing megabytes first costs as much as a parse step.
            let mut buf = Vec::with_capacity((end - start) as usize + 4096);
            (&self.file).seek(SeekFrom::Start(start))?;
            (&self.file).take(end - start).read_to_end(&mut buf)?;
            if (buf.len() as u64) < end - start {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            // Finish the last line that starts before `end`.
            let mut at = end;
            while at < self.size && buf.last().is_some_and(|b| *b != b'\n') {
                let mut more = vec![0u8; (64 * 1024).min((self.size - at) as usize)];
                self.file.read_exact_at(&mut more, at)?;
                at += more.len() as u64;
                match more.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        buf.extend_from_slice(&more[..=i]);
                        break;
                    }
                    None => buf.extend_from_slice(&more),
                }
            }
            let first = if skip_first {
                match buf.iter().position(|b| *b == b'\n') {
                    Some(i) if (start + i as u64 + 1) < end => i + 1,
                    _ => continue, // no line starts in this slice
                }
            } else {
                0
            };
            if u32::try_from(buf.len()).is_err() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "a slice of {} bytes from offset {start}: lines or epochs too long (at most 4 GiB)",
                        buf.len()
                    ),
                ));
            }
            self.buf = Bytes::from(buf);
            self.base = start;
            self.pos = first;
            return Ok(true);
        }
    }
}

/// In-memory partitions (tests, replay) with epochs of `epoch_records`:
/// partition `p` goes to worker `p % peers`.
pub fn memory_inputs(
    partitions: &[(i32, Vec<RawRecord>)],
    epoch_records: u64,
    worker: usize,
    peers: usize,
) -> Vec<OwnedInput> {
    partitions
        .iter()
        .filter(|(p, _)| (*p as usize) % peers.max(1) == worker)
        .map(|(p, records)| OwnedInput {
            partition: *p,
            share: 0,
            shares: 1,
            per_epoch: epoch_records.max(1),
            records: Box::new(
                records
                    .clone()
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (i as u64, Piece::Record(r))),
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines_of(path: &Path, shares: u32, epoch_bytes: u64) -> Vec<(u64, u64, Vec<u8>)> {
        let mut all = Vec::new();
        for s in 0..shares {
            let input = jsonl_share(path, s, shares, epoch_bytes, InputError::default()).unwrap();
            let per = input.per_epoch;
            for (ord, piece) in input.records {
                let Piece::Lines(lines) = piece else {
                    panic!("a file input yields line batches")
                };
                for r in lines.records() {
                    let o = r.offset as u64;
                    // Every line of a batch is in the epoch of its first.
                    assert_eq!(o / per, ord / per);
                    all.push((o / per, o, r.value.to_vec()));
                }
            }
        }
        all.sort();
        all
    }

    #[test]
    fn shares_partition_the_lines_exactly_once_with_the_same_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut f = File::create(&path).unwrap();
        let mut want = Vec::new();
        let mut offset = 0u64;
        for i in 0..500 {
            // Lines of varied length, a blank line and a CRLF now and then.
            let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 37));
            let ending = if i % 50 == 0 { "\r\n" } else { "\n" };
            write!(f, "{line}{ending}").unwrap();
            want.push((offset, line.into_bytes()));
            offset += (want.last().unwrap().1.len() + ending.len()) as u64;
            if i % 97 == 0 {
                writeln!(f, "   ").unwrap();
                offset += 4;
            }
        }
        write!(f, "{{\"last\":true}}").unwrap(); // no trailing newline
        want.push((offset, b"{\"last\":true}".to_vec()));
        drop(f);
        for epoch_bytes in [7, 100, 1_000, 1 << 20] {
            let one = lines_of(&path, 1, epoch_bytes);
            let got: Vec<(u64, Vec<u8>)> = one.iter().map(|(_, o, l)| (*o, l.clone())).collect();
            assert_eq!(got, want, "epoch_bytes {epoch_bytes}");
            for shares in [2, 3, 8] {
                assert_eq!(
                    lines_of(&path, shares, epoch_bytes),
                    one,
                    "{shares} shares, epoch_bytes {epoch_bytes}"
                );
            }
        }
    }
}
