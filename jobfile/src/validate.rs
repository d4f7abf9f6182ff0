//! Raw TOML → [`JobPlan`]: every rule a job file must follow, each refusal
//! located at the value that broke it, with a hint.

use std::collections::HashSet;
use std::ops::Range;

use crate::alert::{AlertOutputs, DEFAULT_ALERTS_DATASET, DEFAULT_ALERTS_TOPIC};
use crate::error::Problem;
use crate::expr::{self, Expr, FieldType, Fields, Literal};
use crate::plan::*;
use crate::raw::{RawAggregation, RawInput, RawJob, RawOutput, RawWatermark, S};

mod alert;
mod input;
mod kafka;
use input::input;
use kafka::kafka;

/// The longest a window may stay open: its extent + out-of-orderness + lateness.
/// Every open window's state is held that long; a longer one would in
/// practice never close.
pub const MAX_HOLD_MS: i64 = 7 * 24 * 3_600_000;

/// Today's defaults, shared with the flags of `run`.
pub const DEFAULT_INPUT_TOPIC: &str = "iot.readings";
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = "iot.readings.dlq";
pub const DEFAULT_MAX_OUT_OF_ORDER_MS: i64 = 2_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 5_000;

/// Names an output record uses for its own fields; no dimension or measure may take them.
const RESERVED: [&str; 9] = [
    "device",
    "device_id",
    "metric",
    "value",
    "window_start",
    "window_end",
    "final",
    "epoch",
    "aggregation",
];

type Result<T> = std::result::Result<T, Problem>;

pub(crate) fn job(raw: RawJob, whole: Range<usize>) -> Result<JobPlan> {
    let name = raw.name.ok_or_else(|| {
        Problem::new(0..0, "the job has no `name`")
            .hint("name = \"plant-3\": the job's key in the progress topic")
    })?;
    let job_name = text_name(&name, "job name")?;
    let input = match raw.input {
        Some(i) => {
            let span = i.span();
            input(i.into_inner(), span)?
        }
        None => input(RawInput::default(), whole.start..whole.start)?,
    };
    let watermark = watermark(raw.watermark.unwrap_or_default())?;
    let output = raw.output.unwrap_or_default();
    let dead_letter_topic = match &output.dead_letter_topic {
        Some(t) => topic_name(t)?,
        None => DEFAULT_DEAD_LETTER_TOPIC.to_owned(),
    };
    if raw.aggregation.is_empty() {
        return Err(
            Problem::new(whole.start..whole.start, "the job has no aggregation").hint(
                "add an [[aggregation]] with a name, a window and a topic or parquet dataset",
            ),
        );
    }
    let mut aggregations: Vec<AggregationPlan> = Vec::new();
    let mut outputs = Outputs::new(&input.topic, &dead_letter_topic);
    for a in raw.aggregation {
        let span = a.span();
        let plan = aggregation(a.into_inner(), span, &input, &watermark, &mut outputs)?;
        aggregations.push(plan);
    }
    // The alert outputs are taken only by a job with rules.
    let alert_outputs = match raw.alert.first() {
        Some(first) => alert_outputs(&output, first.span(), &mut outputs)?,
        None => AlertOutputs {
            topic: DEFAULT_ALERTS_TOPIC.to_owned(),
            format: crate::OutputFormat::Json,
            parquet: DEFAULT_ALERTS_DATASET.to_owned(),
        },
    };
    let kafka = kafka(raw.kafka.unwrap_or_default())?;
    let mut plan = JobPlan {
        name: job_name,
        kafka,
        input,
        watermark,
        dead_letter_topic,
        aggregations,
        alerts: Vec::new(),
        alert_outputs,
    };
    plan.alerts = alert::alerts(raw.alert, &plan)?;
    Ok(plan)
}

