//! `confab bench …` without the `confab` binary, for trying the bench on its own:
//! `cargo run -p confab-bench --example confab-bench -- bench pairs --spawn`, with
//! `CONFAB_BIN` naming a `confab` binary for `--spawn` to start.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mirrors the `confab` binary's layout (`PROG bench …`), so `idle` can start its
/// `bench idle-worker` children from this program too.
#[derive(Parser)]
#[command(name = "confab-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The load generator.
    Bench(confab_bench::BenchArgs),
}

fn main() -> ExitCode {
    let Command::Bench(args) = Cli::parse().command;
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(confab_bench::run(args)),
        Err(e) => {
            eprintln!("confab-bench: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
