//! Final windows waiting for their Parquet roll, on disk only.
//!
//! ```text
//!   epoch e's final rows of dataset d ──frame (len, bincode packed with LZ4, CRC-32), fsync──▶
//!       <state>/parquet-pending/<d>/w<worker>-e<first epoch>.frames
//!   (`.rows`: an older binary's segment, windows only; it and older
//!    `.frames` hold plain frames, read as today's)
//!   commit record: PendingEntry { dataset, since, rows, path, bytes = committed length }
//!   roll due (rows, bytes, age, end) ──read the committed frames back──▶ one Parquet file
//! ```
//!
//! The rows live in the segment, not in memory as well: a worker holds only
//! the counts, so memory does not grow with the roll size.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use iotflow_dataflow::job::Epoch;
use iotflow_dataflow::sealed::{checked_body, codec, unpacked, write_packed_with_checksum};

use crate::durable;
use crate::error::SinkError;
use crate::protocol::PendingEntry;
use crate::shape::Row;

/// Where pending final windows live under the state directory.
pub const PENDING: &str = "parquet-pending";

/// Plain bytes of a frame per LZ4 block.
const FRAME_BLOCK: usize = 256 * 1024;

/// When a worker's final windows go from segments into a Parquet file: at
/// `rows` pending rows, `bytes` bytes of them (plain bincode, however framed
/// and packed: a replay frames them otherwise), `epochs` epochs after
/// the oldest, or at the end of the input. All count data and epochs, never
/// time, so a replay rolls the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roll {
    pub rows: u64,
    pub bytes: u64,
    pub epochs: u64,
}

impl Roll {
    /// Whether `pending` rolls at `epoch` (`last`: the input ended).
    pub fn due(&self, pending: &PendingRows, epoch: Epoch, last: bool) -> bool {
        let Some(since) = pending.since else {
            return false;
        };
        last || pending.rows >= self.rows
            || pending.bytes() >= self.bytes
            || epoch >= since.saturating_add(self.epochs)
    }
}

/// One worker's final windows of one dataset not yet rolled into a Parquet file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingRows {
    pub since: Option<Epoch>,
    pub rows: u64,
    /// Restored rows (recovery), written to this run's segment at its first stage.
    restored: Vec<Row>,
    /// This run's segment (relative to the state directory) and its length.
    segment: Option<(String, u64)>,
    /// The written rows' plain bincode bytes (see [`Self::bytes`]).
    plain: u64,
}

/// The rows of one frame, as stored.
#[derive(Deserialize)]
struct Frame(Vec<Row>);

/// [`Frame`] as written, borrowing the rows: the same bytes, no copy of them.
#[derive(Serialize)]
struct FrameOf<'a>(&'a [Row]);

/// A frame of an older binary's `.rows` segment: aggregates only.
#[derive(Deserialize)]
struct WindowFrame(Vec<crate::shape::AggregateRow>);

impl PendingRows {
    /// Rows restored from a commit; written to a segment of this run when it first stages.
    pub fn restored(since: Epoch, rows: Vec<Row>) -> Self {
        Self {
            since: (!rows.is_empty()).then_some(since),
            rows: rows.len() as u64,
            restored: rows,
            segment: None,
            plain: 0,
        }
    }

    /// The rows' bytes in plain bincode, written so far: what the roll's
    /// byte limit counts. Not the segment's length: packing depends on how
    /// rows are framed, and a restart writes its restored rows as one frame,
    /// so a replay must not roll at another epoch than the run it replays.
    pub fn bytes(&self) -> u64 {
        self.plain
    }

