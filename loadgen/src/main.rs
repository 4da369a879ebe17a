//! `wsgate-loadgen`: the load generator every performance claim of wsgate is measured with.
//!
//! - `feed`: an open-loop upstream feed server (or publisher, with `--connect`) at a fixed rate.
//! - `subscribe`: N WebSocket subscribers over P processes; loss, order and latency (HdrHistogram). With
//!   `--topics K --per-conn M`, the market shape: M of K topics each, checked per topic, with churn or a storm.
//! - `echo`: N connections sending masked messages at a rate against `wsgate --echo`; round-trip latency.
//! - `laggard`: connections that stop reading or read slowly (what slow consumers cost the others).
//! - `chart`: render `.hgrm` percentile distributions to SVG, several runs side by side.

mod addrs;
mod chart;
mod client_conn;
mod control;
mod coordinator;
mod echo;
mod envelope;
mod feed;
mod hist;
mod laggard;
mod msg;
mod procstat;
mod recorder;
mod report;
mod report_topics;
mod resume;
mod seqtrack;
mod subscribe;
mod timer;
mod tls;
mod topic_conn;
mod topic_rx;
mod topiccheck;
mod topics;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "wsgate-loadgen", version, about = "Load generator for wsgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open-loop feed server (or publisher) at a fixed rate, stamping each message with its scheduled time.
    Feed(feed::Args),
    /// Render .hgrm percentile distributions as an SVG chart, several runs side by side.
    Chart(chart::Args),
    /// Hold N WebSocket subscribers; count every message, detect loss and reorders, record open-loop latency.
    Subscribe(subscribe::Args),
    /// N connections sending paced masked messages against `wsgate --echo`; round-trip latency.
    Echo(echo::Args),
    /// Slow consumers on purpose: connections that stop reading, or read slowly (`scripts/bench-slow.sh`).
    Laggard(laggard::Args),
    /// Internal: one worker process of `subscribe`/`echo` (started by the parent, speaks JSON lines).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Feed(args) => feed::run(args),
        Command::Chart(args) => chart::run(args),
        Command::Subscribe(args) => subscribe::main(args),
        Command::Echo(args) => echo::main(args),
        Command::Laggard(args) => laggard::run(args),
        Command::Worker(args) => worker::main(args),
    }
}
