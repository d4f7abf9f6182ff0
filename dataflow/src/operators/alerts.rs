//! Alerts, on the worker that owns each group key (where Emit left its
//! windows): the job's rules over each epoch's final windows, then the
//! silence deadlines the epoch's watermark passed.
//!
//! ```text
//!   WindowResult(final)@e ─┐  per (rule, key) a Series (alert::Rule::window),
//!   ShareReports@e → W_e ──┴▶ in (aggregation, key, start) order; then every
//!                             absence due at ≤ W_e (alert::Rule::deadline)
//!                           ──▶ AlertEvent@e, and the series the epoch changed
//!                               into this worker's snapshot of e
//!                           ──▶ the process's alert board (shown once e commits)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::windows::Captures;
use crate::alert::{AlertEvent, AlertRules, Seen, Series};
use crate::job::{Epoch, JobConfig, WindowResult, held_from};
use crate::metrics::JobMetrics;
use crate::snapshot::{AlertSeries, Capture, CapturePlan};
use crate::watermark::{ShareReport, WatermarkCombiner};

/// Every series of this worker, and when each silent key is due.
struct Book {
    rules: AlertRules,
    series: FxHashMap<(u16, CompactString), Series>,
    /// (watermark at which it is judged silent, rule, key).
    due: BTreeSet<(i64, u16, CompactString)>,
    /// Series changed this epoch (rule, key).
    changed: BTreeSet<(u16, CompactString)>,
}

impl Book {
    fn reindex(&mut self, rule: u16, key: &CompactString, before: Option<i64>) {
        let Some(r) = self.rules.rules.get(rule as usize) else {
            return;
        };
        let after = self
            .series
            .get(&(rule, key.clone()))
            .and_then(|s| r.due_at(s));
        if before != after {
            if let Some(b) = before {
                self.due.remove(&(b, rule, key.clone()));
            }
            if let Some(a) = after {
                self.due.insert((a, rule, key.clone()));
            }
        }
    }

    /// One epoch: its final windows, then the deadlines `wm` passed.
    fn epoch(&mut self, mut finals: Vec<WindowResult>, wm: Option<i64>) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        finals.sort_unstable_by(|a, b| {
            (a.aggregation, &a.group, a.window_start).cmp(&(
                b.aggregation,
                &b.group,
                b.window_start,
            ))
        });
        let rules = self.rules.clone();
        for w in &finals {
            for (i, rule) in rules.on(w.aggregation) {
                let id = (i, w.group.clone());
                let series = self.series.entry(id.clone()).or_default();
                let before = rule.due_at(series);
                let seen = Seen {
                    group: &w.group,
                    start: w.window_start,
                    end: w.window_end,
                    measured: &w.measured,
                };
                rule.window(i, series, seen, &mut out);
                self.reindex(i, &id.1, before);
                self.changed.insert(id);
            }
        }
        if let Some(wm) = wm {
            while let Some(first) = self.due.first().cloned() {
                if first.0 > wm || wm == i64::MAX {
                    break;
                }
                self.due.remove(&first);
                let (_, i, key) = first;
                let (Some(rule), Some(series)) = (
                    rules.rules.get(i as usize),
                    self.series.get_mut(&(i, key.clone())),
                ) else {
                    continue;
                };
                out.extend(rule.deadline(i, &key, series, wm));
                self.changed.insert((i, key));
            }
        }
        // One order whatever order the windows arrived in.
        out.sort_by(|a, b| {
            (a.rule, &a.group, a.window_start).cmp(&(b.rule, &b.group, b.window_start))
        });
        out
    }

    fn captured(&mut self, everything: bool) -> Vec<AlertSeries> {
        let keys: Vec<(u16, CompactString)> = match everything {
            true => {
                let mut all: Vec<_> = self.series.keys().cloned().collect();
                all.sort();
                all
            }
            false => std::mem::take(&mut self.changed).into_iter().collect(),
        };
        self.changed.clear();
        keys.into_iter()
            .filter_map(|(rule, key)| {
                let series = self.series.get(&(rule, key.clone()))?.clone();
                let aggregation = self.rules.rules.get(rule as usize)?.on;
                Some(AlertSeries {
                    rule,
                    aggregation,
                    key,
                    series,
                })
            })
            .collect()
    }
}

