//! `cargo xtask`: parses the command line and prints; the work is in the library (`lib.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{Mode, Options, Outcome, README};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "confab's repository chores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the guide index in README.md from docs/categories and docs/guides.
    Readme {
        /// Write nothing; fail if README.md's guide index is not what would be generated.
        #[arg(long)]
        check: bool,
        /// Link to the published site (URL/guides/<slug>, URL/categories/<slug>) instead of
        /// to the Markdown files.
        #[arg(long, value_name = "URL", value_parser = xtask::parse_base_url)]
        base_url: Option<String>,
        /// The repository root [default: the workspace this tool was built from].
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let Command::Readme {
        check,
        base_url,
        root,
    } = Cli::parse().command;
    // `cargo xtask` may be run from any folder of the workspace, so the default root comes
    // from where this crate sits (crates/xtask), not from the current directory.
    let root = root.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("crates/xtask has a grandparent")
            .to_path_buf()
    });
    let mode = if check { Mode::Check } else { Mode::Write };

    match xtask::update_readme(&root, &Options { base_url }, mode) {
        Ok(Outcome::UpToDate) => {
            println!("{README} guide index is up to date");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Updated) => {
            println!("{README} guide index updated");
            ExitCode::SUCCESS
        }
        Ok(Outcome::OutOfDate { first_difference }) => {
            eprintln!("{README} guide index is out of date; run: cargo xtask readme");
            eprintln!("first difference: {first_difference}");
            ExitCode::FAILURE
        }
        Err(errors) => {
            eprintln!("{errors}; {README} was not changed");
            ExitCode::FAILURE
        }
    }
}
