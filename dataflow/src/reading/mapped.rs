//! Records read through a job file's input mapping: the user's own field
//! names, dotted paths into nested objects, and dimensions.
//!
//! ```text
//!   bytes ──serde_json──▶ object ──dimensions (taken out)──▶ Dims
//!     preset: the rest read as today's shapes (same aliases, same validation)
//!     fields: device / time / seq / metrics by path ──▶ [Reading]
//! ```
//!
//! The default job (a preset, no dimensions) never comes here: it keeps the
//! zero-copy scanner of [`super::parse_borrowed`]. A mapped record is parsed
//! into a `serde_json::Value` once; paths are looked up in it.

use std::borrow::Cow;
use std::sync::Arc;

use compact_str::CompactString;
use iotflow_jobfile::{
    FieldMapping, FieldPath, Mapping, MetricField, MetricFields, Preset, TimeUnit,
};
use iotflow_schema::{DecodeError, Decoder};
use serde_json::{Map, Value};

use super::{
    Field, Identity, ParseLimits, RawRecord, Reading, RejectReason, Scalar, TsKey, checked_text,
    classify_json_error, nulled_non_finite, valid_name,
};

/// A record's dimension values, in the job's dimension order; `None` where missing.
pub type Dims = Vec<Option<CompactString>>;

/// How a job's records become readings and dimensions.
#[derive(Debug, Clone)]
pub struct InputMapping {
    mapping: Mapping,
    dimensions: Vec<FieldPath>,
    /// Registry-encoded values (Avro…) are decoded into JSON first.
    decoder: Option<Arc<Decoder>>,
}

impl InputMapping {
    pub fn new(mapping: Mapping, dimensions: Vec<FieldPath>) -> Self {
        Self {
            mapping,
            dimensions,
            decoder: None,
        }
    }

    /// Values decoded by `decoder` (from the Confluent wire format) instead of read as JSON text.
    pub fn decoded_by(mut self, decoder: Arc<Decoder>) -> Self {
        self.decoder = Some(decoder);
        self
    }

    /// Its field mapping and dimension paths, for readers of other layouts
    /// (Parquet columns); `None` for registry-encoded input.
    pub(super) fn parts(&self) -> Option<(&Mapping, &[FieldPath])> {
        self.decoder
            .is_none()
            .then_some((&self.mapping, self.dimensions.as_slice()))
    }

    /// The decoder of a registry-encoded input.
    pub fn decoder(&self) -> Option<&Arc<Decoder>> {
        self.decoder.as_ref()
    }

    /// Today's shapes as JSON text, no dimensions: the scanner's fast path applies.
    pub fn is_default(&self) -> bool {
        self.mapping == Mapping::Preset(Preset::Auto)
            && self.dimensions.is_empty()
            && self.decoder.is_none()
    }

    /// The field paths a record of this mapping must be able to hold (a
    /// schema without one of them cannot feed the job): the device and the
    /// time, and each listed metric or the long shape's two fields.
    pub fn required_paths(mapping: &Mapping) -> Vec<Vec<String>> {
        let Mapping::Fields(f) = mapping else {
            return Vec::new();
        };
        let mut paths = vec![f.device.0.clone(), f.time.0.clone()];
        match &f.metrics {
            MetricFields::Listed(listed) => paths.extend(listed.iter().map(|m| match m {
                MetricField::One(p) | MetricField::EveryIn(p) => p.0.clone(),
            })),
            MetricFields::Long { name, value } => {
                paths.push(name.0.clone());
                paths.push(value.0.clone());
            }
            MetricFields::EveryOtherNumeric => {}
        }
        paths
    }

