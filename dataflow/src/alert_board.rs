//! The alerts a process shows as active (status page, `iotflow_alerts_active`):
//! the events of its workers' series, applied once their epoch is committed,
//! so the page never shows an alert the outputs do not have. A series that
//! was firing when the job last stopped comes back from its snapshot.
//!
//! ```text
//!   Alerts operator ──stage(epoch, events)──▶ pending by epoch
//!   Publish (commit record e arrived) ──committed(e)──▶ pending ≤ e applied:
//!        firing → active[(rule, group)], resolved → removed; counts per rule
//! ```
//!
//! A process sees only the keys its workers own: with `-n` processes, each
//! page shows its share.

use std::collections::BTreeMap;

use compact_str::CompactString;

use crate::aggregation::Aggregation;
use crate::alert::{AlertEvent, AlertRules, group_labels};
use crate::job::Epoch;

/// How one rule is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleLabels {
    name: String,
    severity: String,
    group_fields: Vec<String>,
}

/// One active alert, as people read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub rule: String,
    pub severity: String,
    /// Group field and value pairs.
    pub labels: Vec<(String, String)>,
    pub since: i64,
    /// The end of the window of its latest event; `None`: restored from a snapshot.
    pub window_end: Option<i64>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
}

/// Per rule: active now, and events applied since this process started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleCounts {
    pub active: u64,
    pub fired: u64,
    pub resolved: u64,
}

#[derive(Debug, Default)]
pub struct AlertBoard {
    rules: Vec<RuleLabels>,
    pending: BTreeMap<Epoch, Vec<AlertEvent>>,
    /// By (rule, group): the event that opened it (or restored it).
    active: BTreeMap<(u16, CompactString), (AlertEvent, bool)>,
    counts: BTreeMap<u16, RuleCounts>,
}

impl AlertBoard {
    /// The job's rules over its `aggregations`.
    pub fn describe(&mut self, rules: &AlertRules, aggregations: &[Aggregation]) {
        self.rules = rules
            .rules
            .iter()
            .map(|r| RuleLabels {
                name: r.name.to_string(),
                severity: r.severity.to_string(),
                group_fields: r
                    .group_fields(aggregations)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            })
            .collect();
    }

    /// Events of epoch `epoch`, not yet committed.
    pub fn stage(&mut self, epoch: Epoch, events: &[AlertEvent]) {
        if !events.is_empty() {
            self.pending
                .entry(epoch)
                .or_default()
                .extend_from_slice(events);
        }
    }

    /// A series restored firing (`since`): committed before this run.
    pub fn restore(&mut self, rule: u16, group: &CompactString, since: i64) {
        let event = AlertEvent {
            rule,
            group: group.clone(),
            firing: true,
            window_start: since,
            window_end: since,
            value: None,
            threshold: None,
            since,
        };
        self.active.insert((rule, group.clone()), (event, true));
    }

    /// Epoch `epoch` is committed: every event up to it takes effect, in
    /// epoch order and, within one, in window order (a firing before the
    /// resolve of the same window's end cannot happen; of one key a firing
    /// comes before its later resolve).
    pub fn committed(&mut self, epoch: Epoch) {
        let later = self.pending.split_off(&(epoch + 1));
        for (_, mut events) in std::mem::replace(&mut self.pending, later) {
            events.sort_by_key(|e| (e.window_end, !e.firing));
            for e in events {
                let counts = self.counts.entry(e.rule).or_default();
                let key = (e.rule, e.group.clone());
                if e.firing {
                    counts.fired += 1;
                    self.active.insert(key, (e, false));
                } else {
                    counts.resolved += 1;
                    self.active.remove(&key);
                }
            }
        }
    }