/// The alert topic and dataset: named in `[output]` or the defaults, and
/// taken by nothing else (they exist even while no rule fires).
fn alert_outputs(
    output: &RawOutput,
    first: Range<usize>,
    outputs: &mut Outputs,
) -> Result<AlertOutputs> {
    let topic = match &output.alerts_topic {
        Some(t) => (topic_name(t)?, t.span()),
        None => (DEFAULT_ALERTS_TOPIC.to_owned(), first.clone()),
    };
    if !outputs.topics.insert(topic.0.clone()) {
        return Err(Problem::new(
            topic.1,
            format!("topic `{}` is already an output or the input", topic.0),
        )
        .hint("alert events go to a topic of their own: set [output] alerts_topic"));
    }
    let parquet = match &output.alerts_parquet {
        Some(d) if is_dataset_name(d.get_ref()) => (d.get_ref().clone(), d.span()),
        Some(d) => {
            return Err(
                Problem::new(d.span(), format!("`{}` cannot name a dataset", d.get_ref()))
                    .hint("letters, digits, _ and -"),
            );
        }
        None => (DEFAULT_ALERTS_DATASET.to_owned(), first),
    };
    if !outputs.datasets.insert(parquet.0.clone()) {
        return Err(Problem::new(
            parquet.1,
            format!("dataset `{}` is already an aggregation's", parquet.0),
        )
        .hint("alert events go to a dataset of their own: set [output] alerts_parquet"));
    }
    let format = match &output.alerts_format {
        Some(f) => pick(f, &crate::OutputFormat::NAMES, "output format")?,
        None => crate::OutputFormat::Json,
    };
    Ok(AlertOutputs {
        topic: topic.0,
        format,
        parquet: parquet.0,
    })
}

fn watermark(raw: RawWatermark) -> Result<WatermarkPlan> {
    let ms = |v: &Option<S<String>>, default: i64| v.as_ref().map_or(Ok(default), duration_ms);
    let plan = WatermarkPlan {
        max_out_of_order_ms: ms(&raw.max_out_of_order, DEFAULT_MAX_OUT_OF_ORDER_MS)?,
        lateness_ms: ms(&raw.lateness, 0)?,
        idle_timeout_ms: ms(&raw.idle_timeout, DEFAULT_IDLE_TIMEOUT_MS)?,
    };
    if let Some(idle) = &raw.idle_timeout
        && plan.idle_timeout_ms == 0
    {
        return Err(Problem::new(
            idle.span(),
            "an idle timeout of 0 lets every quiet partition stop holding the watermark at once",
        )
        .hint("a few seconds: how long a caught-up partition may be silent before it is skipped"));
    }
    Ok(plan)
}

/// Output topics and datasets already taken.
struct Outputs {
    names: HashSet<String>,
    topics: HashSet<String>,
    datasets: HashSet<String>,
}

impl Outputs {
    fn new(input: &str, dead_letter: &str) -> Self {
        Self {
            names: HashSet::new(),
            topics: [input.to_owned(), dead_letter.to_owned()].into(),
            datasets: HashSet::new(),
        }
    }
}

fn aggregation(
    raw: RawAggregation,
    span: Range<usize>,
    input: &InputPlan,
    wm: &WatermarkPlan,
    outputs: &mut Outputs,
) -> Result<AggregationPlan> {
    let name = raw.name.get_ref().clone();
    if !is_dataset_name(&name) {
        return Err(Problem::new(
            raw.name.span(),
            format!("`{name}` cannot name an aggregation"),
        )
        .hint("letters, digits, _ and -: it names outputs and appears in every record"));
    }
    if !outputs.names.insert(name.clone()) {
        return Err(Problem::new(
            raw.name.span(),
            format!("a second aggregation named `{name}`"),
        ));
    }
    let group_by = match &raw.group_by {
        Some(g) => group_by(g, input)?,
        None => vec![GroupField::Device, GroupField::Metric],
    };
    let window = held_window(&raw.window, &name, wm)?;
    let measures = match &raw.measures {
        Some(m) => measures(m)?,
        None => DEFAULT_MEASURES.to_vec(),
    };
    let percentiles = percentile_mode(raw.percentiles.as_ref(), &measures, &window)?;
    let filter = raw.filter.as_ref().map(|f| filter(f, input)).transpose()?;
    let emit = match &raw.emit {
        Some(e) => pick(
            e,
            &[("final", EmitMode::Final), ("updates", EmitMode::Updates)],
            "emit",
        )?,
        None => EmitMode::Final,
    };
    let (topic, parquet) = outputs.of(&raw, &name, span)?;
    let format = match &raw.format {
        Some(f) if topic.is_none() => {
            return Err(Problem::new(
                f.span(),
                "a format without a topic: Parquet keeps its typed schema",
            )
            .hint("format is the encoding of the topic's values: add topic = \"…\" or drop it"));
        }
        Some(f) => pick(f, &crate::OutputFormat::NAMES, "output format")?,
        None => crate::OutputFormat::Json,
    };
    Ok(AggregationPlan {
        name,
        group_by,
        window,
        measures,
        percentiles,
        filter,
        emit,
        topic,
        format,
        parquet,
    })
}

