//! A schema registry for tests: the endpoints of the Confluent REST API that
//! iotflow and confluent-kafka's serializers call, in memory (no registry
//! installs from the package indexes this project can reach).
//!
//! Ids are global and content-addressed, as Confluent's are: the same schema
//! registered under two subjects has one id. `set_down` answers 503 to
//! everything, as a registry that is restarting does.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

#[derive(Default)]
struct State {
    /// Schema id − 1 → `{schema, schemaType?, references?}` as registered.
    schemas: Mutex<Vec<Value>>,
    /// Subject → its versions' schema ids.
    subjects: Mutex<BTreeMap<String, Vec<u32>>>,
    /// Requests per path, for asserting what was cached.
    asked: Mutex<BTreeMap<String, u64>>,
    down: AtomicBool,
    /// `Basic …` every request must carry, when set.
    authorization: Option<String>,
}

pub struct TestRegistry {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestRegistry {
    /// Serves on a free loopback port; with `credentials`, only to them.
    pub async fn start(credentials: Option<(&str, &str)>) -> TestRegistry {
        use base64::Engine;
        let state = Arc::new(State {
            authorization: credentials.map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            }),
            ..State::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestRegistry { url, state, task }
    }

    /// Answers 503 to everything while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Registers `schema` (`{schema, schemaType?, references?}`) under `subject`: its id.
    pub fn register(&self, subject: &str, schema: Value) -> u32 {
        register(&self.state, subject, schema)
    }

    /// How many requests asked for `path` (e.g. `/schemas/ids/1`).
    pub fn asked(&self, path: &str) -> u64 {
        self.state
            .asked
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn register(state: &State, subject: &str, mut schema: Value) -> u32 {
    // Avro is the default kind; store it the way the registry answers it.
    if schema.get("schemaType").and_then(Value::as_str) == Some("AVRO") {
        schema.as_object_mut().unwrap().remove("schemaType");
    }
    if schema
        .get("references")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        schema.as_object_mut().unwrap().remove("references");
    }
    let mut schemas = state.schemas.lock().unwrap();
    let id = match schemas.iter().position(|s| *s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            schemas.push(schema);
            schemas.len() as u32
        }
    };
    let mut subjects = state.subjects.lock().unwrap();
    let versions = subjects.entry(subject.to_owned()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn not_found(code: u32, message: &str) -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        json!({"error_code": code, "message": message}),
    )
}

fn decode_segment(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn answer(state: &State, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    *state.asked.lock().unwrap().entry(path.clone()).or_default() += 1;
    if state.down.load(Ordering::SeqCst) {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error_code": 50003, "message": "restarting"}),
        );
    }
    if let Some(want) = &state.authorization {
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(want.as_str()) {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error_code": 401, "message": "Unauthorized"}),
            );
        }
    }
    let post = request.method() == hyper::Method::POST;
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error_code": 400, "message": "body"}),
            );
        }
    };
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(decode_segment)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let schemas = || state.schemas.lock().unwrap().clone();
    match (post, parts.as_slice()) {
        (false, ["schemas", "ids", id]) => {
            match id
                .parse::<usize>()
                .ok()
                .and_then(|i| schemas().get(i.wrapping_sub(1)).cloned())
            {
                Some(s) => reply(StatusCode::OK, s),
                None => not_found(40403, "Schema not found"),
            }
        }
        (false, ["subjects"]) => {
            let names: Vec<String> = state.subjects.lock().unwrap().keys().cloned().collect();
            reply(StatusCode::OK, json!(names))
        }
        (false, ["subjects", subject, "versions"]) => {
            match state.subjects.lock().unwrap().get(*subject) {
                Some(v) => reply(StatusCode::OK, json!((1..=v.len()).collect::<Vec<_>>())),
                None => not_found(40401, "Subject not found"),
            }
        }
        (false, ["subjects", subject, "versions", version]) => {
            let ids = state.subjects.lock().unwrap().get(*subject).cloned();
            let Some(ids) = ids else {
                return not_found(40401, "Subject not found");
            };
            let index = match *version {
                "latest" | "-1" => ids.len().checked_sub(1),
                v => v.parse::<usize>().ok().and_then(|v| v.checked_sub(1)),
            };
            match index.and_then(|i| ids.get(i).map(|id| (i, *id))) {
                Some((i, id)) => {
                    let mut s = schemas()[id as usize - 1].clone();
                    let o = s.as_object_mut().unwrap();
                    o.insert("subject".into(), json!(subject));
                    o.insert("version".into(), json!(i + 1));
                    o.insert("id".into(), json!(id));
                    reply(StatusCode::OK, s)
                }
                None => not_found(40402, "Version not found"),
            }
        }
        (true, ["subjects", subject, "versions"]) => match serde_json::from_slice::<Value>(&body) {
            Ok(schema) if schema.get("schema").is_some_and(Value::is_string) => {
                let id = register(state, subject, schema);
                reply(StatusCode::OK, json!({"id": id}))
            }
            _ => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error_code": 42201, "message": "Invalid schema"}),
            ),
        },
        _ => not_found(404, "no such endpoint in the test registry"),
    }
}
