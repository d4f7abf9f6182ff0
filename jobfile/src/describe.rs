//! The plan as `iotflow check` prints it: inputs, routing, each
//! aggregation's key, window, state kept and outputs.

use std::fmt::{self, Write as _};

use crate::alert::{AlertPlan, AlertRule};
use crate::plan::*;

impl JobPlan {
    /// The output fields of an aggregation's records, in order.
    pub fn output_fields(&self, a: &AggregationPlan) -> Vec<String> {
        let mut out: Vec<String> = a
            .group_by
            .iter()
            .map(|g| self.group_output_name(g).to_owned())
            .collect();
        out.extend(["window_start".to_owned(), "window_end".to_owned()]);
        out.extend(a.measures.iter().map(Measure::name));
        out.extend(["final", "epoch", "aggregation"].map(str::to_owned));
        out
    }

    /// A group field's name in output records (the device is `device_id`).
    pub fn group_output_name(&self, g: &GroupField) -> &str {
        match g {
            GroupField::Device => "device_id",
            GroupField::Metric => "metric",
            GroupField::Dimension(i) => self
                .input
                .dimensions
                .get(*i)
                .map_or("", |d| d.name.as_str()),
        }
    }

    /// A group field's name in the job file.
    pub fn group_name(&self, g: &GroupField) -> &str {
        match g {
            GroupField::Device => "device",
            other => self.group_output_name(other),
        }
    }
}

impl fmt::Display for JobPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "job {}", self.name)?;
        write_kafka(f, &self.kafka)?;
        write_input(f, &self.input)?;
        write_mapping(f, &self.input)?;
        let wm = &self.watermark;
        writeln!(
            f,
            "watermark the largest event time seen − {} (per partition; the job's is the least), a partition quiet {} stops holding it",
            Ms(wm.max_out_of_order_ms),
            Ms(wm.idle_timeout_ms)
        )?;
        writeln!(
            f,
            "routing   parse and dedupe on the device's worker (a hash of the device id, the same in every process)"
        )?;
        writeln!(
            f,
            "dedupe    (device, metric, seq) of sequenced readings, kept until the reading is final in every aggregation"
        )?;
        writeln!(f, "dead letters → topic {}", self.dead_letter_topic)?;
        for a in &self.aggregations {
            writeln!(f)?;
            self.write_aggregation(f, a)?;
        }
        if !self.alerts.is_empty() {
            writeln!(f)?;
            let o = &self.alert_outputs;
            writeln!(
                f,
                "alerts → topic {}{}, Parquet dataset {}/; judged in event time on final windows, per group key; key alert|group values|since; fields alert, state (firing | resolved), severity, group fields, window_start, window_end, value, threshold, since, epoch",
                o.topic,
                match o.format {
                    crate::OutputFormat::Json => String::new(),
                    crate::OutputFormat::Avro => format!(
                        " in Avro (group fields as the map `labels`), its schema registered under {}-value",
                        o.topic
                    ),
                },
                o.parquet
            )?;
        }
        for a in &self.alerts {
            self.write_alert(f, a)?;
        }
        Ok(())
    }
}

fn write_input(f: &mut fmt::Formatter<'_>, input: &InputPlan) -> fmt::Result {
    let format = match input.format {
        crate::InputFormat::Json => "JSON",
        crate::InputFormat::Avro => "Avro (Confluent wire format)",
        crate::InputFormat::Protobuf => "Protobuf (Confluent wire format)",
        crate::InputFormat::JsonSchema => "JSON with a JSON Schema (Confluent wire format)",
    };
    write!(f, "input     topic {}, {format}", input.topic)?;
    match &input.registry.url {
        Some(url) => write!(f, ", schemas from the registry at {url}")?,
        None if input.format.needs_registry() => {
            write!(f, ", schemas from the registry of --schema-registry")?
        }
        None => {}
    }
    if let Some(user) = &input.registry.username {
        write!(f, " as {user}")?;
    }
    writeln!(f)
}