/// The window, refused when it would stay open past [`MAX_HOLD_MS`].
fn held_window(raw: &S<String>, name: &str, wm: &WatermarkPlan) -> Result<WindowKind> {
    let window = window(raw)?;
    let hold = window
        .extent_ms()
        .saturating_add(wm.max_out_of_order_ms)
        .saturating_add(wm.lateness_ms);
    if hold > MAX_HOLD_MS {
        return Err(Problem::new(raw.span(), format!(
            "windows of `{name}` would stay open {} (window {} + out of order {} + lateness {})",
            Ms(hold), Ms(window.extent_ms()), Ms(wm.max_out_of_order_ms), Ms(wm.lateness_ms)
        ))
        .hint(format!("every open window's readings are held until it closes; at most {}", Ms(MAX_HOLD_MS))));
    }
    Ok(window)
}

/// `percentiles`: only with a pNN measure; `approx` only over tumbling and
/// hopping windows (a session's bounds come from its readings' times, which
/// a digest does not keep).
fn percentile_mode(
    raw: Option<&S<String>>,
    measures: &[Measure],
    window: &WindowKind,
) -> Result<PercentileMode> {
    let Some(p) = raw else {
        return Ok(PercentileMode::Exact);
    };
    let mode = pick(
        p,
        &[
            ("exact", PercentileMode::Exact),
            ("approx", PercentileMode::Approx),
        ],
        "percentiles",
    )?;
    if !measures.iter().any(Measure::is_percentile) {
        return Err(
            Problem::new(p.span(), "`percentiles` without any pNN measure")
                .hint("add a percentile to measures, e.g. \"p95\", or drop `percentiles`"),
        );
    }
    if mode == PercentileMode::Approx && matches!(window, WindowKind::Session { .. }) {
        return Err(Problem::new(p.span(), "approximate percentiles over session windows")
            .hint("a session keeps its readings to find where it ends: percentiles = \"exact\", or a tumbling or hopping window"));
    }
    Ok(mode)
}

impl Outputs {
    /// The aggregation's topic and dataset: each legal, its own, and at least one.
    fn of(
        &mut self,
        raw: &RawAggregation,
        name: &str,
        span: Range<usize>,
    ) -> Result<(Option<String>, Option<String>)> {
        let topic = raw.topic.as_ref().map(topic_name).transpose()?;
        if let (Some(t), Some(s)) = (&topic, &raw.topic)
            && !self.topics.insert(t.clone())
        {
            return Err(Problem::new(s.span(), format!("topic `{t}` is already the input, the dead-letter topic or another aggregation's output"))
                .hint("each aggregation writes a topic of its own"));
        }
        let parquet = match &raw.parquet {
            Some(p) if !is_dataset_name(p.get_ref()) => {
                return Err(Problem::new(
                    p.span(),
                    format!("`{}` cannot name a Parquet dataset", p.get_ref()),
                )
                .hint("letters, digits, _ and -: it is a directory under the Parquet dir"));
            }
            Some(p) if !self.datasets.insert(p.get_ref().clone()) => {
                return Err(Problem::new(
                    p.span(),
                    format!("dataset `{}` is already another aggregation's", p.get_ref()),
                ));
            }
            Some(p) => Some(p.get_ref().clone()),
            None => None,
        };
        if topic.is_none() && parquet.is_none() {
            return Err(Problem::new(
                span.start..span.start,
                format!("aggregation `{name}` has no output"),
            )
            .hint(format!(
                "topic = \"iot.{name}\" and/or parquet = \"{name}\""
            )));
        }
        Ok((topic, parquet))
    }
}

