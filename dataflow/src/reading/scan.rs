//! A scanner for the JSON that devices actually send: one flat object (or the
//! canonical one-level `metrics` object) of unescaped strings and plain numbers.
//!
//! It fills the same [`RawRecord`] as the serde path, so validation is shared,
//! and gives up (`None`) on anything else: escapes, `true`/`false`/`null`,
//! arrays, deeper nesting, integers beyond 64 bits, out-of-range floats and
//! every kind of malformed input. The serde path then decides, so the scanner
//! only has to be right about what it accepts; the differential property test
//! below holds it to that.

use std::borrow::Cow;

use compact_str::CompactString;

use super::{
    Field, ParseLimits, RawRecord, Reading, Scalar, TsKey, float_to_ms, int_to_ms, plain_name_byte,
    valid_name,
};

/// The record's fields, or `None` when the serde path must decide.
pub(super) fn record(text: &str) -> Option<RawRecord<'_>> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut raw = RawRecord::default();
    s.expect(b'{')?;
    if !s.eat(b'}') {
        loop {
            let key = s.string()?;
            s.expect(b':')?;
            let field = Field::of(key);
            if field == Field::Metrics {
                s.expect(b'{')?;
                if !s.eat(b'}') {
                    loop {
                        let name = s.string()?;
                        s.expect(b':')?;
                        raw.metrics.push((Cow::Borrowed(name), s.scalar()?));
                        if !s.eat(b',') {
                            s.expect(b'}')?;
                            break;
                        }
                    }
                }
            } else {
                raw.set_field(field, Cow::Borrowed(key), s.scalar()?);
            }
            if !s.eat(b',') {
                s.expect(b'}')?;
                break;
            }
        }
    }
    s.skip_ws();
    (s.at == s.bytes.len()).then_some(raw)
}

/// A number as serde_json types it.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(v) => v as f64,
            Num::Float(v) => v,
        }
    }
}

/// Metrics a record may have on the fast path; more go the general way.
const FAST_METRICS: usize = 8;
/// Top-level keys a slot remembers for the next record.
const SHAPE_KEYS: usize = 8;

/// A record that took the fast path: validated, names borrowed from the payload.
///
/// A slot reused for the records of one buffer remembers their top-level
/// keys: records of one source nearly always repeat them, so the next
/// record's keys are first compared with these, byte for byte, instead of
/// scanned and looked up.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainRecord<'a> {
    pub device_id: &'a str,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    pub seq: Option<u64>,
    /// Slot 0 holds the long shape's `sensor`/`value` pair if there is one.
    metrics: [(&'a str, f64); FAST_METRICS + 1],
    first: usize,
    end: usize,
    shape: [Option<Key<'a>>; SHAPE_KEYS],
}

/// A top-level key as an earlier record had it.
#[derive(Debug, Clone, Copy)]
struct Key<'a> {
    /// The key with its quotes, as it stood in the text.
    quoted: &'a [u8],
    name: &'a str,
    /// See [`Scanner::string_plain`].
    plain: bool,
    field: Field,
}

impl<'a> PlainRecord<'a> {
    /// A record of the long shape with one reading, already validated (a
    /// Parquet row read from its columns).
    pub(crate) fn long(
        device_id: &'a str,
        ts_ms: i64,
        seq: Option<u64>,
        metric: &'a str,
        value: f64,
    ) -> Self {
        let mut record = Self {
            device_id,
            ts_ms,
            seq,
            ..Self::default()
        };
        record.metrics[0] = (metric, value);
        (record.first, record.end) = (0, 1);
        record
    }

    /// (metric, value) of each reading, in the order the general path gives them.
    pub fn metrics(&self) -> &[(&'a str, f64)] {
        &self.metrics[self.first..self.end]
    }
}

/// The fast path for what devices send nearly always: a record whose fields
/// are plain strings and numbers, each known field once, and that passes
/// validation. `None` for anything else, including every record that would
/// be rejected: the general path decides those, so this one only has to
/// agree with it on the records it accepts, which the differential property
/// tests below check.
pub(super) fn plain<'a>(text: &'a str, limits: &ParseLimits) -> Option<PlainRecord<'a>> {
    let mut record = PlainRecord::default();
    plain_into(text, limits, &mut record)?;
    Some(record)
}

