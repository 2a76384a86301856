//! The `promptmq` binary: parses the configuration, starts the cores, waits.

use anyhow::Context;
use clap::Parser;
use promptmq::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).with_context(|| {
        format!("invalid --log-level {:?}: use error, warn, info, debug or trace", config.log_level)
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let data_dir = config.data_dir.display().to_string();
    let bind = config.bind;
    let running = promptmq::server::start(config).with_context(|| format!("cannot start the broker on {bind}"))?;
    tracing::info!(
        "promptmq {} listening on {} (runtime {}, {} cores, data {})",
        promptmq::VERSION_STRING,
        running.local_addr,
        promptmq_runtime_tokio::RUNTIME_NAME,
        running.cores,
        data_dir
    );
    running.wait().context("broker stopped with an error")?;
    Ok(())
}