    /// A record's value as a JSON object: decoded, or parsed from its text.
    fn value(&self, payload: &[u8], limits: &ParseLimits) -> Result<Value, RejectReason> {
        let Some(decoder) = &self.decoder else {
            let text = checked_text(payload, limits)?;
            return serde_json::from_str(text).map_err(|e| classify_json_error(text, &e));
        };
        if payload.len() > limits.max_bytes {
            return Err(RejectReason::Oversized);
        }
        decoder.decode(payload).map_err(|e| match e {
            DecodeError::UnknownSchema => RejectReason::UnknownSchema,
            DecodeError::SchemaMismatch => RejectReason::SchemaMismatch,
            DecodeError::NonFinite => RejectReason::NonFiniteValue,
            _ => RejectReason::Undecodable,
        })
    }

    /// Parses one record into `out` (appending) and its dimensions into `dims`
    /// (replacing); on error nothing is appended.
    pub fn parse(
        &self,
        payload: &[u8],
        limits: &ParseLimits,
        out: &mut Vec<Reading>,
        dims: &mut Dims,
    ) -> Result<(), RejectReason> {
        let mut value = self.value(payload, limits)?;
        let Value::Object(object) = &mut value else {
            return Err(RejectReason::MalformedJson);
        };
        dims.clear();
        for path in &self.dimensions {
            dims.push(dimension(object, path, limits)?);
        }
        match &self.mapping {
            Mapping::Preset(preset) => preset_readings(*preset, object, limits, out),
            Mapping::Fields(f) => field_readings(f, object, limits, out),
        }
    }
}

impl InputMapping {
    /// The device, event time and `seq` of a record this mapping refused,
    /// when it has valid ones (a record refused for a value, a dimension or
    /// having no metrics still says who sent it and when). Parses the record
    /// again: only refused records come here.
    pub fn identity(&self, payload: &[u8], limits: &ParseLimits) -> Option<Identity> {
        // A value written as NaN is what refused the record, not who sent it.
        let value: Value = match &self.decoder {
            Some(decoder) if payload.len() <= limits.max_bytes => {
                decoder.decode_nulling_non_finite(payload).ok()?
            }
            Some(_) => return None,
            None => {
                let text = checked_text(payload, limits).ok()?;
                match serde_json::from_str(text) {
                    Ok(v) => v,
                    Err(_) => serde_json::from_str(&nulled_non_finite(text)?).ok()?,
                }
            }
        };
        let object = value.as_object()?;
        let mut raw = RawRecord::default();
        match &self.mapping {
            Mapping::Preset(_) => {
                for (key, v) in object {
                    let field = Field::of(key);
                    if matches!(field, Field::DeviceId | Field::Ts(_) | Field::Seq) {
                        raw.set_field(field, Cow::Borrowed(key), scalar(v));
                    }
                }
            }
            Mapping::Fields(f) => {
                raw.device_id = get(object, &f.device.0).map(scalar);
                raw.ts = get(object, &f.time.0).map(|v| (ts_key(f.time_unit), scalar(v)));
                raw.seq = f.seq.as_ref().and_then(|p| get(object, &p.0)).map(scalar);
            }
        }
        raw.identity(limits).ok()
    }
}

/// A dimension's value, taken out of the record so a preset does not read it
/// as a metric. Text or an integer; anything else counts as missing.
fn dimension(
    object: &mut Map<String, Value>,
    path: &FieldPath,
    limits: &ParseLimits,
) -> Result<Option<CompactString>, RejectReason> {
    let value = match take(object, &path.0) {
        Some(Value::String(s)) => CompactString::from(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => CompactString::from(n.to_string()),
        _ => return Ok(None),
    };
    // Dimension values end up in output keys, as names do.
    if !valid_name(&value, limits.max_id_len) {
        return Err(RejectReason::InvalidDimension);
    }
    Ok(Some(value))
}

fn take(object: &mut Map<String, Value>, path: &[String]) -> Option<Value> {
    match path {
        [] => None,
        [last] => object.remove(last),
        [first, rest @ ..] => match object.get_mut(first) {
            Some(Value::Object(inner)) => take(inner, rest),
            _ => None,
        },
    }
}

fn get<'v>(object: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (last, parents) = path.split_last()?;
    let mut at = object;
    for p in parents {
        at = at.get(p)?.as_object()?;
    }
    at.get(last)
}

