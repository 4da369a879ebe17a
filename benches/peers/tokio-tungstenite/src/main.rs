//! BENCHMARK BASELINE ONLY. The idiomatic tokio + tokio-tungstenite broadcast server, as most people write it, so
//! wsgate can be measured against it with the same load generator. Not part of wsgate; not for production.
//!
//! - One `tokio::sync::broadcast` channel of `Utf8Bytes` (capacity 65536): each feed line is validated as UTF-8 once
//!   and the `Bytes`-backed payload is cloned in O(1) for every client. A receiver that falls more than the
//!   capacity behind skips what it missed, with a log line.
//! - Per connection, the stream is `split()`: the reader runs in its own task (tungstenite answers pings and closes
//!   as it reads); the connection task writes. This is the faster of the two usual shapes: reading inside a
//!   `select!` makes tungstenite zero-fill its 128 KiB read buffer on every read attempt.
//! - Every message is written with a plain `SinkExt::send` (write + flush: one `send()` per message per client), the
//!   usual choice; no `feed`-then-`flush` batching. Default `WebSocketConfig` (128 KiB read and write buffers).

#[path = "../../common/common.rs"]
mod common;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const NAME: &str = "peer-tokio-tungstenite";
/// Broadcast channel capacity (messages).
const FEED_CAPACITY: usize = 65536;
/// Messages to echo queued from a connection's reader to its writer.
const ECHO_QUEUE: usize = 256;

fn main() {
    let args = common::parse_args(NAME);
    common::raise_nofile_limit();
    common::runtime(args.threads).block_on(serve(args));
}

async fn serve(args: common::Args) {
    let listener = common::bind(args.listen).unwrap_or_else(|e| {
        eprintln!("{NAME}: cannot listen on {}: {e}", args.listen);
        std::process::exit(1)
    });
    let (feed, _) = broadcast::channel::<Utf8Bytes>(FEED_CAPACITY);
    if let Some(upstream) = args.upstream {
        let feed = feed.clone();
        tokio::spawn(common::run_upstream(upstream, move |line| match Utf8Bytes::try_from(line) {
            // No subscribers is not an error.
            Ok(text) => drop(feed.send(text)),
            Err(_) => eprintln!("upstream: dropped a line that is not valid UTF-8"),
        }));
    }
    common::announce(&listener).expect("stdout");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                common::prepare(&stream);
                tokio::spawn(connection(stream, feed.clone(), args.echo));
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Only `GET /ws` is upgraded; anything else gets `404`. (The signature is tungstenite's `Callback`.)
#[allow(clippy::result_large_err)]
fn only_ws(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == "/ws" {
        Ok(response)
    } else {
        let mut refusal = ErrorResponse::new(Some("not found\n".to_string()));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        Err(refusal)
    }
}

async fn connection(stream: TcpStream, feed: broadcast::Sender<Utf8Bytes>, echo: bool) {
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, only_ws).await else { return };
    let mut lines = feed.subscribe();
    let (mut sink, mut source) = ws.split();

    // The reader: its own task. Pongs and the close reply are queued and flushed by tungstenite itself.
    let (echo_tx, mut echo_rx) = mpsc::channel::<Message>(ECHO_QUEUE);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            if echo && (message.is_text() || message.is_binary()) && echo_tx.send(message).await.is_err() {
                break;
            }
        }
        // Dropping `echo_tx` tells the writer that the connection is finished.
    });

    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(skipped)) => eprintln!("client lagged: skipped {skipped} messages"),
                Err(RecvError::Closed) => break,
            },
            message = echo_rx.recv() => match message {
                Some(message) => {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    reader.abort();
}
