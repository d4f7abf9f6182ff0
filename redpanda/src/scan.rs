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

/// A fetch from `offset` with Kafka's meaning on every broker we run on: the
/// records from `offset` on (in offset order, each once) and the high watermark.
///
/// Kafka answers a fetch from inside a batch with the whole batch. tansu 0.6
/// does not (docs/brokers.md): inside the last batch it answers nothing,
/// inside an earlier one it answers from the *next* batch, silently skipping
/// the rest. So when an answer does not reach back to `offset` although
/// records exist there, step back (doubling, at most to the earliest offset)
/// until one does, and drop what lies before `offset`.
pub async fn fetch_from(
    pc: &PartitionClient,
    offset: i64,
    max_bytes: i32,
    max_wait_ms: i32,
) -> Result<(Vec<RecordAndOffset>, i64)> {
    let (mut records, high_watermark) = pc
        .fetch_records(offset, 1..max_bytes, max_wait_ms)
        .await
        .map_err(partition_err(pc, "fetch"))?;
    let reaches = |records: &[RecordAndOffset]| records.iter().any(|r| r.offset <= offset);
    if offset < high_watermark && !reaches(&records) {
        let earliest = pc
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(partition_err(pc, "list earliest offset"))?;
        let mut back = 1i64;
        loop {
            let from = offset.saturating_sub(back).max(earliest);
            if from >= offset {
                break; // `offset` is the earliest: what came back is all there is
            }
            let (again, _) = pc
                .fetch_records(from, 1..max_bytes, 0)
                .await
                .map_err(partition_err(pc, "fetch"))?;
            if reaches(&again) || from == earliest {
                records = again;
                break;
            }
            back = back.saturating_mul(2);
        }
    }
    let mut next = offset;
    records.retain(|r| {
        let keep = r.offset >= next;
        if keep {
            next = r.offset + 1;
        }
        keep
    });
    Ok((records, high_watermark))
}

/// Every record in `[from, to)`, in offset order.
pub async fn read_range(pc: &PartitionClient, from: i64, to: i64) -> Result<Vec<RecordAndOffset>> {
    let mut out = Vec::new();
    let mut next = from;
    let mut empty_fetches = 0;
    while next < to {
        let (records, _hw) = fetch_from(pc, next, FETCH_MAX_BYTES, 500).await?;
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
            if r.offset >= to {
                next = to;
                break;
            }
            next = r.offset + 1;
            out.push(r);
        }
    }
    Ok(out)
}