fn scalar(v: &Value) -> Scalar<'_> {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Scalar::Int(i.into()),
            (_, Some(u)) => Scalar::Int(u.into()),
            _ => n.as_f64().map_or(Scalar::Other, Scalar::Num),
        },
        Value::String(s) => Scalar::Str(Cow::Borrowed(s)),
        _ => Scalar::Other,
    }
}

/// Today's shapes, read from what is left after the dimensions.
fn preset_readings(
    preset: Preset,
    object: &Map<String, Value>,
    limits: &ParseLimits,
    out: &mut Vec<Reading>,
) -> Result<(), RejectReason> {
    let mut raw = RawRecord::default();
    for (key, v) in object {
        let field = Field::of(key);
        if field == Field::Metrics {
            match v {
                Value::Object(m) => raw.metrics.extend(
                    m.iter()
                        .map(|(k, v)| (Cow::Borrowed(k.as_str()), scalar(v))),
                ),
                _ => raw.metrics_not_object = true,
            }
        } else {
            raw.set_field(field, Cow::Borrowed(key), scalar(v));
        }
    }
    // A named preset holds records to its shape; `auto` takes any of them.
    let canonical = object.get("metrics").is_some_and(Value::is_object);
    let long = raw.value.is_some();
    let fits = match preset {
        Preset::Auto => true,
        Preset::Canonical => canonical,
        Preset::Long => long && !canonical,
        Preset::Flat => !long && !canonical,
    };
    if !fits {
        return Err(RejectReason::NoMetrics);
    }
    raw.into_readings(limits, out)
}

/// The user's own fields.
fn field_readings(
    f: &FieldMapping,
    object: &Map<String, Value>,
    limits: &ParseLimits,
    out: &mut Vec<Reading>,
) -> Result<(), RejectReason> {
    let mut raw = RawRecord {
        device_id: get(object, &f.device.0).map(scalar),
        ts: get(object, &f.time.0).map(|v| (ts_key(f.time_unit), scalar(v))),
        seq: match &f.seq {
            Some(p) => get(object, &p.0).map(scalar),
            None => None,
        },
        ..RawRecord::default()
    };
    match &f.metrics {
        MetricFields::Long { name, value } => {
            raw.metric_name = get(object, &name.0).map(scalar);
            raw.value = get(object, &value.0).map(scalar);
            if raw.value.is_none() {
                return Err(RejectReason::NoMetrics);
            }
        }
        MetricFields::Listed(listed) => {
            for m in listed {
                match m {
                    // A null listed metric is one the record does not carry
                    // (an optional Avro field, a sensor without a value).
                    MetricField::One(p) => {
                        if let Some(v) = get(object, &p.0).filter(|v| !v.is_null()) {
                            raw.metrics.push((Cow::Borrowed(p.last()), scalar(v)));
                        }
                    }
                    MetricField::EveryIn(p) => match get(object, &p.0) {
                        Some(Value::Object(inner)) => raw.metrics.extend(
                            inner
                                .iter()
                                .map(|(k, v)| (Cow::Borrowed(k.as_str()), scalar(v))),
                        ),
                        Some(_) => raw.metrics_not_object = true,
                        None => {}
                    },
                }
            }
        }
        MetricFields::EveryOtherNumeric => {
            let taken = |k: &str| {
                [Some(&f.device), Some(&f.time), f.seq.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|p| p.0.first().is_some_and(|first| first == k))
            };
            for (k, v) in object {
                if !taken(k) && v.is_number() {
                    raw.metrics.push((Cow::Borrowed(k.as_str()), scalar(v)));
                }
            }
        }
    }
    raw.into_readings(limits, out)
}

pub(super) fn ts_key(unit: TimeUnit) -> TsKey {
    match unit {
        TimeUnit::Auto => TsKey::Auto,
        TimeUnit::Seconds => TsKey::Seconds,
        TimeUnit::Millis => TsKey::Millis,
        TimeUnit::Micros => TsKey::Micros,
        TimeUnit::Nanos => TsKey::Nanos,
    }
}

