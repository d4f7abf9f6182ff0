//! `[input]`: today's shapes as presets, or the user's own fields by path,
//! and the dimensions every reading keeps.

use std::collections::HashSet;
use std::ops::Range;

use super::{
    DEFAULT_INPUT_TOPIC, RESERVED, Result, is_identifier, path, path_of, pick, topic_name,
};
use crate::error::Problem;
use crate::plan::*;
use crate::raw::{RawInput, S};
use crate::registry::{InputFormat, RegistrySettings};

pub(super) fn input(raw: RawInput, span: Range<usize>) -> Result<InputPlan> {
    let topic = match &raw.topic {
        Some(t) => topic_name(t)?,
        None => DEFAULT_INPUT_TOPIC.to_owned(),
    };
    let dimensions = dimensions(raw.dimensions.as_deref().unwrap_or_default())?;
    let mapped = [
        &raw.device,
        &raw.time,
        &raw.seq,
        &raw.metric_field,
        &raw.value_field,
    ]
    .into_iter()
    .flatten()
    .map(S::span)
    .chain(raw.metrics.as_ref().map(S::span))
    .chain(raw.time_unit.as_ref().map(S::span))
    .next();
    let mapping = match (&raw.preset, mapped) {
        (Some(p), Some(field)) => {
            return Err(Problem::new(
                field,
                "a preset fixes the fields; this one cannot be mapped too",
            )
            .hint(format!(
                "drop `preset = \"{}\"` to map every field yourself",
                p.get_ref()
            )));
        }
        (Some(p), None) => Mapping::Preset(pick(p, &Preset::NAMES, "preset")?),
        (None, None) => Mapping::Preset(Preset::Auto),
        (None, Some(_)) => Mapping::Fields(fields(&raw, span)?),
    };
    if let Mapping::Fields(f) = &mapping {
        check_overlap(f, &dimensions, &raw)?;
    }
    let (format, registry) = format_and_registry(&raw)?;
    Ok(InputPlan {
        topic,
        format,
        registry,
        mapping,
        dimensions,
    })
}

/// `format` and the registry that holds its schemas; no password inline.
fn format_and_registry(raw: &RawInput) -> Result<(InputFormat, RegistrySettings)> {
    if let Some(p) = &raw.schema_registry_password {
        return Err(Problem::new(p.span(), "no passwords in job files")
            .secret()
            .hint("schema_registry_password_env = \"VARIABLE\" names the environment variable that holds it"));
    }
    let format = match &raw.format {
        Some(f) => pick(f, &InputFormat::NAMES, "format")?,
        None => InputFormat::Json,
    };
    let text = |s: &Option<S<String>>, hint: &str| -> Result<Option<String>> {
        match s {
            Some(v) if v.get_ref().trim().is_empty() => {
                Err(Problem::new(v.span(), "empty").hint(hint.to_owned()))
            }
            Some(v) => Ok(Some(v.get_ref().clone())),
            None => Ok(None),
        }
    };
    if let Some(url) = &raw.schema_registry {
        let u = url.get_ref();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(
                Problem::new(url.span(), format!("`{u}` is not an http(s) URL"))
                    .hint("schema_registry = \"http://localhost:8081\""),
            );
        }
    }
    let registry = RegistrySettings {
        url: text(
            &raw.schema_registry,
            "schema_registry = \"http://localhost:8081\"",
        )?,
        username: text(
            &raw.schema_registry_username,
            "the registry's basic-auth user",
        )?,
        password_env: text(
            &raw.schema_registry_password_env,
            "the name of an environment variable",
        )?,
    };
    Ok((format, registry))
}

