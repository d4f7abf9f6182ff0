//! An alert event as Alertmanager's webhook receivers expect it (payload
//! version 4), one alert per request:
//!
//! - `labels`: `alertname` (the rule), the group fields, `severity`;
//! - `annotations`: `value`, `threshold`, the window, the epoch and a `summary`;
//! - `startsAt`: `since`; `endsAt`: the end of the window that resolved it,
//!   or Alertmanager's zero time while it fires;
//! - `fingerprint`: Prometheus' label-set fingerprint (FNV-1a 64 over the
//!   sorted names and values, each followed by 0xff), so a receiver that
//!   groups by it groups a firing and its resolve together.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value, json};

use crate::NotifyError;

// The fields every alert event has; the others are its group fields.
use iotflow_jobfile::alert::ALERT_EVENT_FIELDS as EVENT_FIELDS;

/// Alertmanager's "not ended yet".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One committed alert event, read back from its record value.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedAlert {
    pub alert: String,
    pub firing: bool,
    pub severity: String,
    /// Group fields and values, by name.
    pub group: BTreeMap<String, String>,
    pub window_start: i64,
    pub window_end: i64,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub since: i64,
    pub epoch: u64,
}

/// Who the payload says it is for and from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// The payload's `receiver`.
    pub name: String,
    /// The payload's `externalURL`: where people look (the job's status page).
    pub external_url: String,
}

impl CommittedAlert {
    /// Reads an alert record's JSON value.
    pub fn parse(value: &[u8]) -> Result<Self, NotifyError> {
        let reason = |r: String| NotifyError::Record { reason: r };
        let map: Map<String, Value> =
            serde_json::from_slice(value).map_err(|e| reason(e.to_string()))?;
        let text = |k: &str| {
            map.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| reason(format!("no text field `{k}`")))
        };
        let int = |k: &str| {
            map.get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| reason(format!("no integer field `{k}`")))
        };
        let state = text("state")?;
        let firing = match state.as_str() {
            "firing" => true,
            "resolved" => false,
            other => return Err(reason(format!("state `{other}`"))),
        };
        // JSON events carry the group fields beside their own; Avro events
        // (one schema for every rule) as the map `labels`.
        let group_fields: Box<dyn Iterator<Item = (&String, &Value)>> = match map.get("labels") {
            Some(Value::Object(labels)) => Box::new(labels.iter()),
            _ => Box::new(
                map.iter()
                    .filter(|(k, _)| !EVENT_FIELDS.contains(&k.as_str())),
            ),
        };
        let group = group_fields
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                (k.clone(), v)
            })
            .collect();
        Ok(Self {
            alert: text("alert")?,
            firing,
            severity: text("severity")?,
            group,
            window_start: int("window_start")?,
            window_end: int("window_end")?,
            value: map.get("value").and_then(Value::as_f64),
            threshold: map.get("threshold").and_then(Value::as_f64),
            since: int("since")?,
            epoch: map
                .get("epoch")
                .and_then(Value::as_u64)
                .ok_or_else(|| reason("no integer field `epoch`".into()))?,
        })
    }

    fn state(&self) -> &'static str {
        if self.firing { "firing" } else { "resolved" }
    }

    /// `alertname`, the group fields, `severity` (the rule's names win over
    /// a group field of the same name).
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.group.clone();
        labels.insert("alertname".into(), self.alert.clone());
        labels.insert("severity".into(), self.severity.clone());
        labels
    }

    fn annotations(&self) -> BTreeMap<&'static str, String> {
        let number = |v: Option<f64>| v.map(|v| v.to_string());
        let mut a = BTreeMap::new();
        if let Some(v) = number(self.value) {
            a.insert("value", v);
        }
        if let Some(t) = number(self.threshold) {
            a.insert("threshold", t);
        }
        a.insert("window_start", rfc3339(self.window_start));
        a.insert("window_end", rfc3339(self.window_end));
        a.insert("epoch", self.epoch.to_string());
        let group: Vec<String> = self.group.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut summary = format!("{} {}", self.alert, self.state());
        if !group.is_empty() {
            summary.push_str(&format!(" for {}", group.join(" ")));
        }
        if let Some(v) = a.get("value") {
            summary.push_str(&format!(": value {v}"));
        }
        if let Some(t) = a.get("threshold") {
            summary.push_str(&format!(", threshold {t}"));
        }
        a.insert("summary", summary);
        a
    }

    /// The webhook body: Alertmanager's payload, version 4, with this one alert.
    pub fn payload(&self, receiver: &Receiver) -> Value {
        let labels = self.labels();
        let annotations = self.annotations();
        let group_key = format!(
            "{{}}:{{{}}}",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let ends_at = if self.firing {
            ZERO_TIME.to_owned()
        } else {
            rfc3339(self.window_end)
        };
        json!({
            "version": "4",
            "groupKey": group_key,
            "truncatedAlerts": 0,
            "status": self.state(),
            "receiver": receiver.name,
            "groupLabels": labels,
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": receiver.external_url,
            "alerts": [{
                "status": self.state(),
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339(self.since),
                "endsAt": ends_at,
                "generatorURL": receiver.external_url,
                "fingerprint": format!("{:016x}", fingerprint(&labels)),
            }],
        })
    }
}