    /// Appends epoch `epoch`'s final rows to this run's segment, durably (a
    /// restored batch first). The first frame starts a new file named after `epoch`.
    pub fn append(
        &mut self,
        state_dir: &Path,
        dir: &str,
        worker: u32,
        epoch: Epoch,
        rows: &[Row],
    ) -> Result<(), SinkError> {
        if !self.restored.is_empty() {
            let restored = std::mem::take(&mut self.restored);
            self.write_frame(state_dir, dir, worker, epoch, &restored)?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.write_frame(state_dir, dir, worker, epoch, rows)?;
        self.since.get_or_insert(epoch);
        self.rows += rows.len() as u64;
        Ok(())
    }

    fn write_frame(
        &mut self,
        state_dir: &Path,
        dir: &str,
        worker: u32,
        epoch: Epoch,
        rows: &[Row],
    ) -> Result<(), SinkError> {
        // Packed like staged outputs: the segment is synced every epoch.
        use bincode::Options;
        let encode = |e: bincode::Error| SinkError::Encode {
            what: "pending rows".into(),
            detail: e.to_string(),
        };
        let mut body = Vec::new();
        let packed =
            write_packed_with_checksum(&mut body, &FrameOf(rows), FRAME_BLOCK).map_err(encode)?;
        // The rows alone: less the frame's count of them.
        let count = codec()
            .serialized_size(&(rows.len() as u64))
            .map_err(encode)?;
        let plain = packed.plain.saturating_sub(count);
        // The length, then the body: two writes, not a copy of the body.
        let prefix = (body.len() as u32).to_be_bytes();
        let frame_len = (prefix.len() + body.len()) as u64;
        let write_frame = |f: &mut File| f.write_all(&prefix).and_then(|()| f.write_all(&body));
        match &mut self.segment {
            Some((rel, len)) => {
                let path = state_dir.join(&*rel);
                let write = |f: &mut File| write_frame(f).and_then(|()| f.sync_data());
                File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| write(&mut f))
                    .map_err(SinkError::io("appending to", &path))?;
                *len += frame_len;
            }
            None => {
                let rel = format!("{PENDING}/{dir}/w{worker:04}-e{epoch:012}.frames");
                let path = state_dir.join(&rel);
                let parent = durable::parent_of(&path);
                durable::create_dir_all(parent).map_err(SinkError::io("creating", parent))?;
                File::create(&path)
                    .and_then(|mut f| write_frame(&mut f).and_then(|()| f.sync_all()))
                    .map_err(SinkError::io("writing", &path))?;
                durable::sync_dir(parent).map_err(SinkError::io("syncing", parent))?;
                self.segment = Some((rel, frame_len));
            }
        }
        self.plain += plain;
        Ok(())
    }

    /// What the commit record names: the segment's committed length and rows.
    pub fn entry(&self, dataset: &str, worker: u32) -> Option<PendingEntry> {
        let since = self.since?;
        let (path, bytes) = self.segment.clone()?;
        Some(PendingEntry {
            dataset: dataset.to_owned(),
            worker,
            since,
            rows: self.rows,
            path,
            bytes,
        })
    }

    /// Reads this run's pending rows back for a roll and starts afresh.
    pub fn take(
        &mut self,
        state_dir: &Path,
        dataset: &str,
        worker: u32,
    ) -> Result<Vec<Row>, SinkError> {
        let rows = match self.entry(dataset, worker) {
            Some(entry) => read_segment(state_dir, &entry)?,
            None => std::mem::take(&mut self.restored),
        };
        *self = Self::default();
        Ok(rows)
    }
}

/// The rows segment `entry` holds: the frames in its first `bytes` bytes (a
/// torn frame past them is a crash's, never committed), as many as it names.
pub fn read_segment(state_dir: &Path, entry: &PendingEntry) -> Result<Vec<Row>, SinkError> {
    let path = state_dir.join(&entry.path);
    let bytes = fs::read(&path).map_err(SinkError::io("reading", &path))?;
    decode_segment(&bytes, entry).map_err(|problem| SinkError::Damaged { path, problem })
}

