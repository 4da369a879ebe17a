//! `wsgate`: run the gateway until told to stop, drain its clients, exit 0.
//!
//! - SIGTERM / SIGINT: stop accepting, close every client with 1001 spread over `shutdown_spread`, wait for
//!   their close handshakes up to `shutdown_timeout`, exit.
//! - SIGUSR1: the same with 1012 (Service Restart): another process serves the address (e.g. a successor
//!   started with `SO_REUSEPORT` on the same port).
//! - `handoff_socket`: a successor started with the same path takes over the listening sockets, then this
//!   process drains with 1012 (`wsgate::handoff`).
//! - systemd socket activation (`LISTEN_FDS`): serve the passed sockets instead of binding.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use wsgate::config::{Args, Config};
use wsgate::shard::{Gateway, Listeners, Origin, StopMode};

enum Stop {
    Signal(i32),
    LoopExited,
    /// A successor connected to the handoff socket.
    Handoff(std::os::unix::net::UnixStream),
}

fn main() -> ExitCode {
    // Before any thread starts: this reads and clears LISTEN_* in the environment.
    let activation = match wsgate::reactor::activation::take() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wsgate: socket activation: {e}");
            return ExitCode::from(2);
        }
    };
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
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsgate: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal_tx = stop_tx.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(Stop::Signal(sig)).is_err() {
                break;
            }
        }
    });

    // Where the listening sockets come from: the process at the handoff socket, else systemd, else bind.
    let mut takeover = None;
    let mut source = Listeners::Bind;
    if let Some(path) = &cfg.handoff_socket {
        match wsgate::handoff::request(path) {
            Ok(Some(mut t)) => {
                tracing::info!(path = %path.display(), sockets = t.listeners.len(), "took over the listening sockets");
                let ws = std::mem::take(&mut t.listeners);
                source = Listeners::Inherited { ws, ingest: t.ingest.take(), from: Origin::Handoff };
                takeover = Some(t);
            }
            Ok(None) => tracing::info!(path = %path.display(), "no running process at the handoff socket: binding"),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "handoff failed: the running process keeps serving");
                return ExitCode::FAILURE;
            }
        }
    }
    if !activation.listeners.is_empty() {
        if takeover.is_some() {
            tracing::warn!("both a handoff and systemd passed sockets: serving the handed-over ones");
        } else {
            tracing::info!(sockets = activation.listeners.len(), "socket activation");
            source =
                Listeners::Inherited { ws: activation.listeners, ingest: activation.ingest, from: Origin::Systemd };
        }
    } else if activation.ingest.is_some() {
        eprintln!("wsgate: socket activation passed an ingest socket but no WebSocket socket");
        return ExitCode::from(2);
    }

    let loop_exit_tx = stop_tx.clone();
    let mut gateway = match Gateway::start(&cfg, source, move || {
        let _ = loop_exit_tx.send(Stop::LoopExited);
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
    let scheme = if gateway.tls_on() { "wss" } else { "ws" };
    let _ = writeln!(out, "wsgate: listening on {scheme}://{}/ws (io: {})", gateway.local_addr(), gateway.io_backend());
    if let Some(ingest) = gateway.ingest_addr() {
        let _ = writeln!(out, "wsgate: ingest listening on {ingest}");
    }
    let _ = out.flush();
    drop(out);

    if let Some(t) = takeover {
        // We serve now: the old process stops accepting and drains (1012). If it went away meanwhile, nothing
        // is lost: we hold its sockets.
        match t.confirm() {
            Ok(()) => tracing::info!("the previous process is draining"),
            Err(e) => tracing::warn!(error = %e, "the previous process did not confirm its drain"),
        }
    }
    let mut handoff_listener = None;
    if let Some(path) = cfg.handoff_socket.clone() {
        match wsgate::handoff::listen(&path) {
            Ok(handoff) => {
                let listener = match handoff.listener.try_clone() {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot use the handoff socket: stopping");
                        gateway.shutdown();
                        return ExitCode::FAILURE;
                    }
                };
                handoff_listener = Some(handoff);
                let handoff_tx = stop_tx.clone();
                std::thread::Builder::new()
                    .name("wsgate-handoff".into())
                    .spawn(move || {
                        for sock in listener.incoming() {
                            match sock {
                                Ok(sock) => {
                                    if handoff_tx.send(Stop::Handoff(sock)).is_err() {
                                        break;
                                    }
                                }
                                Err(e) => tracing::warn!(error = %e, "handoff socket: accept failed"),
                            }
                        }
                    })
                    .map_err(|e| tracing::error!(error = %e, "cannot start the handoff thread"))
                    .ok();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen on the handoff socket: stopping");
                gateway.shutdown();
                return ExitCode::FAILURE;
            }
        }
    }
    drop(stop_tx);

    let code = loop {
        match stop_rx.recv() {
            Ok(Stop::Signal(SIGUSR1)) => {
                if let Some(h) = &handoff_listener {
                    h.unlink_if_ours();
                }
                tracing::info!("SIGUSR1: draining for a restart (1012)");
                gateway.begin_stop(StopMode::Restart);
                break ExitCode::SUCCESS;
            }
            Ok(Stop::Signal(SIGHUP)) => match gateway.reload_tls() {
                None => tracing::info!("SIGHUP: nothing to reload (TLS is off)"),
                Some(Ok(())) => tracing::info!(
                    "SIGHUP: TLS certificate reloaded (and tls_client_ca, when set): new connections get them"
                ),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed: the old certificate and client CAs stay")
                }
            },
            Ok(Stop::Signal(sig)) => {
                if let Some(h) = &handoff_listener {
                    h.unlink_if_ours();
                }
                tracing::info!(signal = sig, "stopping");
                break ExitCode::SUCCESS;
            }
            Ok(Stop::Handoff(sock)) => {
                let Some((ws, ingest)) = gateway.handoff_fds() else { continue };
                match wsgate::handoff::serve(sock, &ws, ingest) {
                    Ok(()) => {
                        tracing::info!(sockets = ws.len(), "handed the listening sockets over: draining (1012)");
                        gateway.begin_stop(StopMode::Restart);
                        break ExitCode::SUCCESS;
                    }
                    Err(e) => tracing::warn!(error = %e, "handoff abandoned: still serving"),
                }
            }
            Ok(Stop::LoopExited) | Err(_) => {
                tracing::error!("a loop thread exited unexpectedly: stopping");
                break ExitCode::FAILURE;
            }
        }
    };
    gateway.shutdown();
    code
}
