//! Protobuf through protox and prost-reflect: the `.proto` text a registry
//! returns (with the files it imports, which are its references) compiled at
//! run time into descriptors, the message a value's indexes name picked from
//! them, and the message read by reflection into the JSON the input mapping
//! reads: fields under their proto names, 64-bit integers as numbers (not
//! the JSON mapping's strings, which a time or metric could not be read
//! from), enums as their names, `google.protobuf.Timestamp` as RFC 3339 and
//! wrappers as the value they wrap.

use std::collections::HashMap;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage as _, Value as Proto,
};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::{Map, Number, Value};

/// Why a value did not become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// The indexes name no message of the schema.
    NoSuchMessage,
    /// The bytes are not a message of their type.
    Undecodable,
    /// A float or double that is NaN or infinite.
    NonFinite,
}

/// A compiled `.proto` schema: its file and everything it imports.
#[derive(Debug)]
pub struct ProtoSchema {
    pool: DescriptorPool,
    file: String,
}

/// The registry's schema texts by file name, then Google's well-known types.
struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(text) => match serialized(text) {
                Some(mut descriptor) => {
                    descriptor.name = Some(name.to_owned());
                    Ok(File::from_file_descriptor_proto(descriptor))
                }
                None => File::from_source(name, text),
            },
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// A schema registered in its serialized form (base64 of a
/// `FileDescriptorProto`: what confluent-kafka's Python serializer sends, and
/// what registries return for `format=serialized`), or `None` for `.proto` text.
fn serialized(text: &str) -> Option<prost_types::FileDescriptorProto> {
    use base64::Engine as _;
    let text = text.trim();
    // `.proto` text always has a space or a `;`; base64 never.
    if text.contains([' ', ';', '\n']) {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

impl ProtoSchema {
    /// `text` compiled as file `name`, importing `imports` (file name → text).
    pub fn compile(name: &str, text: &str, imports: &[(String, String)]) -> Result<Self, String> {
        let mut files: HashMap<String, String> = imports.iter().cloned().collect();
        files.insert(name.to_owned(), text.to_owned());
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources(files));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.open_file(name).map_err(|e| e.to_string())?;
        Ok(Self {
            pool: compiler.descriptor_pool(),
            file: name.to_owned(),
        })
    }

    /// The message at `path`: the file's `path[0]`-th message, then its
    /// `path[1]`-th nested message, and so on.
    pub fn message(&self, path: &[usize]) -> Option<MessageDescriptor> {
        let file = self.pool.get_file_by_name(&self.file)?;
        let (first, rest) = path.split_first()?;
        let mut message = file.messages().nth(*first)?;
        for i in rest {
            let child = message
                .child_messages()
                .filter(|m| !m.is_map_entry())
                .nth(*i)?;
            message = child;
        }
        Some(message)
    }

    /// The message of type `desc` in `body` as JSON.
    pub fn decode(
        desc: &MessageDescriptor,
        body: &[u8],
        nulling: bool,
    ) -> Result<Value, ProtoError> {
        let message =
            DynamicMessage::decode(desc.clone(), body).map_err(|_| ProtoError::Undecodable)?;
        message_json(&message, nulling)
    }

    /// `value` (JSON, as the proto JSON mapping reads it) encoded as the message at `path`.
    pub fn encode(&self, path: &[usize], value: &Value) -> Result<Vec<u8>, String> {
        let desc = self.message(path).ok_or("no such message")?;
        let message = DynamicMessage::deserialize(desc, value).map_err(|e| e.to_string())?;
        Ok(message.encode_to_vec())
    }
}

/// Whether a message of type `desc` can hold `path` (proto field names
/// through nested messages; a map holds any key).
pub fn has_path(desc: &MessageDescriptor, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    let Some(field) = desc.get_field_by_name(first) else {
        return false;
    };
    if rest.is_empty() || field.is_map() {
        return true;
    }
    match field.kind() {
        Kind::Message(inner) if !field.is_list() => has_path(&inner, rest),
        _ => false,
    }
}

fn float(f: f64, nulling: bool) -> Result<Value, ProtoError> {
    match (Number::from_f64(f), nulling) {
        (Some(n), _) => Ok(Value::Number(n)),
        (None, true) => Ok(Value::Null),
        (None, false) => Err(ProtoError::NonFinite),
    }
}

fn message_json(message: &DynamicMessage, nulling: bool) -> Result<Value, ProtoError> {
    let desc = message.descriptor();
    match desc.full_name() {
        "google.protobuf.Timestamp" => return Ok(timestamp(message)),
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue" => {
            return match desc.get_field(1) {
                Some(f) => field_json(&f, &message.get_field(&f), nulling),
                None => Ok(Value::Null),
            };
        }
        _ => {}
    }
    let mut out = Map::new();
    for field in desc.fields() {
        // Unset fields with presence (optional, messages, oneofs) are absent;
        // proto3's implicit fields hold their default, as the sender meant.
        if field.supports_presence() && !message.has_field(&field) {
            continue;
        }
        let value = field_json(&field, &message.get_field(&field), nulling)?;
        out.insert(field.name().to_owned(), value);
    }
    Ok(Value::Object(out))
}