fn group_by(raw: &S<Vec<S<String>>>, input: &InputPlan) -> Result<Vec<GroupField>> {
    let mut out = Vec::new();
    for g in raw.get_ref() {
        let field = match g.get_ref().as_str() {
            "device" => GroupField::Device,
            "metric" => GroupField::Metric,
            other => match input.dimensions.iter().position(|d| d.name == other) {
                Some(i) => GroupField::Dimension(i),
                None => {
                    let mut known = vec!["device".to_owned(), "metric".to_owned()];
                    known.extend(input.dimensions.iter().map(|d| d.name.clone()));
                    let hint = match other {
                        "device_id" => {
                            "the device is `device` here (`device_id` in the output)".to_owned()
                        }
                        _ => format!(
                            "group by any of: {} (declare dimensions in [input])",
                            known.join(", ")
                        ),
                    };
                    return Err(
                        Problem::new(g.span(), format!("unknown group field `{other}`")).hint(hint),
                    );
                }
            },
        };
        if out.contains(&field) {
            return Err(Problem::new(
                g.span(),
                format!("`{}` twice in group_by", g.get_ref()),
            ));
        }
        out.push(field);
    }
    Ok(out)
}

/// `tumbling 1m`, `hopping 1m every 10s`, `session 30s`.
fn window(raw: &S<String>) -> Result<WindowKind> {
    let text = raw.get_ref().trim();
    let span = raw.span();
    let hint = "\"tumbling 1m\", \"hopping 1m every 10s\" or \"session 30s\" (the gap)";
    let (kind, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let dur = |t: &str| -> Result<i64> {
        let ms = parse_ms(t.trim())
            .map_err(|e| Problem::new(span.clone(), format!("`{}`: {e}", t.trim())).hint(hint))?;
        if ms <= 0 {
            return Err(Problem::new(span.clone(), "a window must last longer than 0").hint(hint));
        }
        Ok(ms)
    };
    match kind.to_ascii_lowercase().as_str() {
        "tumbling" => {
            let size = dur(rest)?;
            Ok(WindowKind::Hopping {
                size_ms: size,
                slide_ms: size,
            })
        }
        "hopping" => {
            let (size, slide) = rest.split_once(" every ").ok_or_else(|| {
                Problem::new(span.clone(), "a hopping window needs its slide")
                    .hint("\"hopping 1m every 10s\"")
            })?;
            let (size_ms, slide_ms) = (dur(size)?, dur(slide)?);
            if slide_ms > size_ms {
                return Err(Problem::new(
                    span.clone(),
                    format!(
                        "a slide of {} past a size of {} leaves readings in no window",
                        Ms(slide_ms),
                        Ms(size_ms)
                    ),
                )
                .hint("the slide is at most the size"));
            }
            Ok(WindowKind::Hopping { size_ms, slide_ms })
        }
        "session" => Ok(WindowKind::Session { gap_ms: dur(rest)? }),
        _ => Err(Problem::new(span, format!("unknown window `{text}`")).hint(hint)),
    }
}

fn measures(raw: &S<Vec<S<String>>>) -> Result<Vec<Measure>> {
    if raw.get_ref().is_empty() {
        return Err(Problem::new(raw.span(), "an aggregation without measures")
            .hint(format!("any of {}, or pNN", names_of(&SIMPLE_MEASURES))));
    }
    let mut out: Vec<Measure> = Vec::new();
    for m in raw.get_ref() {
        let text = m.get_ref().trim();
        let measure = match SIMPLE_MEASURES.iter().find(|(n, _)| *n == text) {
            Some((_, m)) => m.clone(),
            None => Measure::Percentile(percentile(text).ok_or_else(|| {
                Problem::new(m.span(), format!("unknown measure `{text}`")).hint(format!(
                    "any of {}, or a percentile p0.1 … p99.9",
                    names_of(&SIMPLE_MEASURES)
                ))
            })?),
        };
        if out.iter().any(|o| o.name() == measure.name()) {
            return Err(Problem::new(
                m.span(),
                format!("`{}` twice in measures", measure.name()),
            ));
        }
        out.push(measure);
    }
    Ok(out)
}

/// `p95`, `p99.9`: 0 < q < 100.
fn percentile(text: &str) -> Option<Percentile> {
    let digits = text.strip_prefix('p')?;
    let ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !digits.starts_with('.')
        && !digits.ends_with('.');
    let pct: f64 = digits.parse().ok().filter(|_| ok)?;
    // q as one integer ratio, rounded once: 999/1000, not 99.9/100 (0.9990000000000001).
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac = frac.trim_end_matches('0');
    let scale = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let units: u64 = format!("{whole}{frac}").parse().ok()?;
    (pct > 0.0 && pct < 100.0).then(|| Percentile {
        name: format!("p{pct}"),
        q: units as f64 / (100 * scale) as f64,
    })
}

/// What a filter may name: the reading's own fields.
struct ReadingFields<'a>(&'a InputPlan);

