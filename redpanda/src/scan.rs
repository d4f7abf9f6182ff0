//! Reading partitions to their end.
//!
//! End offsets come from the high watermark that Fetch returns, never from
//! ListOffsets(latest) alone: tansu 0.6 with memory storage answers ListOffsets
//! with the base offset of the last batch + 1 (see docs/brokers.md).

use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;

use crate::error::{Error, Result};

/// Bytes asked for per fetch: large batches are what make fetch fast.
pub const FETCH_MAX_BYTES: i32 = 50 * 1024 * 1024;
/// Consecutive empty fetches (each waits up to 500 ms) before a read gives up.
const MAX_EMPTY_FETCHES: u32 = 40;

fn partition_err(
    pc: &PartitionClient,
    op: &'static str,
) -> impl FnOnce(rskafka::client::error::Error) -> Error {
    let topic = pc.topic().to_owned();
    let partition = pc.partition();
    move |source| Error::Partition {
        op,
        topic,
        partition,
        source: Box::new(source),
    }
}

/// `(earliest offset, high watermark)` of a partition.
pub async fn offsets(pc: &PartitionClient) -> Result<(i64, i64)> {
    let earliest = pc
        .get_offset(OffsetAt::Earliest)
        .await
        .map_err(partition_err(pc, "list earliest offset"))?;
    let latest_hint = pc
        .get_offset(OffsetAt::Latest)
        .await
        .map_err(partition_err(pc, "list latest offset"))?;
    // A one-byte fetch from the hint returns at most one batch plus the true high watermark.
    let (_, high_watermark) = pc
        .fetch_records(latest_hint.max(earliest), 1..2, 0)
        .await
        .map_err(partition_err(pc, "fetch high watermark"))?;
    Ok((earliest, high_watermark))
}

/// Every record in `[from, to)`, in offset order.
pub async fn read_range(pc: &PartitionClient, from: i64, to: i64) -> Result<Vec<RecordAndOffset>> {
    let mut out = Vec::new();
    let mut next = from;
    let mut empty_fetches = 0;
    while next < to {
        let (records, _hw) = pc
            .fetch_records(next, 1..FETCH_MAX_BYTES, 500)
            .await
            .map_err(partition_err(pc, "fetch"))?;
        if records.is_empty() {
            // Offsets below `to` exist by definition; a broker that keeps returning
            // nothing for them is broken, and waiting longer will not help.
            empty_fetches += 1;
            if empty_fetches >= MAX_EMPTY_FETCHES {
                return Err(Error::Stalled {
                    topic: pc.topic().to_owned(),
                    partition: pc.partition(),
                    offset: next,
                    end: to,
                });
            }
            continue;
        }
        empty_fetches = 0;
        for r in records {
            if r.offset >= next && r.offset < to {
                next = r.offset + 1;
                out.push(r);
            }
        }
    }
    Ok(out)
}
