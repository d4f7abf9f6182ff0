//! How a running job's process is stopped: SIGUSR1 drains it, Ctrl-C and
//! SIGTERM stop it after the current epoch, and the watchdogs stop it
//! (exit 3, naming what went silent) when a peer or the brokers go silent or
//! a connection to a peer breaks.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result};
use iotflow_redpanda::Brokers;
use iotflow_runtime::Controls;

use super::{RunArgs, read_hostfile};

/// The liveness watchdogs: of the peers (several processes, a hostfile) and
/// of the brokers. Each stops the process, exit 3, naming what went silent
/// (the dataflow is held back by it: nothing to wind down). Also returns the
/// peers, told goodbye on a clean end.
pub(super) fn spawn_watchdogs(args: &RunArgs, job: &str, brokers: &Brokers) -> Result<Watchdogs> {
    const RESTART: &str = "restart every process: they resume from the last commit";
    let peers = match (
        &args.hostfile,
        args.processes > 1 && !args.peer_timeout.is_zero(),
    ) {
        (Some(file), true) => Some((read_hostfile(file)?, job.to_owned())),
        _ => None,
    };
    let mut tasks = Vec::new();
    if let Some((hosts, _)) = &peers {
        exit_on_broken_links(hosts.clone());
    }
    if let Some((hosts, job)) = peers.clone() {
        let (me, timeout) = (args.process, args.peer_timeout);
        tasks.push(tokio::spawn(async move {
            match iotflow_runtime::peers::watch(&job, me, &hosts, timeout).await {
                Ok(silent) => {
                    eprintln!(
                        "error: process {} ({}) has not been heard from for {:.1} s; stopping ({RESTART})",
                        silent.process,
                        silent.addr,
                        silent.silent.as_secs_f64()
                    );
                    std::process::exit(3);
                }
                Err(e) => tracing::warn!(error = %e, "peer watchdog not running"),
            }
        }));
    }
    if !args.broker_timeout.is_zero() {
        let (brokers, timeout, me) = (brokers.clone(), args.broker_timeout, args.process);
        tasks.push(tokio::spawn(async move {
            let silent = iotflow_runtime::broker_watch::watch(&brokers, timeout).await;
            eprintln!(
                "error: process {me}: no broker of {} has answered for {:.1} s ({}); stopping ({RESTART})",
                silent.brokers.join(","),
                silent.silent.as_secs_f64(),
                silent.last_error
            );
            std::process::exit(3);
        }));
    }
    Ok(Watchdogs { peers, tasks })
}

/// A broken connection to a peer makes timely's communication threads
/// panic, and every worker after them, in a cascade of messages none of
/// which names the peer. The first such panic stops the process instead,
/// exit 3, naming the peer; the rest of the cascade is not printed.
fn exit_on_broken_links(hosts: Vec<String>) {
    static BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if BROKEN.load(Relaxed) {
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let thread = std::thread::current();
        match iotflow_runtime::peers::broken_link(thread.name().unwrap_or(""), message) {
            Some((peer, cause)) => {
                BROKEN.store(true, Relaxed);
                let addr = hosts.get(peer).map_or("?", String::as_str);
                eprintln!(
                    "error: the connection to process {peer} ({addr}) broke ({cause}); stopping \
                     (restart every process: they resume from the last commit)"
                );
                std::process::exit(3);
            }
            None => default(info),
        }
    }));
}

pub(super) struct Watchdogs {
    /// The hostfile's peers and the job's name, when they are watched.
    pub peers: Option<(Vec<String>, String)>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// SIGUSR1 drains the job: every partition to its end of that moment.
pub(super) fn drain_on_sigusr1(controls: &Controls) -> Result<tokio::task::JoinHandle<()>> {
    let drain = Arc::clone(&controls.drain);
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("installing the SIGUSR1 handler")?;
    Ok(tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            if !drain.swap(true, Relaxed) {
                eprintln!(
                    "draining: reading each partition to its current end, then closing every window"
                );
            }
        }
    }))
}

/// Ctrl-C or SIGTERM stop the job after the current epoch.
pub(super) fn stop_on_signals(controls: &Controls) -> tokio::task::JoinHandle<()> {
    let (stop, interrupted) = (
        Arc::clone(&controls.stop),
        Arc::clone(&controls.interrupted),
    );
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopping: finishing the current epoch (open windows are not emitted)");
        interrupted.store(true, Relaxed);
        stop.store(true, Relaxed);
    })
}
