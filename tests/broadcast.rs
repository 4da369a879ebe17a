//! Fan-out at scale: 1,000 independent (tungstenite) clients each receive all 10,000 published lines, in order,
//! none lost, none duplicated.
//!
//! Clients are spread over a few threads; each thread owns its clients' non-blocking sockets and waits for any
//! of them with poll(2), so the test does not need 1,000 threads or spin.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Gateway;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// The whole test (connect, publish, receive) must finish within this.
const DEADLINE: Duration = Duration::from_secs(60);

/// Raises the soft open-file limit so that 1,000 client sockets fit (the gateway raises its own).
fn raise_nofile_limit(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want as libc::rlim_t {
        lim.rlim_cur = lim.rlim_max.min(want.max(4096) as libc::rlim_t);
        // SAFETY: setrlimit reads the rlimit we own.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "{}", std::io::Error::last_os_error());
    }
    assert!(lim.rlim_cur >= want as libc::rlim_t, "open-file limit {} < {want} needed by this test", lim.rlim_cur);
}

/// `{"seq":N,...}` → N.
fn seq_of(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("{\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

fn line(seq: u64) -> String {
    format!(
        "{{\"seq\":{seq},\"sym\":\"BTC-USD\",\"px\":{}.{:02},\"qty\":{}}}\n",
        60_000 + seq % 977,
        seq % 100,
        seq % 13 + 1
    )
}

struct Client {
    id: usize,
    ws: WebSocket<TcpStream>,
    next: u64,
    lines: u64,
}

impl Client {
    /// Reads every message available without blocking; checks each is the next sequence number.
    fn drain(&mut self) -> Result<(), String> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let seq = seq_of(&t).ok_or_else(|| format!("client {}: unexpected message {t:?}", self.id))?;
                    if seq != self.next {
                        return Err(format!(
                            "client {}: expected seq {} but got {seq} ({})",
                            self.id,
                            self.next,
                            if seq < self.next { "duplicate or reordered" } else { "lost messages" }
                        ));
                    }
                    self.next += 1;
                    if self.next > self.lines {
                        return Err(format!("client {}: more than {} messages", self.id, self.lines));
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => {
                    return Err(format!("client {} after {} messages: unexpected {other:?}", self.id, self.next))
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("client {} after {} messages: {e}", self.id, self.next)),
            }
        }
    }
}

/// Connects `n` clients, reports readiness, then receives until each client has all `lines` messages.
fn worker(
    first_id: usize,
    n: usize,
    lines: u64,
    addr: SocketAddr,
    ready: mpsc::Sender<Result<(), String>>,
    deadline: Instant,
) -> Result<(), String> {
    let url = format!("ws://{addr}/ws");
    let mut clients = Vec::with_capacity(n);
    for id in first_id..first_id + n {
        let connected = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("client {id}: connect: {e}"))
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                tungstenite::client(url.as_str(), s).map_err(|e| format!("client {id}: handshake: {e}"))
            });
        match connected {
            Ok((ws, _)) => clients.push(Client { id, ws, next: 0, lines }),
            Err(e) => {
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
        }
    }
    for c in &clients {
        c.ws.get_ref().set_nonblocking(true).unwrap();
    }
    let _ = ready.send(Ok(()));

    let mut pending: Vec<Client> = clients;
    let mut done: Vec<Client> = Vec::with_capacity(n);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(n);
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            let min = pending.iter().map(|c| c.next).min().unwrap();
            let max = pending.iter().map(|c| c.next).max().unwrap();
            return Err(format!(
                "deadline: {} of {n} clients (ids {first_id}..) still incomplete, having received between {min} and {max} of {lines}",
                pending.len()
            ));
        }
        fds.clear();
        fds.extend(pending.iter().map(|c| libc::pollfd {
            fd: c.ws.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: fds is a valid array of fds.len() pollfd structs that lives across the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        for (c, fd) in pending.iter_mut().zip(&fds) {
            if fd.revents != 0 {
                c.drain()?;
            }
        }
        let mut i = 0;
        while i < pending.len() {
            if pending[i].next == lines {
                done.push(pending.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }
    // Nothing may follow the last line: one more look at every client.
    for c in &mut done {
        c.drain()?;
    }
    Ok(())
}

/// Starts a gateway with `gateway_threads` loops, connects `clients` clients spread over `client_threads`
/// threads, waits until `/healthz` counts them all, publishes `lines` lines and checks every client got them.
fn run_broadcast(clients: usize, client_threads: usize, gateway_threads: usize, lines: u64) {
    assert_eq!(clients % client_threads, 0);
    raise_nofile_limit(clients as u64 + 256);
    let gw = Gateway::start(&["--ingest", "127.0.0.1:0", "--threads", &gateway_threads.to_string()]);
    let start = Instant::now();
    let deadline = start + DEADLINE;

    let (ready_tx, ready_rx) = mpsc::channel();
    let per = clients / client_threads;
    let workers: Vec<_> = (0..client_threads)
        .map(|t| {
            let ready = ready_tx.clone();
            let addr = gw.ws_addr;
            std::thread::Builder::new()
                .name(format!("clients-{t}"))
                .spawn(move || worker(t * per, per, lines, addr, ready, deadline))
                .unwrap()
        })
        .collect();
    drop(ready_tx);
    for _ in 0..client_threads {
        match ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("a client could not connect: {e}"),
            Err(e) => panic!("clients did not all connect within {DEADLINE:?}: {e}"),
        }
    }
    let connected_after = start.elapsed();
    gw.wait_connections(&format!(">= {clients}"), deadline.saturating_duration_since(Instant::now()), |n| {
        n >= clients as u64
    });

    let mut publisher = gw.publisher();
    let mut batch = String::with_capacity(32 * 1024);
    for seq in 0..lines {
        batch.push_str(&line(seq));
        if batch.len() >= 16 * 1024 {
            common::write_all(&mut publisher, batch.as_bytes());
            batch.clear();
        }
    }
    common::write_all(&mut publisher, batch.as_bytes());
    let published_after = start.elapsed();

    let mut failures = Vec::new();
    for (t, w) in workers.into_iter().enumerate() {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("worker {t}: {e}")),
            Err(_) => failures.push(format!("worker {t} panicked")),
        }
    }
    assert!(failures.is_empty(), "broadcast failures:\n{}", failures.join("\n"));
    eprintln!(
        "{clients} clients ({gateway_threads} gateway threads) connected in {connected_after:?}, {lines} lines published by {published_after:?}, all received by {:?}",
        start.elapsed()
    );
    drop(publisher);
}

#[test]
fn broadcast_1000_clients_receive_10000_lines_in_order() {
    run_broadcast(1_000, 8, 2, 10_000);
}

#[test]
fn broadcast_order_holds_with_one_and_with_four_loop_threads() {
    run_broadcast(40, 2, 1, 2_000);
    run_broadcast(40, 2, 4, 2_000);
}
