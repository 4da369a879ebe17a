//! `wsgate-loadgen subscribe`: hold N WebSocket subscribers and account for every broadcast message (loss,
//! order, open-loop latency against the feed's scheduled send time). With `--topics K --per-conn M`, the market
//! shape: each connection subscribes to M of the K topics of `feed --topics K` and every topic is checked on its
//! own, optionally under churn or a resume storm. See `docs/loadgen.md`.

use std::process::ExitCode;

use crate::control::Mode;
use crate::coordinator::{self, CommonArgs};
use crate::topics::{Format, TopicPlan};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Topics in the feed (`feed --topics K`); with it, every connection subscribes to --per-conn of them and
    /// each topic is checked on its own. Without it, every connection takes the whole feed (as before topics).
    #[arg(long, value_name = "K")]
    pub topics: Option<u32>,
    /// Topics per connection: connection i takes topics (i·M + j) mod K, j < M (every topic gets subscribers).
    #[arg(long, value_name = "M", default_value_t = 1, requires = "topics")]
    pub per_conn: u32,
    /// Data format: `json` (subprotocol wsgate.v1.json: envelopes with positions, checked against the gateway's
    /// prev/seq chain; needed to resume) or `raw` (the payload only; the feed counter is checked).
    #[arg(long, value_enum, default_value = "json", requires = "topics")]
    pub format: Format,
    /// Churn: each connection drops (no close handshake) once per this many ms and reconnects at once, resuming
    /// every topic from its last position; drops spread evenly over the interval, until the window ends.
    #[arg(long, value_name = "MS", requires = "topics")]
    pub churn_interval: Option<u64>,
    /// Resume storm: this many seconds into the window, every connection drops at once ...
    #[arg(long, value_name = "S", requires = "topics")]
    pub storm_at: Option<f64>,
    /// ... and all reconnect this many ms later, resuming from their last positions (the feed runs on meanwhile,
    /// so each resume replays what it missed).
    #[arg(long, value_name = "MS", default_value_t = 0, requires = "storm_at")]
    pub storm_away: u64,
}

/// Exit status of a topic run whose verdict is "fail" (a hole not covered by a gap notice, a duplicate, …).
const VERDICT_FAILED: u8 = 2;

pub fn main(args: Args) -> ExitCode {
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("wsgate-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match coordinator::run(Mode::Subscribe, &args.common, plan.as_ref()).and_then(|r| r.emit(&args.common).map(|()| r))
    {
        Ok(report) if report.verdict_failed() => ExitCode::from(VERDICT_FAILED),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The topic workload the options describe, checked.
fn plan(args: &Args) -> Result<Option<TopicPlan>, String> {
    let Some(topics) = args.topics else { return Ok(None) };
    if topics == 0 {
        return Err("--topics must be at least 1".into());
    }
    if args.per_conn == 0 || args.per_conn > topics {
        return Err(format!("--per-conn must be between 1 and --topics ({topics}), not {}", args.per_conn));
    }
    let storm_at_ms = match args.storm_at {
        Some(s) if !(s.is_finite() && s >= 0.0 && s < args.common.duration) => {
            return Err(format!("--storm-at must be within the window (0 to {} s), not {s}", args.common.duration))
        }
        Some(s) => Some((s * 1000.0) as u64),
        None => None,
    };
    if args.churn_interval == Some(0) {
        return Err("--churn-interval must be at least 1 ms".into());
    }
    let plan = TopicPlan::new(topics, args.per_conn, args.format)
        .with_churn(args.churn_interval)
        .with_storm(storm_at_ms, args.storm_away);
    if plan.resumes() && plan.format != Format::Json {
        return Err("--churn-interval and --storm-at resume from positions, which only --format json carries".into());
    }
    Ok(Some(plan))
}

/// Runs a measurement, prints the report and writes its files; exit code 1 on any error.
pub fn run_and_report(mode: Mode, args: &CommonArgs) -> ExitCode {
    match coordinator::run(mode, args, None).and_then(|report| report.emit(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
