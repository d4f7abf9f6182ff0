//! `[[alert]]` → [`AlertPlan`]: the rule's kind from its keys, its
//! conditions parsed over the watched aggregation's measures and group
//! fields, and the limits that keep each kind exact.

use std::collections::HashSet;
use std::ops::Range;

use super::{Result, duration_ms, is_dataset_name};
use crate::alert::*;
use crate::error::Problem;
use crate::expr::{self, Expr, FieldType, Fields};
use crate::plan::*;
use crate::raw::{Number, RawAlert, S};

/// What an alert condition may name.
struct WindowFields<'a> {
    plan: &'a JobPlan,
    on: &'a AggregationPlan,
    change: bool,
}

impl Fields for WindowFields<'_> {
    type Field = AlertField;
    fn resolve(&self, name: &str) -> std::result::Result<(AlertField, FieldType), String> {
        if self.change && name == "change" {
            return Ok((AlertField::Change, FieldType::Number));
        }
        if self.change && name == "rate" {
            return Ok((AlertField::Rate, FieldType::Number));
        }
        // Measures by their name or column (`p99.9` is `p99_9` in a condition).
        if let Some(i) = self
            .on
            .measures
            .iter()
            .position(|m| m.name() == name || m.column() == name)
        {
            return Ok((AlertField::Measure(i), FieldType::Number));
        }
        if let Some(i) =
            self.on.group_by.iter().position(|g| {
                self.plan.group_output_name(g) == name || self.plan.group_name(g) == name
            })
        {
            return Ok((AlertField::Group(i), FieldType::Text));
        }
        let mut known: Vec<String> = self.on.measures.iter().map(Measure::column).collect();
        known.extend(
            self.on
                .group_by
                .iter()
                .map(|g| self.plan.group_name(g).to_owned()),
        );
        if self.change {
            known.extend(["change".into(), "rate".into()]);
        }
        let mut hint = format!(
            "a condition on `{}` reads its measures and group fields: {}",
            self.on.name,
            known.join(", ")
        );
        if !self.change && matches!(name, "change" | "rate") {
            hint.push_str("; `change` and `rate` need `change_of = \"<measure>\"`");
        }
        Err(hint)
    }
}

/// Validates every `[[alert]]` of a job whose aggregations are `plan`'s.
pub(super) fn alerts(raw: Vec<S<RawAlert>>, plan: &JobPlan) -> Result<Vec<AlertPlan>> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for a in raw {
        let span = a.span();
        let a = a.into_inner();
        let name = a.name.get_ref().clone();
        if !is_dataset_name(&name) {
            return Err(
                Problem::new(a.name.span(), format!("`{name}` cannot name an alert"))
                    .hint("letters, digits, _ and -: it is the `alert` field of every event"),
            );
        }
        if !names.insert(name.clone()) {
            return Err(Problem::new(
                a.name.span(),
                format!("a second alert named `{name}`"),
            ));
        }
        out.push(alert(a, name, span, plan)?);
    }
    Ok(out)
}

fn alert(a: RawAlert, name: String, span: Range<usize>, plan: &JobPlan) -> Result<AlertPlan> {
    let on = plan
        .aggregations
        .iter()
        .position(|g| g.name == *a.on.get_ref())
        .ok_or_else(|| {
            let names: Vec<&str> = plan.aggregations.iter().map(|g| g.name.as_str()).collect();
            Problem::new(
                a.on.span(),
                format!("no aggregation `{}` to watch", a.on.get_ref()),
            )
            .hint(format!(
                "`on` names an aggregation of this file: {}",
                names.join(", ")
            ))
        })?;
    let agg = &plan.aggregations[on];
    if let Some(clash) = agg
        .group_by
        .iter()
        .map(|g| plan.group_output_name(g))
        .find(|n| ALERT_EVENT_FIELDS.contains(n))
    {
        return Err(Problem::new(
            a.on.span(),
            format!("`{}` groups by `{clash}`, a field every alert event has", agg.name),
        )
        .hint("alert events carry the group fields beside alert, state, severity, window_start, window_end, value, threshold, since and epoch: give the dimension an alias"));
    }
    let severity = match &a.severity {
        Some(s) if is_dataset_name(s.get_ref()) => s.get_ref().clone(),
        Some(s) => {
            return Err(
                Problem::new(s.span(), format!("`{}` cannot be a severity", s.get_ref()))
                    .hint("a word: critical, warning, info"),
            );
        }
        None => "warning".to_owned(),
    };
    let rule = match (&a.absent_for, &a.anomaly_of, &a.bad_share) {
        (Some(d), _, _) => absence(&a, d, agg, plan)?,
        (None, Some(m), _) => anomaly(&a, m, agg)?,
        (None, None, Some(share)) => bad_data(&a, share, agg)?,
        (None, None, None) => condition(&a, span, agg, plan)?,
    };
    Ok(AlertPlan {
        name,
        on,
        severity,
        rule,
    })
}

