//! Parsing and validating one input record into readings.
//!
//! ```text
//!   bytes ──size──▶ utf-8 ──json──▶ shape (canonical | flat | long) ──▶ [Reading]
//!     └───────── any failure ─────────▶ Reject(reason) ──▶ dead-letter topic
//! ```
//!
//! Accepted shapes (BRIEF §3):
//! - canonical `{"device_id","ts","seq","metrics":{name: number}}`
//! - flat `{"device_id","timestamp", <metric>: number, ...}`: every other field is a metric
//! - long `{"device_id","sensor"|"metric","ts_ms","value","seq"}`
//!
//! Timestamps are epoch numbers or RFC 3339 strings. A number's unit comes from
//! the key (`ts_ms`) or its magnitude: < 1e11 is seconds, < 1e14 milliseconds,
//! < 1e17 microseconds, else nanoseconds. Fractional milliseconds round to the
//! nearest millisecond. A record is accepted or rejected whole.

use std::borrow::Cow;
use std::fmt;

use compact_str::CompactString;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

mod columns;
mod mapped;
mod mapped_columns;
mod scan;

pub use columns::Columns;
pub use mapped::{Dims, InputMapping};
pub use mapped_columns::MappedColumns;
pub use scan::PlainRecord;

/// One accepted measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Inline up to 24 bytes: no allocation for typical ids and metric names.
    pub device_id: CompactString,
    pub metric: CompactString,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    pub value: f64,
    /// Per-device sequence number, for dedupe of producer retries.
    pub seq: Option<u64>,
}

/// Why a record went to the dead-letter topic. `code()` is the stable name
/// used in DLQ records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    Oversized,
    InvalidUtf8,
    MalformedJson,
    MissingDeviceId,
    InvalidDeviceId,
    MissingTimestamp,
    InvalidTimestamp,
    AbsurdTimestamp,
    NonNumericValue,
    NonFiniteValue,
    NoMetrics,
    /// Valid, but its window was already final when it arrived.
    Late,
    /// Lacks a dimension that every aggregation able to use it groups by.
    MissingDimension,
    /// A dimension's value breaks the rule for names (`|`, control characters, length).
    InvalidDimension,
    /// Registry-encoded input: the registry has no schema under the record's id.
    UnknownSchema,
    /// Registry-encoded input: the record's schema is of another format, or
    /// lacks a field the job maps.
    SchemaMismatch,
    /// Registry-encoded input: not in the wire format, or not a value of its schema.
    Undecodable,
}

impl RejectReason {
    /// Every reason, in code order.
    pub const ALL: [RejectReason; 17] = [
        RejectReason::Oversized,
        RejectReason::InvalidUtf8,
        RejectReason::MalformedJson,
        RejectReason::MissingDeviceId,
        RejectReason::InvalidDeviceId,
        RejectReason::MissingTimestamp,
        RejectReason::InvalidTimestamp,
        RejectReason::AbsurdTimestamp,
        RejectReason::NonNumericValue,
        RejectReason::NonFiniteValue,
        RejectReason::NoMetrics,
        RejectReason::Late,
        RejectReason::MissingDimension,
        RejectReason::InvalidDimension,
        RejectReason::UnknownSchema,
        RejectReason::SchemaMismatch,
        RejectReason::Undecodable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::MissingDeviceId => "missing_device_id",
            RejectReason::InvalidDeviceId => "invalid_device_id",
            RejectReason::MissingTimestamp => "missing_timestamp",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::AbsurdTimestamp => "absurd_timestamp",
            RejectReason::NonNumericValue => "non_numeric_value",
            RejectReason::NonFiniteValue => "non_finite_value",
            RejectReason::NoMetrics => "no_metrics",
            RejectReason::Late => "late",
            RejectReason::MissingDimension => "missing_dimension",
            RejectReason::InvalidDimension => "invalid_dimension",
            RejectReason::UnknownSchema => "unknown_schema",
            RejectReason::SchemaMismatch => "schema_mismatch",
            RejectReason::Undecodable => "undecodable",
        }
    }
}