fn timestamp(message: &DynamicMessage) -> Value {
    let int = |n: u32| match message.get_field_by_number(n).as_deref() {
        Some(Proto::I64(v)) => *v,
        Some(Proto::I32(v)) => i64::from(*v),
        _ => 0,
    };
    let nanos = u32::try_from(int(2)).unwrap_or(0);
    chrono::DateTime::from_timestamp(int(1), nanos).map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    })
}

fn field_json(field: &FieldDescriptor, value: &Proto, nulling: bool) -> Result<Value, ProtoError> {
    Ok(match value {
        Proto::List(items) => Value::Array(
            items
                .iter()
                .map(|v| field_json(field, v, nulling))
                .collect::<Result<_, _>>()?,
        ),
        Proto::Map(entries) => {
            let value_field = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field(),
                _ => return Err(ProtoError::Undecodable),
            };
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(key_text(k), field_json(&value_field, v, nulling)?);
            }
            Value::Object(out)
        }
        other => scalar_json(field, other, nulling)?,
    })
}

fn scalar_json(field: &FieldDescriptor, value: &Proto, nulling: bool) -> Result<Value, ProtoError> {
    Ok(match value {
        Proto::Bool(b) => Value::Bool(*b),
        Proto::I32(v) => Value::from(*v),
        Proto::I64(v) => Value::from(*v),
        Proto::U32(v) => Value::from(*v),
        Proto::U64(v) => Value::from(*v),
        Proto::F32(v) => float(f64::from(*v), nulling)?,
        Proto::F64(v) => float(*v, nulling)?,
        Proto::String(s) => Value::String(s.clone()),
        Proto::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => e
                .get_value(*n)
                .map_or_else(|| Value::from(*n), |v| Value::String(v.name().to_owned())),
            _ => Value::from(*n),
        },
        Proto::Message(m) => message_json(m, nulling)?,
        // Bytes are no reading's number or name.
        Proto::Bytes(_) | Proto::List(_) | Proto::Map(_) => Value::Null,
    })
}