/// Refuses `keys` (present ones) that the rule's kind does not read.
fn refuse(keys: &[(&str, Option<Range<usize>>)], kind: &str) -> Result<()> {
    match keys.iter().find_map(|(k, s)| Some((*k, s.clone()?))) {
        Some((k, span)) => Err(Problem::new(span, format!("`{k}` has no meaning in {kind}"))
            .hint("an alert is a threshold (`when`), a rate of change (`change_of` + `when`), an anomaly (`anomaly_of`), an absence (`absent_for`) or bad data (`bad_share`)")),
        None => Ok(()),
    }
}

fn span_of<T>(v: &Option<S<T>>) -> Option<Range<usize>> {
    v.as_ref().map(S::span)
}

fn streak(a: &RawAlert) -> Result<u32> {
    match &a.streak {
        None => Ok(1),
        Some(n) if (1..=10_000).contains(n.get_ref()) => Ok(*n.get_ref() as u32),
        Some(n) => Err(Problem::new(
            n.span(),
            format!("`for = {}`: a streak is 1 to 10000 windows", n.get_ref()),
        )
        .hint("how many consecutive windows the condition must hold before the alert fires")),
    }
}

fn measure_of(m: &S<String>, agg: &AggregationPlan, key: &str) -> Result<usize> {
    agg.measures
        .iter()
        .position(|x| x.name() == *m.get_ref() || x.column() == *m.get_ref())
        .ok_or_else(|| {
            let names: Vec<String> = agg.measures.iter().map(Measure::name).collect();
            Problem::new(
                m.span(),
                format!("`{}` is not a measure of `{}`", m.get_ref(), agg.name),
            )
            .hint(format!(
                "`{key}` names one of its measures: {}",
                names.join(", ")
            ))
        })
}

fn condition(
    a: &RawAlert,
    span: Range<usize>,
    agg: &AggregationPlan,
    plan: &JobPlan,
) -> Result<AlertRule> {
    refuse(
        &[
            ("deviations", span_of(&a.deviations)),
            ("clear_deviations", span_of(&a.clear_deviations)),
            ("alpha", span_of(&a.alpha)),
            ("warmup", span_of(&a.warmup)),
            ("clear_share", span_of(&a.clear_share)),
            ("min_records", span_of(&a.min_records)),
        ],
        "a threshold or rate-of-change rule",
    )?;
    let Some(when) = &a.when else {
        return Err(Problem::new(
            span.start..span.start,
            format!("alert `{}` says nothing about when it fires", a.name.get_ref()),
        )
        .hint("when = \"mean > 80\" (a threshold), absent_for = \"60s\" (a silent key) or anomaly_of = \"mean\""));
    };
    let change_of = a
        .change_of
        .as_ref()
        .map(|m| measure_of(m, agg, "change_of"))
        .transpose()?;
    let fields = WindowFields {
        plan,
        on: agg,
        change: change_of.is_some(),
    };
    Ok(AlertRule::Condition {
        when: parse(when, &fields)?,
        clear: a.clear.as_ref().map(|c| parse(c, &fields)).transpose()?,
        streak: streak(a)?,
        change_of,
    })
}

fn parse(raw: &S<String>, fields: &WindowFields<'_>) -> Result<Expr<AlertField>> {
    let at = |i: usize| raw.span().start + 1 + i;
    expr::parse(raw.get_ref(), fields).map_err(|e| {
        let p = Problem::new(at(e.at)..at(e.at) + 1, e.message);
        match e.hint {
            Some(h) => p.hint(h),
            None => p,
        }
    })
}

fn number(
    v: &Option<S<Number>>,
    default: f64,
    ok: impl Fn(f64) -> bool,
    what: &str,
) -> Result<f64> {
    match v {
        None => Ok(default),
        Some(n) if ok(n.get_ref().get()) => Ok(n.get_ref().get()),
        Some(n) => Err(
            Problem::new(n.span(), format!("{} is out of range", n.get_ref().get()))
                .hint(what.to_owned()),
        ),
    }
}

