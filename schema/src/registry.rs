//! A client of the Confluent schema-registry REST API (which Redpanda's
//! built-in registry also serves): schemas by id, subject versions for
//! references, registration. Blocking, through `ureq`: schemas are fetched
//! once per id and cached by [`crate::Decoder`], off every hot path.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The kind of a registered schema (`schemaType`; absent means Avro).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaKind {
    #[default]
    Avro,
    Protobuf,
    Json,
}

/// Another subject's schema that a schema uses (an Avro named type, an
/// imported `.proto` file, a `$ref`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// A schema as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    #[serde(default)]
    pub schema_type: SchemaKind,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

/// Why the registry gave no schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The registry answered: it has no such schema (HTTP 404).
    #[error("{what} is not in the registry at {url}")]
    NotFound { url: String, what: String },
    /// No answer, or one that says nothing about the schema (refused, timed
    /// out, 401, 5xx…): the schema may well exist.
    #[error("the registry at {url} did not answer for {what}: {reason}")]
    Unavailable {
        url: String,
        what: String,
        reason: String,
    },
}

/// Where schemas come from: the registry, or a table in tests.
pub trait SchemaSource: Send + Sync + fmt::Debug {
    /// The schema registered under `id`.
    fn schema(&self, id: u32) -> Result<Registered, FetchError>;
    /// Version `version` of `subject` (a reference's target).
    fn version(&self, subject: &str, version: i32) -> Result<Registered, FetchError>;
    /// Where it is, for messages.
    fn url(&self) -> &str;
}

/// A registry at a base URL, with optional basic auth.
#[derive(Clone)]
pub struct Registry {
    agent: ureq::Agent,
    url: String,
    /// `Basic …`, never printed.
    authorization: Option<String>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// The media type the REST API speaks.
const MEDIA: &str = "application/vnd.schemaregistry.v1+json";

/// Error codes and messages are short; a longer answer is not the registry.
const BODY_LIMIT: u64 = 4 * 1024 * 1024;

impl Registry {
    /// The registry at `url` (http or https); each request may take `timeout`.
    pub fn new(
        url: &str,
        credentials: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let uri: ureq::http::Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            other => return Err(format!("`{url}`: scheme {other:?}, use http or https")),
        }
        if uri.host().is_none() {
            return Err(format!("`{url}`: no host"));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let authorization = credentials.map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Ok(Self {
            agent,
            url: url.trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    /// Registers `schema` under `subject` (or finds it there): its id.
    pub fn register(&self, subject: &str, schema: &Registered) -> Result<u32, FetchError> {
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let what = format!("registering under subject {subject}");
        let body = serde_json::to_vec(schema).map_err(|e| self.unavailable(&what, e))?;
        let path = format!("/subjects/{}/versions", encode_segment(subject));
        let answer: Id = self.call(&what, &path, Some(&body))?;
        Ok(answer.id)
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, FetchError> {
        let url = format!("{}{path}", self.url);
        let sent = match body {
            Some(body) => self
                .with_headers(self.agent.post(&url))
                .header("Content-Type", MEDIA)
                .send(body),
            None => self.with_headers(self.agent.get(&url)).call(),
        };
        let mut response = sent.map_err(|e| self.unavailable(what, e))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_vec()
            .map_err(|e| self.unavailable(what, e))?;
        match status {
            200..=299 => serde_json::from_slice(&bytes).map_err(|e| {
                self.unavailable(what, format!("an answer that is not the registry's: {e}"))
            }),
            404 => Err(FetchError::NotFound {
                url: self.url.clone(),
                what: what.to_owned(),
            }),
            _ => Err(self.unavailable(
                what,
                format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            )),
        }
    }

    fn with_headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let request = request
            .header("Accept", MEDIA)
            .header("User-Agent", concat!("iotflow/", env!("CARGO_PKG_VERSION")));
        match &self.authorization {
            Some(a) => request.header("Authorization", a),
            None => request,
        }
    }

    fn unavailable(&self, what: &str, reason: impl fmt::Display) -> FetchError {
        FetchError::Unavailable {
            url: self.url.clone(),
            what: what.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl SchemaSource for Registry {
    fn schema(&self, id: u32) -> Result<Registered, FetchError> {
        self.call(
            &format!("schema id {id}"),
            &format!("/schemas/ids/{id}"),
            None,
        )
    }

    fn version(&self, subject: &str, version: i32) -> Result<Registered, FetchError> {
        let path = format!("/subjects/{}/versions/{version}", encode_segment(subject));
        self.call(
            &format!("version {version} of subject {subject}"),
            &path,
            None,
        )
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// A subject as one URL path segment (subjects are free text: `a/b.proto`).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_the_registry_writes_them() {
        let avro: Registered = serde_json::from_str(r#"{"schema":"\"long\""}"#).unwrap();
        assert_eq!(avro.schema_type, SchemaKind::Avro);
        let proto: Registered = serde_json::from_str(
            r#"{"schemaType":"PROTOBUF","schema":"syntax = \"proto3\";","references":[{"name":"a.proto","subject":"a","version":2}]}"#,
        )
        .unwrap();
        assert_eq!(proto.schema_type, SchemaKind::Protobuf);
        assert_eq!(proto.references[0].version, 2);
        // Registration sends no empty reference list.
        let sent = serde_json::to_string(&avro).unwrap();
        assert_eq!(sent, r#"{"schemaType":"AVRO","schema":"\"long\""}"#);
    }

    #[test]
    fn subjects_are_one_path_segment_and_passwords_never_print() {
        assert_eq!(encode_segment("iot.readings-value"), "iot.readings-value");
        assert_eq!(encode_segment("a/b c.proto"), "a%2Fb%20c.proto");
        let r = Registry::new(
            "http://127.0.0.1:9/",
            Some(("u", "hunter2")),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");
        assert!(!format!("{r:?}").contains("aHVudGVy"), "{r:?}");
        assert_eq!(r.url(), "http://127.0.0.1:9");
        for bad in ["ftp://x", "localhost:8081", "http:///x"] {
            assert!(
                Registry::new(bad, None, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_registry_that_does_not_listen_is_unavailable_not_missing() {
        // Port 9 (discard) is not served on a test machine's loopback.
        let r = Registry::new("http://127.0.0.1:9", None, Duration::from_secs(2)).unwrap();
        assert!(matches!(r.schema(1), Err(FetchError::Unavailable { .. })));
    }
}
