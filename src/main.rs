//! `iotflow`: one binary for the local broker, topics, the device simulator,
//! read-back checks and the demo. Flags fall back to `IOTFLOW_*` env vars.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod aggregate_file_cmd;
mod broker_cmd;
mod check_cmd;
mod demo;
mod follow;
mod http;
mod notify_cmd;
mod pipeline_log;
mod produce_cmd;
mod registry_args;
mod run_cmd;
mod scan_cmd;
mod tail_cmd;
mod target;

#[derive(Debug, Parser)]
#[command(
    name = "iotflow",
    version,
    about = "Pure-Rust real-time IoT streaming: devices → Kafka → windowed aggregates"
)]
struct Cli {
    /// Directory for local state: the detached local broker's state file, logs and data.
    #[arg(long, global = true, env = "IOTFLOW_HOME", default_value = "data")]
    home: PathBuf,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `iotflow_ingest=debug`.
    #[arg(
        long,
        global = true,
        env = "IOTFLOW_LOG",
        default_value = "warn,rskafka=error"
    )]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local tansu broker in the foreground (or manage a detached one).
    Broker(broker_cmd::BrokerArgs),
    /// Create, list and describe topics.
    #[command(subcommand)]
    Topics(broker_cmd::TopicsCommand),
    /// Simulate devices and write their readings to the input topic.
    Produce(produce_cmd::ProduceArgs),
    /// Run the streaming job: windowed aggregates from the input topic to the output topic.
    ///
    /// Ctrl-C (SIGINT) or SIGTERM stops it after the current epoch; windows still open
    /// stay in the state and a restart goes on with them. SIGUSR1 drains it: it reads
    /// each partition to the end offset of that moment, closes every window, commits and exits.
    Run(Box<run_cmd::RunArgs>),
    /// Read a topic to its end and audit it: records per partition, rejects by reason, duplicates.
    Scan(scan_cmd::ScanArgs),
    /// Follow the committed output: each epoch's aggregates once it is committed and published.
    Tail(tail_cmd::TailArgs),
    /// Deliver the committed alert events to a webhook in Alertmanager's payload, one
    /// alert per request, with retries; resumes from its position file.
    Notify(notify_cmd::NotifyArgs),
    /// The demo: local broker, topics, live simulated devices, the job with its
    /// progress, a drain, and a summary checked against the simulator and the outputs.
    Demo(demo::DemoArgs),
    /// Run the windowed dataflow over a JSON-lines file and write the final windows as CSV.
    AggregateFile(aggregate_file_cmd::AggregateFileArgs),
    /// Validate a job file and print its plan: input mapping, routing, and each
    /// aggregation's key, window, measures, state kept and outputs.
    Check(check_cmd::CheckArgs),
}

/// jemalloc rather than glibc's malloc: see the workspace manifest.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let command = match cli.command {
        // Pure timely: no async runtime involved.
        Command::AggregateFile(args) => return finish(aggregate_file_cmd::run(args)),
        Command::Check(args) => return check_cmd::run(&args),
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Broker(args) => broker_cmd::broker(&cli.home, args).await,
            Command::Topics(cmd) => broker_cmd::topics(&cli.home, cmd).await,
            Command::Produce(args) => produce_cmd::run(&cli.home, args).await,
            Command::Scan(args) => scan_cmd::run(&cli.home, args).await,
            Command::Run(args) => run_cmd::run(&cli.home, *args).await,
            Command::Tail(args) => tail_cmd::run(&cli.home, args).await,
            Command::Notify(args) => notify_cmd::run(&cli.home, args).await,
            Command::Demo(args) => demo::run(args).await,
            // Handled above, without a runtime.
            Command::AggregateFile(_) | Command::Check(_) => Ok(()),
        }
    });
    finish(result)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn cli_is_consistent_and_every_flag_is_documented() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&cmd, "iotflow", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }
}
