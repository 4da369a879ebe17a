//! `wsgate-loadgen echo`: N connections each sending `--rate` masked text messages per second of `--size` bytes
//! on a fixed schedule against `wsgate --echo`; round-trip latency = receive time − scheduled send time.

use std::process::ExitCode;

use crate::control::Mode;
use crate::coordinator::CommonArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Messages per second on each connection.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Message size in bytes (the loadgen message line without its newline; at least ~60).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
}

pub fn main(args: Args) -> ExitCode {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        eprintln!("wsgate-loadgen: --rate must be a positive number");
        return ExitCode::FAILURE;
    }
    let min = crate::msg::min_size(0) - 1;
    if args.size < min {
        eprintln!("wsgate-loadgen: --size must be at least {min} (a message carries its seq and scheduled time)");
        return ExitCode::FAILURE;
    }
    if args.size > 60 * 1024 {
        eprintln!("wsgate-loadgen: --size must be at most 61440 (the gateway's default frame limit is 64 KiB)");
        return ExitCode::FAILURE;
    }
    // The message on the wire is the line without its newline.
    let mode = Mode::Echo { rate_per_conn: args.rate, size: args.size + 1 };
    crate::subscribe::run_and_report(mode, &args.common)
}
