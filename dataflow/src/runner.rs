//! Running the dataflow: timely's `Config` built from our own flags, and a
//! bounded run that collects what this process's workers produced.
//!
//! ```text
//!   Parallelism (-w, -n, -p, hostfile) ──▶ timely::Config
//!   run_bounded: every worker builds source → job::build → collect; steps until done
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::job::{self, DeadRecord, Epoch, JobConfig, WindowResult};
use crate::metrics::JobMetrics;
use crate::source::{OwnedInput, chunked_source};

/// Updates an arrangement merges per activation while it has nothing else to do.
const IDLE_MERGE_EFFORT: isize = 4096;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The parallelism flags do not describe a cluster (user).
    #[error("invalid parallelism: {0}")]
    Config(String),
    /// Timely could not start its workers or connect the processes (environment).
    #[error("starting timely workers: {0}")]
    Start(String),
    /// A worker thread panicked (ours).
    #[error("a timely worker failed: {0}")]
    Worker(String),
}

/// Workers per process, processes, this process's index, and the hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parallelism {
    pub workers: usize,
    pub processes: usize,
    pub process: usize,
    /// `host:port` per process, in process order (only with processes > 1).
    pub hosts: Vec<String>,
}

impl Default for Parallelism {
    fn default() -> Self {
        Self {
            workers: 1,
            processes: 1,
            process: 0,
            hosts: Vec::new(),
        }
    }
}

impl Parallelism {
    /// Timely's configuration for these settings.
    pub fn timely_config(&self) -> Result<timely::Config, RunError> {
        if self.workers == 0 {
            return Err(RunError::Config("at least one worker is needed".into()));
        }
        let mut config = self.communication_config()?;
        // Closed windows are retracted from the window state; merging batches
        // while idle is what turns the retractions into freed memory.
        differential_dataflow::configure(
            &mut config.worker,
            &differential_dataflow::Config::default().idle_merge_effort(Some(IDLE_MERGE_EFFORT)),
        );
        Ok(config)
    }

    fn communication_config(&self) -> Result<timely::Config, RunError> {
        if self.processes <= 1 {
            return Ok(timely::Config::process(self.workers));
        }
        if self.hosts.len() != self.processes {
            return Err(RunError::Config(format!(
                "{} processes but {} hosts in the hostfile",
                self.processes,
                self.hosts.len()
            )));
        }
        if self.process >= self.processes {
            return Err(RunError::Config(format!(
                "process index {} is not below {}",
                self.process, self.processes
            )));
        }
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// What this process's workers produced in a bounded run, in no particular
/// order (workers finish epochs concurrently); see [`RunOutput::sorted`].
#[derive(Debug, Default)]
pub struct RunOutput {
    pub results: Vec<(Epoch, WindowResult)>,
    pub dead: Vec<(Epoch, DeadRecord)>,
}

impl RunOutput {
    /// Results by (epoch, aggregation, group key, window start, final), dead letters by
    /// (epoch, partition, offset): one canonical order to compare runs with.
    pub fn sorted(mut self) -> Self {
        self.results.sort_unstable_by(|a, b| {
            (
                a.0,
                a.1.aggregation,
                &a.1.group,
                a.1.window_start,
                a.1.is_final,
            )
                .cmp(&(
                    b.0,
                    b.1.aggregation,
                    &b.1.group,
                    b.1.window_start,
                    b.1.is_final,
                ))
        });
        self.dead
            .sort_unstable_by_key(|d| (d.0, d.1.record.partition, d.1.record.offset));
        self
    }
}

/// Appends everything `stream` carries, with its epoch, to one list of `out`.
fn collect<T: Clone + 'static>(
    stream: timely::dataflow::Stream<'_, Epoch, Vec<T>>,
    name: &str,
    out: Rc<RefCell<RunOutput>>,
    list: fn(&mut RunOutput) -> &mut Vec<(Epoch, T)>,
) {
    stream.sink(Pipeline, name, move |(input, _frontier)| {
        input.for_each(|time, data| {
            let t = crate::job::epoch_of(&time);
            list(&mut out.borrow_mut()).extend(data.drain(..).map(|x| (t, x)));
        });
    });
}

/// Runs the job over inputs that end, until every window is final and emitted.
/// `inputs(worker, peers)` gives each worker its inputs.
pub fn run_bounded<F>(
    parallelism: &Parallelism,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    inputs: F,
) -> Result<RunOutput, RunError>
where
    F: Fn(usize, usize) -> Vec<OwnedInput> + Send + Sync + 'static,
{
    let parts = run_bounded_then(parallelism, cfg, metrics, inputs, |part| part)?;
    let mut out = RunOutput::default();
    for part in parts {
        out.results.extend(part.results);
        out.dead.extend(part.dead);
    }
    Ok(out)
}

/// [`run_bounded`], with each worker's output passed through `finish` on the
/// worker's own thread (sorting or formatting it there, in parallel);
/// the finished parts in worker order.
pub fn run_bounded_then<F, G, T>(
    parallelism: &Parallelism,
    cfg: JobConfig,
    metrics: Arc<JobMetrics>,
    inputs: F,
    finish: G,
) -> Result<Vec<T>, RunError>
where
    F: Fn(usize, usize) -> Vec<OwnedInput> + Send + Sync + 'static,
    G: Fn(RunOutput) -> T + Send + Sync + 'static,
    T: Send + 'static,
{
    let config = parallelism.timely_config()?;
    let guards = timely::execute(config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let collected = Rc::new(RefCell::new(RunOutput::default()));
        let owned = inputs(index, peers);
        let metrics = Arc::clone(&metrics);
        worker.dataflow::<Epoch, _, _>(|scope| {
            let gate = job::Backpressure::new(Arc::clone(&metrics));
            let source = chunked_source(scope, owned, gate.clone());
            let streams = job::build(source, cfg.clone(), metrics, Arc::default(), &gate);
            collect(
                streams.results,
                "CollectResults",
                Rc::clone(&collected),
                |o| &mut o.results,
            );
            collect(streams.dead, "CollectDead", Rc::clone(&collected), |o| {
                &mut o.dead
            });
        });
        while worker.step_or_park(Some(Duration::from_millis(20))) {}
        finish(collected.take())
    })
    .map_err(RunError::Start)?;
    guards
        .join()
        .into_iter()
        .map(|part| part.map_err(RunError::Worker))
        .collect()
}
