//! A Kafka-protocol proxy that injects faults, for tests (this machine has
//! no `tc netem`). Clients connect to it; the broker advertises its address
//! (`LocalBroker::builder().advertise(..)`), so they never go around it.
//!
//! ```text
//!   client ──request frame──▶ proxy: which kind (Produce to topic T, Fetch, …), the n-th?
//!       a rule matches ──▶ its fault: the answer dropped (request through, then the
//!       connection reset: the client cannot know whether it happened), a delay,
//!       a reset before forwarding, a black hole (nothing forwarded, nothing answered)
//!   broker ◀──▶ proxy ◀──▶ client otherwise, frame by frame
//! ```
//!
//! Frames are read by their 4-byte length; only the request header (api key,
//! correlation id, client id) and a Produce request's first topic name are
//! decoded (Produce v3–v8, the non-flexible versions rskafka speaks).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const API_PRODUCE: i16 = 0;
const API_FETCH: i16 = 1;

/// Which requests a rule counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Produce requests whose (first) topic is this one.
    ProduceTo(String),
    Fetch,
}

/// What happens to the n-th request of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded, the broker acts on it, and the connection is reset
    /// instead of answering: was it done? Only the broker knows.
    DropAnswer,
    /// Forwarded after this long.
    Delay(Duration),
    /// The connection reset before the request is forwarded.
    Reset,
    /// Swallowed: nothing forwarded, nothing answered, the connection open.
    BlackHole,
}

#[derive(Debug)]
struct Rule {
    kind: Kind,
    nth: usize,
    seen: usize,
    fault: Fault,
}

#[derive(Debug, Default)]
struct Rules {
    rules: Vec<Rule>,
    fired: Vec<(Kind, Fault)>,
}

impl Rules {
    /// The fault for a request of `kind`, counting it.
    fn judge(&mut self, kind: &Kind) -> Option<Fault> {
        let mut fault = None;
        for r in self.rules.iter_mut().filter(|r| &r.kind == kind) {
            r.seen += 1;
            if r.seen == r.nth && fault.is_none() {
                fault = Some(r.fault);
            }
        }
        if let Some(f) = fault {
            self.fired.push((kind.clone(), f));
        }
        fault
    }
}

/// A running proxy in front of `upstream`.
pub struct FaultProxy {
    pub addr: String,
    rules: Arc<Mutex<Rules>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (which may
    /// not be listening yet: such connections are closed, clients retry).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let rules = Arc::new(Mutex::new(Rules::default()));
        let shared = Arc::clone(&rules);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, rules) = (upstream.clone(), Arc::clone(&shared));
                tokio::spawn(async move {
                    if let Ok(broker) = TcpStream::connect(&upstream).await {
                        relay(client, broker, rules).await;
                    }
                });
            }
        });
        Self { addr, rules, task }
    }

    /// From now on, the `nth` request of `kind` (counted from now) meets `fault`.
    pub fn inject(&self, kind: Kind, nth: usize, fault: Fault) {
        self.rules.lock().unwrap().rules.push(Rule {
            kind,
            nth,
            seen: 0,
            fault,
        });
    }

    /// The faults injected so far.
    pub fn fired(&self) -> Vec<(Kind, Fault)> {
        self.rules.lock().unwrap().fired.clone()
    }
}

async fn read_frame(from: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let len = from.read_i32().await.ok()?;
    let mut frame = vec![0; usize::try_from(len).ok()?];
    from.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

fn i16_at(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A nullable string at `at`: its end.
fn skip_string(b: &[u8], at: usize) -> Option<usize> {
    let len = i16_at(b, at)?;
    Some(at + 2 + usize::try_from(len.max(0)).ok()?)
}

/// The request's kind (if a rule could count it) and correlation id.
fn classify(frame: &[u8]) -> (Option<Kind>, Option<i32>) {
    let (api, correlation) = (i16_at(frame, 0), i32_at(frame, 4));
    let kind = match api {
        Some(API_FETCH) => Some(Kind::Fetch),
        Some(API_PRODUCE) => (|| {
            let body = skip_string(frame, 8)?; // client id
            let topics = skip_string(frame, body)? + 2 + 4; // transactional id, acks, timeout
            let name_at = topics + 4; // the topic array's length
            let end = skip_string(frame, name_at)?;
            let name = std::str::from_utf8(frame.get(name_at + 2..end)?).ok()?;
            Some(Kind::ProduceTo(name.to_owned()))
        })(),
        _ => None,
    };
    (kind, correlation)
}

async fn relay(client: TcpStream, broker: TcpStream, rules: Arc<Mutex<Rules>>) {
    let (mut client_rx, client_tx) = client.into_split();
    let (broker_rx, mut broker_tx) = broker.into_split();
    let dropped: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let client_tx = Arc::new(tokio::sync::Mutex::new(client_tx));
    let answers = {
        let (dropped, client_tx) = (Arc::clone(&dropped), Arc::clone(&client_tx));
        tokio::spawn(async move {
            let mut broker_rx = broker_rx;
            while let Some(frame) = read_frame(&mut broker_rx).await {
                let correlation = i32_at(&frame, 0);
                if correlation.is_some_and(|c| dropped.lock().unwrap().remove(&c)) {
                    // The answer is lost with the connection.
                    let _ = client_tx.lock().await.shutdown().await;
                    return;
                }
                let mut tx = client_tx.lock().await;
                let len = (frame.len() as i32).to_be_bytes();
                if tx.write_all(&len).await.is_err() || tx.write_all(&frame).await.is_err() {
                    return;
                }
            }
        })
    };
    while let Some(frame) = read_frame(&mut client_rx).await {
        let (kind, correlation) = classify(&frame);
        let fault = kind.and_then(|k| rules.lock().unwrap().judge(&k));
        match fault {
            Some(Fault::Reset) => break,
            Some(Fault::BlackHole) => continue,
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::DropAnswer) => {
                if let Some(c) = correlation {
                    dropped.lock().unwrap().insert(c);
                }
            }
            None => {}
        }
        let len = (frame.len() as i32).to_be_bytes();
        if broker_tx.write_all(&len).await.is_err() || broker_tx.write_all(&frame).await.is_err() {
            break;
        }
    }
    // The client side ended (or a reset): close both ways.
    let _ = broker_tx.shutdown().await;
    answers.abort();
    let _ = client_tx.lock().await.shutdown().await;
}