impl Fields for ReadingFields<'_> {
    type Field = FilterField;
    fn resolve(&self, name: &str) -> std::result::Result<(FilterField, FieldType), String> {
        match name {
            "device" => Ok((FilterField::Device, FieldType::Text)),
            "metric" => Ok((FilterField::Metric, FieldType::Text)),
            "value" => Ok((FilterField::Value, FieldType::Number)),
            other => match self.0.dimensions.iter().position(|d| d.name == other) {
                Some(i) => Ok((FilterField::Dimension(i), FieldType::Text)),
                None => {
                    let mut known = vec!["device", "metric", "value"];
                    known.extend(self.0.dimensions.iter().map(|d| d.name.as_str()));
                    Err(match other {
                        "device_id" => "the device is `device` in a filter".to_owned(),
                        _ => format!(
                            "a filter reads {} (dimensions are declared in [input]; a metric is `metric == 'name'`)",
                            known.join(", ")
                        ),
                    })
                }
            },
        }
    }
}

fn filter(raw: &S<String>, input: &InputPlan) -> Result<Expr<FilterField>> {
    // Columns inside the string: the span includes its opening quote (basic strings without escapes).
    let at = |i: usize| raw.span().start + 1 + i;
    let e = expr::parse(raw.get_ref(), &ReadingFields(input)).map_err(|e| {
        let p = Problem::new(at(e.at)..at(e.at) + 1, e.message);
        match e.hint {
            Some(h) => p.hint(h),
            None => p,
        }
    })?;
    // A metric the input never produces would silently keep nothing.
    if let Mapping::Fields(FieldMapping {
        metrics: MetricFields::Listed(listed),
        ..
    }) = &input.mapping
        && listed.iter().all(|m| matches!(m, MetricField::One(_)))
    {
        let names: Vec<&str> = listed
            .iter()
            .filter_map(|m| match m {
                MetricField::One(p) => Some(p.last()),
                MetricField::EveryIn(_) => None,
            })
            .collect();
        let mut unknown = None;
        walk_metric_literals(&e, &mut |l| {
            if let Literal::Text(t) = l
                && !names.contains(&t.as_str())
            {
                unknown.get_or_insert_with(|| t.clone());
            }
        });
        if let Some(t) = unknown {
            let i = raw.get_ref().find(&t).unwrap_or_default();
            return Err(Problem::new(
                at(i)..at(i) + t.len(),
                format!("no metric `{t}` in [input] metrics"),
            )
            .hint(format!("the input's metrics: {}", names.join(", "))));
        }
    }
    Ok(e)
}

