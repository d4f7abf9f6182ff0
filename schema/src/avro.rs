//! Avro through `apache-avro`: a registered schema parsed with the schemas
//! it references, a datum decoded into the JSON value the input mapping
//! reads (so Avro and JSON readings go through one mapping), and JSON
//! encoded under a schema for the simulator and the tests.

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::{Map, Number, Value};

/// A writer schema and the named schemas it references.
#[derive(Debug)]
pub struct AvroSchema {
    schema: Schema,
    referenced: Vec<Schema>,
}

/// Why a datum did not become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvroError {
    /// The bytes are not a datum of the schema (or have bytes left over).
    Undecodable,
    /// A float or double that is NaN or infinite (JSON has no such number).
    NonFinite,
}

impl AvroSchema {
    /// `text` parsed, its references (`referenced`, schema texts in
    /// dependency order) resolving the names it uses.
    pub fn parse(text: &str, referenced: &[String]) -> Result<Self, String> {
        if referenced.is_empty() {
            let schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
            return Ok(Self {
                schema,
                referenced: Vec::new(),
            });
        }
        let (schema, referenced) =
            Schema::parse_str_with_list(text, referenced).map_err(|e| e.to_string())?;
        Ok(Self { schema, referenced })
    }

    /// Every named schema a datum may use, references first (names resolve
    /// in order).
    fn all(&self) -> Vec<&Schema> {
        self.referenced
            .iter()
            .chain(std::iter::once(&self.schema))
            .collect()
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// One datum as JSON: records and maps as objects, unions as their
    /// branch, enums as their symbol, timestamps as their number.
    pub fn decode(&self, body: &[u8]) -> Result<Value, AvroError> {
        self.decode_with(body, NonFinite::Refuse)
    }

    /// [`Self::decode`], NaN and infinities read as null instead of refused:
    /// for finding who sent a record refused for its value.
    pub fn decode_nulling_non_finite(&self, body: &[u8]) -> Result<Value, AvroError> {
        self.decode_with(body, NonFinite::Null)
    }

    fn decode_with(&self, mut body: &[u8], non_finite: NonFinite) -> Result<Value, AvroError> {
        let builder = GenericDatumReader::builder(&self.schema);
        let reader = if self.referenced.is_empty() {
            builder.build()
        } else {
            builder.writer_schemata(self.all()).and_then(|b| b.build())
        }
        .map_err(|_| AvroError::Undecodable)?;
        let datum = reader
            .read_value(&mut body)
            .map_err(|_| AvroError::Undecodable)?;
        if !body.is_empty() {
            return Err(AvroError::Undecodable);
        }
        json(datum, non_finite)
    }

    /// Whether a record of this schema can hold `path` (field names through
    /// nested records, through unions with a record branch). A map or a
    /// reference it cannot see into holds any path.
    pub fn has_path(&self, path: &[String]) -> bool {
        has_path(&self.schema, path)
    }

    /// `value` encoded as a datum of this schema (numbers widened or
    /// narrowed to the field's type, objects to records or maps).
    pub fn encode(&self, value: &Value) -> Result<Vec<u8>, String> {
        let avro = Avro::try_from(value.clone())
            .map_err(|e| e.to_string())?
            .resolve_schemata(&self.schema, self.all())
            .map_err(|e| e.to_string())?;
        self.encode_datum(avro)
    }

    /// A datum built for this schema, encoded (validated against it first).
    pub fn encode_datum(&self, avro: Avro) -> Result<Vec<u8>, String> {
        let builder = GenericDatumWriter::builder(&self.schema);
        let writer = if self.referenced.is_empty() {
            builder.build()
        } else {
            builder.schemata(self.all()).and_then(|b| b.build())
        }
        .map_err(|e| e.to_string())?;
        writer.write_value_to_vec(avro).map_err(|e| e.to_string())
    }
}

fn has_path(schema: &Schema, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    match schema {
        Schema::Record(r) => r
            .lookup
            .get(first)
            .and_then(|&i| r.fields.get(i))
            .is_some_and(|f| has_path(&f.schema, rest)),
        Schema::Union(u) => u.variants().iter().any(|v| has_path(v, path)),
        Schema::Map(_) | Schema::Ref { .. } => true,
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonFinite {
    Refuse,
    Null,
}

fn float(f: f64, non_finite: NonFinite) -> Result<Value, AvroError> {
    match (Number::from_f64(f), non_finite) {
        (Some(n), _) => Ok(Value::Number(n)),
        (None, NonFinite::Null) => Ok(Value::Null),
        (None, NonFinite::Refuse) => Err(AvroError::NonFinite),
    }
}

fn json(datum: Avro, nf: NonFinite) -> Result<Value, AvroError> {
    Ok(match datum {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::from(i),
        Avro::Long(l)
        | Avro::TimeMicros(l)
        | Avro::TimestampMillis(l)
        | Avro::TimestampMicros(l)
        | Avro::TimestampNanos(l)
        | Avro::LocalTimestampMillis(l)
        | Avro::LocalTimestampMicros(l)
        | Avro::LocalTimestampNanos(l) => Value::from(l),
        Avro::Float(f) => float(f64::from(f), nf)?,
        Avro::Double(d) => float(d, nf)?,
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Uuid(u) => Value::String(u.as_hyphenated().to_string()),
        Avro::Union(_, inner) => json(*inner, nf)?,
        Avro::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| json(v, nf))
                .collect::<Result<_, _>>()?,
        ),
        Avro::Map(items) => Value::Object(
            items
                .into_iter()
                .map(|(k, v)| Ok((k, json(v, nf)?)))
                .collect::<Result<Map<_, _>, _>>()?,
        ),
        Avro::Record(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, json(v, nf)?)))
                .collect::<Result<Map<_, _>, _>>()?,
        ),
        // Bytes, fixed, decimals and durations are no reading's number or
        // name: kept as what they are not (null), so a mapping that names
        // one says the value is not numeric.
        Avro::Bytes(_)
        | Avro::Fixed(..)
        | Avro::Decimal(_)
        | Avro::BigDecimal(_)
        | Avro::Duration(_) => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const READING: &str = r#"{"type":"record","name":"Reading","namespace":"iot","fields":[
        {"name":"device_id","type":"string"},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"seq","type":["null","long"],"default":null},
        {"name":"site","type":["null","string"],"default":null},
        {"name":"meta","type":{"type":"record","name":"Meta","fields":[{"name":"line","type":"string"}]}},
        {"name":"metrics","type":{"type":"map","values":"double"}}]}"#;

    fn reading() -> Value {
        serde_json::json!({"device_id":"dev-1","ts":1763787600123i64,"seq":7,"site":"s1",
            "meta":{"line":"L2"},"metrics":{"temperature":21.5,"humidity":40.0}})
    }

    #[test]
    fn a_datum_decodes_into_the_json_it_was_encoded_from() {
        let s = AvroSchema::parse(READING, &[]).unwrap();
        let bytes = s.encode(&reading()).unwrap();
        assert_eq!(s.decode(&bytes), Ok(reading()));
        // A union's null branch is JSON null.
        let mut no_site = reading();
        no_site["site"] = Value::Null;
        assert_eq!(s.decode(&s.encode(&no_site).unwrap()), Ok(no_site));
    }

    #[test]
    fn bad_bytes_leftovers_and_non_finite_numbers_are_refused() {
        let s = AvroSchema::parse(READING, &[]).unwrap();
        let bytes = s.encode(&reading()).unwrap();
        assert_eq!(
            s.decode(&bytes[..bytes.len() - 3]),
            Err(AvroError::Undecodable)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(s.decode(&longer), Err(AvroError::Undecodable));
        assert_eq!(
            s.decode(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            Err(AvroError::Undecodable)
        );
        let d = AvroSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"v","type":"double"}]}"#,
            &[],
        )
        .unwrap();
        let nan = GenericDatumWriter::builder(d.schema())
            .build()
            .unwrap()
            .write_value_to_vec(Avro::Record(vec![("v".into(), Avro::Double(f64::NAN))]))
            .unwrap();
        assert_eq!(d.decode(&nan), Err(AvroError::NonFinite));
        assert_eq!(
            d.decode_nulling_non_finite(&nan),
            Ok(serde_json::json!({"v": null}))
        );
    }

    #[test]
    fn paths_are_checked_through_records_and_unions() {
        let s = AvroSchema::parse(READING, &[]).unwrap();
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        for present in ["device_id", "ts", "site", "meta.line", "metrics.anything"] {
            assert!(s.has_path(&p(present)), "{present}");
        }
        for absent in ["device", "meta.site", "ts.x", "timestamp"] {
            assert!(!s.has_path(&p(absent)), "{absent}");
        }
    }

    #[test]
    fn a_schema_uses_the_named_types_it_references() {
        let meta = r#"{"type":"record","name":"Meta","namespace":"iot","fields":[{"name":"line","type":"string"}]}"#;
        let main = r#"{"type":"record","name":"R","namespace":"iot","fields":[{"name":"meta","type":"iot.Meta"},{"name":"v","type":"double"}]}"#;
        assert!(AvroSchema::parse(main, &[]).is_err());
        let s = AvroSchema::parse(main, &[meta.to_owned()]).unwrap();
        let value = serde_json::json!({"meta":{"line":"L1"},"v":1.25});
        assert_eq!(s.decode(&s.encode(&value).unwrap()), Ok(value));
    }
}