/// The rows of a segment's bytes, as [`read_segment`] reads them; what is
/// damaged, otherwise.
pub fn decode_segment(bytes: &[u8], entry: &PendingEntry) -> Result<Vec<Row>, String> {
    use bincode::Options;
    let mut rest = bytes
        .get(..entry.bytes as usize)
        .ok_or_else(|| format!("{} bytes, the commit names {}", bytes.len(), entry.bytes))?;
    // Reserved for at most a row per byte read, so a damaged count cannot
    // reserve more (packed rows can take less: then the vector grows).
    let mut rows = Vec::with_capacity(entry.rows.min(rest.len() as u64) as usize);
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_at_checked(4)
            .ok_or_else(|| "a torn frame".to_owned())?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (body, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| "a torn frame".to_owned())?;
        let body = checked_body(body)
            .and_then(unpacked)
            .map_err(|e| e.to_string())?;
        match entry.path.ends_with(".rows") {
            true => {
                let WindowFrame(frame) = codec().deserialize(&body).map_err(|e| e.to_string())?;
                rows.extend(frame.into_iter().map(Row::Window));
            }
            false => {
                let Frame(frame) = codec().deserialize(&body).map_err(|e| e.to_string())?;
                rows.extend(frame);
            }
        }
        rest = tail;
    }
    if rows.len() as u64 != entry.rows {
        return Err(format!(
            "{} pending rows, the commit names {}",
            rows.len(),
            entry.rows
        ));
    }
    Ok(rows)
}