impl RejectReason {
    /// Whether a record refused for this reason still names a valid device
    /// and event time, found again by [`InputMapping::identity`]: what a
    /// bad-data rule counts. Not `late`: its windows are final already.
    pub fn keeps_identity(self) -> bool {
        matches!(
            self,
            RejectReason::NonNumericValue
                | RejectReason::NonFiniteValue
                | RejectReason::NoMetrics
                | RejectReason::MissingDimension
                | RejectReason::InvalidDimension
        )
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Validation bounds. Defaults: 64 KiB payloads, event times in [2000, 2100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    pub max_bytes: usize,
    pub min_ts_ms: i64,
    pub max_ts_ms: i64,
    pub max_id_len: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            min_ts_ms: 946_684_800_000,   // 2000-01-01T00:00:00Z
            max_ts_ms: 4_102_444_800_000, // 2100-01-01T00:00:00Z
            max_id_len: 256,
        }
    }
}

/// Parses one record's value into `out` (appending), or says why not.
/// On error nothing is appended.
pub fn parse_record(
    payload: &[u8],
    limits: &ParseLimits,
    out: &mut Vec<Reading>,
) -> Result<(), RejectReason> {
    let text = checked_text(payload, limits)?;
    if scan::plain_readings(text, limits, out).is_some() {
        return Ok(());
    }
    parse_general(text, limits, out)
}

/// [`parse_record`] without building [`Reading`]s for records on the fast
/// path (nearly all): `true` when they are in `plain`, borrowed from
/// `payload`; `false` when they were appended to `scratch` (cleared first).
pub fn parse_borrowed<'a>(
    payload: &'a [u8],
    limits: &ParseLimits,
    scratch: &mut Vec<Reading>,
    plain: &mut PlainRecord<'a>,
) -> Result<bool, RejectReason> {
    scratch.clear();
    let text = checked_text(payload, limits)?;
    if scan::plain_into(text, limits, plain).is_some() {
        return Ok(true);
    }
    parse_general(text, limits, scratch).map(|()| false)
}

/// The payload as text, if it is within the size limit and UTF-8.
fn checked_text<'a>(payload: &'a [u8], limits: &ParseLimits) -> Result<&'a str, RejectReason> {
    if payload.len() > limits.max_bytes {
        return Err(RejectReason::Oversized);
    }
    std::str::from_utf8(payload).map_err(|_| RejectReason::InvalidUtf8)
}

/// What the fast path passed on: the general scanner, else serde.
fn parse_general(
    text: &str,
    limits: &ParseLimits,
    out: &mut Vec<Reading>,
) -> Result<(), RejectReason> {
    let raw = match scan::record(text) {
        Some(raw) => raw,
        None => parse_with_serde(text)?,
    };
    raw.into_readings(limits, out)
}

/// The general JSON path: every record the scanner passes on, with serde_json's
/// verdict on malformed input.
fn parse_with_serde(text: &str) -> Result<RawRecord<'_>, RejectReason> {
    serde_json::from_str(text).map_err(|e| classify_json_error(text, &e))
}

/// serde_json rejects `NaN`/`Infinity` (what Python's json.dumps writes) and
/// out-of-range numbers as syntax errors; users need to see them as bad values.
fn classify_json_error(text: &str, err: &serde_json::Error) -> RejectReason {
    if err.to_string().starts_with("number out of range") || has_bare_non_finite(text) {
        RejectReason::NonFiniteValue
    } else {
        RejectReason::MalformedJson
    }
}

/// Whether `NaN`, `Infinity` or `-Infinity` appears outside a string.
fn has_bare_non_finite(text: &str) -> bool {
    nulled_non_finite(text).is_some()
}

