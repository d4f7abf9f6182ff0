//! Sources that cut their input into epochs by record count.
//!
//! ```text
//!   OwnedInput (partition, share) ──ordinal / epoch_records = epoch──▶ SourceEvent::Record@epoch
//!   every owned input done with epoch e ──▶ SourceEvent::Status per input @e ──▶ next epoch
//! ```
//!
//! An input is a whole partition (ordinal = position in the partition) or one
//! worker's share of a file (ordinal = line number, lines `i % shares == share`).
//! Either way epoch boundaries depend only on the data, so results do not
//! depend on how many workers read it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::job::{Epoch, PartitionStatus, RawRecord, SourceEvent};
use crate::watermark::ShareState;

/// Records handed to the source per activation, so other operators get to run.
const BATCH: usize = 16_384;

/// One input owned by this worker.
pub struct OwnedInput {
    pub partition: i32,
    pub share: u32,
    pub shares: u32,
    /// `(ordinal, record)` in ordinal order.
    pub records: Box<dyn Iterator<Item = (u64, RawRecord)>>,
}

impl std::fmt::Debug for OwnedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedInput")
            .field("partition", &self.partition)
            .field("share", &self.share)
            .field("shares", &self.shares)
            .finish_non_exhaustive()
    }
}

struct Cursor {
    partition: i32,
    share: u32,
    shares: u32,
    records: Peekable<Box<dyn Iterator<Item = (u64, RawRecord)>>>,
    next_offset: i64,
}

/// A source over `inputs` with epochs of `epoch_records` records (per partition).
pub fn chunked_source<'scope>(
    scope: Scope<'scope, Epoch>,
    inputs: Vec<OwnedInput>,
    epoch_records: u64,
) -> Stream<'scope, Epoch, Vec<SourceEvent>> {
    let epoch_records = epoch_records.max(1);
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
            let limit = (epoch + 1).saturating_mul(epoch_records);
            let mut budget = BATCH;
            {
                let mut session = output.session(c);
                for cur in cursors.iter_mut() {
                    while budget > 0 {
                        match cur.records.next_if(|(ord, _)| *ord < limit) {
                            Some((_, rec)) => {
                                cur.next_offset = rec.offset + 1;
                                session.give(SourceEvent::Record(rec));
                                budget -= 1;
                            }
                            None => break,
                        }
                    }
                }
            }
            let epoch_done = cursors
                .iter_mut()
                .all(|cur| cur.records.peek().is_none_or(|(ord, _)| *ord >= limit));
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

/// This worker's share of a JSON-lines file: lines `i % shares == share`,
/// as partition 0 with offset = line number. Blank lines are skipped.
pub fn jsonl_share(
    path: &Path,
    share: u32,
    shares: u32,
    error: InputError,
) -> std::io::Result<OwnedInput> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let path = path.to_owned();
    let mut line_no: u64 = 0;
    let mut buf = Vec::with_capacity(256);
    let shares64 = u64::from(shares.max(1));
    let iter = std::iter::from_fn(move || {
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    if let Ok(mut slot) = error.lock() {
                        slot.get_or_insert((path.clone(), e));
                    }
                    return None;
                }
            }
            let n = line_no;
            line_no += 1;
            if n % shares64 != u64::from(share) {
                continue;
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some((
                n,
                RawRecord {
                    partition: 0,
                    offset: n as i64,
                    key: None,
                    value: buf.clone(),
                },
            ));
        }
    });
    Ok(OwnedInput {
        partition: 0,
        share,
        shares,
        records: Box::new(iter),
    })
}

/// In-memory partitions (tests, replay): partition `p` goes to worker `p % peers`.
pub fn memory_inputs(
    partitions: &[(i32, Vec<RawRecord>)],
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
            records: Box::new(
                records
                    .clone()
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (i as u64, r)),
            ),
        })
        .collect()
}
