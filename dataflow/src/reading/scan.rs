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

use super::{Field, RawRecord, Scalar};

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
            if Field::of(key) == Field::Metrics {
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
                raw.set(Cow::Borrowed(key), s.scalar()?);
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
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => self.at += 1,
            }
        }
        // The quotes are ASCII, so both ends are char boundaries of valid UTF-8.
        let s = self.text.get(start..self.at)?;
        self.at += 1;
        Some(s)
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        self.skip_ws();
        match *self.bytes.get(self.at)? {
            b'"' => self.string().map(|s| Scalar::Str(Cow::Borrowed(s))),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A JSON number, typed the way serde_json types it: integers that fit
    /// 64 bits as `Int` (except `-0`, a float there), everything else `Num`.
    fn number(&mut self) -> Option<Scalar<'a>> {
        let start = self.at;
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        match *self.bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
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
        let text = self.text.get(start..self.at)?;
        if integer {
            // Beyond i64, serde_json has u64 or a float: it decides.
            let v: i64 = text.parse().ok()?;
            if negative && v == 0 {
                return Some(Scalar::Num(-0.0));
            }
            return Some(Scalar::Int(v.into()));
        }
        // std's parse rounds correctly, like serde_json with `float_roundtrip`.
        let v: f64 = text.parse().ok()?;
        v.is_finite().then_some(Scalar::Num(v))
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
        }
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
        fn well_formed_records_are_scanned_and_agree(text in well_formed()) {
            let (scanned, serde) = both(&text);
            let Some(scanned) = scanned else {
                return Err(TestCaseError::fail(format!("not scanned: {text}")));
            };
            prop_assert!(same(&scanned, &serde), "{text}: {scanned:?} vs {serde:?}");
        }
    }
}