fn walk_metric_literals(e: &Expr<FilterField>, f: &mut impl FnMut(&Literal)) {
    match e {
        Expr::Compare {
            field: FilterField::Metric,
            value,
            ..
        } => f(value),
        Expr::In {
            field: FilterField::Metric,
            values,
            ..
        } => values.iter().for_each(f),
        Expr::Not(e) => walk_metric_literals(e, f),
        Expr::And(a, b) | Expr::Or(a, b) => {
            walk_metric_literals(a, f);
            walk_metric_literals(b, f);
        }
        Expr::Compare { .. } | Expr::In { .. } => {}
    }
}

fn names_of<T>(table: &[(&str, T)]) -> String {
    table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn pick<T: Copy>(raw: &S<String>, table: &[(&str, T)], key: &str) -> Result<T> {
    table
        .iter()
        .find(|(n, _)| *n == raw.get_ref().as_str())
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            Problem::new(raw.span(), format!("unknown {key} `{}`", raw.get_ref()))
                .hint(format!("one of {}", names_of(table)))
        })
}

fn path(s: &S<String>) -> Result<FieldPath> {
    path_of(s.get_ref(), s.span())
}

fn path_of(text: &str, span: Range<usize>) -> Result<FieldPath> {
    FieldPath::parse(text).ok_or_else(|| {
        Problem::new(span, format!("`{text}` is not a field path"))
            .hint("field names joined by dots for nested objects: \"meta.site\"")
    })
}

fn duration_ms(s: &S<String>) -> Result<i64> {
    parse_ms(s.get_ref()).map_err(|e| {
        Problem::new(s.span(), format!("`{}`: {e}", s.get_ref()))
            .hint("a duration: \"500ms\", \"5s\", \"1m 30s\"")
    })
}

/// A duration in whole milliseconds.
pub(crate) fn parse_ms(text: &str) -> std::result::Result<i64, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("durations are whole milliseconds".into());
    }
    i64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms <= 100 * 365 * 86_400_000)
        .ok_or_else(|| "longer than a century".to_owned())
}

fn text_name(s: &S<String>, what: &str) -> Result<String> {
    let t = s.get_ref();
    if t.is_empty() || t.len() > 200 || t.chars().any(|c| c == '|' || c.is_control()) {
        return Err(Problem::new(s.span(), format!("`{t}` cannot be a {what}"))
            .hint("1 to 200 characters, without `|` or control characters"));
    }
    Ok(t.clone())
}

/// Kafka's rule for topic names.
fn topic_name(s: &S<String>) -> Result<String> {
    let t = s.get_ref();
    let legal = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !legal {
        return Err(
            Problem::new(s.span(), format!("`{t}` is not a Kafka topic name"))
                .hint("1 to 249 of letters, digits, `.`, `_` and `-`"),
        );
    }
    Ok(t.clone())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_dataset_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_named_canonically() {
        let p = |t| percentile(t).map(|p| (p.name, p.q));
        assert_eq!(p("p95"), Some(("p95".into(), 0.95)));
        assert_eq!(p("p99.9"), Some(("p99.9".into(), 0.999)));
        assert_eq!(p("p50.0"), Some(("p50".into(), 0.5)));
        for bad in ["p0", "p100", "p", "p.5", "p5.", "p-1", "q5", "p1e1"] {
            assert_eq!(p(bad), None, "{bad}");
        }
        let m = Measure::Percentile(Percentile {
            name: "p99.9".into(),
            q: 0.999,
        });
        assert_eq!((m.name(), m.column()), ("p99.9".into(), "p99_9".into()));
    }

    #[test]
    fn durations_are_whole_milliseconds() {
        assert_eq!(parse_ms("1m 30s"), Ok(90_000));
        assert_eq!(parse_ms("0s"), Ok(0));
        assert!(parse_ms("1500us").is_err());
        assert!(parse_ms("soon").is_err());
    }
}