/// `text` with every bare `NaN`, `Infinity` and `-Infinity` (outside
/// strings) replaced by `null`, so serde can read the rest of the record;
/// `None` when there is none.
fn nulled_non_finite(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let (mut in_string, mut found) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let rest = &bytes[i..];
        if in_string {
            match b {
                b'\\' => {
                    out.push(b);
                    i += 1;
                    if let Some(&next) = bytes.get(i) {
                        out.push(next);
                    }
                }
                b'"' => {
                    in_string = false;
                    out.push(b);
                }
                _ => out.push(b),
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if rest.starts_with(b"NaN") || rest.starts_with(b"Infinity") {
            if out.last() == Some(&b'-') {
                out.pop();
            }
            out.extend_from_slice(b"null");
            found = true;
            i += if b == b'N' { 3 } else { 8 };
            continue;
        } else {
            out.push(b);
        }
        i += 1;
    }
    // Only ASCII was replaced, at ASCII boundaries: still UTF-8.
    found.then(|| String::from_utf8(out).ok()).flatten()
}

/// A JSON value where a number, string or other is expected.
#[derive(Debug)]
enum Scalar<'a> {
    Num(f64),
    Int(i128),
    Str(Cow<'a, str>),
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar<'_> {
    fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Num(v) => Some(*v),
            Scalar::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

/// The fields of any accepted shape, borrowed from the payload where possible.
#[derive(Default)]
struct RawRecord<'a> {
    device_id: Option<Scalar<'a>>,
    ts: Option<(TsKey, Scalar<'a>)>,
    seq: Option<Scalar<'a>>,
    metric_name: Option<Scalar<'a>>,
    value: Option<Scalar<'a>>,
    metrics: Vec<(Cow<'a, str>, Scalar<'a>)>,
    metrics_not_object: bool,
}

/// Who sent a record and when: its device, event time and `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub device_id: CompactString,
    pub ts_ms: i64,
    pub seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsKey {
    Millis,
    Auto,
    /// Units a job file states (`time_unit`).
    Seconds,
    Micros,
    Nanos,
}

/// A `metrics` value: name → value pairs in document order, or not an object at all.
enum MetricsField<'a> {
    Object(Vec<(Cow<'a, str>, Scalar<'a>)>),
    NotAnObject,
}

impl<'de> Deserialize<'de> for MetricsField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetricsField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    out.push((k, map.next_value::<Scalar<'de>>()?));
                }
                Ok(MetricsField::Object(out))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MetricsField::NotAnObject)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MetricsField::NotAnObject)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MetricsField::NotAnObject)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MetricsField::NotAnObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MetricsField::NotAnObject)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MetricsField::NotAnObject)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MetricsField::NotAnObject)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawRecord<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRecord<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawRecord::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if Field::of(&key) == Field::Metrics {
                        match map.next_value::<MetricsField<'de>>()? {
                            MetricsField::Object(m) => raw.metrics.extend(m),
                            // Well-formed JSON with a wrong-typed `metrics` is a bad value.
                            MetricsField::NotAnObject => raw.metrics_not_object = true,
                        }
                    } else {
                        raw.set(key, map.next_value()?);
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

/// What a top-level key means; both parsers dispatch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    DeviceId,
    Ts(TsKey),
    Seq,
    MetricName,
    Value,
    Metrics,
    /// Any other key is a metric of the flat shape.
    Other,
}

impl Field {
    fn of(key: &str) -> Self {
        // By length first: one small comparison per key instead of a chain of them.
        match (key.len(), key.as_bytes()) {
            (2, b"ts") | (4, b"time") | (9, b"timestamp") | (10, b"event_time") => {
                Field::Ts(TsKey::Auto)
            }
            (3, b"seq") => Field::Seq,
            (5, b"ts_ms") => Field::Ts(TsKey::Millis),
            (5, b"value") => Field::Value,
            (6, b"device") | (8, b"deviceId") | (9, b"device_id") => Field::DeviceId,
            (6, b"sensor") | (6, b"metric") => Field::MetricName,
            (7, b"metrics") => Field::Metrics,
            _ => Field::Other,
        }
    }
}

impl<'a> RawRecord<'a> {
    /// Records a top-level field other than `metrics`; a repeated key wins.
    fn set(&mut self, key: Cow<'a, str>, v: Scalar<'a>) {
        self.set_field(Field::of(&key), key, v);
    }

    /// [`Self::set`] with the key already classified.
    fn set_field(&mut self, field: Field, key: Cow<'a, str>, v: Scalar<'a>) {
        match field {
            Field::DeviceId => self.device_id = Some(v),
            Field::Ts(unit) => self.ts = Some((unit, v)),
            Field::Seq => self.seq = Some(v),
            Field::MetricName => self.metric_name = Some(v),
            Field::Value => self.value = Some(v),
            Field::Metrics | Field::Other => self.metrics.push((key, v)),
        }
    }