fn fields(raw: &RawInput, span: Range<usize>) -> Result<FieldMapping> {
    let required = |v: &Option<S<String>>, key: &str, example: &str| {
        v.as_ref().map(path).transpose()?.ok_or_else(|| {
            Problem::new(
                span.start..span.start,
                format!("[input] maps its own fields but has no `{key}`"),
            )
            .hint(format!(
                "{key} = \"{example}\", or a preset: preset = \"auto\""
            ))
        })
    };
    let device = required(&raw.device, "device", "device_id")?;
    let time = required(&raw.time, "time", "timestamp")?;
    let time_unit = match &raw.time_unit {
        Some(u) => pick(u, &TimeUnit::NAMES, "time_unit")?,
        None => TimeUnit::Auto,
    };
    let seq = raw.seq.as_ref().map(path).transpose()?;
    let metrics = match (&raw.metrics, &raw.metric_field, &raw.value_field) {
        (Some(m), None, None) => {
            if m.get_ref().is_empty() {
                return Err(Problem::new(m.span(), "an empty metric list reads nothing")
                    .hint("list metrics, or leave `metrics` out for every other numeric field"));
            }
            MetricFields::Listed(
                m.get_ref()
                    .iter()
                    .map(metric_field)
                    .collect::<Result<_>>()?,
            )
        }
        (None, Some(name), Some(value)) => MetricFields::Long {
            name: path(name)?,
            value: path(value)?,
        },
        (None, None, None) => MetricFields::EveryOtherNumeric,
        (Some(m), _, _) => {
            return Err(Problem::new(m.span(), "`metrics` and `metric_field`/`value_field` exclude each other")
                .hint("metrics lists value fields; metric_field + value_field read one named value per record"));
        }
        (None, Some(one), None) | (None, None, Some(one)) => {
            return Err(Problem::new(one.span(), "`metric_field` and `value_field` go together")
                .hint("metric_field = \"sensor\" names the metric, value_field = \"value\" holds its value"));
        }
    };
    Ok(FieldMapping {
        device,
        time,
        time_unit,
        seq,
        metrics,
    })
}

/// The device, time, seq and dimension fields are not metrics.
fn check_overlap(f: &FieldMapping, dims: &[Dimension], raw: &RawInput) -> Result<()> {
    let MetricFields::Listed(listed) = &f.metrics else {
        return Ok(());
    };
    let mut taken: Vec<(&FieldPath, &str)> = vec![(&f.device, "the device"), (&f.time, "the time")];
    taken.extend(f.seq.iter().map(|s| (s, "the seq")));
    taken.extend(dims.iter().map(|d| (&d.path, "a dimension")));
    for (m, s) in listed
        .iter()
        .zip(raw.metrics.iter().flat_map(|m| m.get_ref()))
    {
        let MetricField::One(p) = m else { continue };
        if let Some((_, what)) = taken.iter().find(|(t, _)| *t == p) {
            return Err(Problem::new(
                s.span(),
                format!("`{p}` is {what}, not a metric"),
            ));
        }
    }
    let mut names = HashSet::new();
    for (m, s) in listed
        .iter()
        .zip(raw.metrics.iter().flat_map(|m| m.get_ref()))
    {
        if let MetricField::One(p) = m
            && !names.insert(p.last().to_owned())
        {
            return Err(
                Problem::new(s.span(), format!("two metrics named `{}`", p.last()))
                    .hint("a listed metric is named by its path's last segment"),
            );
        }
    }
    Ok(())
}

fn metric_field(s: &S<String>) -> Result<MetricField> {
    match s.get_ref().strip_suffix(".*") {
        Some(object) => Ok(MetricField::EveryIn(path_of(object, s.span())?)),
        None => Ok(MetricField::One(path(s)?)),
    }
}

fn dimensions(raw: &[S<String>]) -> Result<Vec<Dimension>> {
    let mut out: Vec<Dimension> = Vec::new();
    for d in raw {
        let (p, alias) = match d.get_ref().split_once(" as ") {
            Some((p, a)) => (p.trim(), Some(a.trim())),
            None => (d.get_ref().trim(), None),
        };
        let path = path_of(p, d.span())?;
        let name = alias.unwrap_or(path.last()).to_owned();
        if !is_identifier(&name) {
            return Err(Problem::new(d.span(), format!("`{name}` cannot name a dimension"))
                .hint("letters, digits and _, not starting with a digit; give a path an alias: \"meta.line-no as line\""));
        }
        if RESERVED.contains(&name.as_str()) || SIMPLE_MEASURES.iter().any(|(m, _)| *m == name) {
            return Err(Problem::new(
                d.span(),
                format!("a dimension named `{name}` would collide with an output field"),
            )
            .hint(format!("give it an alias: \"{p} as {name}_tag\"")));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(
                Problem::new(d.span(), format!("two dimensions named `{name}`"))
                    .hint("give one an alias: \"path as other_name\""),
            );
        }
        out.push(Dimension { name, path });
    }
    Ok(out)
}
