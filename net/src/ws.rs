//! Websocket plumbing: the pumps between a socket and the node task, for
//! accepted (axum) and dialed (tokio-tungstenite) connections alike.

use axum::extract::ws::{Message as AxMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use huskies_engine::{ConnId, Input};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as TMessage;

use crate::node::NodeMsg;

/// Headers a dialing node presents at the websocket upgrade.
pub const NODE_HEADER: &str = "x-huskies-node";
pub const CERT_HEADER: &str = "x-huskies-cert";

/// Frames queued to one peer before it counts as too slow and is dropped.
pub const OUTBOX_FRAMES: usize = 1_024;

/// A websocket frame as the pump sees it, whichever library parsed it.
enum Frame {
    Binary(Vec<u8>),
    /// Ping, pong, raw frames: the library answers them.
    Control,
    /// Not part of the protocol.
    Text,
    Close,
}

/// How one library's messages map to and from the pump's frames.
struct Codec<M> {
    binary: fn(Vec<u8>) -> M,
    frame: fn(M) -> Frame,
}

/// Pumps one socket (its two halves) until either side ends it: frames
/// from the engine out, binary messages in, and `PeerClosed` at the end.
async fn pump<M, E>(
    mut tx: impl futures_util::Sink<M> + Unpin,
    mut rx: impl futures_util::Stream<Item = Result<M, E>> + Unpin,
    conn: ConnId,
    mut out: mpsc::Receiver<Vec<u8>>,
    node: mpsc::Sender<NodeMsg>,
    codec: Codec<M>,
) {
    let Codec { binary, frame } = codec;
    let message = |bytes| NodeMsg::Input(Input::PeerMessage { conn, bytes });
    loop {
        tokio::select! {
            bytes = out.recv() => match bytes {
                Some(bytes) => if tx.send(binary(bytes)).await.is_err() { break },
                // The engine hung up.
                None => { let _ = tx.close().await; return; }
            },
            msg = rx.next() => match msg.map(|m| m.map(frame)) {
                Some(Ok(Frame::Binary(b))) => if node.send(message(b)).await.is_err() { return },
                Some(Ok(Frame::Control)) => {}
                // Hand the engine something it rejects, so the peer is
                // disconnected with a reason.
                Some(Ok(Frame::Text)) => { let _ = node.send(message(vec![0])).await; }
                Some(Ok(Frame::Close)) | Some(Err(_)) | None => break,
            },
        }
    }
    let _ = node.send(NodeMsg::Input(Input::PeerClosed { conn })).await;
}

/// Pumps an accepted (axum) socket until either side ends it.
pub async fn pump_accepted(socket: WebSocket, conn: ConnId, out: mpsc::Receiver<Vec<u8>>, node: mpsc::Sender<NodeMsg>) {
    let (tx, rx) = socket.split();
    let binary = |b: Vec<u8>| AxMessage::Binary(b.into());
    let frame = |m| match m {
        AxMessage::Binary(b) => Frame::Binary(b.to_vec()),
        AxMessage::Ping(_) | AxMessage::Pong(_) => Frame::Control,
        AxMessage::Text(_) => Frame::Text,
        AxMessage::Close(_) => Frame::Close,
    };
    pump(tx, rx, conn, out, node, Codec { binary, frame }).await;
}

/// Pumps a dialed (tokio-tungstenite) socket until either side ends it.
pub async fn pump_dialed<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
    conn: ConnId,
    out: mpsc::Receiver<Vec<u8>>,
    node: mpsc::Sender<NodeMsg>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (tx, rx) = socket.split();
    let binary = |b: Vec<u8>| TMessage::Binary(b.into());
    let frame = |m| match m {
        TMessage::Binary(b) => Frame::Binary(b.to_vec()),
        TMessage::Ping(_) | TMessage::Pong(_) | TMessage::Frame(_) => Frame::Control,
        TMessage::Text(_) => Frame::Text,
        TMessage::Close(_) => Frame::Close,
    };
    pump(tx, rx, conn, out, node, Codec { binary, frame }).await;
}

/// What every dial of a node presents and enforces.
pub struct Dialer {
    /// `x-huskies-node` and `x-huskies-cert`.
    pub identity: (String, String),
    pub max_message_bytes: usize,
    /// Verifies `wss://` peers.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
}

/// Dials `address` presenting our node id and certificate (checked at the
/// upgrade; the key itself is proven in the handshake that follows);
/// reports `Connected` or `PeerClosed`.
pub async fn dial(dialer: std::sync::Arc<Dialer>, address: String, conn: ConnId, node: mpsc::Sender<NodeMsg>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (node_id, cert) = &dialer.identity;
    let request = match address.as_str().into_client_request() {
        Ok(mut r) => match (node_id.parse(), cert.parse()) {
            (Ok(n), Ok(c)) => {
                r.headers_mut().insert(NODE_HEADER, n);
                r.headers_mut().insert(CERT_HEADER, c);
                r
            }
            _ => return closed(&node, conn).await,
        },
        Err(e) => {
            tracing::warn!(%address, error = %e, "bad peer address");
            return closed(&node, conn).await;
        }
    };
    let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    config.max_message_size = Some(dialer.max_message_bytes);
    config.max_frame_size = Some(dialer.max_message_bytes);
    // Used for wss:// only; ws:// stays plain.
    let connector = tokio_tungstenite::Connector::Rustls(dialer.tls.clone());
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(connector));
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok((socket, _))) => {
            let (out_tx, out_rx) = mpsc::channel(OUTBOX_FRAMES);
            if node.send(NodeMsg::Connected { conn, out: out_tx }).await.is_ok() {
                pump_dialed(socket, conn, out_rx, node).await;
            }
        }
        Ok(Err(e)) => {
            // A certificate the roots do not vouch for lands here too:
            // worth a warning, it will not fix itself.
            if matches!(e, tokio_tungstenite::tungstenite::Error::Tls(_)) {
                tracing::warn!(%address, error = %e, "TLS to peer failed");
            } else {
                tracing::debug!(%address, error = %e, "dial failed");
            }
            closed(&node, conn).await
        }
        Err(_) => {
            tracing::debug!(%address, "dial timed out");
            closed(&node, conn).await
        }
    }
}

async fn closed(node: &mpsc::Sender<NodeMsg>, conn: ConnId) {
    let _ = node.send(NodeMsg::Input(Input::PeerClosed { conn })).await;
}
