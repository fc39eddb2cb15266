//! A hostile node over a real websocket: it joins like any agent (so it
//! holds a valid certificate), then sends what a buggy or malicious peer
//! could. Used by the end-to-end tests in `e2e.rs` and `byzantine.rs`.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huskies_engine::identity::{self, PeerHandshake};
use huskies_engine::wire::Envelope;
use huskies_engine::{Cert, Credentials, NodeId};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Peer {
    pub hs: PeerHandshake,
}

impl Peer {
    /// Enrolls `name` at the server with a one-time join token.
    pub fn join(port: u16, token: &str, name: &str) -> Peer {
        let node = NodeId::new(name).unwrap();
        let secret = [name.len() as u8 ^ 0x5a; 32];
        let key = identity::public_key(&secret);
        let mut r = super::http()
            .post(format!("http://127.0.0.1:{port}/api/join"))
            .header("authorization", &format!("Bearer {token}"))
            .send_json(serde_json::json!({ "node": name, "key": identity::hex(&key) }))
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let j: serde_json::Value = r.body_mut().read_json().unwrap();
        let ca = identity::unhex(j["ca"].as_str().unwrap()).unwrap().try_into().unwrap();
        let cert = Cert::from_hex(j["cert"].as_str().unwrap()).unwrap();
        let creds = Credentials { ca, secret, cert, ca_secret: None };
        Peer { hs: PeerHandshake { node, creds, nonce: [0x33; 32] } }
    }

    pub fn hs_clone(&self) -> PeerHandshake {
        PeerHandshake { node: self.hs.node.clone(), creds: self.hs.creds.clone(), nonce: self.hs.nonce }
    }

    /// Opens `/crdt-sync` with our certificate headers, without a handshake.
    pub async fn open(&self, port: u16) -> Result<Ws, String> {
        let mut req = format!("ws://127.0.0.1:{port}/crdt-sync").into_client_request().unwrap();
        req.headers_mut().insert("x-huskies-node", self.hs.node.as_str().parse().unwrap());
        req.headers_mut().insert("x-huskies-cert", self.hs.creds.cert.to_hex().parse().unwrap());
        let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        config.max_message_size = Some(64 << 20);
        config.max_frame_size = Some(64 << 20);
        tokio_tungstenite::connect_async_with_config(req, Some(config), false)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string())
    }

    /// Opens and completes the handshake as ourselves.
    pub async fn connect(&self, port: u16) -> Result<Ws, String> {
        let mut ws = self.open(port).await?;
        self.handshake(&mut ws, &self.hs.hello()).await?;
        Ok(ws)
    }

    /// Sends `hello`, answers the server's hello.
    pub async fn handshake(&self, ws: &mut Ws, hello: &[u8]) -> Result<(), String> {
        ws.send(Message::Binary(hello.to_vec().into())).await.map_err(|e| e.to_string())?;
        while let Some(m) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.map_err(|_| "no hello")? {
            if let Ok(Message::Binary(b)) = m
                && let Ok(Envelope::Hello { .. }) = Envelope::decode(&b, 1 << 16)
            {
                let auth = self.hs.answer(&b).ok_or("bad hello")?;
                return ws.send(Message::Binary(auth.into())).await.map_err(|e| e.to_string());
            }
        }
        Err("closed during the handshake".into())
    }
}

/// Waits until the server closes `ws` (true), or 5 s pass (false).
pub async fn closed(ws: &mut Ws) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// Every crafted sync message: (what it is, its bytes). The bomb inflates
/// to 256 MiB, the garbage is 30 MiB (near the frame cap).
pub fn attacks() -> Vec<(&'static str, Vec<u8>)> {
    huskies_engine::hostile::sync_attacks(256 << 20, 30 << 20).into_iter().map(|a| (a.name, a.message)).collect()
}
