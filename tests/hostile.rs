//! A hostile node over a real websocket: it joins like any agent (so it
//! holds a valid certificate), then sends what a buggy or malicious peer
//! could. Used by the end-to-end tests in `e2e.rs`.

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

pub fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            return out.push(byte);
        }
        out.push(byte | 0x80);
    }
}

/// Every crafted sync message: (what it is, its bytes).
pub fn attacks() -> Vec<(&'static str, Vec<u8>)> {
    let have = |bloom: &[u8]| {
        let mut m = vec![0x42, 0, 0, 1, 0];
        uleb(&mut m, bloom.len() as u64);
        m.extend_from_slice(bloom);
        m.push(0);
        m
    };
    let mut probes = vec![1, 10];
    uleb(&mut probes, u64::from(u32::MAX));
    probes.extend_from_slice(&[0, 0]);
    let bomb = {
        use std::io::Write;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 256 << 20]).unwrap();
        let deflated = enc.finish().unwrap();
        let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
        uleb(&mut chunk, deflated.len() as u64);
        chunk.extend_from_slice(&deflated);
        let mut m = vec![0x42, 0, 0, 0, 1];
        uleb(&mut m, chunk.len() as u64);
        m.extend_from_slice(&chunk);
        m
    };
    let mut heads = vec![0x42];
    uleb(&mut heads, 1 << 40);
    let mut big = vec![0x42, 0, 0, 0, 1];
    uleb(&mut big, 30 << 20);
    big.resize(big.len() + (30 << 20), 0x85);
    vec![
        ("bloom filter with entries and zero bits (remainder by zero)", have(&[5, 0, 7])),
        ("bloom filter with 2^32-1 probes (16 GiB allocation)", have(&probes)),
        ("256 MiB deflate bomb in a compressed change chunk", bomb),
        ("2^40 heads announced", heads),
        ("30 MiB change chunk of garbage", big),
    ]
}