/// [`plain`] into `record` (a few hundred bytes: filled in place, not moved).
/// On `None`, `record` holds nothing of use.
pub(super) fn plain_into<'a>(
    text: &'a str,
    limits: &ParseLimits,
    record: &mut PlainRecord<'a>,
) -> Option<()> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut device: Option<(&str, bool)> = None;
    let mut ts: Option<(TsKey, Num)> = None;
    let mut seq: Option<Num> = None;
    let mut name: Option<&str> = None;
    let mut value: Option<f64> = None;
    // Flat fields and `metrics` entries in document order, as the general
    // path keeps them, after slot 0.
    let metrics = &mut record.metrics;
    let shape = &mut record.shape;
    let mut n = 1usize;
    // Every metric name is plain (see `string_plain`): only lengths to check.
    let mut names_plain = true;
    fn add<'a>(metrics: &mut [(&'a str, f64)], n: &mut usize, key: &'a str, v: f64) -> Option<()> {
        *metrics.get_mut(*n)? = (key, v);
        *n += 1;
        Some(())
    }
    s.expect(b'{')?;
    for k in 0.. {
        let (key, key_plain, field) = match shape.get(k).copied().flatten() {
            // The same bytes scan the same: the key, plainness and field as before.
            Some(known) if s.at_literal(known.quoted) => {
                s.at += known.quoted.len();
                (known.name, known.plain, known.field)
            }
            _ => {
                let (key, plain) = s.string_plain()?;
                let field = Field::of(key);
                let quoted = s.bytes.get(s.at - key.len() - 2..s.at)?;
                if let Some(slot) = shape.get_mut(k) {
                    *slot = Some(Key {
                        quoted,
                        name: key,
                        plain,
                        field,
                    });
                }
                (key, plain, field)
            }
        };
        s.expect(b':')?;
        match field {
            Field::DeviceId if device.is_none() => device = Some(s.string_plain()?),
            Field::Ts(unit) if ts.is_none() => ts = Some((unit, s.num()?)),
            Field::Seq if seq.is_none() => seq = Some(s.num()?),
            Field::MetricName if name.is_none() => {
                let (metric, plain) = s.string_plain()?;
                names_plain &= plain;
                name = Some(metric);
            }
            Field::Value if value.is_none() => value = Some(s.num()?.as_f64()),
            Field::Metrics => {
                s.expect(b'{')?;
                loop {
                    let (metric, plain) = s.string_plain()?;
                    names_plain &= plain;
                    s.expect(b':')?;
                    add(metrics, &mut n, metric, s.num()?.as_f64())?;
                    if !s.eat(b',') {
                        s.expect(b'}')?;
                        break;
                    }
                }
            }
            Field::Other => {
                names_plain &= key_plain;
                add(metrics, &mut n, key, s.num()?.as_f64())?
            }
            // A repeated field: the general path knows which copy wins.
            _ => return None,
        }
        if !s.eat(b',') {
            s.expect(b'}')?;
            break;
        }
    }
    s.skip_ws();
    if s.at != s.bytes.len() {
        return None;
    }
    let max = limits.max_id_len;
    let name_ok = |name: &str, plain: bool| match plain {
        true => !name.is_empty() && name.len() <= max,
        false => valid_name(name, max),
    };
    let device_id = device.filter(|&(d, plain)| name_ok(d, plain))?.0;
    let ts_ms = match ts? {
        (key, Num::Int(v)) => i64::try_from(int_to_ms(key, v.into())).ok()?,
        (key, Num::Float(v)) => i64::try_from(float_to_ms(key, v).ok()?).ok()?,
    };
    if ts_ms < limits.min_ts_ms || ts_ms >= limits.max_ts_ms {
        return None;
    }
    let seq = match seq {
        None => None,
        Some(Num::Int(v)) => Some(u64::try_from(v).ok()?),
        Some(Num::Float(_)) => return None,
    };
    let first = match (name, value) {
        (Some(name), Some(v)) => {
            metrics[0] = (name, v);
            0
        }
        (None, Some(v)) => {
            metrics[0] = ("value", v);
            0
        }
        (None, None) => 1,
        (Some(_), None) => return None,
    };
    record.device_id = device_id;
    record.ts_ms = ts_ms;
    record.seq = seq;
    record.first = first;
    record.end = n;
    let readings = record.metrics();
    if readings.is_empty() || !readings.iter().all(|(m, _)| name_ok(m, names_plain)) {
        return None;
    }
    Some(())
}

