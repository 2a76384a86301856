//! The `promptmq` binary: runs the broker, or an operator tool (`promptmq wal ...`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use promptmq::config::layers::{self, LoadError};
use promptmq::config::{Config, LogFormat};
use promptmq::passwd::HashKind;

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
    /// Add, update or delete a user in a password file (mosquitto's format, like
    /// mosquitto_passwd).
    Passwd {
        /// Create a new file (replacing an existing one).
        #[arg(short = 'c')]
        create: bool,
        /// Delete the user.
        #[arg(short = 'D', conflicts_with = "create")]
        delete: bool,
        /// Take the password from the command line (else it is asked for).
        #[arg(short = 'b')]
        batch: bool,
        /// Hash to write.
        #[arg(short = 'H', value_enum, default_value_t = HashKind::Sha512Pbkdf2)]
        hash: HashKind,
        /// PBKDF2 iterations for sha512-pbkdf2 (mosquitto's default is 101).
        #[arg(short = 'I', default_value_t = promptmq::passwd::DEFAULT_ITERATIONS)]
        iterations: u32,
        file: PathBuf,
        username: String,
        /// With -b.
        password: Option<String>,
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
    if let Some(Command::Passwd { create, delete, batch, hash, iterations, file, username, password }) =
        &loaded.parsed.command
    {
        if *batch != password.is_some() && !*delete {
            anyhow::bail!("give the password with -b (promptmq passwd -b FILE USER PASSWORD), or neither to be asked");
        }
        let req = promptmq::passwd::PasswdRequest {
            file,
            username,
            password: password.as_deref(),
            create: *create,
            delete: *delete,
            hash: *hash,
            iterations: *iterations,
        };
        println!("{}", promptmq::passwd::run(req)?);
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

    // rustls warns about every client that sends an IP address as SNI (mosquitto_pub -h
    // 127.0.0.1 does): quiet unless asked for by a directive.
    let directive = if config.log_level.contains('=') {
        config.log_level.clone()
    } else {
        format!("{},rustls=error", config.log_level)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directive).with_context(|| {
        format!("invalid --log-level {:?}: use error, warn, info, debug or trace", config.log_level)
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().init(),
    }

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let data_dir = config.data_dir.display().to_string();
    let bind = config.bind;
    // Before any thread starts, so that every thread inherits the blocked signals.
    #[cfg(unix)]
    let signals = promptmq::signals::block().context("cannot block signals")?;
    let running = promptmq::server::start(config).with_context(|| format!("cannot start the broker on {bind}"))?;
    #[cfg(unix)]
    handle_signals(signals, running.control())?;
    tracing::info!(
        "promptmq {} listening on {} (runtime {}, {} cores, data {})",
        promptmq::VERSION_STRING,
        running.local_addr,
        promptmq::server::runtime_description(),
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
fn handle_signals(signals: promptmq::signals::Signals, control: promptmq::server::Control) -> anyhow::Result<()> {
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
                        control.stop();
                        std::thread::spawn(|| {
                            std::thread::sleep(STOP_BOUND);
                            tracing::error!("graceful stop took longer than {STOP_BOUND:?}: exiting");
                            std::process::exit(1);
                        });
                    }
                    Ok(Request::Reload) => match control.reload() {
                        Ok(done) if done.is_empty() => tracing::info!("SIGHUP: nothing to reload"),
                        Ok(done) => tracing::info!("SIGHUP: reloaded {}", done.join(", ")),
                        Err(errors) => {
                            for e in errors {
                                tracing::error!("SIGHUP: reload failed, previous version kept: {e}");
                            }
                        }
                    },
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
