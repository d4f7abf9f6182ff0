//! I/O off the timely worker threads, and what waits between staging and
//! publishing.
//!
//! ```text
//!   operator ──submit(job)──▶ channel ──▶ thread: work(job) ──▶ channel ──▶ operator.done()
//!                                             └─ wakes the operator (SyncActivator)
//!   stage thread ──put(worker, e, outputs)──▶ Held (bytes counted) ──take──▶ publish thread
//! ```
//!
//! A worker that blocks on fsync or a broker round trip stops computing; on
//! its own thread the I/O overlaps the next epochs' work. Jobs run one at a
//! time in submission order, which the protocol relies on (epochs in order).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use iotflow_dataflow::job::Epoch;
use timely::scheduling::SyncActivator;

use crate::error::SinkError;

use super::outgoing::StagedOutputs;

/// A thread that runs jobs in order and hands results back to an operator.
#[derive(Debug)]
pub struct Offload<J, R> {
    name: &'static str,
    jobs: Sender<J>,
    results: Receiver<R>,
}

impl<J: Send + 'static, R: Send + 'static> Offload<J, R> {
    /// Starts the thread; `work` runs each job, and the operator behind
    /// `activator` is woken after each result.
    pub fn spawn(
        name: &'static str,
        activator: SyncActivator,
        mut work: impl FnMut(J) -> R + Send + 'static,
    ) -> Result<Self, SinkError> {
        let (jobs, job_rx) = mpsc::channel::<J>();
        let (result_tx, results) = mpsc::channel::<R>();
        std::thread::Builder::new()
            .name(format!("iotflow-{name}"))
            .spawn(move || {
                for job in job_rx {
                    if result_tx.send(work(job)).is_err() {
                        break;
                    }
                    // The operator may be gone (the job stopped): nothing to wake.
                    let _ = activator.activate();
                }
            })
            .map_err(SinkError::io("starting a thread for", name))?;
        Ok(Self {
            name,
            jobs,
            results,
        })
    }

    pub fn submit(&self, job: J) -> Result<(), SinkError> {
        self.jobs
            .send(job)
            .map_err(|_| SinkError::ThreadGone(self.name))
    }

    /// Results that arrived, in submission order.
    pub fn done(&self) -> impl Iterator<Item = R> + '_ {
        self.results.try_iter()
    }
}

/// Staged outputs waiting for their epoch's commit and publishing, per
/// (worker, epoch), with the bytes they hold: the bound on unpublished bytes
/// counts these.
#[derive(Debug, Default)]
pub struct Held {
    outputs: Mutex<BTreeMap<(u32, Epoch), StagedOutputs>>,
    bytes: Arc<AtomicU64>,
}

impl Held {
    pub fn put(&self, worker: u32, epoch: Epoch, outputs: StagedOutputs) {
        if outputs.is_empty() {
            return;
        }
        self.bytes.fetch_add(outputs.bytes(), Ordering::Relaxed);
        if let Ok(mut map) = self.outputs.lock() {
            map.insert((worker, epoch), outputs);
        }
    }

    /// Worker `worker`'s outputs of `epoch` (empty if it had none).
    pub fn take(&self, worker: u32, epoch: Epoch) -> StagedOutputs {
        let taken = self
            .outputs
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&(worker, epoch)))
            .unwrap_or_default();
        self.bytes.fetch_sub(taken.bytes(), Ordering::Relaxed);
        taken
    }

    /// The counter the sources' backpressure reads.
    pub fn bytes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exactly_once::outgoing::{StagedPart, StagedRecord};

    #[test]
    fn held_outputs_count_their_bytes_until_taken() {
        let held = Held::default();
        let outputs = StagedOutputs {
            parts: vec![StagedPart {
                topic: "t".into(),
                partition: 0,
                records: vec![StagedRecord {
                    key: Some(b"k".to_vec()),
                    value: b"value".to_vec(),
                    headers: vec![("h".into(), b"12".to_vec())],
                    timestamp_ms: 0,
                }],
            }],
        };
        held.put(1, 4, outputs.clone());
        held.put(0, 4, StagedOutputs::default());
        assert_eq!(held.bytes().load(Ordering::Relaxed), 1 + 5 + 3);
        assert_eq!(held.take(0, 4), StagedOutputs::default());
        assert_eq!(held.take(1, 4), outputs);
        assert_eq!(held.bytes().load(Ordering::Relaxed), 0);
    }
}