fn anomaly(a: &RawAlert, m: &S<String>, agg: &AggregationPlan) -> Result<AlertRule> {
    refuse(
        &[
            ("when", span_of(&a.when)),
            ("clear", span_of(&a.clear)),
            ("change_of", span_of(&a.change_of)),
            ("bad_share", span_of(&a.bad_share)),
            ("clear_share", span_of(&a.clear_share)),
            ("min_records", span_of(&a.min_records)),
        ],
        "an anomaly rule (it fires on distance from the baseline)",
    )?;
    let of = measure_of(m, agg, "anomaly_of")?;
    let deviations = number(
        &a.deviations,
        3.0,
        |k| k > 0.0 && k.is_finite(),
        "deviations: a positive number of standard deviations (default 3)",
    )?;
    let clear_deviations = number(
        &a.clear_deviations,
        deviations,
        |k| k > 0.0 && k <= deviations,
        "clear_deviations: positive, at most `deviations` (default: the same)",
    )?;
    let alpha = number(
        &a.alpha,
        0.1,
        |x| x > 0.0 && x <= 1.0,
        "alpha: the weight of each new window in the baseline, in (0, 1] (default 0.1)",
    )?;
    let warmup = match &a.warmup {
        None => 10,
        Some(w) if (2..=100_000).contains(w.get_ref()) => *w.get_ref() as u32,
        Some(w) => {
            return Err(Problem::new(
                w.span(),
                format!("`warmup = {}` is out of range", w.get_ref()),
            )
            .hint(
                "windows that build the baseline before any is judged: 2 to 100000 (default 10)",
            ));
        }
    };
    Ok(AlertRule::Anomaly {
        of,
        deviations,
        clear_deviations,
        alpha,
        warmup,
        streak: streak(a)?,
    })
}

fn absence(
    a: &RawAlert,
    d: &S<String>,
    agg: &AggregationPlan,
    plan: &JobPlan,
) -> Result<AlertRule> {
    refuse(
        &[
            ("when", span_of(&a.when)),
            ("clear", span_of(&a.clear)),
            ("for", span_of(&a.streak)),
            ("change_of", span_of(&a.change_of)),
            ("anomaly_of", span_of(&a.anomaly_of)),
            ("deviations", span_of(&a.deviations)),
            ("clear_deviations", span_of(&a.clear_deviations)),
            ("alpha", span_of(&a.alpha)),
            ("warmup", span_of(&a.warmup)),
            ("bad_share", span_of(&a.bad_share)),
            ("clear_share", span_of(&a.clear_share)),
            ("min_records", span_of(&a.min_records)),
        ],
        "an absence rule",
    )?;
    let absent_for_ms = duration_ms(d)?;
    match agg.window {
        // An open session hides the readings that would end the silence.
        WindowKind::Session { .. } => Err(Problem::new(
            a.on.span(),
            format!("`{}` has session windows: an absence cannot be judged on them", agg.name),
        )
        .hint("watch a tumbling or hopping aggregation of the same readings; a session's own gap already ends it on silence")),
        // Within a window only its first and last reading times are known.
        WindowKind::Hopping { size_ms, .. } if absent_for_ms < size_ms => Err(Problem::new(
            d.span(),
            format!(
                "absent_for {} is shorter than `{}`'s windows ({})",
                Ms(absent_for_ms),
                agg.name,
                Ms(size_ms)
            ),
        )
        .hint("a silence is seen between windows: absent_for must be at least the window size")),
        WindowKind::Hopping { size_ms, .. } => {
            let hold = absent_for_ms + size_ms + plan.watermark.max_out_of_order_ms + plan.watermark.lateness_ms;
            if hold > super::MAX_HOLD_MS {
                return Err(Problem::new(d.span(), format!("absent_for {} would be judged only after {} of event time", Ms(absent_for_ms), Ms(hold)))
                    .hint("at most a few days"));
            }
            Ok(AlertRule::Absence { absent_for_ms })
        }
    }
}

fn bad_data(a: &RawAlert, share: &S<Number>, agg: &AggregationPlan) -> Result<AlertRule> {
    refuse(
        &[
            ("when", span_of(&a.when)),
            ("clear", span_of(&a.clear)),
            ("change_of", span_of(&a.change_of)),
            ("deviations", span_of(&a.deviations)),
            ("clear_deviations", span_of(&a.clear_deviations)),
            ("alpha", span_of(&a.alpha)),
            ("warmup", span_of(&a.warmup)),
        ],
        "a bad-data rule (it fires on each device's dead-lettered share)",
    )?;
    if let WindowKind::Session { .. } = agg.window {
        return Err(Problem::new(
            a.on.span(),
            format!("`{}` has session windows: a bad-data share needs a window grid", agg.name),
        )
        .hint("watch a tumbling or hopping aggregation: its windows are the ones the share is counted over"));
    }
    let share_of = |v: &S<Number>| Some(v.clone());
    let share = number(
        &share_of(share),
        0.0,
        |x| x > 0.0 && x <= 1.0,
        "bad_share: the share of a device's records dead-lettered in a window, in (0, 1]",
    )?;
    let clear_share = number(
        &a.clear_share,
        share,
        |x| (0.0..=share).contains(&x),
        "clear_share: at most `bad_share` (default: the same)",
    )?;
    let min_records = match &a.min_records {
        None => 1,
        Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as u64,
        Some(n) => {
            return Err(Problem::new(
                n.span(),
                format!("`min_records = {}` is out of range", n.get_ref()),
            )
            .hint("records of the device a window needs before its share is judged: 1 to 1000000 (default 1)"));
        }
    };
    Ok(AlertRule::BadData {
        share,
        clear_share,
        min_records,
        streak: streak(a)?,
    })
}
