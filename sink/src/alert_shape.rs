//! The shape of alert events, written once for Kafka and Parquet.
//!
//! ```text
//!   AlertEvent of rule r at epoch e
//!     ──▶ key   "alert|v1|v2|…|since"
//!     ──▶ JSON  {alert, state, severity, group fields…, window_start, window_end,
//!                value, threshold, since, epoch}
//!     ──▶ Arrow alert, state, severity, group (values joined by `|`), labels
//!               (the group fields as a JSON object), window bounds and since
//!               Timestamp(ms, UTC), value and threshold Float64 (null: none), epoch
//! ```
//!
//! One dataset holds every rule, whatever its aggregation's group fields:
//! hence `group` and `labels` rather than a column per field.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use iotflow_dataflow::aggregation::{Aggregation, KEY_SEPARATOR};
use iotflow_dataflow::alert::{AlertEvent, AlertRules, group_labels};
use iotflow_dataflow::job::Epoch;
use serde::{Deserialize, Serialize};

/// How one rule's events are labelled.
#[derive(Debug, Clone, PartialEq)]
struct RuleShape {
    name: String,
    severity: String,
    /// Output names of its aggregation's group fields.
    group_fields: Vec<String>,
    /// Its aggregation's index: where its keys live.
    aggregation: u16,
}

/// How the job's alert events are written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlertShape {
    rules: Vec<RuleShape>,
    /// Kafka values in Avro under this registered schema, instead of JSON.
    pub avro: Option<crate::AvroValues>,
}

/// One alert event as the alert dataset keeps it until it is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub event: AlertEvent,
    pub epoch: u64,
}

impl AlertShape {
    pub fn of(rules: &AlertRules, aggregations: &[Aggregation]) -> Self {
        let rules = rules
            .rules
            .iter()
            .map(|r| RuleShape {
                name: r.name.to_string(),
                severity: r.severity.to_string(),
                group_fields: r
                    .group_fields(aggregations)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                aggregation: r.on,
            })
            .collect();
        Self { rules, avro: None }
    }

    /// Values in Avro under `avro` (a schema registered for [`Self::avro_schema`]).
    pub fn with_avro(mut self, avro: Option<crate::AvroValues>) -> Self {
        self.avro = avro;
        self
    }

    /// The Kafka value of `e` emitted at `epoch`: Avro when the shape has a
    /// registered schema, else JSON.
    pub fn value(&self, e: &AlertEvent, epoch: Epoch) -> Result<Vec<u8>, String> {
        match &self.avro {
            Some(avro) => self.avro(avro, e, epoch),
            None => self.json(e, epoch).map_err(|e| e.to_string()),
        }
    }

