//! The `promptmq` binary: runs the broker, or an operator tool (`promptmq wal ...`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use promptmq::config::layers::{self, LoadError};
use promptmq::config::Config;

#[derive(Parser)]
#[command(name = "promptmq", version = promptmq::VERSION_STRING, about = "A fast, durable MQTT 3.1.1 and 5.0 broker")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config file, or print the effective configuration.
    Config {
        #[command(subcommand)]
        tool: ConfigTool,
    },
    /// Inspect the write-ahead log of a data directory (read only).
    Wal {
        #[command(subcommand)]
        tool: WalTool,
    },
}

#[derive(Subcommand)]
enum ConfigTool {
    /// Check that FILE is valid YAML with known keys and valid values; prints every problem.
    Check { file: PathBuf },
    /// Print the effective configuration (defaults, --config file, PROMPTMQ_* variables and
    /// flags applied) as a YAML file the broker reads back, each value with its origin.
    Show,
}

#[derive(Subcommand)]
enum WalTool {
    /// Segments, bytes, records per topic, oldest and newest timestamps, per shard.
    Stats {
        /// Data directory to read (default: the broker's --data-dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Topics to list per shard, most records first.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// The stored history of a topic, oldest first.
    Dump {
        /// Data directory to read (default: the broker's --data-dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        topic: String,
        /// Show only the last N records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// The runtime for the startup line: `io_uring`, or `epoll (io_uring refused: EPERM)` and the
/// like when the kernel refused io_uring (which driver each core got, and why), or `tokio`.
/// On io_uring it waits until every core has built its ring.
#[cfg(all(target_os = "linux", feature = "uring", not(feature = "tokio")))]
fn runtime_description() -> String {
    promptmq_runtime_uring::driver_description()
}

#[cfg(not(all(target_os = "linux", feature = "uring", not(feature = "tokio"))))]
fn runtime_description() -> String {
    promptmq_runtime_tokio::RUNTIME_NAME.to_string()
}

fn main() -> anyhow::Result<()> {
    let loaded = match layers::load::<Cli>(std::env::args_os().collect()) {
        Ok(loaded) => loaded,
        Err(LoadError::Cli(e)) => e.exit(),
        Err(LoadError::Config(e)) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(Command::Config { tool }) = &loaded.parsed.command {
        match tool {
            ConfigTool::Show => print!("{}", layers::show(&loaded)),
            ConfigTool::Check { file } => match layers::check_file(&Cli::command(), file) {
                Ok(n) => println!("{}: ok ({n} keys)", file.display()),
                Err(errors) => {
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                    std::process::exit(1);
                }
            },
        }
        return Ok(());
    }
    let cli = loaded.parsed;
    let config = cli.config;
    if let Some(Command::Wal { tool }) = cli.command {
        let mut out = std::io::stdout().lock();
        let (dir, result) = match tool {
            WalTool::Stats { data_dir, top } => {
                let dir = data_dir.unwrap_or(config.data_dir);
                let r = promptmq::tools::wal_stats(&dir, top, &mut out);
                (dir, r)
            }
            WalTool::Dump { data_dir, topic, limit } => {
                let dir = data_dir.unwrap_or(config.data_dir);
                let r = promptmq::tools::wal_dump(&dir, &topic, limit, &mut out);
                (dir, r)
            }
        };
        return result.with_context(|| format!("cannot read the WAL in {}", dir.display()));
    }

    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).with_context(|| {
        format!("invalid --log-level {:?}: use error, warn, info, debug or trace", config.log_level)
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let data_dir = config.data_dir.display().to_string();
    let bind = config.bind;
    // Before any thread starts, so that every thread inherits the blocked signals.
    #[cfg(unix)]
    let signals = promptmq::signals::block().context("cannot block signals")?;
    let running = promptmq::server::start(config).with_context(|| format!("cannot start the broker on {bind}"))?;
    #[cfg(unix)]
    handle_signals(signals, running.stopper())?;
    tracing::info!(
        "promptmq {} listening on {} (runtime {}, {} cores, data {})",
        promptmq::VERSION_STRING,
        running.local_addr,
        runtime_description(),
        running.cores,
        data_dir
    );
    running.wait().context("broker stopped with an error")?;
    tracing::info!("promptmq stopped");
    Ok(())
}

/// How long a graceful stop may take before the process exits anyway.
#[cfg(unix)]
const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(15);

/// SIGTERM/SIGINT: a graceful stop (a second one exits at once); SIGHUP: reload.
#[cfg(unix)]
fn handle_signals(signals: promptmq::signals::Signals, stopper: promptmq::server::Stopper) -> anyhow::Result<()> {
    use promptmq::signals::Request;
    std::thread::Builder::new()
        .name("promptmq-signals".into())
        .spawn(move || {
            let mut stopping = false;
            loop {
                match signals.wait() {
                    Ok(Request::Stop(name)) if stopping => {
                        tracing::warn!("{name} again: exiting without waiting");
                        std::process::exit(1);
                    }
                    Ok(Request::Stop(name)) => {
                        tracing::info!("{name}: stopping (closing connections, syncing the logs)");
                        stopping = true;
                        stopper.stop();
                        std::thread::spawn(|| {
                            std::thread::sleep(STOP_BOUND);
                            tracing::error!("graceful stop took longer than {STOP_BOUND:?}: exiting");
                            std::process::exit(1);
                        });
                    }
                    Ok(Request::Reload) => tracing::info!("SIGHUP: nothing to reload (no password, ACL or TLS files)"),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot wait for signals");
                        return;
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