    fn labels(&self, e: &AlertEvent) -> Vec<(String, String)> {
        let fields = self
            .rules
            .get(usize::from(e.rule))
            .map_or(&[][..], |r| r.group_fields.as_slice());
        group_labels(fields, &e.group)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Active alerts, most severe rule first (`critical`, then others by
    /// name), then oldest first.
    pub fn active(&self) -> Vec<ActiveAlert> {
        let mut out: Vec<ActiveAlert> = self
            .active
            .values()
            .map(|(e, restored)| {
                let rule = self.rules.get(usize::from(e.rule));
                ActiveAlert {
                    rule: rule.map_or_else(|| e.rule.to_string(), |r| r.name.clone()),
                    severity: rule.map_or_else(String::new, |r| r.severity.clone()),
                    labels: self.labels(e),
                    since: e.since,
                    window_end: (!restored).then_some(e.window_end),
                    value: e.value,
                    threshold: e.threshold,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            let rank = |s: &str| (s != "critical", s.to_owned());
            (rank(&a.severity), a.since, &a.rule, &a.labels).cmp(&(
                rank(&b.severity),
                b.since,
                &b.rule,
                &b.labels,
            ))
        });
        out
    }

    /// Per rule (name, severity): active now, fired and resolved so far.
    pub fn counts(&self) -> Vec<(String, String, RuleCounts)> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let i = i as u16;
                let mut c = self.counts.get(&i).cloned().unwrap_or_default();
                c.active = self.active.keys().filter(|(rule, _)| *rule == i).count() as u64;
                (r.name.clone(), r.severity.clone(), c)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule: u16, group: &str, firing: bool, end: i64, since: i64) -> AlertEvent {
        AlertEvent {
            rule,
            group: group.into(),
            firing,
            window_start: end - 10,
            window_end: end,
            value: Some(1.0),
            threshold: Some(0.5),
            since,
        }
    }

    fn board() -> AlertBoard {
        AlertBoard {
            rules: vec![
                RuleLabels {
                    name: "warm".into(),
                    severity: "warning".into(),
                    group_fields: vec!["device_id".into(), "metric".into()],
                },
                RuleLabels {
                    name: "hot".into(),
                    severity: "critical".into(),
                    group_fields: vec![],
                },
            ],
            ..AlertBoard::default()
        }
    }

    #[test]
    fn only_committed_epochs_show_and_a_resolve_removes_its_alert() {
        let mut b = board();
        b.stage(3, &[event(0, "d1|temp", true, 20, 10)]);
        b.stage(4, &[event(0, "d1|temp", false, 30, 10)]);
        b.stage(4, &[event(1, "", true, 30, 20)]);
        assert!(b.active().is_empty(), "nothing committed yet");
        b.committed(3);
        let a = b.active();
        assert_eq!(a.len(), 1);
        assert_eq!(
            a[0].labels,
            [
                ("device_id".into(), "d1".into()),
                ("metric".into(), "temp".into())
            ]
        );
        assert_eq!((a[0].since, a[0].window_end), (10, Some(20)));
        b.committed(4);
        let a = b.active();
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].rule.as_str(), a[0].severity.as_str()),
            ("hot", "critical")
        );
        assert_eq!(
            b.counts()[0],
            (
                "warm".into(),
                "warning".into(),
                RuleCounts {
                    active: 0,
                    fired: 1,
                    resolved: 1
                }
            )
        );
        b.committed(4);
        assert_eq!(b.counts()[0].2.fired, 1, "a commit seen twice applies once");
    }

    #[test]
    fn within_an_epoch_a_series_ends_in_its_last_state() {
        let mut b = board();
        // Out of order within the epoch: fired at 20, resolved at 30, fired again at 40.
        b.stage(
            1,
            &[
                event(0, "d1|t", true, 40, 40),
                event(0, "d1|t", false, 30, 10),
                event(0, "d1|t", true, 20, 10),
            ],
        );
        b.committed(1);
        let a = b.active();
        assert_eq!((a.len(), a[0].since), (1, 40));
    }

    #[test]
    fn restored_series_show_without_a_window_and_critical_comes_first() {
        let mut b = board();
        b.restore(0, &"d9|t".into(), 5);
        b.stage(2, &[event(1, "", true, 30, 20)]);
        b.committed(2);
        let a = b.active();
        assert_eq!(a[0].rule, "hot");
        assert_eq!((a[1].rule.as_str(), a[1].window_end), ("warm", None));
    }
}