    /// The record's device, event time and `seq`, validated: what every
    /// reading of it carries, checked before any of its values.
    fn identity(&self, limits: &ParseLimits) -> Result<Identity, RejectReason> {
        let device_id: CompactString = match &self.device_id {
            None | Some(Scalar::Other) => return Err(RejectReason::MissingDeviceId),
            Some(Scalar::Str(s)) if s.is_empty() => return Err(RejectReason::MissingDeviceId),
            Some(Scalar::Str(s)) => CompactString::from(s.as_ref()),
            Some(Scalar::Int(i)) => CompactString::from(i.to_string()),
            Some(Scalar::Num(_)) => return Err(RejectReason::InvalidDeviceId),
        };
        if !valid_name(&device_id, limits.max_id_len) {
            return Err(RejectReason::InvalidDeviceId);
        }
        let ts_ms = match &self.ts {
            None => return Err(RejectReason::MissingTimestamp),
            Some((key, ts)) => parse_ts(*key, ts)?,
        };
        if ts_ms < limits.min_ts_ms || ts_ms >= limits.max_ts_ms {
            return Err(RejectReason::AbsurdTimestamp);
        }
        let seq = match &self.seq {
            None => None,
            Some(Scalar::Int(i)) => {
                Some(u64::try_from(*i).map_err(|_| RejectReason::MalformedJson)?)
            }
            Some(_) => return Err(RejectReason::MalformedJson),
        };
        Ok(Identity {
            device_id,
            ts_ms,
            seq,
        })
    }

    fn into_readings(
        self,
        limits: &ParseLimits,
        out: &mut Vec<Reading>,
    ) -> Result<(), RejectReason> {
        let Identity {
            device_id,
            ts_ms,
            seq,
        } = self.identity(limits)?;
        if self.metrics_not_object {
            return Err(RejectReason::NonNumericValue);
        }
        let start = out.len();
        let mut push = |metric: &str, v: &Scalar<'_>| -> Result<(), RejectReason> {
            let value = v.as_f64().ok_or(RejectReason::NonNumericValue)?;
            if !value.is_finite() {
                return Err(RejectReason::NonFiniteValue);
            }
            if !valid_name(metric, limits.max_id_len) {
                return Err(RejectReason::InvalidDeviceId);
            }
            out.push(Reading {
                device_id: device_id.clone(),
                metric: CompactString::from(metric),
                ts_ms,
                value,
                seq,
            });
            Ok(())
        };
        let result = (|| {
            match (self.metric_name, self.value) {
                (Some(Scalar::Str(name)), Some(v)) => push(&name, &v)?,
                (Some(_), _) => return Err(RejectReason::NonNumericValue),
                (None, Some(v)) => push("value", &v)?,
                (None, None) => {}
            }
            for (name, v) in &self.metrics {
                push(name, v)?;
            }
            Ok(())
        })();
        match result {
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
            Ok(()) if out.len() == start => Err(RejectReason::NoMetrics),
            Ok(()) => Ok(()),
        }
    }
}

/// Names end up in output keys `device|metric|window_start`.
fn valid_name(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        // The common case in one pass, without decoding characters (plain
        // bytes are ASCII); an ASCII name with any other byte is invalid.
        && (name.bytes().all(plain_name_byte)
            || (!name.is_ascii() && !name.contains('|') && !name.chars().any(char::is_control)))
}

/// An ASCII byte a name holds as it is: printable, not `|`.
fn plain_name_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'|'
}

fn parse_ts(key: TsKey, ts: &Scalar<'_>) -> Result<i64, RejectReason> {
    let ms = match ts {
        Scalar::Int(v) => int_to_ms(key, *v),
        Scalar::Num(f) => float_to_ms(key, *f)?,
        Scalar::Str(s) => {
            let s = s.trim();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                t.timestamp_millis().into()
            } else if let Ok(v) = s.parse::<i64>() {
                int_to_ms(key, v.into())
            } else if let Ok(f) = s.parse::<f64>() {
                float_to_ms(key, f)?
            } else {
                return Err(RejectReason::InvalidTimestamp);
            }
        }
        Scalar::Other => return Err(RejectReason::InvalidTimestamp),
    };
    i64::try_from(ms).map_err(|_| RejectReason::AbsurdTimestamp)
}

