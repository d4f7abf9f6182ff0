//! Registry-encoded values into the JSON the input mapping reads: the schema
//! id read from the frame, its schema fetched once and cached, the value
//! decoded under it.
//!
//! ```text
//!   payload ──split──▶ (id, body) ──cache[id]──▶ Avro / Protobuf / JSON schema ──decode──▶ JSON
//!                          │           miss: fetch (and references) ──▶ compile, check paths
//!                          │           404 ─────────────▶ UnknownSchema (dead letter)
//!                          │           no answer ───────▶ wait and ask again (the job pauses)
//!                          └ not framed ───────────────▶ NotFramed (dead letter)
//! ```
//!
//! A registry that does not answer never turns a good record into a dead
//! letter: the worker waits, [`RegistryStatus`] says why, and the record is
//! decoded once the registry is back.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde_json::Value;

use prost_reflect::MessageDescriptor;

use crate::avro::{AvroError, AvroSchema};
use crate::json_schema::JsonSchema;
use crate::protobuf::{self, ProtoError, ProtoSchema};
use crate::registry::{FetchError, Registered, SchemaKind, SchemaSource};
use crate::wire;

/// Why a value did not decode; each is a dead-letter reason of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not in the Confluent wire format (no magic byte, too short).
    NotFramed,
    /// The registry has no schema under the value's id.
    UnknownSchema,
    /// The schema is of another kind than the input's format, does not
    /// compile, or lacks a field the job maps.
    SchemaMismatch,
    /// The bytes are not a value of their schema (for JSON Schema: not
    /// JSON, or not valid under it).
    Undecodable,
    /// A number that is NaN or infinite.
    NonFinite,
}

/// Whether the registry is keeping the job waiting, for the status page.
#[derive(Debug, Default)]
pub struct RegistryStatus {
    waiting: Mutex<Option<(Instant, String)>>,
}

impl RegistryStatus {
    /// Why the job waits for the registry, and for how long it has, or `None`.
    pub fn waiting(&self) -> Option<(Duration, String)> {
        let w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        w.as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    fn set(&self, why: &str) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let first = w.is_none();
        match w.as_mut() {
            Some((_, reason)) => *reason = why.to_owned(),
            None => *w = Some((Instant::now(), why.to_owned())),
        }
        first
    }

    fn clear(&self) -> Option<Duration> {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        w.take().map(|(since, _)| since.elapsed())
    }
}

/// A schema id's verdict, fetched once.
#[derive(Debug)]
enum Entry {
    Avro(AvroSchema),
    Protobuf(Protobuf),
    Json(JsonSchema),
    Unknown,
    Mismatch,
}

/// A Protobuf schema and, per message path met so far, its message when
/// it holds the required paths.
#[derive(Debug)]
struct Protobuf {
    schema: ProtoSchema,
    messages: RwLock<HashMap<Vec<usize>, Option<MessageDescriptor>>>,
}