fn write_mapping(f: &mut fmt::Formatter<'_>, input: &InputPlan) -> fmt::Result {
    match &input.mapping {
        Mapping::Preset(Preset::Auto) => writeln!(
            f,
            "          preset auto: each record canonical, flat or long (BRIEF §3), recognised by its fields"
        )?,
        Mapping::Preset(p) => writeln!(f, "          preset {}", p.name())?,
        Mapping::Fields(m) => {
            let unit = match m.time_unit {
                TimeUnit::Auto => "a number's unit by magnitude".to_owned(),
                u => format!("numbers in {}", u.name()),
            };
            write!(
                f,
                "          device ← {}, time ← {} ({unit}, or RFC 3339)",
                m.device, m.time
            )?;
            if let Some(seq) = &m.seq {
                write!(f, ", seq ← {seq}")?;
            }
            writeln!(f)?;
            let metrics = match &m.metrics {
                MetricFields::EveryOtherNumeric => "every other numeric top-level field".to_owned(),
                MetricFields::Listed(l) => l
                    .iter()
                    .map(|m| match m {
                        MetricField::One(p) if p.0.len() == 1 => p.to_string(),
                        MetricField::One(p) => format!("{} ← {p}", p.last()),
                        MetricField::EveryIn(p) => format!("every numeric field of {p}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                MetricFields::Long { name, value } => {
                    format!("one per record: name ← {name}, value ← {value}")
                }
            };
            writeln!(f, "          metrics: {metrics}")?;
        }
    }
    if !input.dimensions.is_empty() {
        let dims: Vec<String> = input
            .dimensions
            .iter()
            .map(|d| match d.path.0.len() == 1 && d.path.last() == d.name {
                true => d.name.clone(),
                false => format!("{} ← {}", d.name, d.path),
            })
            .collect();
        writeln!(
            f,
            "          dimensions: {} (text; a reading without one an aggregation groups by is a dead letter `missing_dimension` there)",
            dims.join(", ")
        )?;
    }
    Ok(())
}

impl JobPlan {
    fn write_aggregation(&self, f: &mut fmt::Formatter<'_>, a: &AggregationPlan) -> fmt::Result {
        let key: Vec<&str> = a.group_by.iter().map(|g| self.group_name(g)).collect();
        writeln!(f, "aggregation {}", a.name)?;
        match key.is_empty() {
            true => writeln!(f, "  key       none: fleet-wide")?,
            false => writeln!(f, "  key       {}", key.join(", "))?,
        }
        let routing = if a.keyed_by_device() {
            "stays on the device's worker (no second exchange)".to_owned()
        } else if a.group_by.is_empty() {
            "every worker sorts its readings into one run per window; the runs are merged on one worker".to_owned()
        } else {
            format!(
                "exchanged by ({}) after dedupe, as sorted runs per window",
                key.join(", ")
            )
        };
        writeln!(f, "  routing   {routing}")?;
        let closes = match a.window {
            WindowKind::Session { .. } => {
                "a session is final when the watermark passes its last reading + gap + lateness"
            }
            WindowKind::Hopping { .. } => "final when the watermark passes its end + lateness",
        };
        writeln!(
            f,
            "  window    {} ({closes}, lateness {})",
            a.window,
            Ms(self.watermark.lateness_ms)
        )?;
        if let Some(filter) = &a.filter {
            writeln!(
                f,
                "  where     {filter} (readings it drops are counted, not dead-lettered)"
            )?;
        }
        let measures: Vec<String> = a
            .measures
            .iter()
            .map(|m| match (m, a.percentiles) {
                (Measure::Percentile(p), PercentileMode::Exact) => format!("{} (exact)", p.name),
                (Measure::Percentile(p), PercentileMode::Approx) => format!("{} (approx)", p.name),
                (m, _) => m.name(),
            })
            .collect();
        writeln!(f, "  measures  {}", measures.join(", "))?;
        writeln!(f, "  state     {}", self.state_kept(a))?;
        writeln!(
            f,
            "  emit      {}",
            match a.emit {
                EmitMode::Final => "each window once, when final",
                EmitMode::Updates => "changed windows every epoch (final = false), then once final",
            }
        )?;
        let mut outputs = Vec::new();
        if let Some(t) = &a.topic {
            outputs.push(match a.format {
                crate::OutputFormat::Json => {
                    format!("topic {t} (created with the input's partition count)")
                }
                crate::OutputFormat::Avro => format!(
                    "topic {t} in Avro, its schema registered under {t}-value (created with the input's partition count)"
                ),
            });
        }
        if let Some(p) = &a.parquet {
            outputs.push(format!("Parquet dataset {p}/"));
        }
        writeln!(f, "  outputs   {}", outputs.join(", "))?;
        let key_fields: Vec<&str> = a
            .group_by
            .iter()
            .map(|g| self.group_output_name(g))
            .collect();
        let mut record_key = key_fields.join("|");
        if !record_key.is_empty() {
            record_key.push('|');
        }
        writeln!(
            f,
            "  record    key {record_key}window_start; {}",
            self.output_fields(a).join(", ")
        )
    }

    fn state_kept(&self, a: &AggregationPlan) -> String {
        let mut s = String::new();
        let unit = match a.window {
            WindowKind::Session { .. } => "open session",
            WindowKind::Hopping { .. } => "open window",
        };
        match a.percentiles {
            PercentileMode::Exact => {
                let _ = write!(s, "per key and {unit}: its readings (time, value), sorted");
            }
            PercentileMode::Approx => {
                let _ = write!(
                    s,
                    "per key and {unit}: a digest per epoch (DDSketch bins at 1 % relative accuracy, \
                     exact sums, the extreme readings)"
                );
            }
        }
        let held =
            a.window.extent_ms() + self.watermark.max_out_of_order_ms + self.watermark.lateness_ms;
        let _ = write!(s, "; held up to {} of event time", Ms(held));
        s
    }
}

impl JobPlan {
    fn write_alert(&self, f: &mut fmt::Formatter<'_>, a: &AlertPlan) -> fmt::Result {
        let on = &self.aggregations[a.on.min(self.aggregations.len().saturating_sub(1))];
        writeln!(
            f,
            "alert {} ({}, severity {}) on {}",
            a.name,
            a.rule.kind(),
            a.severity,
            on.name
        )?;
        let windows = |n: u32| match n {
            1 => "a window".to_owned(),
            n => format!("{n} consecutive windows"),
        };
        let measure = |i: usize| on.measures.get(i).map_or_else(String::new, Measure::name);
        match &a.rule {
            AlertRule::Condition {
                when,
                clear,
                streak,
                change_of,
            } => {
                if let Some(m) = change_of {
                    writeln!(
                        f,
                        "  change    of {} from the previous consecutive window (`change`; per second: `rate`)",
                        measure(*m)
                    )?;
                }
                writeln!(f, "  fires     when {when} holds for {}", windows(*streak))?;
                match clear {
                    Some(c) => writeln!(f, "  resolves  at a later window where {c}")?,
                    None => writeln!(f, "  resolves  at a later window where it does not hold")?,
                }
            }
            AlertRule::Anomaly {
                of,
                deviations,
                clear_deviations,
                alpha,
                warmup,
                streak,
            } => {
                writeln!(
                    f,
                    "  fires     when {} is more than {deviations} standard deviations from its baseline for {} (baseline: weight {alpha} per window, judged after {warmup} windows)",
                    measure(*of),
                    windows(*streak)
                )?;
                writeln!(
                    f,
                    "  resolves  within {clear_deviations} standard deviations"
                )?;
            }
            AlertRule::Absence { absent_for_ms } => {
                writeln!(
                    f,
                    "  fires     when a key has no reading for {} while the watermark moves on (not at the end of a bounded input)",
                    Ms(*absent_for_ms)
                )?;
                writeln!(f, "  resolves  at its next reading")?;
            }
            AlertRule::BadData {
                share,
                clear_share,
                min_records,
                streak,
            } => {
                writeln!(
                    f,
                    "  counts    per device and {} window: its records, and those dead-lettered as {}",
                    on.window,
                    crate::alert::BAD_DATA_REASONS.join(", ")
                )?;
                writeln!(
                    f,
                    "  fires     when more than {share} of them are dead-lettered (of at least {min_records}) for {}",
                    windows(*streak)
                )?;
                writeln!(f, "  resolves  at a later window at or below {clear_share}")?;
            }
        }
        Ok(())
    }
}

/// The `[kafka]` settings, when the file states any (the flags may add more).
fn write_kafka(f: &mut fmt::Formatter<'_>, k: &crate::kafka::KafkaSettings) -> fmt::Result {
    if *k == crate::kafka::KafkaSettings::default() {
        return Ok(());
    }
    let mut parts = vec![k.security_protocol.unwrap_or_default().name().to_owned()];
    if let Some(ca) = &k.ssl_ca_location {
        parts.push(format!("CA {}", ca.display()));
    }
    if let Some(cert) = &k.ssl_certificate_location {
        parts.push(format!("client certificate {}", cert.display()));
    }
    if let Some(m) = k.sasl_mechanism {
        parts.push(format!("SASL {m}"));
    }
    if let Some(u) = &k.sasl_username {
        parts.push(format!("as {u}"));
    }
    if let Some(v) = &k.sasl_password_env {
        parts.push(format!("password from ${v}"));
    }
    writeln!(f, "kafka     {}", parts.join(", "))
}
