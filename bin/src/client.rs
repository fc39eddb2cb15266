//! The CLI's HTTP client for the node API.

use std::path::Path;
use std::time::Duration;

use huskies_net::status::{
    AddStory, ApiError, EditStory, JoinRequest, Joined, LogSlice, MoveStory, NodeStatus, Status, StoryDetail,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::error::CliError;

pub struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// `base` is `http://host:port` or `https://host:port`; `key` the
    /// admin key; https verifies against the system roots plus `ca_cert`.
    pub fn new(base: &str, key: Option<String>, ca_cert: Option<&Path>) -> Result<Client, CliError> {
        let mut config =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10)));
        // Reading the system roots costs a few ms: only when TLS is used.
        if base.starts_with("https://") {
            let roots = huskies_net::tls::client_roots(ca_cert).map_err(|e| format!("--ca-cert: {e}"))?;
            let roots: Vec<Certificate<'static>> =
                roots.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
            config = config.tls_config(
                TlsConfig::builder()
                    .provider(TlsProvider::Rustls)
                    .root_certs(RootCerts::new_with_certs(&roots))
                    .build(),
            );
        }
        let agent: ureq::Agent = config.build().into();
        Ok(Client { base: base.trim_end_matches('/').to_owned(), key, agent })
    }

    fn auth(&self, token: Option<&str>) -> String {
        format!("Bearer {}", token.or(self.key.as_deref()).unwrap_or(""))
    }

    fn decode<T: DeserializeOwned>(url: &str, mut resp: ureq::http::Response<ureq::Body>) -> Result<T, CliError> {
        let status = resp.status();
        if status.is_success() {
            resp.body_mut()
                .read_json::<T>()
                .map_err(|e| CliError::BadAnswer { url: url.to_owned(), reason: e.to_string() })
        } else {
            let message = match resp.body_mut().read_json::<ApiError>() {
                Ok(e) => e.error,
                Err(_) => format!("the node answered {status}"),
            };
            Err(CliError::Refused { status: status.as_u16(), message })
        }
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        token: Option<&str>,
    ) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .agent
            .post(&url)
            .header("authorization", &self.auth(token))
            .send_json(body)
            .map_err(|e| CliError::Unreachable { url: url.clone(), source: Box::new(e) })?;
        Self::decode(&url, resp)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .agent
            .get(&url)
            .header("authorization", &self.auth(None))
            .call()
            .map_err(|e| CliError::Unreachable { url: url.clone(), source: Box::new(e) })?;
        Self::decode(&url, resp)
    }

    /// The node's `/metrics`, as Prometheus text.
    pub fn metrics(&self) -> Result<String, CliError> {
        let url = format!("{}/metrics", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .header("authorization", &self.auth(None))
            .call()
            .map_err(|e| CliError::Unreachable { url: url.clone(), source: Box::new(e) })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(CliError::Refused { status: status.as_u16(), message: format!("{url} answered {status}") });
        }
        resp.body_mut().read_to_string().map_err(|e| CliError::BadAnswer { url, reason: e.to_string() })
    }

    pub fn status(&self) -> Result<Status, CliError> {
        self.get("/api/status")
    }

    pub fn queue(&self) -> Result<huskies_net::status::Queue, CliError> {
        self.get("/api/queue")
    }

    pub fn add_story(&self, story: &AddStory) -> Result<String, CliError> {
        let v: serde_json::Value = self.post("/api/stories", story, None)?;
        Ok(v["id"].as_str().unwrap_or_default().to_owned())
    }

    pub fn story(&self, id: &str) -> Result<StoryDetail, CliError> {
        self.get(&format!("/api/stories/{id}"))
    }

    pub fn edit_story(&self, id: &str, edit: &EditStory) -> Result<serde_json::Value, CliError> {
        self.post(&format!("/api/stories/{id}/edit"), edit, None)
    }

    pub fn remove_story(&self, id: &str) -> Result<serde_json::Value, CliError> {
        self.post(&format!("/api/stories/{id}/remove"), &serde_json::json!({}), None)
    }

    pub fn retry_story(&self, id: &str) -> Result<serde_json::Value, CliError> {
        self.post(&format!("/api/stories/{id}/retry"), &serde_json::json!({}), None)
    }

    pub fn log(&self, id: &str, stage: Option<&str>, offset: u64) -> Result<LogSlice, CliError> {
        let stage = stage.map(|s| format!("&stage={s}")).unwrap_or_default();
        self.get(&format!("/api/logs/{id}?offset={offset}{stage}"))
    }

    pub fn move_story(&self, id: &str, stage: &str) -> Result<serde_json::Value, CliError> {
        self.post(&format!("/api/stories/{id}/move"), &MoveStory { stage: stage.to_owned() }, None)
    }

    pub fn join(&self, token: &str, node: &str, key_hex: &str) -> Result<Joined, CliError> {
        self.post("/api/join", &JoinRequest { node: node.to_owned(), key: key_hex.to_owned() }, Some(token))
    }

    pub fn nodes(&self) -> Result<Vec<NodeStatus>, CliError> {
        self.get("/api/nodes")
    }

    pub fn revoke(&self, node: &str) -> Result<serde_json::Value, CliError> {
        self.post(&format!("/api/nodes/{node}/revoke"), &serde_json::json!({}), None)
    }

    pub fn healthy(&self) -> bool {
        self.agent.get(format!("{}/healthz", self.base)).call().is_ok_and(|r| r.status().is_success())
    }
}

/// `ws://host:port/crdt-sync` → `http://host:port`.
pub fn http_base(ws_url: &str) -> Result<String, String> {
    let rest = ws_url
        .strip_prefix("ws://")
        .map(|r| ("http://", r))
        .or_else(|| ws_url.strip_prefix("wss://").map(|r| ("https://", r)))
        .ok_or_else(|| format!("{ws_url:?} is not a ws:// or wss:// URL"))?;
    let host = rest.1.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{ws_url:?} has no host"));
    }
    Ok(format!("{}{host}", rest.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_base_from_ws() {
        assert_eq!(super::http_base("ws://10.0.0.1:3001/crdt-sync").unwrap(), "http://10.0.0.1:3001");
        assert!(super::http_base("http://x").is_err());
        assert!(super::http_base("ws:///crdt-sync").is_err());
    }
}
