//! `wsgate-loadgen`: the load generator every performance claim of wsgate is measured with.
//!
//! - `feed`: an open-loop upstream feed server (or publisher, with `--connect`) at a fixed rate.
//! - `subscribe`: N WebSocket subscribers over P processes; loss, order and latency (HdrHistogram).
//! - `echo`: N connections sending masked messages at a rate against `wsgate --echo`; round-trip latency.
//! - `chart`: render `.hgrm` percentile distributions to SVG, several runs side by side.

mod chart;
mod feed;
mod msg;

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
    Feed(feed::Args),
    Chart(chart::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Feed(args) => feed::run(args),
        Command::Chart(args) => chart::run(args),
    }
}
