//! Registry-encoded records: the Confluent wire format ([`wire`]), a client
//! of the Confluent schema-registry REST API ([`registry`], also what
//! Redpanda's built-in registry serves), Avro through `apache-avro`
//! ([`avro`]), Protobuf compiled at run time ([`protobuf`]), JSON validated by
//! its JSON Schema ([`json_schema`]), and the [`Decoder`] that turns a framed
//! value into the JSON object the input mapping reads, so every format
//! shares one mapping and one validation.

pub mod avro;
mod decoder;
pub mod json_schema;
pub mod protobuf;
pub mod registry;
pub mod wire;

pub use apache_avro::types::Value as Datum;
pub use decoder::{DecodeError, Decoder, RegistryStatus, StaticSource};
pub use registry::{FetchError, Reference, Registered, Registry, SchemaKind, SchemaSource};
