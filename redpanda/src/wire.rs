//! The two admin requests rskafka cannot make: Metadata (to find the controller)
//! and CreateTopics *with topic configs* (compaction, retention).
//!
//! ```text
//!   bootstrap ──Metadata v4──▶ controller id + broker list
//!   controller ──CreateTopics v2 (configs)──▶ per-topic error code
//! ```
//!
//! Both versions are non-flexible and are supported by Kafka 1.0 … 4.x, Redpanda
//! and tansu, so one encoding serves every broker we target. Encoding and
//! decoding are pure functions; `call` is the only I/O (over TLS when the
//! cluster's connections are).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

const API_METADATA: i16 = 3;
const API_CREATE_TOPICS: i16 = 19;
const METADATA_VERSION: i16 = 4;
const CREATE_TOPICS_VERSION: i16 = 2;
/// Replies larger than this are not admin replies we asked for.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// One topic to create, with its configs as broker config key/values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication: i16,
    pub configs: Vec<(String, String)>,
}

/// The per-topic answer of CreateTopics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResult {
    pub name: String,
    pub error_code: i16,
    pub message: Option<String>,
}

/// The part of a Metadata reply admin needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub brokers: Vec<(i32, String)>,
    pub controller_id: i32,
}

impl ClusterInfo {
    /// `host:port` of the controller, if the reply named one we know.
    pub fn controller_addr(&self) -> Option<&str> {
        self.brokers
            .iter()
            .find(|(id, _)| *id == self.controller_id)
            .map(|(_, addr)| addr.as_str())
    }
}

/// Kafka error codes admin code reacts to, with their protocol names.
pub fn error_name(code: i16) -> &'static str {
    match code {
        0 => "NONE",
        7 => "REQUEST_TIMED_OUT",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        37 => "INVALID_PARTITIONS",
        38 => "INVALID_REPLICATION_FACTOR",
        40 => "INVALID_CONFIG",
        41 => "NOT_CONTROLLER",
        42 => "INVALID_REQUEST",
        44 => "POLICY_VIOLATION",
        _ => "UNKNOWN",
    }
}

pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_CONFIG: i16 = 40;
pub const NOT_CONTROLLER: i16 = 41;

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn i8(&mut self, v: i8) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn string(&mut self, s: &str) {
        // Kafka strings are i16-length-prefixed; topic names and config values are short.
        let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
        self.i16(len);
        self.0.extend_from_slice(&s.as_bytes()[..len as usize]);
    }
    fn array_len(&mut self, n: usize) {
        self.i32(i32::try_from(n).unwrap_or(i32::MAX));
    }
}

fn header(api_key: i16, version: i16, correlation_id: i32, client_id: &str) -> Writer {
    let mut w = Writer::default();
    w.i16(api_key);
    w.i16(version);
    w.i32(correlation_id);
    w.string(client_id);
    w
}

/// Metadata v4 asking for no topics: we only want brokers and the controller.
pub fn encode_metadata(correlation_id: i32, client_id: &str) -> Vec<u8> {
    let mut w = header(API_METADATA, METADATA_VERSION, correlation_id, client_id);
    w.array_len(0); // topics: empty array = none (null would mean all)
    w.i8(0); // allow_auto_topic_creation = false
    w.0
}

/// CreateTopics v2 for `topics`, with `timeout` for the broker to finish.
pub fn encode_create_topics(
    correlation_id: i32,
    client_id: &str,
    topics: &[NewTopic],
    timeout: Duration,
) -> Vec<u8> {
    let mut w = header(
        API_CREATE_TOPICS,
        CREATE_TOPICS_VERSION,
        correlation_id,
        client_id,
    );
    w.array_len(topics.len());
    for t in topics {
        w.string(&t.name);
        w.i32(t.partitions);
        w.i16(t.replication);
        w.array_len(0); // no manual assignments
        w.array_len(t.configs.len());
        for (k, v) in &t.configs {
            w.string(k);
            w.string(v); // nullable string, never null here
        }
    }
    w.i32(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX));
    w.i8(0); // validate_only = false
    w.0
}

struct Reader<'a> {
    buf: &'a [u8],
    api: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("{} reply truncated", self.api));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn i16(&mut self) -> std::result::Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> std::result::Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn nullable_string(&mut self) -> std::result::Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.nullable_string()?
            .ok_or_else(|| format!("{}: null where a string is required", self.api))
    }
    fn array_len(&mut self) -> std::result::Result<usize, String> {
        let n = self.i32()?;
        // A length larger than the remaining bytes is corrupt, not a huge allocation.
        if n < 0 {
            Ok(0)
        } else if n as usize > self.buf.len() {
            Err(format!("{}: array length {n} exceeds reply", self.api))
        } else {
            Ok(n as usize)
        }
    }
}