    /// The Avro record schema (JSON text) of alert events: one for every
    /// rule, so the group fields are the map `labels`, as in Parquet.
    pub fn avro_schema() -> String {
        let millis = serde_json::json!({"type": "long", "logicalType": "timestamp-millis"});
        let optional = serde_json::json!(["null", "double"]);
        serde_json::json!({
            "type": "record",
            "name": "AlertEvent",
            "namespace": "iotflow.alerts",
            "fields": [
                {"name": "alert", "type": "string"},
                {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["firing", "resolved"]}},
                {"name": "severity", "type": "string"},
                {"name": "labels", "type": {"type": "map", "values": "string"}},
                {"name": "window_start", "type": millis},
                {"name": "window_end", "type": millis},
                {"name": "value", "type": optional, "default": null},
                {"name": "threshold", "type": optional, "default": null},
                {"name": "since", "type": millis},
                {"name": "epoch", "type": "long"},
            ],
        })
        .to_string()
    }

    fn avro(
        &self,
        avro: &crate::AvroValues,
        e: &AlertEvent,
        epoch: Epoch,
    ) -> Result<Vec<u8>, String> {
        use iotflow_schema::Datum;
        let rule = self.rule(e);
        let text = |s: &str| Datum::String(s.to_owned());
        let optional = |v: Option<f64>| match v {
            Some(v) => Datum::Union(1, Box::new(Datum::Double(v))),
            None => Datum::Union(0, Box::new(Datum::Null)),
        };
        let state = match e.firing {
            true => Datum::Enum(0, "firing".into()),
            false => Datum::Enum(1, "resolved".into()),
        };
        let labels = self
            .labels(e)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Datum::String(v)))
            .collect();
        let epoch = i64::try_from(epoch).map_err(|_| format!("epoch {epoch}"))?;
        let datum = Datum::Record(vec![
            ("alert".into(), text(rule.map_or("", |r| r.name.as_str()))),
            ("state".into(), state),
            (
                "severity".into(),
                text(rule.map_or("", |r| r.severity.as_str())),
            ),
            ("labels".into(), Datum::Map(labels)),
            (
                "window_start".into(),
                Datum::TimestampMillis(e.window_start),
            ),
            ("window_end".into(), Datum::TimestampMillis(e.window_end)),
            ("value".into(), optional(e.value)),
            ("threshold".into(), optional(e.threshold)),
            ("since".into(), Datum::TimestampMillis(e.since)),
            ("epoch".into(), Datum::Long(epoch)),
        ]);
        let body = avro.schema.encode_datum(datum)?;
        Ok(iotflow_schema::wire::frame(avro.id, &body))
    }

    fn rule(&self, e: &AlertEvent) -> Option<&RuleShape> {
        self.rules.get(usize::from(e.rule))
    }

    /// The aggregation whose key owner holds `e`'s rule state.
    pub fn aggregation_of(&self, e: &AlertEvent) -> u16 {
        self.rule(e).map_or(0, |r| r.aggregation)
    }

    /// The Kafka key: rule, group values and since joined by `|`.
    pub fn key(&self, e: &AlertEvent) -> String {
        let name = self.rule(e).map_or("", |r| r.name.as_str());
        match e.group.is_empty() {
            true => format!("{name}{KEY_SEPARATOR}{}", e.since),
            false => format!("{name}{KEY_SEPARATOR}{}{KEY_SEPARATOR}{}", e.group, e.since),
        }
    }

    fn state(e: &AlertEvent) -> &'static str {
        if e.firing { "firing" } else { "resolved" }
    }

    fn labels(&self, e: &AlertEvent) -> Vec<(&str, String)> {
        let fields = self.rule(e).map_or(&[][..], |r| r.group_fields.as_slice());
        group_labels(fields, &e.group)
            .map(|(k, v)| (k, v.to_owned()))
            .collect()
    }

    /// The JSON value of `e` emitted at `epoch`.
    pub fn json(&self, e: &AlertEvent, epoch: Epoch) -> Result<Vec<u8>, serde_json::Error> {
        use serde_json::Value;
        let rule = self.rule(e);
        let number = |v: Option<f64>| v.map_or(Value::Null, Value::from);
        let mut fields: Vec<(&str, Value)> = vec![
            ("alert", rule.map_or("", |r| r.name.as_str()).into()),
            ("state", Self::state(e).into()),
            ("severity", rule.map_or("", |r| r.severity.as_str()).into()),
        ];
        fields.extend(self.labels(e).into_iter().map(|(k, v)| (k, v.into())));
        fields.extend([
            ("window_start", e.window_start.into()),
            ("window_end", e.window_end.into()),
            ("value", number(e.value)),
            ("threshold", number(e.threshold)),
            ("since", e.since.into()),
            ("epoch", epoch.into()),
        ]);
        // In this order (a map would sort the keys).
        let mut out = vec![b'{'];
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name)?;
            out.push(b':');
            serde_json::to_writer(&mut out, value)?;
        }
        out.push(b'}');
        Ok(out)
    }

    /// The Parquet schema of the alert dataset.
    pub fn schema() -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("alert", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, false),
            Field::new("group", DataType::Utf8, false),
            Field::new("labels", DataType::Utf8, false),
            Field::new("window_start", ts(), false),
            Field::new("window_end", ts(), false),
            Field::new("value", DataType::Float64, true),
            Field::new("threshold", DataType::Float64, true),
            Field::new("since", ts(), false),
            Field::new("epoch", DataType::UInt64, false),
        ]))
    }

    /// `rows` as one Arrow batch of [`Self::schema`].
    pub fn batch(&self, rows: &[&AlertRow]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let text = |f: &dyn Fn(&AlertRow) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
        };
        let ts = |f: &dyn Fn(&AlertRow) -> i64| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| f(r)))
                    .with_timezone("UTC"),
            )
        };
        let labels = |r: &AlertRow| {
            let m: serde_json::Map<String, serde_json::Value> = self
                .labels(&r.event)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            serde_json::Value::Object(m).to_string()
        };
        let columns: Vec<ArrayRef> = vec![
            text(&|r| {
                self.rule(&r.event)
                    .map_or_else(String::new, |x| x.name.clone())
            }),
            text(&|r| Self::state(&r.event).to_owned()),
            text(&|r| {
                self.rule(&r.event)
                    .map_or_else(String::new, |x| x.severity.clone())
            }),
            text(&|r| r.event.group.to_string()),
            text(&labels),
            ts(&|r| r.event.window_start),
            ts(&|r| r.event.window_end),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.event.value))),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.event.threshold),
            )),
            ts(&|r| r.event.since),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.epoch))),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> AlertShape {
        AlertShape {
            rules: vec![RuleShape {
                name: "overheat".into(),
                severity: "critical".into(),
                group_fields: vec!["device_id".into(), "metric".into()],
                aggregation: 0,
            }],
            avro: None,
        }
    }

    #[test]
    fn in_avro_an_alert_event_keeps_its_fields_with_the_group_as_labels() {
        let schema =
            iotflow_schema::avro::AvroSchema::parse(&AlertShape::avro_schema(), &[]).unwrap();
        let s = shape().with_avro(Some(crate::AvroValues {
            id: 3,
            schema: Arc::new(schema),
        }));
        let reader =
            iotflow_schema::avro::AvroSchema::parse(&AlertShape::avro_schema(), &[]).unwrap();
        let decode = |bytes: Vec<u8>| {
            let (id, body) = iotflow_schema::wire::split(&bytes).unwrap();
            assert_eq!(id, 3);
            reader.decode(body).unwrap()
        };
        assert_eq!(
            decode(s.value(&event(true), 12).unwrap()),
            serde_json::json!({"alert":"overheat","state":"firing","severity":"critical",
                "labels":{"device_id":"pump-7","metric":"temperature"},"window_start":30000,
                "window_end":40000,"value":83.5,"threshold":80.0,"since":10000,"epoch":12})
        );
        let mut none = event(false);
        none.value = None;
        let resolved = decode(s.value(&none, 13).unwrap());
        assert_eq!(
            (resolved["state"].as_str(), &resolved["value"]),
            (Some("resolved"), &serde_json::Value::Null)
        );
        // Without a schema, the value is today's JSON.
        assert_eq!(
            shape().value(&event(true), 12).unwrap(),
            shape().json(&event(true), 12).unwrap()
        );
    }

    fn event(firing: bool) -> AlertEvent {
        AlertEvent {
            rule: 0,
            group: "pump-7|temperature".into(),
            firing,
            window_start: 30_000,
            window_end: 40_000,
            value: Some(83.5),
            threshold: Some(80.0),
            since: 10_000,
        }
    }

    #[test]
    fn an_alert_event_carries_the_contract_s_fields_and_key() {
        let s = shape();
        assert_eq!(s.key(&event(true)), "overheat|pump-7|temperature|10000");
        let json = String::from_utf8(s.json(&event(true), 12).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"alert":"overheat","state":"firing","severity":"critical","device_id":"pump-7","metric":"temperature","window_start":30000,"window_end":40000,"value":83.5,"threshold":80.0,"since":10000,"epoch":12}"#
        );
        let mut none = event(false);
        none.value = None;
        let json = String::from_utf8(s.json(&none, 13).unwrap()).unwrap();
        assert!(
            json.contains(r#""state":"resolved""#) && json.contains(r#""value":null"#),
            "{json}"
        );
        // The fields beside the group's are those `check` keeps group fields from.
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).unwrap();
        let mut own: Vec<&str> = value
            .keys()
            .map(String::as_str)
            .filter(|k| !["device_id", "metric"].contains(k))
            .collect();
        let mut contract = iotflow_jobfile::alert::ALERT_EVENT_FIELDS.to_vec();
        own.sort_unstable();
        contract.sort_unstable();
        assert_eq!(own, contract);
    }

    #[test]
    fn the_alert_dataset_has_one_schema_for_every_rule() {
        let s = shape();
        let row = AlertRow {
            event: event(true),
            epoch: 3,
        };
        let rows = [&row];
        let batch = s.batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), AlertShape::schema());
        let labels = batch
            .column(4)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_owned();
        assert_eq!(labels, r#"{"device_id":"pump-7","metric":"temperature"}"#);
    }
}
