//! `wsgate`: run the gateway until SIGINT/SIGTERM, then close every client with 1001 and exit 0.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc;

use signal_hook::consts::{SIGINT, SIGTERM};
use wsgate::config::{Args, Config};
use wsgate::shard::Gateway;

enum Stop {
    Signal(i32),
    LoopExited,
}

fn main() -> ExitCode {
    let args = match Args::parse_from(std::env::args_os()) {
        Ok(Ok(args)) => args,
        Ok(Err(e)) => {
            eprintln!("wsgate: {e}");
            return ExitCode::from(2);
        }
        Err(e) => e.exit(), // --help, --version, or a malformed command line
    };
    let cfg = match Config::load(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    let check_io = args.check_io;
    let filter = match tracing_subscriber::EnvFilter::try_new(&cfg.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wsgate: invalid --log-level {:?}: {e}", cfg.log_level);
            return ExitCode::from(2);
        }
    };
    if check_io {
        return match wsgate::reactor::uring::probe(&cfg.uring()) {
            Ok(()) => {
                println!("io_uring: available");
                ExitCode::SUCCESS
            }
            Err(reason) => {
                println!("io_uring: unavailable: {reason}");
                ExitCode::from(3)
            }
        };
    }
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    let (stop_tx, stop_rx) = mpsc::channel();
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsgate: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal_tx = stop_tx.clone();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = signal_tx.send(Stop::Signal(sig));
        }
    });

    let gateway = match Gateway::start(&cfg, move || {
        let _ = stop_tx.send(Stop::LoopExited);
    }) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(listen = %cfg.listen, error = %e, "cannot start the gateway");
            return ExitCode::FAILURE;
        }
    };
    // Scripts and tests read these lines to find the ports (the listen address may use port 0).
    let mut out = std::io::stdout().lock();
    // Before the listening line, which tells scripts the gateway is up.
    if let Some(admin) = gateway.admin_addr() {
        let _ = writeln!(out, "wsgate: admin listening on http://{admin}");
    }
    let _ = writeln!(out, "wsgate: listening on ws://{}/ws (io: {})", gateway.local_addr(), gateway.io_backend());
    if let Some(ingest) = gateway.ingest_addr() {
        let _ = writeln!(out, "wsgate: ingest listening on {ingest}");
    }
    let _ = out.flush();
    drop(out);

    let code = match stop_rx.recv() {
        Ok(Stop::Signal(sig)) => {
            tracing::info!(signal = sig, "stopping");
            ExitCode::SUCCESS
        }
        Ok(Stop::LoopExited) | Err(_) => {
            tracing::error!("a loop thread exited unexpectedly: stopping");
            ExitCode::FAILURE
        }
    };
    gateway.shutdown();
    code
}