fn int_to_ms(key: TsKey, v: i128) -> i128 {
    let round_div = |d: i128| (v + v.signum() * d / 2) / d;
    match (key, v.unsigned_abs()) {
        (TsKey::Millis, _) => v,
        (TsKey::Seconds, _) => v * 1000,
        (TsKey::Micros, _) => round_div(1000),
        (TsKey::Nanos, _) => round_div(1_000_000),
        (TsKey::Auto, a) if a < 100_000_000_000 => v * 1000,
        (TsKey::Auto, a) if a < 100_000_000_000_000 => v,
        (TsKey::Auto, a) if a < 100_000_000_000_000_000 => round_div(1000),
        (TsKey::Auto, _) => round_div(1_000_000),
    }
}

fn float_to_ms(key: TsKey, f: f64) -> Result<i128, RejectReason> {
    if !f.is_finite() {
        return Err(RejectReason::InvalidTimestamp);
    }
    let ms = match (key, f.abs()) {
        (TsKey::Millis, _) => f,
        (TsKey::Seconds, _) => f * 1e3,
        (TsKey::Micros, _) => f / 1e3,
        (TsKey::Nanos, _) => f / 1e6,
        (TsKey::Auto, a) if a < 1e11 => f * 1e3,
        (TsKey::Auto, a) if a < 1e14 => f,
        (TsKey::Auto, a) if a < 1e17 => f / 1e3,
        (TsKey::Auto, _) => f / 1e6,
    }
    .round();
    if ms.abs() > 9.0e15 {
        return Err(RejectReason::AbsurdTimestamp);
    }
    Ok(ms as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<Reading>, RejectReason> {
        let mut out = Vec::new();
        parse_record(s.as_bytes(), &ParseLimits::default(), &mut out).map(|()| out)
    }

    /// What a bad-data rule counts: refused records that still say who and when.
    #[test]
    fn refused_records_keep_their_identity_when_they_have_one() {
        use iotflow_jobfile::{Mapping, Preset};
        let default = InputMapping::new(Mapping::Preset(Preset::Auto), Vec::new());
        let limits = ParseLimits::default();
        let who = |p: &str| default.identity(p.as_bytes(), &limits);
        let id = |ts_ms, seq| {
            Some(Identity {
                device_id: "d-1".into(),
                ts_ms,
                seq,
            })
        };
        for (payload, reason) in [
            (
                r#"{"device_id":"d-1","ts_ms":1763787600000,"seq":4,"t":"n/a"}"#,
                RejectReason::NonNumericValue,
            ),
            (
                r#"{"device_id":"d-1","ts_ms":1763787600000,"seq":4,"t":NaN}"#,
                RejectReason::NonFiniteValue,
            ),
            (
                r#"{"device_id":"d-1","ts_ms":1763787600000,"seq":4,"t":-Infinity,"s":"NaN"}"#,
                RejectReason::NonFiniteValue,
            ),
        ] {
            assert_eq!(parse(payload), Err(reason), "{payload}");
            assert!(reason.keeps_identity());
            assert_eq!(who(payload), id(1_763_787_600_000, Some(4)), "{payload}");
        }
        assert_eq!(
            who(r#"{"device_id":"d-1","timestamp":1763787600.5}"#),
            id(1_763_787_600_500, None)
        );
        for nobody in [
            r#"{"ts_ms":1763787600000,"t":"n/a"}"#,
            r#"{"device_id":"d-1","t":1}"#,
            r#"{"device_id":"d-1","ts_ms":5,"t":1}"#,
            r#"{"device_id":"a|b","ts_ms":1763787600000,"t":1}"#,
            r#"{"device_id":"d-1","ts_ms":1763787600000"#,
        ] {
            assert_eq!(who(nobody), None, "{nobody}");
        }
        let counted: Vec<&str> = RejectReason::ALL
            .iter()
            .filter(|r| r.keeps_identity())
            .map(|r| r.code())
            .collect();
        assert_eq!(counted, iotflow_jobfile::alert::BAD_DATA_REASONS);
    }

    fn r(device: &str, metric: &str, ts_ms: i64, value: f64, seq: Option<u64>) -> Reading {
        Reading {
            device_id: device.into(),
            metric: metric.into(),
            ts_ms,
            value,
            seq,
        }
    }

    #[test]
    fn canonical_yields_one_reading_per_metric() {
        let got = parse(
            r#"{"device_id":"dev-0042","ts":1763787600123,"seq":17,"metrics":{"temperature":21.4,"humidity":40.2}}"#,
        );
        assert_eq!(
            got,
            Ok(vec![
                r("dev-0042", "temperature", 1_763_787_600_123, 21.4, Some(17)),
                r("dev-0042", "humidity", 1_763_787_600_123, 40.2, Some(17)),
            ])
        );
    }

    #[test]
    fn flat_takes_every_other_numeric_field_and_float_seconds() {
        let got = parse(
            r#"{"device_id":"sensor_1","timestamp":1763787600.1235,"temperature":25.3,"humidity":60}"#,
        );
        assert_eq!(
            got,
            Ok(vec![
                r("sensor_1", "temperature", 1_763_787_600_124, 25.3, None),
                r("sensor_1", "humidity", 1_763_787_600_124, 60.0, None),
            ])
        );
    }

    #[test]
    fn long_shape_with_sensor_or_metric_key() {
        let want = Ok(vec![r(
            "dev-00089",
            "humidity",
            1_700_000_000_000,
            62.56,
            Some(0),
        )]);
        assert_eq!(
            parse(
                r#"{"device_id":"dev-00089","sensor":"humidity","ts_ms":1700000000000,"value":62.56,"seq":0}"#
            ),
            want
        );
        assert_eq!(
            parse(
                r#"{"device_id":"dev-00089","metric":"humidity","ts_ms":1700000000000,"value":62.56,"seq":0}"#
            ),
            want
        );
    }

    #[test]
    fn timestamps_in_every_unit_and_rfc3339() {
        let at = |ts: &str| {
            parse(&format!(r#"{{"device_id":"d","ts":{ts},"v":1}}"#)).map(|v| v[0].ts_ms)
        };
        assert_eq!(at("1763787600"), Ok(1_763_787_600_000));
        assert_eq!(at("1763787600123"), Ok(1_763_787_600_123));
        assert_eq!(at("1763787600123456"), Ok(1_763_787_600_123));
        assert_eq!(at("1763787600123456789"), Ok(1_763_787_600_123));
        assert_eq!(at(r#""2025-11-22T05:00:00.123Z""#), Ok(1_763_787_600_123));
        assert_eq!(
            at(r#""2025-11-22T06:00:00.123+01:00""#),
            Ok(1_763_787_600_123)
        );
        assert_eq!(at(r#""1763787600123""#), Ok(1_763_787_600_123));
        assert_eq!(at(r#""yesterday""#), Err(RejectReason::InvalidTimestamp));
        assert_eq!(at("true"), Err(RejectReason::InvalidTimestamp));
    }

    #[test]
    fn every_reject_reason_has_a_record_that_triggers_it() {
        use RejectReason::*;
        let oversized = format!(
            r#"{{"device_id":"d","ts":1763787600000,"v":1,"pad":"{}"}}"#,
            "x".repeat(70_000)
        );
        let cases: Vec<(Vec<u8>, RejectReason)> = vec![
            (oversized.into_bytes(), Oversized),
            (
                b"{\"device_id\":\"d\xff\",\"ts\":1763787600000,\"v\":1}".to_vec(),
                InvalidUtf8,
            ),
            (br#"{"device_id":"d","ts":17637"#.to_vec(), MalformedJson),
            (br#"[1,2]"#.to_vec(), MalformedJson),
            (br#"{"ts":1763787600000,"v":1}"#.to_vec(), MissingDeviceId),
            (
                br#"{"device_id":"","ts":1763787600000,"v":1}"#.to_vec(),
                MissingDeviceId,
            ),
            (
                br#"{"device_id":"a|b","ts":1763787600000,"v":1}"#.to_vec(),
                InvalidDeviceId,
            ),
            (br#"{"device_id":"d","v":1}"#.to_vec(), MissingTimestamp),
            (
                br#"{"device_id":"d","ts":"soon","v":1}"#.to_vec(),
                InvalidTimestamp,
            ),
            (
                br#"{"device_id":"d","ts_ms":5000,"v":1}"#.to_vec(),
                AbsurdTimestamp,
            ),
            (
                br#"{"device_id":"d","ts":4200000000000,"v":1}"#.to_vec(),
                AbsurdTimestamp,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000,"v":"n/a"}"#.to_vec(),
                NonNumericValue,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000,"metrics":{"v":null}}"#.to_vec(),
                NonNumericValue,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000,"metrics":[1]}"#.to_vec(),
                NonNumericValue,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000,"v":NaN}"#.to_vec(),
                NonFiniteValue,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000,"v":-Infinity}"#.to_vec(),
                NonFiniteValue,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000,"v":1e999}"#.to_vec(),
                NonFiniteValue,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000}"#.to_vec(),
                NoMetrics,
            ),
            (
                br#"{"device_id":"d","ts":1763787600000,"metrics":{}}"#.to_vec(),
                NoMetrics,
            ),
        ];
        for (payload, want) in cases {
            let mut out = Vec::new();
            let got = parse_record(&payload, &ParseLimits::default(), &mut out);
            assert_eq!(got, Err(want), "{}", String::from_utf8_lossy(&payload));
            assert!(out.is_empty(), "a rejected record appends nothing");
        }
    }

    #[test]
    fn nan_inside_a_string_is_not_a_non_finite_value() {
        assert_eq!(
            parse(r#"{"device_id":"NaN","ts":1763787600000,"v":1}"#).map(|v| v.len()),
            Ok(1)
        );
        assert!(!has_bare_non_finite(r#"{"a":"NaN \" Infinity"}"#));
    }

    #[test]
    fn a_bad_metric_rejects_the_whole_record_and_leaves_out_untouched() {
        let mut out = vec![r("x", "y", 1, 1.0, None)];
        let got = parse_record(
            br#"{"device_id":"d","ts":1763787600000,"metrics":{"a":1,"b":"x"}}"#,
            &ParseLimits::default(),
            &mut out,
        );
        assert_eq!(got, Err(RejectReason::NonNumericValue));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = RejectReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), RejectReason::ALL.len());
    }
}

#[cfg(test)]
mod robustness {
    //! What the fuzz target (`fuzz/`, target `parse_record`) checks, as a stable-toolchain
    //! property test: arbitrary and mutated input never panics, and a record is
    //! accepted whole (finite values, valid names) or rejected whole.
    use proptest::prelude::*;

    use super::*;

    fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        match parse_record(bytes, &ParseLimits::default(), &mut out) {
            Ok(()) => {
                prop_assert!(!out.is_empty());
                for r in &out {
                    prop_assert!(r.value.is_finite());
                    prop_assert!(!r.device_id.contains('|') && !r.metric.contains('|'));
                }
            }
            Err(_) => prop_assert!(out.is_empty()),
        }
        Ok(())
    }

    const SEEDS: [&str; 3] = [
        r#"{"device_id":"dev-0042","ts":1763787600123,"seq":17,"metrics":{"temperature":21.4,"humidity":40.2}}"#,
        r#"{"device_id":"sensor_1","timestamp":1763787600.123,"temperature":25.3,"humidity":60.1}"#,
        r#"{"device_id":"dev-00089","sensor":"humidity","ts_ms":1700000000000,"value":62.56,"seq":0}"#,
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            check(&bytes)?;
        }

        #[test]
        fn mutated_valid_records_never_panic(
            seed in 0usize..3,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut bytes = SEEDS[seed].as_bytes().to_vec();
            for (at, byte, op) in edits {
                let len = bytes.len();
                let i = at.index(len.max(1));
                match op {
                    0 if len > 0 => bytes[i.min(len - 1)] = byte,
                    1 => bytes.insert(i.min(len), byte),
                    _ if len > 0 => {
                        bytes.remove(i.min(len - 1));
                    }
                    _ => {}
                }
            }
            check(&bytes)?;
        }
    }
}
