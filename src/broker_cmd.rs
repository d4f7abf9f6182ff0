//! `iotflow broker` and `iotflow topics`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use iotflow_redpanda::topics::{self, CreateOutcome};
use iotflow_redpanda::{LocalBroker, Storage, install, local};

use crate::target::BrokerSelect;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BrokerArgs {
    #[command(subcommand)]
    action: Option<BrokerAction>,

    /// Port on 127.0.0.1 (default: a free port).
    #[arg(long, env = "IOTFLOW_BROKER_PORT")]
    port: Option<u16>,

    /// `memory` (fast, lost on stop) or `sqlite:PATH` (durable across restarts).
    #[arg(long, env = "IOTFLOW_BROKER_STORAGE", default_value = "memory")]
    storage: Storage,

    /// Start it in the background and return; other commands find it under `--home`.
    #[arg(long)]
    detach: bool,
}

#[derive(Debug, Subcommand)]
enum BrokerAction {
    /// Install tansu into the cache (`cargo install --locked`, ~25 min cold) if missing.
    Install,
    /// Stop the detached local broker recorded under `--home`.
    Stop,
    /// Show the detached local broker recorded under `--home`, if it runs.
    Status,
}

pub async fn broker(home: &Path, args: BrokerArgs) -> Result<()> {
    match args.action {
        Some(BrokerAction::Install) => {
            let bin = tokio::task::spawn_blocking(|| {
                install::ensure_tansu(|log| {
                    eprintln!(
                        "installing tansu {} (features {}) — a one-time build of ~25 min on 2 cores; log: {}",
                        install::TANSU_VERSION,
                        install::TANSU_FEATURES,
                        log.display()
                    );
                })
            })
            .await
            .context("installer task")??;
            println!("{}", bin.display());
            Ok(())
        }
        Some(BrokerAction::Stop) => {
            match local::stop_detached(home)? {
                Some(b) => println!("stopped the local broker on {} (pid {})", b.addr, b.pid),
                None => println!("no local broker is running under {}", home.display()),
            }
            Ok(())
        }
        Some(BrokerAction::Status) => {
            match local::find_detached(home).await? {
                Some(b) => println!("{}", serde_json::to_string_pretty(&b)?),
                None => println!("no local broker is running under {}", home.display()),
            }
            Ok(())
        }
        None if args.detach => {
            let b = local::start_detached(home, args.storage, args.port).await?;
            println!("{}", b.addr);
            eprintln!("local broker pid {}, log {}", b.pid, b.log.display());
            Ok(())
        }
        None => {
            let log: PathBuf = home.join("broker").join("tansu-foreground.log");
            let mut builder = LocalBroker::builder().storage(args.storage).log_path(&log);
            if let Some(p) = args.port {
                builder = builder.port(p);
            }
            // Handled before the address is printed: whoever reads it may signal at once.
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing SIGTERM handler")?;
            let mut broker = builder.start().await?;
            // The address alone on stdout, so scripts can read it.
            println!("{}", broker.addr());
            eprintln!(
                "local broker ready (pid {}, log {}); Ctrl-C to stop",
                broker.pid().unwrap_or_default(),
                broker.log_path().display()
            );
            wait_for_shutdown_signal(term).await?;
            broker.stop(Duration::from_secs(5));
            eprintln!("local broker stopped");
            Ok(())
        }
    }
}

async fn wait_for_shutdown_signal(mut term: tokio::signal::unix::Signal) -> Result<()> {
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create iotflow's topics (idempotent): readings, DLQ, aggregates, progress.
    Create {
        #[command(flatten)]
        select: BrokerSelect,
        /// Partitions of the data topics (the progress topic always has 1).
        #[arg(long, env = "IOTFLOW_PARTITIONS", default_value_t = 4)]
        partitions: i32,
        /// Replication factor (3 on a production cluster).
        #[arg(long, env = "IOTFLOW_REPLICATION", default_value_t = 1)]
        replication: i16,
        /// Topic specs as a JSON array of `{"name","partitions","replication","configs"}`
        /// instead of the defaults.
        #[arg(long)]
        specs: Option<PathBuf>,
    },
    /// List topics and their partition counts.
    List {
        #[command(flatten)]
        select: BrokerSelect,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show each partition's earliest offset and high watermark.
    Describe {
        #[command(flatten)]
        select: BrokerSelect,
        /// The topic to describe.
        topic: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

pub async fn topics(home: &Path, cmd: TopicsCommand) -> Result<()> {
    match cmd {
        TopicsCommand::Create {
            select,
            partitions,
            replication,
            specs,
        } => {
            if partitions < 1 || replication < 1 {
                bail!("--partitions and --replication must be at least 1");
            }
            let specs = match specs {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing topic specs in {}", path.display()))?
                }
                None => topics::default_topics(partitions, replication),
            };
            let target = select.connect(home).await?;
            let outcomes = topics::create_topics(&target.client, &target.bootstrap, &specs).await?;
            for (name, outcome) in outcomes {
                match outcome {
                    CreateOutcome::Created => println!("created        {name}"),
                    CreateOutcome::AlreadyExists => println!("already exists {name}"),
                    CreateOutcome::CreatedWithoutConfigs { reason } => {
                        println!("created        {name} (broker rejected its configs: {reason})")
                    }
                }
            }
            Ok(())
        }
        TopicsCommand::List { select, json } => {
            let target = select.connect(home).await?;
            let list = topics::list_topics(&target.client).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<32} {:>10}", "TOPIC", "PARTITIONS");
                for t in list {
                    println!("{:<32} {:>10}", t.name, t.partitions.len());
                }
            }
            Ok(())
        }
        TopicsCommand::Describe {
            select,
            topic,
            json,
        } => {
            let target = select.connect(home).await?;
            let parts = topics::describe_topic(&target.client, &topic).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&parts)?);
            } else {
                println!(
                    "{:>9} {:>12} {:>15} {:>12}",
                    "PARTITION", "EARLIEST", "HIGH WATERMARK", "RECORDS"
                );
                for p in parts {
                    println!(
                        "{:>9} {:>12} {:>15} {:>12}",
                        p.partition,
                        p.earliest,
                        p.high_watermark,
                        p.high_watermark - p.earliest
                    );
                }
            }
            Ok(())
        }
    }
}