/// [`plain`], its readings appended to `out`.
pub(super) fn plain_readings(
    text: &str,
    limits: &ParseLimits,
    out: &mut Vec<Reading>,
) -> Option<()> {
    let record = plain(text, limits)?;
    let device_id = CompactString::from(record.device_id);
    out.extend(record.metrics().iter().map(|&(metric, value)| Reading {
        device_id: device_id.clone(),
        metric: CompactString::from(metric),
        ts_ms: record.ts_ms,
        value,
        seq: record.seq,
    }));
    Some(())
}

/// Where a string's contents end in `bytes`: the position of the first `"`,
/// `\` or control character, and whether every byte before it is plain (ASCII,
/// not DEL, not `|`). Eight bytes at a time: strings are most of a record.
fn string_end(bytes: &[u8]) -> Option<(usize, bool)> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte equal to `b`. Exact up to the first match; a
    // borrow can flag bytes after it, which only the first match matters for.
    let equal = |v: u64, b: u8| {
        let x = v ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    let mut at = 0;
    let mut odd = 0u64;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        // Below 0x20 (same borrow argument), a quote or a backslash.
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGH;
        let stop = control | equal(v, b'"') | equal(v, b'\\');
        let suspect = (v & HIGH) | equal(v, 0x7f) | equal(v, b'|');
        if stop != 0 {
            let n = (stop.trailing_zeros() / 8) as usize;
            // Only the bytes before the end count; a false flag among them
            // sits after a true one, so "any" is still exact.
            let before = (1u64 << (n * 8)).wrapping_sub(1);
            odd |= suspect & before;
            return Some((at + n, odd == 0));
        }
        odd |= suspect;
        at += 8;
    }
    let rest = bytes.get(at..)?;
    let n = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let plain = rest[..n].iter().all(|&b| plain_name_byte(b));
    Some((at + n, odd == 0 && plain))
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        match self.bytes.get(self.at) {
            Some(&next) if next == b => {
                self.at += 1;
                return true;
            }
            // Anything above space is not whitespace: the common case, no loop.
            Some(&next) if next > b' ' => return false,
            _ => {}
        }
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Whether `literal` comes next, as it is (no whitespace skipped).
    fn at_literal(&self, literal: &[u8]) -> bool {
        let Some(next) = self.bytes.get(self.at..self.at + literal.len()) else {
            return false;
        };
        // Keys are short: two overlapping word compares, not a `memcmp` call.
        let word = |b: &[u8], at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let half = |b: &[u8], at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(w)
        };
        match literal.len() {
            n @ 8..=16 => {
                word(next, 0) == word(literal, 0) && word(next, n - 8) == word(literal, n - 8)
            }
            n @ 4..8 => {
                half(next, 0) == half(literal, 0) && half(next, n - 4) == half(literal, n - 4)
            }
            _ => next == literal,
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.string_plain().map(|(s, _)| s)
    }

    /// [`Self::string`], and whether it is plain: ASCII without DEL or `|`, so
    /// a valid name if its length is.
    fn string_plain(&mut self) -> Option<(&'a str, bool)> {
        self.expect(b'"')?;
        let start = self.at;
        let (len, plain) = string_end(self.bytes.get(start..)?)?;
        if self.bytes[start + len] != b'"' {
            return None; // an escape or a control character: serde decides
        }
        // The quotes are ASCII, so both ends are char boundaries of valid UTF-8.
        let s = self.text.get(start..start + len)?;
        self.at = start + len + 1;
        Some((s, plain))
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        self.skip_ws();
        match *self.bytes.get(self.at)? {
            b'"' => self.string().map(|s| Scalar::Str(Cow::Borrowed(s))),
            b'-' | b'0'..=b'9' => Some(match self.number()? {
                Num::Int(v) => Scalar::Int(v.into()),
                Num::Float(v) => Scalar::Num(v),
            }),
            _ => None,
        }
    }

    /// A number value (after whitespace).
    fn num(&mut self) -> Option<Num> {
        self.skip_ws();
        self.number()
    }

    /// A JSON number, typed the way serde_json types it: integers that fit
    /// 64 bits as `Int` (except `-0`, a float there), everything else `Float`.
    fn number(&mut self) -> Option<Num> {
        let start = self.at;
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        // The integer part's value, exact while it has at most 18 digits.
        let mut int: u64 = 0;
        match *self.bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                while let Some(&d @ b'0'..=b'9') = self.bytes.get(self.at) {
                    int = int.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                    self.at += 1;
                }
            }
            _ => return None,
        }
        let int_digits = self.at - int_start;
        let mut integer = true;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            integer = false;
            self.digits_required()?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            self.digits_required()?;
        }
        // A digit or dot right after `0` (`01`, `0.`) is malformed: serde decides.
        if let Some(b'0'..=b'9' | b'.') = self.bytes.get(self.at) {
            return None;
        }
        if integer {
            let v: i64 = if int_digits <= 18 {
                // Below 10^18, so it fits.
                let v = int as i64;
                if negative { -v } else { v }
            } else {
                // Beyond i64, serde_json has u64 or a float: it decides.
                self.text.get(start..self.at)?.parse().ok()?
            };
            if negative && v == 0 {
                return Some(Num::Float(-0.0));
            }
            return Some(Num::Int(v));
        }
        // std's parse rounds correctly, like serde_json with `float_roundtrip`.
        let v: f64 = self.text.get(start..self.at)?.parse().ok()?;
        v.is_finite().then_some(Num::Float(v))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn digits_required(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{ParseLimits, Reading, RejectReason, parse_with_serde};
    use super::*;

    type Parsed = Result<Vec<Reading>, RejectReason>;

    /// What each path makes of `text`: the scanner where it answers, serde always.
    fn both(text: &str) -> (Option<Parsed>, Parsed) {
        let finish = |raw: RawRecord<'_>| {
            let mut out = Vec::new();
            raw.into_readings(&ParseLimits::default(), &mut out)
                .map(|()| out)
        };
        let scanned = record(text).map(finish);
        let serde = parse_with_serde(text).and_then(finish);
        (scanned, serde)
    }

    /// What the fast path makes of `text`, where it answers. It must leave
    /// `out` alone when it does not.
    fn fast(text: &str) -> Option<Parsed> {
        let before = vec![Reading {
            device_id: "before".into(),
            metric: "m".into(),
            ts_ms: 0,
            value: 0.0,
            seq: None,
        }];
        let mut out = before.clone();
        match plain_readings(text, &ParseLimits::default(), &mut out) {
            Some(()) => Some(Ok(out.split_off(1))),
            None => {
                assert_eq!(
                    out, before,
                    "the fast path appended and then gave up: {text}"
                );
                None
            }
        }
    }

    /// Bitwise, so `-0.0` and `0.0` differ (`PartialEq` on floats would not see it).
    fn same(
        a: &Result<Vec<Reading>, RejectReason>,
        b: &Result<Vec<Reading>, RejectReason>,
    ) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| {
                        (&x.device_id, &x.metric, x.ts_ms, x.value.to_bits(), x.seq)
                            == (&y.device_id, &y.metric, y.ts_ms, y.value.to_bits(), y.seq)
                    })
            }
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }

    #[test]
    fn the_three_shapes_take_the_fast_path() {
        for text in [
            r#"{"device_id":"dev-0042","ts":1763787600123,"seq":17,"metrics":{"temperature":21.4,"humidity":40.2}}"#,
            r#"{"device_id":"sensor_1","timestamp":1763787600.1235,"temperature":25.3,"humidity":60}"#,
            r#"{"device_id":"dev-00089","sensor":"humidity","ts_ms":1700000000000,"value":62.567701414250394,"seq":0}"#,
            " { \"device_id\" : \"d\" ,\t\"ts\" : \"2025-11-22T05:00:00Z\" , \"v\" : -1.5e-3 } \n",
        ] {
            let (scanned, serde) = both(text);
            let scanned = scanned.unwrap_or_else(|| panic!("not scanned: {text}"));
            assert!(serde.is_ok(), "{text}");
            assert!(same(&scanned, &serde), "{text}: {scanned:?} vs {serde:?}");
            // RFC 3339 times take the general path.
            if !text.contains("2025-11-22T") {
                let fast = fast(text).unwrap_or_else(|| panic!("not on the fast path: {text}"));
                assert!(same(&fast, &serde), "{text}: {fast:?} vs {serde:?}");
            }
        }
    }

    #[test]
    fn the_fast_path_leaves_repeats_and_rejects_to_the_general_one() {
        for text in [
            // A repeated field (the last copy wins there), a string value, a string ts.
            r#"{"device_id":"a","device_id":"b","ts":1763787600000,"v":1}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":"1"}"#,
            r#"{"device_id":"d","ts":"2025-11-22T05:00:00Z","v":1}"#,
            // Rejects: no metrics, a bad name, an absurd time, a negative seq.
            r#"{"device_id":"d","ts":1763787600000}"#,
            r#"{"device_id":"a|b","ts":1763787600000,"v":1}"#,
            r#"{"device_id":"d","ts":17637876,"v":1}"#,
            r#"{"device_id":"d","ts":1763787600000,"seq":-1,"v":1}"#,
            r#"{"device_id":"d","ts":1763787600000,"sensor":"t"}"#,
        ] {
            assert!(fast(text).is_none(), "fast path answered: {text}");
        }
        // Repeated metric names are kept, in document order, as the general path keeps them.
        let text = r#"{"device_id":"d","ts":1763787600000,"v":1,"metrics":{"v":2},"v":3}"#;
        let (fast, serde) = (
            fast(text),
            parse_with_serde(text).and_then(|raw| {
                let mut out = Vec::new();
                raw.into_readings(&ParseLimits::default(), &mut out)
                    .map(|()| out)
            }),
        );
        let fast = fast.unwrap_or_else(|| panic!("not on the fast path"));
        assert!(same(&fast, &serde), "{fast:?} vs {serde:?}");
        assert_eq!(fast.map(|r| r.len()), Ok(3));
    }

    #[test]
    fn what_it_does_not_know_goes_to_serde() {
        for text in [
            r#"{"device_id":"d\u0041","ts":1763787600000,"v":1}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":true}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":[1]}"#,
            r#"{"device_id":"d","ts":1763787600000,"metrics":{"v":{"x":1}}}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":012}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":1.}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":1e999}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":123456789012345678901}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":NaN}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":1,}"#,
            r#"{"device_id":"d","ts":1763787600000,"v":1} x"#,
            r#"[1]"#,
        ] {
            assert!(record(text).is_none(), "scanned: {text}");
        }
    }

    #[test]
    fn a_literal_matches_only_itself_whatever_its_length() {
        let text = "\"abcdefghijklmnopqrstuvwxyz\":1";
        for len in 1..=20 {
            for at in 0..3 {
                let s = Scanner {
                    text,
                    bytes: text.as_bytes(),
                    at,
                };
                let literal = &text.as_bytes()[at..at + len];
                assert!(s.at_literal(literal), "{len} at {at}");
                for flip in 0..len {
                    let mut near = literal.to_vec();
                    near[flip] ^= 0x20;
                    assert!(!s.at_literal(&near), "{len} at {at}, byte {flip} differs");
                }
            }
        }
        let end = Scanner {
            text,
            bytes: text.as_bytes(),
            at: text.len() - 2,
        };
        assert!(!end.at_literal(b":1x"), "past the end");
    }

    #[test]
    fn minus_zero_is_a_float_as_in_serde_json() {
        let (scanned, serde) = both(r#"{"device_id":"d","ts":1763787600000,"v":-0}"#);
        let scanned = scanned.unwrap_or_else(|| panic!("not scanned"));
        assert!(same(&scanned, &serde), "{scanned:?} vs {serde:?}");
        assert_eq!(
            scanned.map(|r| r[0].value.to_bits()),
            Ok((-0.0f64).to_bits())
        );
    }

    /// Pieces records are made of, valid and not, so random records hit every branch.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("\"device_id\"".to_owned()),
            Just("\"ts\"".to_owned()),
            Just("\"ts_ms\"".to_owned()),
            Just("\"seq\"".to_owned()),
            Just("\"sensor\"".to_owned()),
            Just("\"value\"".to_owned()),
            Just("\"metrics\"".to_owned()),
            Just("\"a|b\"".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"\\n\"".to_owned()),
            Just("null".to_owned()),
            "\"[a-z0-9_-]{0,6}\"",
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,18})?([eE][+-]?[0-9]{1,3})?",
            "-?[0-9.eE+-]{1,8}",
            any::<f64>().prop_map(|f| f.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            (946_684_800_000i64..4_102_444_800_000).prop_map(|t| t.to_string()),
        ]
    }

    /// A well-formed record of the three shapes with random names and numbers.
    fn well_formed() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:?}")),
            any::<i64>().prop_map(|i| i.to_string()),
            "-?(0|[1-9][0-9]{0,17})\\.[0-9]{1,17}([eE][+-]?[0-9]{1,2})?",
        ];
        let ts = prop_oneof![
            (946_684_800_000i64..4_102_444_800_000).prop_map(|t| t.to_string()),
            (946_684_800.0f64..4_102_444_800.0).prop_map(|t| format!("{t}")),
        ];
        (0usize..3, "[a-z0-9-]{0,10}", ts, number.clone(), number, 0u64..100).prop_map(
            |(shape, device, ts, a, b, seq)| match shape {
                0 => format!(
                    r#"{{"device_id":"{device}","ts":{ts},"seq":{seq},"metrics":{{"t":{a},"h":{b}}}}}"#
                ),
                1 => format!(r#"{{"device_id":"{device}","timestamp":{ts},"t":{a},"h":{b}}}"#),
                _ => format!(
                    r#"{{"device_id":"{device}","sensor":"t","ts_ms":{ts},"value":{a},"seq":{seq}}}"#
                ),
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

        #[test]
        fn the_scanner_agrees_with_serde_where_it_answers(
            tokens in prop::collection::vec(token(), 0..24),
        ) {
            let text = tokens.concat();
            let (scanned, serde) = both(&text);
            if let Some(scanned) = scanned {
                prop_assert!(same(&scanned, &serde), "{text}: {scanned:?} vs {serde:?}");
            }
        }

        #[test]
        fn the_fast_path_agrees_with_serde_where_it_answers(
            tokens in prop::collection::vec(token(), 0..24),
        ) {
            let text = tokens.concat();
            if let Some(fast) = fast(&text) {
                let (_, serde) = both(&text);
                prop_assert!(same(&fast, &serde), "{text}: {fast:?} vs {serde:?}");
            }
        }

        #[test]
        fn well_formed_records_take_the_fast_path_exactly_when_accepted(text in well_formed()) {
            let (_, serde) = both(&text);
            match (fast(&text), &serde) {
                (Some(fast), Ok(_)) => {
                    prop_assert!(same(&fast, &serde), "{text}: {fast:?} vs {serde:?}")
                }
                (None, Err(_)) => {}
                (fast, _) => {
                    return Err(TestCaseError::fail(format!("{text}: {fast:?} vs {serde:?}")))
                }
            }
        }

        /// A slot reused along a buffer's records (and so comparing keys with
        /// the ones before) answers exactly as a fresh slot for each.
        #[test]
        fn a_reused_slot_answers_as_a_fresh_one(
            texts in prop::collection::vec(
                prop_oneof![
                    well_formed(),
                    well_formed().prop_map(|t| t.replacen(':', " : ", 2)),
                    well_formed().prop_map(|t| t.replace("\"seq\"", "\"sensor\"")),
                    prop::collection::vec(token(), 0..16).prop_map(|t| t.concat()),
                ],
                1..12,
            ),
        ) {
            let limits = ParseLimits::default();
            let answer = |r: &PlainRecord<'_>| -> Vec<(String, String, i64, u64, Option<u64>)> {
                r.metrics()
                    .iter()
                    .map(|&(m, v)| (r.device_id.to_owned(), m.to_owned(), r.ts_ms, v.to_bits(), r.seq))
                    .collect()
            };
            let mut slot = PlainRecord::default();
            for text in &texts {
                let reused = plain_into(text, &limits, &mut slot).map(|()| answer(&slot));
                let fresh = plain(text, &limits).map(|r| answer(&r));
                prop_assert_eq!(reused, fresh, "{}", text);
            }
        }

        #[test]
        fn string_end_agrees_with_a_byte_loop(
            bytes in prop::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), Just(b'|'), Just(0x7f), Just(b' '), Just(0x1f),
                    0u8..0x20, 0x20u8..0x7f, 0x80u8..=0xff, Just(b'a'),
                ],
                0..40,
            ),
        ) {
            let naive = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map(|n| (n, bytes[..n].iter().all(|&b| b < 0x7f && b != b'|')));
            prop_assert_eq!(string_end(&bytes), naive, "{:?}", bytes);
        }

        #[test]
        fn well_formed_records_are_scanned_and_agree(text in well_formed()) {
            let (scanned, serde) = both(&text);
            let Some(scanned) = scanned else {
                return Err(TestCaseError::fail(format!("not scanned: {text}")));
            };
            prop_assert!(same(&scanned, &serde), "{text}: {scanned:?} vs {serde:?}");
        }
    }
}