fn key_text(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMON: &str = r#"syntax = "proto3";
package plant.common;
message Meta { string line = 1; }
"#;

    const READINGS: &str = r#"syntax = "proto3";
package plant;
import "common.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
message Status { string machine = 1; }
message Reading {
  enum Mode { IDLE = 0; RUNNING = 1; }
  message Nested { double v = 1; }
  string machine = 1;
  int64 at = 2;
  double temp = 3;
  optional double hum = 4;
  map<string, double> extra = 5;
  plant.common.Meta meta = 6;
  Mode mode = 7;
  google.protobuf.Timestamp when = 8;
  google.protobuf.DoubleValue pressure = 9;
  repeated int32 codes = 10;
}
"#;

    fn schema() -> ProtoSchema {
        ProtoSchema::compile(
            "readings.proto",
            READINGS,
            &[("common.proto".into(), COMMON.into())],
        )
        .unwrap()
    }

    #[test]
    fn messages_are_picked_by_their_indexes() {
        let s = schema();
        assert_eq!(s.message(&[0]).unwrap().full_name(), "plant.Status");
        assert_eq!(s.message(&[1]).unwrap().full_name(), "plant.Reading");
        // Nested messages count without the map entries protoc makes.
        assert_eq!(
            s.message(&[1, 0]).unwrap().full_name(),
            "plant.Reading.Nested"
        );
        assert!(
            s.message(&[2]).is_none() && s.message(&[1, 1]).is_none() && s.message(&[]).is_none()
        );
    }

    #[test]
    fn a_message_reads_as_json_under_its_proto_names() {
        let s = schema();
        let value = serde_json::json!({"machine":"m1","at":"1763787600123","temp":21.5,"hum":40.0,
            "extra":{"rpm":1200.0},"meta":{"line":"L2"},"mode":"RUNNING",
            "when":"2025-11-22T05:00:00.123Z","pressure":1013.5,"codes":[1,2]});
        let bytes = s.encode(&[1], &value).unwrap();
        let desc = s.message(&[1]).unwrap();
        let got = ProtoSchema::decode(&desc, &bytes, false).unwrap();
        assert_eq!(
            got,
            serde_json::json!({"machine":"m1","at":1763787600123i64,"temp":21.5,"hum":40.0,
                "extra":{"rpm":1200.0},"meta":{"line":"L2"},"mode":"RUNNING",
                "when":"2025-11-22T05:00:00.123Z","pressure":1013.5,"codes":[1,2]})
        );
        // Implicit fields keep their default; unset optional ones and messages are absent.
        let bare = s
            .encode(&[1], &serde_json::json!({"machine":"m2"}))
            .unwrap();
        assert_eq!(
            ProtoSchema::decode(&desc, &bare, false).unwrap(),
            serde_json::json!({"machine":"m2","at":0,"temp":0.0,"extra":{},"mode":"IDLE","codes":[]})
        );
    }

    #[test]
    fn bad_bytes_and_non_finite_numbers_are_refused() {
        let s = schema();
        let desc = s.message(&[1]).unwrap();
        assert_eq!(
            ProtoSchema::decode(&desc, &[0xff, 0xff, 0xff], false),
            Err(ProtoError::Undecodable)
        );
        let nan = s
            .encode(&[1], &serde_json::json!({"machine":"m","temp":"NaN"}))
            .unwrap();
        assert_eq!(
            ProtoSchema::decode(&desc, &nan, false),
            Err(ProtoError::NonFinite)
        );
        assert_eq!(
            ProtoSchema::decode(&desc, &nan, true).unwrap()["temp"],
            Value::Null
        );
    }

    #[test]
    fn paths_are_checked_through_messages_and_maps() {
        let desc = schema().message(&[1]).unwrap();
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        for present in ["machine", "meta.line", "extra.anything", "when"] {
            assert!(has_path(&desc, &p(present)), "{present}");
        }
        for absent in ["device", "meta.site", "temp.x", "codes.x"] {
            assert!(!has_path(&desc, &p(absent)), "{absent}");
        }
    }

    #[test]
    fn a_schema_in_its_serialized_form_reads_as_its_text() {
        use base64::Engine as _;
        let text = schema();
        let file = text.pool.get_file_by_name("readings.proto").unwrap();
        let common = text.pool.get_file_by_name("common.proto").unwrap();
        let b64 = |f: &prost_reflect::FileDescriptor| {
            base64::engine::general_purpose::STANDARD
                .encode(f.file_descriptor_proto().encode_to_vec())
        };
        let s = ProtoSchema::compile(
            "x.proto",
            &b64(&file),
            &[("common.proto".into(), b64(&common))],
        )
        .unwrap();
        let value = serde_json::json!({"machine":"m1","at":7,"temp":1.5,"meta":{"line":"L"}});
        let bytes = text.encode(&[1], &value).unwrap();
        let desc = s.message(&[1]).unwrap();
        assert_eq!(desc.full_name(), "plant.Reading");
        assert_eq!(
            ProtoSchema::decode(&desc, &bytes, false).unwrap()["meta"]["line"],
            "L"
        );
        assert!(serialized("syntax = \"proto3\";").is_none());
    }

    #[test]
    fn a_schema_that_does_not_compile_says_why() {
        let e = ProtoSchema::compile(
            "a.proto",
            "syntax = \"proto3\"; message A { Missing m = 1; }",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("Missing"), "{e}");
        let e = ProtoSchema::compile(
            "a.proto",
            "syntax = \"proto3\"; import \"gone.proto\";",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("gone.proto"), "{e}");
    }
}