/// Prometheus' label-set fingerprint (`model.LabelSet.Fingerprint`).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let add = |h: u64, bytes: &[u8]| {
        bytes
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
    };
    labels.iter().fold(OFFSET, |h, (k, v)| {
        let h = add(add(h, k.as_bytes()), &[0xff]);
        add(add(h, v.as_bytes()), &[0xff])
    })
}

/// The `Idempotency-Key` of an event: its job, its record key (rule, group
/// values, since) and its state — the same on every retry and every
/// restart, different for any other event. Bytes outside printable ASCII
/// (and `%`) are percent-encoded: header values must be visible ASCII.
pub fn idempotency_key(job: &str, record_key: &[u8], firing: bool) -> String {
    let state: &[u8] = if firing { b"firing" } else { b"resolved" };
    let mut out = String::new();
    for part in [job.as_bytes(), record_key, state] {
        if !out.is_empty() {
            out.push('|');
        }
        for &b in part {
            if b.is_ascii_graphic() && b != b'%' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds.
fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FIRING: &[u8] = br#"{"alert":"overheat","state":"firing","severity":"critical","device_id":"pump-7","metric":"temperature","window_start":1700000020000,"window_end":1700000030000,"value":81.25,"threshold":80.0,"since":1700000000000,"epoch":12}"#;

    fn receiver() -> Receiver {
        Receiver {
            name: "iotflow".into(),
            external_url: "http://127.0.0.1:9464/".into(),
        }
    }

    #[test]
    fn a_firing_event_becomes_an_alertmanager_v4_payload() {
        let a = CommittedAlert::parse(FIRING).unwrap();
        insta::assert_snapshot!(serde_json::to_string_pretty(&a.payload(&receiver())).unwrap());
    }

    #[test]
    fn an_avro_event_read_as_json_is_the_same_alert() {
        // As `notify --schema-registry` shows an Avro event: the group as `labels`.
        let avro = br#"{"alert":"overheat","state":"firing","severity":"critical","labels":{"device_id":"pump-7","metric":"temperature"},"window_start":1700000020000,"window_end":1700000030000,"value":81.25,"threshold":80.0,"since":1700000000000,"epoch":12}"#;
        assert_eq!(
            CommittedAlert::parse(avro).unwrap(),
            CommittedAlert::parse(FIRING).unwrap()
        );
    }

    #[test]
    fn a_resolve_ends_at_its_window_end_and_keeps_the_fingerprint() {
        let resolved = String::from_utf8_lossy(FIRING)
            .replace("\"firing\"", "\"resolved\"")
            .replace("81.25", "74.5");
        let (f, r) = (
            CommittedAlert::parse(FIRING).unwrap().payload(&receiver()),
            CommittedAlert::parse(resolved.as_bytes())
                .unwrap()
                .payload(&receiver()),
        );
        assert_eq!(r["status"], "resolved");
        assert_eq!(r["alerts"][0]["endsAt"], "2023-11-14T22:13:50.000Z");
        assert_eq!(f["alerts"][0]["endsAt"], ZERO_TIME);
        assert_eq!(f["alerts"][0]["startsAt"], r["alerts"][0]["startsAt"]);
        assert_eq!(f["alerts"][0]["fingerprint"], r["alerts"][0]["fingerprint"]);
    }

    #[test]
    fn absence_and_fleet_wide_events_have_no_group_and_maybe_no_value() {
        let v = br#"{"alert":"quiet","state":"firing","severity":"warning","window_start":0,"window_end":10000,"value":null,"threshold":null,"since":0,"epoch":1}"#;
        let a = CommittedAlert::parse(v).unwrap();
        assert!(a.group.is_empty());
        let p = a.payload(&receiver());
        assert_eq!(
            p["alerts"][0]["labels"],
            json!({"alertname": "quiet", "severity": "warning"})
        );
        assert_eq!(p["commonAnnotations"]["summary"], "quiet firing");
        assert!(p["commonAnnotations"].get("value").is_none());
    }

    #[test]
    fn records_that_are_not_alert_events_are_refused() {
        for bad in [
            &b"not json"[..],
            br#"{"alert":"x"}"#,
            br#"{"alert":"x","state":"pending","severity":"s","window_start":0,"window_end":1,"since":0,"epoch":1}"#,
        ] {
            assert!(CommittedAlert::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_is_prometheus_label_signature() {
        // Values from Prometheus' model/signature_test.go.
        assert_eq!(fingerprint(&BTreeMap::new()), 14_695_981_039_346_656_037);
        let labels = BTreeMap::from([
            ("name".to_owned(), "garland, briggs".to_owned()),
            ("fear".to_owned(), "love is not enough".to_owned()),
        ]);
        assert_eq!(fingerprint(&labels), 5_799_056_148_416_392_346);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_and_tell_states_apart() {
        let k = idempotency_key("plant job", "overheat|Zürich|1700".as_bytes(), true);
        assert_eq!(k, "plant%20job|overheat|Z%C3%BCrich|1700|firing");
        assert_ne!(
            k,
            idempotency_key("plant job", "overheat|Zürich|1700".as_bytes(), false)
        );
        assert!(k.bytes().all(|b| b.is_ascii_graphic()));
    }
}