/// Decodes one input format's values; shared by a process's workers.
pub struct Decoder {
    source: Box<dyn SchemaSource>,
    kind: SchemaKind,
    /// Field paths the job maps: a schema without one of them is a mismatch.
    required: Vec<Vec<String>>,
    cache: RwLock<FxHashMap<u32, Arc<Entry>>>,
    status: Arc<RegistryStatus>,
    /// Longest wait between two questions to a registry that does not answer.
    max_backoff: Duration,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("source", &self.source)
            .field("kind", &self.kind)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// Protobuf message paths remembered per schema at most.
const MAX_MESSAGE_PATHS: usize = 1_024;

/// Unknown ids remembered at most (each costs the registry one question).
const MAX_UNKNOWN_IDS: usize = 4_096;

/// How deep references may nest: a cycle or a chain this long is a mismatch.
const MAX_REFERENCE_DEPTH: usize = 32;

impl Decoder {
    /// Values whose schemas are of `kind`, from `source`, that must hold
    /// every path of `required`.
    pub fn new(
        source: Box<dyn SchemaSource>,
        kind: SchemaKind,
        required: Vec<Vec<String>>,
    ) -> Self {
        Self {
            source,
            kind,
            required,
            cache: RwLock::default(),
            status: Arc::default(),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// At most `max` between two questions to a registry that does not answer.
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    pub fn status(&self) -> Arc<RegistryStatus> {
        Arc::clone(&self.status)
    }

    /// One framed value as JSON. Blocks while the registry does not answer
    /// for a schema id not seen before.
    pub fn decode(&self, payload: &[u8]) -> Result<Value, DecodeError> {
        self.decode_with(payload, false)
    }

    /// [`Self::decode`], NaN and infinities read as null: who sent a record
    /// refused for its value.
    pub fn decode_nulling_non_finite(&self, payload: &[u8]) -> Result<Value, DecodeError> {
        self.decode_with(payload, true)
    }

    fn decode_with(&self, payload: &[u8], nulling: bool) -> Result<Value, DecodeError> {
        let (id, body) = wire::split(payload).map_err(|_| DecodeError::NotFramed)?;
        match &*self.entry(id) {
            Entry::Json(schema) => schema.decode(body).ok_or(DecodeError::Undecodable),
            Entry::Protobuf(p) => {
                let (path, body) =
                    wire::split_indexes(body).map_err(|_| DecodeError::Undecodable)?;
                let message = self
                    .message(id, p, path)
                    .ok_or(DecodeError::SchemaMismatch)?;
                ProtoSchema::decode(&message, body, nulling).map_err(|e| match e {
                    ProtoError::NonFinite => DecodeError::NonFinite,
                    _ => DecodeError::Undecodable,
                })
            }
            Entry::Avro(schema) => match nulling {
                false => schema.decode(body),
                true => schema.decode_nulling_non_finite(body),
            }
            .map_err(|e| match e {
                AvroError::Undecodable => DecodeError::Undecodable,
                AvroError::NonFinite => DecodeError::NonFinite,
            }),
            Entry::Unknown => Err(DecodeError::UnknownSchema),
            Entry::Mismatch => Err(DecodeError::SchemaMismatch),
        }
    }

    fn entry(&self, id: u32) -> Arc<Entry> {
        let cached = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        if let Some(entry) = cached {
            return entry;
        }
        let entry = Arc::new(self.fetch(id));
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        // Garbage framed under random ids would grow the cache without end:
        // past the bound, the verdicts on unknown ids are forgotten (asked
        // again when met again); known schemas stay.
        if matches!(*entry, Entry::Unknown)
            && cache
                .values()
                .filter(|e| matches!(***e, Entry::Unknown))
                .count()
                >= MAX_UNKNOWN_IDS
        {
            cache.retain(|_, e| !matches!(**e, Entry::Unknown));
        }
        cache.insert(id, Arc::clone(&entry));
        entry
    }

    /// Asks until the registry answers.
    fn fetch(&self, id: u32) -> Entry {
        let mut backoff = Duration::from_millis(100);
        let mut last_warning: Option<Instant> = None;
        loop {
            match self.compile(id) {
                Ok(entry) => {
                    if let Some(waited) = self.status.clear() {
                        // At the pause's level: whoever saw it stop sees it go on.
                        tracing::warn!(
                            "the schema registry at {} answers again after {:.1} s: the job goes on",
                            self.source.url(),
                            waited.as_secs_f64()
                        );
                    }
                    return entry;
                }
                Err(why) => {
                    let first = self.status.set(&why);
                    if first || last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
                    {
                        tracing::warn!(
                            "waiting for the schema registry (the job is paused): {why}"
                        );
                        last_warning = Some(Instant::now());
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// The message at `path` of schema `id`, if it has one that holds the
    /// required paths (judged once per path).
    fn message(&self, id: u32, p: &Protobuf, path: Vec<usize>) -> Option<MessageDescriptor> {
        if let Some(known) = p
            .messages
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&path)
        {
            return known.clone();
        }
        let verdict = match p.schema.message(&path) {
            None => {
                tracing::warn!(
                    "schema id {id} has no message at indexes {path:?}: its records are dead letters (schema_mismatch)"
                );
                None
            }
            Some(m) => match self.required.iter().find(|r| !protobuf::has_path(&m, r)) {
                Some(missing) => {
                    tracing::warn!(
                        "message {} of schema id {id} has no field `{}`: its records are dead letters (schema_mismatch)",
                        m.full_name(),
                        missing.join(".")
                    );
                    None
                }
                None => Some(m),
            },
        };
        let mut messages = p.messages.write().unwrap_or_else(PoisonError::into_inner);
        // Index paths come from the records: a bounded number are remembered.
        if messages.len() < MAX_MESSAGE_PATHS {
            messages.insert(path, verdict.clone());
        }
        verdict
    }

    /// The verdict on `id`, or why the registry gave none.
    fn compile(&self, id: u32) -> Result<Entry, String> {
        let registered = match self.source.schema(id) {
            Ok(r) => r,
            Err(FetchError::NotFound { .. }) => {
                tracing::warn!(
                    "schema id {id} is not in the registry at {}: its records are dead letters (unknown_schema)",
                    self.source.url()
                );
                return Ok(Entry::Unknown);
            }
            Err(e) => return Err(e.to_string()),
        };
        let mismatch = |why: String| {
            tracing::warn!(
                "schema id {id} cannot be read: {why}; its records are dead letters (schema_mismatch)"
            );
            Ok(Entry::Mismatch)
        };
        if registered.schema_type != self.kind {
            return mismatch(format!(
                "it is {:?}, the input is {:?}",
                registered.schema_type, self.kind
            ));
        }
        let mut referenced = Vec::new();
        let mut seen = HashMap::new();
        match self.references(&registered, 0, &mut seen, &mut referenced) {
            Ok(true) => {}
            Ok(false) => return mismatch("its references nest too deep or are missing".into()),
            Err(unavailable) => return Err(unavailable),
        }
        if self.kind == SchemaKind::Protobuf {
            let name = format!("registry-schema-{id}.proto");
            return match ProtoSchema::compile(&name, &registered.schema, &referenced) {
                Ok(schema) => Ok(Entry::Protobuf(Protobuf {
                    schema,
                    messages: RwLock::default(),
                })),
                Err(e) => mismatch(format!("it does not compile: {e}")),
            };
        }
        if self.kind == SchemaKind::Json {
            let schema = match JsonSchema::compile(&registered.schema, &referenced) {
                Ok(s) => s,
                Err(e) => return mismatch(format!("it does not compile: {e}")),
            };
            if let Some(missing) = self.required.iter().find(|p| !schema.has_path(p)) {
                return mismatch(format!("it has no field `{}`", missing.join(".")));
            }
            return Ok(Entry::Json(schema));
        }
        let texts: Vec<String> = referenced.into_iter().map(|(_, text)| text).collect();
        let schema = match AvroSchema::parse(&registered.schema, &texts) {
            Ok(s) => s,
            Err(e) => return mismatch(format!("it does not parse: {e}")),
        };
        if let Some(missing) = self.required.iter().find(|p| !schema.has_path(p)) {
            return mismatch(format!("it has no field `{}`", missing.join(".")));
        }
        Ok(Entry::Avro(schema))
    }

    /// Appends the schemas `r` references (their names and texts),
    /// dependencies first: `Ok(false)` when one is missing or they nest too deep.
    fn references(
        &self,
        r: &Registered,
        depth: usize,
        seen: &mut HashMap<(String, i32), ()>,
        out: &mut Vec<(String, String)>,
    ) -> Result<bool, String> {
        if depth > MAX_REFERENCE_DEPTH {
            return Ok(false);
        }
        for reference in &r.references {
            let key = (reference.subject.clone(), reference.version);
            if seen.insert(key, ()).is_some() {
                continue;
            }
            let target = match self.source.version(&reference.subject, reference.version) {
                Ok(t) => t,
                Err(FetchError::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.to_string()),
            };
            if !self.references(&target, depth + 1, seen, out)? {
                return Ok(false);
            }
            out.push((reference.name.clone(), target.schema));
        }
        Ok(true)
    }
}

/// Schemas given up front instead of by a registry: tests, and inputs whose
/// schemas are known.
#[derive(Debug, Default)]
pub struct StaticSource {
    pub ids: HashMap<u32, Registered>,
    pub versions: HashMap<(String, i32), Registered>,
}

impl SchemaSource for StaticSource {
    fn schema(&self, id: u32) -> Result<Registered, FetchError> {
        self.ids
            .get(&id)
            .cloned()
            .ok_or_else(|| FetchError::NotFound {
                url: "static".into(),
                what: format!("schema id {id}"),
            })
    }

    fn version(&self, subject: &str, version: i32) -> Result<Registered, FetchError> {
        self.versions
            .get(&(subject.to_owned(), version))
            .cloned()
            .ok_or_else(|| FetchError::NotFound {
                url: "static".into(),
                what: format!("{subject} v{version}"),
            })
    }

    fn url(&self) -> &str {
        "static"
    }
}

#[cfg(test)]
mod tests;
