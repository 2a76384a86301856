use std::process::ExitCode;

use clap::Parser;
use promptmq_bench::{raise_nofile_limit, report, run, Options, Scenario};

fn main() -> ExitCode {
    let opts = Options::parse();
    if let Some(limit) = raise_nofile_limit() {
        if opts.scenario == Scenario::Conns && (limit as usize) < opts.connections + 64 && !opts.quiet {
            eprintln!("warning: open-files limit {limit} is below --connections {}", opts.connections);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("promptmq-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(&opts));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(r) => {
            if opts.json {
                eprint!("{}", r.table());
                println!("{}", r.json());
            } else {
                print!("{}", r.table());
            }
            if r.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("promptmq-bench: {e:#}");
            if opts.json {
                println!("{}", report::failure_json(opts.scenario, &format!("{e:#}")));
            }
            ExitCode::FAILURE
        }
    }
}