/// See the module docs.
pub(super) fn alerts<'scope>(
    results: Stream<'scope, Epoch, Vec<WindowResult>>,
    reports: Stream<'scope, Epoch, Vec<ShareReport>>,
    cfg: JobConfig,
    start: Epoch,
    restore: Option<(Vec<ShareReport>, Option<i64>, Vec<AlertSeries>)>,
    capture: Option<(Captures, CapturePlan)>,
    metrics: Arc<JobMetrics>,
) -> Stream<'scope, Epoch, Vec<AlertEvent>> {
    let mut builder = OperatorBuilder::new("Alerts".to_owned(), results.scope());
    let mut results_in = builder.new_input(results, Pipeline);
    let mut reports_in = builder.new_input(reports, Pipeline);
    let (events_out, events) = builder.new_output::<Vec<AlertEvent>>();
    let mut events_out = OutputBuilder::from(events_out);

    builder.build(move |caps| {
        let mut caps = held_from(caps, start);
        let mut next: Epoch = start;
        let mut pending: BTreeMap<Epoch, Vec<WindowResult>> = BTreeMap::new();
        let mut pending_reports: BTreeMap<Epoch, Vec<ShareReport>> = BTreeMap::new();
        let mut combiner = WatermarkCombiner::new(cfg.watermark);
        let mut book = Book {
            rules: cfg.alerts.clone(),
            series: FxHashMap::default(),
            due: BTreeSet::new(),
            changed: BTreeSet::new(),
        };
        metrics.with_alert_board(|b| b.describe(&cfg.alerts, &cfg.aggregations));
        if let Some((reports, wm, series)) = restore {
            combiner = WatermarkCombiner::restored(cfg.watermark, &reports, wm);
            for a in series {
                let key = a.key.clone();
                if let Some(since) = a.series.firing {
                    metrics.with_alert_board(|b| b.restore(a.rule, &key, since));
                }
                book.series.insert((a.rule, a.key), a.series);
                book.reindex(a.rule, &key, None);
            }
        }

        move |frontiers| {
            results_in.for_each(|time, data| crate::job::stash(&mut pending, &time, data));
            reports_in.for_each(|time, data| crate::job::stash(&mut pending_reports, &time, data));
            let (results_frontier, reports_frontier) = (&frontiers[0], &frontiers[1]);
            while let Some([cap]) = caps.as_deref_mut() {
                if results_frontier.less_equal(&next) || reports_frontier.less_equal(&next) {
                    break;
                }
                let mut finals = pending.remove(&next).unwrap_or_default();
                finals.retain(|r| r.is_final && book.rules.on(r.aggregation).next().is_some());
                for r in pending_reports.remove(&next).unwrap_or_default() {
                    combiner.apply(&r);
                }
                let mut out = book.epoch(finals, combiner.watermark());
                metrics.with_alert_board(|b| b.stage(next, &out));
                if let Some((capture, plan)) = &capture {
                    match plan.at(next) {
                        Capture::Whole => {
                            capture.borrow_mut().add_alerts(next, book.captured(true))
                        }
                        Capture::Delta => {
                            capture.borrow_mut().add_alerts(next, book.captured(false))
                        }
                        Capture::Nothing => book.changed.clear(),
                    }
                }
                if !out.is_empty() {
                    events_out.activate().session(cap).give_container(&mut out);
                }
                if results_frontier.frontier().is_empty()
                    && reports_frontier.frontier().is_empty()
                    && pending.is_empty()
                {
                    caps = None;
                    break;
                }
                next += 1;
                cap.downgrade(&next);
            }
        }
    });
    events
}
