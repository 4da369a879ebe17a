//! BENCHMARK BASELINE ONLY. The same broadcast server as `peer-tokio-tungstenite`, on fastwebsockets with a hyper 1
//! upgrade, written the fastest reasonable way the library allows, so wsgate can be measured against it with the same
//! load generator. Not part of wsgate; not for production.
//!
//! - One `tokio::sync::broadcast` channel of `Bytes` (capacity 65536): each feed line is checked as UTF-8 once and
//!   every client writes it from the shared buffer (`Payload::Borrowed`), no copy per client beyond the frame
//!   encoding. A receiver that falls more than the capacity behind skips what it missed, with a log line.
//! - `hyper::server::conn::http1` serves the request; `fastwebsockets::upgrade::upgrade` answers `101` and the
//!   socket is handed to a task of its own. Only `GET /ws` is upgraded (`404` otherwise, `400` for a bad upgrade).
//! - The socket is split (`unstable-split`, over `tokio::io::split`), because fastwebsockets' `read_frame` is not
//!   cancel-safe and so cannot sit in a `select!` with the feed: a reader task runs a `FragmentCollectorRead`
//!   (defragments, validates UTF-8) and passes its obligated sends (auto-pong, auto-close reply) and the echoes to
//!   the writer over a channel; the connection task writes.
//! - Writes: `WebSocketWrite::write_frame` per message, `set_auto_pong(true)`, `set_auto_close(true)`,
//!   `set_writev(true)` (the defaults, set explicitly). Frames up to the writev threshold (1024 B) are encoded into
//!   the library's reusable buffer and leave in one `write()`; larger ones go out with `writev` (head + payload, no
//!   copy). One `write()` per message per client: the library has no batching of its own, and none is added here.

#[path = "../../common/common.rs"]
mod common;

use std::convert::Infallible;

use bytes::Bytes;
use fastwebsockets::{upgrade, FragmentCollectorRead, Frame, OpCode, Payload, WebSocket};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

const NAME: &str = "peer-fastwebsockets";
/// Broadcast channel capacity (messages).
const FEED_CAPACITY: usize = 65536;
/// Frames (echoes, pongs, the close reply) queued from a connection's reader to its writer.
const REPLY_QUEUE: usize = 256;

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
    let (feed, _) = broadcast::channel::<Bytes>(FEED_CAPACITY);
    if let Some(upstream) = args.upstream {
        let feed = feed.clone();
        tokio::spawn(common::run_upstream(upstream, move |line| {
            if std::str::from_utf8(&line).is_ok() {
                // No subscribers is not an error.
                drop(feed.send(line));
            } else {
                eprintln!("upstream: dropped a line that is not valid UTF-8");
            }
        }));
    }
    common::announce(&listener).expect("stdout");
    let echo = args.echo;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                common::prepare(&stream);
                let feed = feed.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handshake(request, feed.clone(), echo));
                    // Errors here are clients that went away before or during the handshake.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn refusal(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

async fn handshake(
    mut request: Request<Incoming>,
    feed: broadcast::Sender<Bytes>,
    echo: bool,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if request.uri().path() != "/ws" {
        return Ok(refusal(StatusCode::NOT_FOUND));
    }
    if !upgrade::is_upgrade_request(&request) {
        return Ok(refusal(StatusCode::UPGRADE_REQUIRED));
    }
    let Ok((response, upgraded)) = upgrade::upgrade(&mut request) else {
        return Ok(refusal(StatusCode::BAD_REQUEST));
    };
    tokio::spawn(async move {
        if let Ok(ws) = upgraded.await {
            connection(ws, feed, echo).await;
        }
    });
    Ok(response)
}

async fn connection(mut ws: WebSocket<TokioIo<Upgraded>>, feed: broadcast::Sender<Bytes>, echo: bool) {
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    ws.set_writev(true);
    let mut lines = feed.subscribe();
    let (read, mut write) = ws.split(tokio::io::split);

    // The reader: its own task; what it must send goes to the writer.
    let (reply_tx, mut reply_rx) = mpsc::channel::<Frame<'static>>(REPLY_QUEUE);
    let reader = tokio::spawn(async move {
        let mut read = FragmentCollectorRead::new(read);
        let obligated_tx = reply_tx.clone();
        let mut obligated = move |frame: Frame<'static>| {
            let obligated_tx = obligated_tx.clone();
            async move { obligated_tx.send(frame).await.map_err(|_| "writer gone") }
        };
        while let Ok(frame) = read.read_frame(&mut obligated).await {
            // On a close, the reply has already been queued by `obligated`.
            if frame.opcode == OpCode::Close {
                break;
            }
            let data = matches!(frame.opcode, OpCode::Text | OpCode::Binary);
            if echo && data && reply_tx.send(frame).await.is_err() {
                break;
            }
        }
        // Dropping the senders tells the writer that the connection is finished (after what is queued).
    });

    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Ok(text) => {
                    if write.write_frame(Frame::text(Payload::Borrowed(&text))).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(skipped)) => eprintln!("client lagged: skipped {skipped} messages"),
                Err(RecvError::Closed) => break,
            },
            frame = reply_rx.recv() => match frame {
                Some(frame) => {
                    let close = frame.opcode == OpCode::Close;
                    if write.write_frame(frame).await.is_err() || close {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    reader.abort();
}
