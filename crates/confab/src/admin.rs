//! `confab admin …`: operator tasks on a store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::BackendArgs;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create test accounts with one device each and write their tokens as JSON.
    ///
    /// Run it while the server is stopped (SQLite) or with a node id no running node uses.
    /// Every seeded account shares one password and one Argon2id hash of it, so 100,000
    /// accounts take seconds: meant for load tests and demos, never for real users.
    Seed {
        #[command(flatten)]
        backend: BackendArgs,
        /// Usernames are PREFIX0, PREFIX1, …
        #[arg(long, default_value = "user")]
        prefix: String,
        /// How many accounts.
        #[arg(long)]
        count: usize,
        /// The password every seeded account gets.
        #[arg(long, env = "CONFAB_SEED_PASSWORD")]
        password: String,
        /// Where to write `[{"username","user_id","device_id","token"}, …]` (`-` = stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
}

pub async fn run(cmd: AdminCommand) -> ExitCode {
    match cmd {
        AdminCommand::Seed {
            backend,
            prefix,
            count,
            password,
            out,
        } => {
            let bar = ProgressBar::new(count as u64).with_style(
                ProgressStyle::with_template(
                    "seeding {bar:40} {pos}/{len} accounts ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let seeded =
                confab_server::admin::seed(&backend.config(), &prefix, count, &password, |n| {
                    bar.set_position(n as u64)
                })
                .await;
            bar.finish_and_clear();
            let accounts = match seeded {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("confab: seeding failed: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let json = match serde_json::to_string(&accounts) {
                Ok(j) => j,
                Err(e) => {
                    eprintln!("confab: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let written = if out.as_os_str() == "-" {
                println!("{json}");
                Ok(())
            } else {
                std::fs::write(&out, json)
            };
            match written {
                Ok(()) => {
                    eprintln!("seeded {} accounts", accounts.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("confab: cannot write {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