/// The epoch a segment file name carries (`w0001-e000000000012.frames`).
pub fn segment_epoch(name: &str) -> Option<Epoch> {
    name.split_once("-e")?.1.split('.').next()?.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(device: &str) -> Row {
        let stats = iotflow_dataflow::Stats {
            count: 1,
            sum: 1.0,
            min: 1.0,
            max: 1.0,
            mean: 1.0,
            stddev: 0.0,
            first_ts: 1,
            last_ts: 1,
        };
        let r = iotflow_dataflow::WindowResult::new(device, "t", 0, 10, stats, true);
        Row::Window(crate::shape::AggregateRow::of(&r, 3))
    }

    #[test]
    fn a_roll_is_due_at_the_row_byte_or_age_limit_or_the_end() {
        let roll = Roll {
            rows: 100,
            bytes: 1_000,
            epochs: 10,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut p = PendingRows::default();
        assert!(!roll.due(&p, 50, true), "nothing pending");
        p.append(dir.path(), "d", 0, 5, &[row("a")]).unwrap();
        assert!(!roll.due(&p, 14, false));
        assert!(roll.due(&p, 15, false), "age");
        assert!(roll.due(&p, 6, true), "end of input");
        p.rows = 100;
        assert!(roll.due(&p, 6, false), "rows");
        p.rows = 1;
        let big: Vec<_> = (0..400).map(|i| row(&format!("device-{i:04}"))).collect();
        p.append(dir.path(), "d", 0, 6, &big).unwrap();
        assert!(p.bytes() >= 1_000 && roll.due(&p, 7, false), "bytes");
    }

    #[test]
    fn pending_rows_are_the_committed_frames_of_their_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut pending = PendingRows::restored(2, vec![row("a")]);
        pending
            .append(dir.path(), "aggregates", 1, 5, &[row("b"), row("c")])
            .unwrap();
        let entry = pending.entry("aggregates", 1).unwrap();
        assert_eq!((entry.since, entry.rows), (2, 3));
        let read = read_segment(dir.path(), &entry).unwrap();
        assert_eq!(read, vec![row("a"), row("b"), row("c")]);
        // A crash's torn frame past the committed length is not read.
        pending
            .append(dir.path(), "aggregates", 1, 6, &[row("d")])
            .unwrap();
        let file = dir.path().join(&entry.path);
        let full = fs::read(&file).unwrap();
        fs::write(&file, &full[..full.len() - 3]).unwrap();
        assert_eq!(read_segment(dir.path(), &entry).unwrap().len(), 3);
        // Within the committed length, damage and miscounts are refused.
        let short = PendingEntry {
            bytes: entry.bytes - 1,
            ..entry.clone()
        };
        assert!(read_segment(dir.path(), &short).is_err());
        let miscounted = PendingEntry {
            rows: 4,
            ..entry.clone()
        };
        assert!(read_segment(dir.path(), &miscounted).is_err());
        let mut flipped = full.clone();
        flipped[10] ^= 1;
        fs::write(&file, &flipped).unwrap();
        assert!(matches!(
            read_segment(dir.path(), &entry),
            Err(SinkError::Damaged { .. })
        ));
    }

    #[test]
    fn the_roll_counts_the_rows_bytes_however_they_are_framed() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<_> = (0..300).map(|i| row(&format!("device-{i:04}"))).collect();
        // A run never killed writes the rows epoch by epoch; a restart
        // writes the restored ones as one frame.
        let mut by_epoch = PendingRows::default();
        for (e, chunk) in rows.chunks(7).enumerate() {
            by_epoch
                .append(dir.path(), "a", 0, e as u64, chunk)
                .unwrap();
        }
        let mut restored = PendingRows::restored(0, rows.clone());
        restored.append(dir.path(), "b", 0, 50, &[]).unwrap();
        assert_eq!(by_epoch.bytes(), restored.bytes());
        use bincode::Options;
        let one: u64 = rows
            .iter()
            .map(|r| codec().serialized_size(r).unwrap())
            .sum();
        assert_eq!(by_epoch.bytes(), one, "the rows' own bytes");
        let (a, b) = (
            by_epoch.entry("a", 0).unwrap(),
            restored.entry("b", 0).unwrap(),
        );
        assert_ne!(a.bytes, b.bytes, "the segments themselves differ");
    }

    #[test]
    fn an_older_binary_s_plain_frames_still_read() {
        let frame = |rows: &[Row]| {
            let body = iotflow_dataflow::sealed::bincode_with_checksum(&FrameOf(rows)).unwrap();
            [(body.len() as u32).to_be_bytes().to_vec(), body].concat()
        };
        let bytes = [frame(&[row("a")]), frame(&[row("b"), row("c")])].concat();
        let entry = PendingEntry {
            dataset: "d".into(),
            worker: 0,
            since: 1,
            rows: 3,
            path: "w0000-e000000000001.frames".into(),
            bytes: bytes.len() as u64,
        };
        assert_eq!(
            decode_segment(&bytes, &entry).unwrap(),
            vec![row("a"), row("b"), row("c")]
        );
        // Today's frames are packed: the mark follows the frame's length.
        let dir = tempfile::tempdir().unwrap();
        let mut pending = PendingRows::default();
        pending
            .append(dir.path(), "d", 0, 1, &[row("a"), row("b"), row("c")])
            .unwrap();
        let packed = fs::read(dir.path().join(pending.entry("d", 0).unwrap().path)).unwrap();
        assert_eq!(packed.get(4..6), Some(&b"\xffL"[..]));
    }

    #[test]
    fn taking_the_rows_reads_them_back_and_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut pending = PendingRows::default();
        pending.append(dir.path(), "d", 0, 1, &[row("a")]).unwrap();
        pending.append(dir.path(), "d", 0, 2, &[row("b")]).unwrap();
        assert_eq!(
            pending.take(dir.path(), "d", 0).unwrap(),
            vec![row("a"), row("b")]
        );
        assert_eq!(pending, PendingRows::default());
        let mut restored = PendingRows::restored(4, vec![row("r")]);
        assert_eq!(restored.take(dir.path(), "d", 0).unwrap(), vec![row("r")]);
    }

    #[test]
    fn segment_names_carry_their_epoch() {
        assert_eq!(segment_epoch("w0001-e000000000012.rows"), Some(12));
        assert_eq!(segment_epoch("w0000-e000000000003.tmp"), Some(3));
        assert_eq!(segment_epoch("LOCK"), None);
    }
}
