//! `confab bench`: confab's load generator. It speaks the wire protocol (`PROTOCOL.md`)
//! through the client SDK's raw [`confab_client::Connection`], only ever to a server on this
//! machine (127.0.0.0/8), and every run is bounded in count and time.
//!
//! - `pairs`: users in pairs sending to each other at an offered rate; throughput and latency.
//! - `group`: groups whose online members send to them at an offered rate; fan-out to devices,
//!   latency at every reader, the server's CPU and writes per message.
//! - `push`: messages to offline recipients with a Web Push subscription, at an offered rate;
//!   notifications delivered to the bench's own receiver, their latency, and what a
//!   subscription adds to the server's CPU and writes per message.
//! - `sweep`: `pairs` at rising rates until throughput stops growing; an SVG plot.
//! - `idle`: many authenticated idle sockets; connect rate and server memory per socket.
//! - `catchup`: one device offline while messages pile up; time from reconnect to `synced`.
//! - `login-flood`: a pair's message latency, alone and while clients guess a password.
//! - `relay`: a store-less stand-in server, the floor under any server's `pairs` numbers.
//!
//! The `confab` binary mounts [`BenchArgs`] as `confab bench …` and calls [`run`].

mod body;
mod catchup;
mod connect;
#[cfg(test)]
mod e2e;
mod group;
mod idle;
mod login_flood;
mod pairs;
mod push;
mod relay;
mod report;
mod schedule;
mod stats;
mod svg;
mod sweep;
mod target;

use std::process::ExitCode;

pub use catchup::{CatchupArgs, CatchupReport};
pub use group::{GroupArgs, GroupConfig, GroupReport, run_group};
pub use idle::{IdleArgs, IdleReport, IdleWorkerArgs};
pub use login_flood::{LoginFloodArgs, LoginFloodReport};
pub use pairs::{LoadArgs, PaceArgs, PairsArgs, PairsConfig, PairsReport, run_pairs};
pub use push::{
    Notifications, PhaseReport, PushArgs, PushConfig, PushCounters, PushReport, run_push,
};
pub use relay::RelayArgs;
pub use report::OutputArgs;
pub use stats::{LatencySummary, ProcessStats};
pub use sweep::{SweepArgs, SweepReport};
pub use target::{SeededAccount, Target, TargetArgs};

/// `confab bench`: the load generator's command line.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Users in pairs send to their partner at a total offered rate; reports delivered
    /// msgs/s, end-to-end latency percentiles, errors and undelivered messages.
    Pairs(PairsArgs),
    /// G groups of M members, N of them online, whose online members take turns sending to
    /// their group at a total offered rate; reports sent and delivered (to devices) per
    /// second, latency at every reader, `sent` latency, and the server's CPU and writes per
    /// message.
    Group(GroupArgs),
    /// S senders send at a total offered rate, each message to another of N recipients who
    /// have no socket and one device subscribed to Web Push at the bench's own receiver;
    /// reports notifications delivered per second, their latency from the send, the push
    /// server's counters, and the server's CPU and writes per message beside a baseline of
    /// recipients without a subscription.
    Push(PushArgs),
    /// `pairs` at stepped rates until delivered throughput stops growing; writes an SVG of
    /// latency and delivered rate against offered rate.
    Sweep(SweepArgs),
    /// Opens N authenticated idle sockets; reports the connect rate and, with --spawn, the
    /// server's memory per socket.
    Idle(IdleArgs),
    /// One device offline while M messages arrive for it; reports the time from reconnect to
    /// `synced` and checks that all M arrive.
    Catchup(CatchupArgs),
    /// A pair of users chats at a steady rate, alone and then while clients guess another
    /// account's password as fast as they are answered; reports the pair's message latency
    /// in both phases and the guesses' answers by status.
    LoginFlood(LoginFloodArgs),
    /// A yardstick, not a chat server: answers the frames `pairs` sends with confab's frames
    /// over the same WebSocket stack, with no store, presence or limits (what `pairs --spawn
    /// --relay` starts).
    Relay(RelayArgs),
    /// Internal: holds a share of `idle`'s sockets in a child process.
    #[command(hide = true)]
    IdleWorker(IdleWorkerArgs),
}

/// Runs one `confab bench` command. Exit status: 2 for bad flags; 1 when the run could not be
/// done or a check failed (`pairs`: an acked message was not delivered within the grace
/// period; `group`: an acked message did not reach every online member within it;
/// `push`: a notification did not arrive and was not coalesced, or a decrypted one was not
/// the message sent; `catchup`: one was missing from the catch-up; `idle`: a socket failed or dropped;
/// `sweep`: no step ran); 0 otherwise.
pub async fn run(args: BenchArgs) -> ExitCode {
    // Every socket is a file: take all the process may have before opening thousands.
    target::raise_nofile_limit();
    let outcome = match args.command {
        BenchCommand::Pairs(a) => pairs::main(a).await,
        BenchCommand::Group(a) => group::main(a).await,
        BenchCommand::Push(a) => push::main(a).await,
        BenchCommand::Sweep(a) => sweep::main(a).await,
        BenchCommand::Idle(a) => idle::main(a).await,
        BenchCommand::Catchup(a) => catchup::main(a).await,
        BenchCommand::LoginFlood(a) => login_flood::main(a).await,
        BenchCommand::Relay(a) => relay::main(a).await,
        BenchCommand::IdleWorker(a) => idle::worker_main(a).await,
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("confab bench: {e:#}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A flag value that makes no sense (exit status 2, as clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