/// Decodes a Metadata v4 reply body (after the correlation id) up to the controller id.
pub fn decode_metadata(body: &[u8]) -> std::result::Result<ClusterInfo, String> {
    let mut r = Reader {
        buf: body,
        api: "Metadata",
    };
    let _throttle_ms = r.i32()?;
    let n = r.array_len()?;
    let mut brokers = Vec::with_capacity(n);
    for _ in 0..n {
        let node_id = r.i32()?;
        let host = r.string()?;
        let port = r.i32()?;
        let _rack = r.nullable_string()?;
        brokers.push((node_id, format!("{host}:{port}")));
    }
    let _cluster_id = r.nullable_string()?;
    let controller_id = r.i32()?;
    Ok(ClusterInfo {
        brokers,
        controller_id,
    })
}

/// Decodes a CreateTopics v2 reply body (after the correlation id).
pub fn decode_create_topics(body: &[u8]) -> std::result::Result<Vec<TopicResult>, String> {
    let mut r = Reader {
        buf: body,
        api: "CreateTopics",
    };
    let _throttle_ms = r.i32()?;
    let n = r.array_len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TopicResult {
            name: r.string()?,
            error_code: r.i16()?,
            message: r.nullable_string()?,
        });
    }
    Ok(out)
}

/// Sends one request frame to `addr` (over TLS with `tls`) and returns the
/// reply body after its correlation id. One connection per call: admin
/// calls are rare.
pub async fn call(
    addr: &str,
    api: &'static str,
    request: &[u8],
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Vec<u8>> {
    let socket_err = |source| Error::Socket {
        addr: addr.to_owned(),
        source,
    };
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(socket_err)?;
        match tls {
            None => exchange(tcp, addr, api, request).await,
            Some(config) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_matches(['[', ']']).to_owned(),
                )
                .map_err(|e| socket_err(std::io::Error::other(e)))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(socket_err)?;
                exchange(stream, addr, api, request).await
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Socket {
            addr: addr.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{api} timed out after {timeout:?}"),
            ),
        })?
}

async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: &str,
    api: &'static str,
    request: &[u8],
) -> Result<Vec<u8>> {
    let socket_err = |source| Error::Socket {
        addr: addr.to_owned(),
        source,
    };
    let len = u32::try_from(request.len()).unwrap_or(u32::MAX);
    stream
        .write_all(&len.to_be_bytes())
        .await
        .map_err(socket_err)?;
    stream.write_all(request).await.map_err(socket_err)?;
    stream.flush().await.map_err(socket_err)?;
    let mut len_buf = [0u8; 4];
    stream.read_exact(&mut len_buf).await.map_err(socket_err)?;
    let reply_len = u32::from_be_bytes(len_buf) as usize;
    if !(4..=MAX_REPLY_BYTES).contains(&reply_len) {
        return Err(Error::Protocol {
            addr: addr.to_owned(),
            api,
            detail: format!("reply length {reply_len}"),
        });
    }
    let mut reply = vec![0u8; reply_len];
    stream.read_exact(&mut reply).await.map_err(socket_err)?;
    // Request and reply share the correlation id in bytes 4..8 / 0..4.
    if reply[..4] != request[4..8] {
        return Err(Error::Protocol {
            addr: addr.to_owned(),
            api,
            detail: "correlation id mismatch".into(),
        });
    }
    reply.drain(..4);
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_topics_encoding_matches_the_protocol_layout() {
        let req = encode_create_topics(
            7,
            "c",
            &[NewTopic {
                name: "t".into(),
                partitions: 3,
                replication: 1,
                configs: vec![("cleanup.policy".into(), "compact".into())],
            }],
            Duration::from_millis(5000),
        );
        let mut expected = vec![0, 19, 0, 2, 0, 0, 0, 7, 0, 1, b'c'];
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 3, 0, 1, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 14]);
        expected.extend_from_slice(b"cleanup.policy");
        expected.extend_from_slice(&[0, 7]);
        expected.extend_from_slice(b"compact");
        expected.extend_from_slice(&[0, 0, 0x13, 0x88, 0]);
        assert_eq!(req, expected);
    }

    #[test]
    fn metadata_reply_yields_the_controller_address() {
        let mut body = vec![0, 0, 0, 0, 0, 0, 0, 2];
        for (id, host, port) in [(1i32, "a", 9092i32), (2, "b", 9093)] {
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&(host.len() as i16).to_be_bytes());
            body.extend_from_slice(host.as_bytes());
            body.extend_from_slice(&port.to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes());
        }
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        let info = decode_metadata(&body).unwrap();
        assert_eq!(info.controller_addr(), Some("b:9093"));
    }

    #[test]
    fn truncated_and_lying_replies_are_errors_not_panics() {
        assert!(decode_create_topics(&[0, 0]).is_err());
        assert!(decode_create_topics(&[0, 0, 0, 0, 0x7f, 0, 0, 0]).is_err());
        let ok = [0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 36, 0xff, 0xff];
        let res = decode_create_topics(&ok).unwrap();
        assert_eq!(res[0].error_code, TOPIC_ALREADY_EXISTS);
        assert_eq!(res[0].message, None);
    }
}
