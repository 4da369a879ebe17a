//! `wsgate-loadgen subscribe`: hold N WebSocket subscribers and account for every broadcast message (loss,
//! order, open-loop latency against the feed's scheduled send time). See `docs/loadgen.md`.

use std::process::ExitCode;

use crate::control::Mode;
use crate::coordinator::{self, CommonArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn main(args: Args) -> ExitCode {
    run_and_report(Mode::Subscribe, &args.common)
}

/// Runs a measurement, prints the report and writes its files; exit code 1 on any error.
pub fn run_and_report(mode: Mode, args: &CommonArgs) -> ExitCode {
    match coordinator::run(mode, args).and_then(|report| report.emit(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