/// For tests: the time of a scalar as the preset parser reads it.
#[cfg(test)]
fn time_of(v: &Value, unit: TimeUnit) -> Result<i64, RejectReason> {
    super::parse_ts(ts_key(unit), &scalar(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).unwrap()
    }

    fn plant() -> InputMapping {
        InputMapping::new(
            Mapping::Fields(FieldMapping {
                device: path("id"),
                time: path("at"),
                time_unit: TimeUnit::Auto,
                seq: Some(path("n")),
                metrics: MetricFields::Listed(vec![
                    MetricField::One(path("temperature")),
                    MetricField::One(path("env.humidity")),
                ]),
            }),
            vec![path("site"), path("meta.line")],
        )
    }

    fn parse(m: &InputMapping, json: &str) -> Result<(Vec<Reading>, Dims), RejectReason> {
        let (mut out, mut dims) = (Vec::new(), Vec::new());
        m.parse(
            json.as_bytes(),
            &ParseLimits::default(),
            &mut out,
            &mut dims,
        )?;
        Ok((out, dims))
    }

    #[test]
    fn fields_by_path_with_dimensions() {
        let (readings, dims) = parse(
            &plant(),
            r#"{"id":"press-7","at":"2026-12-01T08:00:00.250Z","n":41,"site":"lyon","meta":{"line":"L2"},"temperature":71.5,"env":{"humidity":40},"other":1}"#,
        )
        .unwrap();
        assert_eq!(dims, [Some("lyon".into()), Some("L2".into())]);
        let got: Vec<(&str, &str, i64, f64, Option<u64>)> = readings
            .iter()
            .map(|r| {
                (
                    r.device_id.as_str(),
                    r.metric.as_str(),
                    r.ts_ms,
                    r.value,
                    r.seq,
                )
            })
            .collect();
        let ts = 1_796_112_000_250;
        assert_eq!(
            got,
            [
                ("press-7", "temperature", ts, 71.5, Some(41)),
                ("press-7", "humidity", ts, 40.0, Some(41))
            ]
        );
    }

    #[test]
    fn a_missing_dimension_is_none_and_bad_records_keep_their_reasons() {
        let (_, dims) = parse(&plant(), r#"{"id":"a","at":1764576000,"temperature":1}"#).unwrap();
        assert_eq!(dims, [None, None]);
        let reason = |json| parse(&plant(), json).unwrap_err();
        assert_eq!(
            reason(r#"{"at":1764576000,"temperature":1}"#),
            RejectReason::MissingDeviceId
        );
        assert_eq!(
            reason(r#"{"id":"a","temperature":1}"#),
            RejectReason::MissingTimestamp
        );
        assert_eq!(
            reason(r#"{"id":"a","at":1764576000}"#),
            RejectReason::NoMetrics
        );
        assert_eq!(
            reason(r#"{"id":"a","at":1764576000,"temperature":"hot"}"#),
            RejectReason::NonNumericValue
        );
        assert_eq!(
            reason(r#"{"id":"a","at":1764576000,"temperature":1,"site":"a|b"}"#),
            RejectReason::InvalidDimension
        );
        assert_eq!(
            reason(r#"{"id":"a","at":1764576000,"temperature":NaN}"#),
            RejectReason::NonFiniteValue
        );
        assert_eq!(reason("[1]"), RejectReason::MalformedJson);
        // A null listed metric is absent; only null ones leave no metrics.
        let (readings, _) = parse(
            &plant(),
            r#"{"id":"a","at":1764576000,"temperature":null,"env":{"humidity":40}}"#,
        )
        .unwrap();
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].metric, "humidity");
        assert_eq!(
            reason(r#"{"id":"a","at":1764576000,"temperature":null}"#),
            RejectReason::NoMetrics
        );
    }

    #[test]
    fn registry_encoded_records_read_through_the_same_mapping() {
        use iotflow_schema::{Registered, SchemaKind, StaticSource, wire};
        let schema = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"string"},
            {"name":"at","type":"long"},{"name":"temperature","type":["null","double"]},
            {"name":"site","type":"string"}]}"#;
        let source = StaticSource {
            ids: [(
                3,
                Registered {
                    schema_type: SchemaKind::Avro,
                    schema: schema.into(),
                    references: vec![],
                },
            )]
            .into(),
            ..StaticSource::default()
        };
        let decoder = Decoder::new(Box::new(source), SchemaKind::Avro, vec![]);
        let m = plant().decoded_by(Arc::new(decoder));
        assert!(!m.is_default());
        let avro = iotflow_schema::avro::AvroSchema::parse(schema, &[]).unwrap();
        let text = r#"{"id":"a","at":1764576000,"temperature":21.5,"site":"s1"}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let framed = wire::frame(3, &avro.encode(&value).unwrap());
        let bytes = |b: &[u8]| {
            let (mut out, mut dims) = (Vec::new(), Vec::new());
            m.parse(b, &ParseLimits::default(), &mut out, &mut dims)
                .map(|()| (out, dims))
        };
        assert_eq!(bytes(&framed), parse(&plant(), text));
        assert_eq!(bytes(text.as_bytes()), Err(RejectReason::Undecodable));
        let mut unknown = framed.clone();
        unknown[4] = 4;
        assert_eq!(bytes(&unknown), Err(RejectReason::UnknownSchema));
        // Who sent a record refused for its NaN is still known.
        let nan = apache_avro_free_nan(&avro);
        assert_eq!(bytes(&nan), Err(RejectReason::NonFiniteValue));
        let who = m.identity(&nan, &ParseLimits::default()).unwrap();
        assert_eq!(
            (who.device_id.as_str(), who.ts_ms),
            ("a", 1_764_576_000_000)
        );
    }

    /// The record above with a NaN temperature (JSON cannot say NaN, so it
    /// is patched into the encoded double).
    fn apache_avro_free_nan(avro: &iotflow_schema::avro::AvroSchema) -> Vec<u8> {
        let value = serde_json::json!({"id":"a","at":1764576000,"temperature":1.0,"site":"s1"});
        let mut body = avro.encode(&value).unwrap();
        let one = 1.0f64.to_le_bytes();
        let at = body.windows(8).position(|w| w == one).unwrap();
        body[at..at + 8].copy_from_slice(&f64::NAN.to_le_bytes());
        iotflow_schema::wire::frame(3, &body)
    }

    #[test]
    fn a_preset_with_dimensions_reads_today_s_shapes_without_them() {
        let m = InputMapping::new(Mapping::Preset(Preset::Auto), vec![path("site")]);
        let (readings, dims) = parse(
            &m,
            r#"{"device_id":"d","timestamp":1764576000.5,"site":"lyon","temp":1.5,"rpm":3}"#,
        )
        .unwrap();
        assert_eq!(dims, [Some("lyon".into())]);
        assert_eq!(readings.len(), 2, "the site is not a metric: {readings:?}");
        let canonical = InputMapping::new(Mapping::Preset(Preset::Canonical), vec![path("site")]);
        assert_eq!(
            parse(
                &canonical,
                r#"{"device_id":"d","ts":1764576000,"site":"x","temp":1}"#
            )
            .unwrap_err(),
            RejectReason::NoMetrics
        );
        assert!(
            parse(
                &canonical,
                r#"{"device_id":"d","ts":1764576000,"metrics":{"t":1}}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn stated_time_units() {
        let v = |n: i64| Value::from(n);
        assert_eq!(
            time_of(&v(1_764_576_000), TimeUnit::Seconds),
            Ok(1_764_576_000_000)
        );
        assert_eq!(
            time_of(&v(1_764_576_000_250_400), TimeUnit::Micros),
            Ok(1_764_576_000_250)
        );
        assert_eq!(
            time_of(&v(1_764_576_000_250_600_000), TimeUnit::Nanos),
            Ok(1_764_576_000_251)
        );
        assert_eq!(time_of(&v(5), TimeUnit::Millis), Ok(5));
    }
}
