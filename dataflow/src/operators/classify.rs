//! Classify: parse, validate and judge lateness, before the exchange.
//!
//! ```text
//!   SourceEvent@e ──▶ wait until every ShareReport of epochs < e arrived (W_{e−1})
//!     Record ──parse──▶ Dead(reason) | all windows final under W_{e−1}? Dead(late) | Reading*
//!     Status ──at the end of e──▶ ShareReport { top event times of the partition, state }
//! ```
//!
//! Lateness is judged here, next to the source, because the dead-letter topic
//! wants the original bytes and they are not worth shipping across workers.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::job::{Classified, DeadRecord, Epoch, JobConfig, PartitionStatus, SourceEvent};
use crate::metrics::{JobMetrics, LatenessCounts, lateness_bucket};
use crate::reading::{Reading, RejectReason, parse_record};
use crate::snapshot::WorkerSnapshot;
use crate::watermark::{ShareReport, ShareState, TopK, WatermarkCombiner};

/// See the module docs. `reports` is the broadcast report stream, fed back with +1.
pub fn classify<'scope>(
    source: Stream<'scope, Epoch, Vec<SourceEvent>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    stop: Arc<AtomicBool>,
    start: Epoch,
    restore: Option<&WorkerSnapshot>,
) -> Stream<'scope, Epoch, Vec<Classified>> {
    let k = cfg.watermark.outliers + 1;
    // A partition's top event times are in its latest report.
    let (combiner, tops) = match restore {
        Some(s) => (
            WatermarkCombiner::restored(cfg.watermark, &s.reports, s.watermark),
            s.reports
                .iter()
                .map(|r| {
                    let mut top = TopK::new(k);
                    top.merge(&r.top);
                    (r.partition, top)
                })
                .collect(),
        ),
        None => (WatermarkCombiner::new(cfg.watermark), FxHashMap::default()),
    };
    source.binary_frontier(
        reports,
        Pipeline,
        Pipeline,
        "Classify",
        move |cap, _info| {
            let mut cap = cap;
            cap.downgrade(&start);
            let mut cap = Some(cap);
            let mut next: Epoch = start;
            let mut pending: BTreeMap<Epoch, Vec<SourceEvent>> = BTreeMap::new();
            let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
            let mut combiner = combiner;
            let mut tops: FxHashMap<i32, TopK> = tops;
            let mut statuses: Vec<PartitionStatus> = Vec::new();
            let mut scratch: Vec<Reading> = Vec::new();

            move |(source_in, source_frontier), (reports_in, reports_frontier), output| {
                source_in.for_each(|time, data| {
                    pending
                        .entry(crate::job::epoch_of(&time))
                        .or_default()
                        .append(data)
                });
                reports_in.for_each(|time, data| {
                    pending_reports
                        .entry(crate::job::epoch_of(&time))
                        .or_default()
                        .append(data)
                });
                while let Some(c) = cap.as_mut() {
                    // W_{next−1} needs every report stamped ≤ next (fed back with +1).
                    if reports_frontier.less_equal(&next) {
                        break;
                    }
                    while let Some(entry) = pending_reports.first_entry() {
                        if *entry.key() > next {
                            break;
                        }
                        for r in entry.remove() {
                            if r.state == ShareState::Stopped {
                                // One stopped source stops the job in every process.
                                stop.store(true, Ordering::Relaxed);
                            }
                            combiner.apply(&r);
                        }
                    }
                    let wm = combiner.watermark();
                    metrics.observe_watermark(wm);
                    if let Some(events) = pending.remove(&next) {
                        let mut session = output.session(c);
                        let mut accepted = 0u64;
                        let mut records = 0u64;
                        let mut records_accepted = 0u64;
                        let mut lateness: LatenessCounts = Default::default();
                        let mut lateness_sum = 0u64;
                        for event in events {
                            match event {
                                SourceEvent::Status(s) => statuses.push(s),
                                SourceEvent::Record(record) => {
                                    records += 1;
                                    scratch.clear();
                                    let verdict =
                                        parse_record(&record.value, &cfg.limits, &mut scratch)
                                            .and_then(|()| {
                                                let ts = scratch
                                                    .first()
                                                    .map(|r| r.ts_ms)
                                                    .ok_or(RejectReason::NoMetrics)?;
                                                let top = tops
                                                    .entry(record.partition)
                                                    .or_insert_with(|| TopK::new(k));
                                                // Against the k-th newest, as the watermark:
                                                // one outlier does not make all that follows late.
                                                let behind =
                                                    top.kth().map_or(0, |t| t.saturating_sub(ts));
                                                lateness[lateness_bucket(behind)] += 1;
                                                lateness_sum += behind.max(0) as u64;
                                                top.observe(ts);
                                                // Late only when every window of the reading is final.
                                                let all_final = cfg
                                                    .window
                                                    .windows_of(ts)
                                                    .all(|s| cfg.is_final(s, wm));
                                                if all_final {
                                                    Err(RejectReason::Late)
                                                } else {
                                                    Ok(())
                                                }
                                            });
                                    match verdict {
                                        Ok(()) => {
                                            records_accepted += 1;
                                            accepted += scratch.len() as u64;
                                            session.give_iterator(
                                                scratch.drain(..).map(Classified::Reading),
                                            );
                                        }
                                        Err(reason) => {
                                            metrics.reject(reason, 1);
                                            session.give(Classified::Dead(DeadRecord {
                                                reason,
                                                record,
                                            }));
                                        }
                                    }
                                }
                            }
                        }
                        metrics.records_in.fetch_add(records, Ordering::Relaxed);
                        metrics
                            .records_accepted
                            .fetch_add(records_accepted, Ordering::Relaxed);
                        metrics.add_lateness(&lateness, lateness_sum);
                        metrics
                            .readings_accepted
                            .fetch_add(accepted, Ordering::Relaxed);
                    }
                    if source_frontier.less_equal(&next) {
                        break; // more of epoch `next` may still come
                    }
                    // Epoch `next` is complete here: report each share's progress.
                    if !statuses.is_empty() {
                        let mut session = output.session(c);
                        for s in statuses.drain(..) {
                            let top = tops
                                .get(&s.partition)
                                .map(|t| t.values().to_vec())
                                .unwrap_or_default();
                            session.give(Classified::Report(ShareReport {
                                partition: s.partition,
                                share: s.share,
                                shares: s.shares,
                                top,
                                state: s.state,
                                next_offset: s.next_offset,
                            }));
                        }
                    }
                    metrics.last_epoch.fetch_max(next, Ordering::Relaxed);
                    if source_frontier.is_empty() && pending.is_empty() {
                        cap = None;
                        break;
                    }
                    next += 1;
                    c.downgrade(&next);
                }
            }
        },
    )
}
