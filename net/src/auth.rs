//! Join tokens and the cluster key.
//!
//! The server keeps a random cluster key in its data dir. `huskies token
//! create` writes a one-time join token, stored only as a SHA-256 hash with
//! an expiry. An agent presents it once (`POST /api/join`, token in the
//! Authorization header, never in a URL) and receives the cluster key, which
//! it keeps in its own data dir (mode 0600) and presents as a bearer token
//! on every websocket and API call. Tokens never appear in logs.

use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const KEY_FILE: &str = "cluster.key";
const TOKENS_FILE: &str = "join-tokens.json";

pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so timing does not leak the key.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The cluster key stored in `data_dir`, if any.
pub fn read_key(data_dir: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join(KEY_FILE)) {
        Ok(k) => Ok(Some(k.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn write_key(data_dir: &Path, key: &str) -> io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    write_private(&data_dir.join(KEY_FILE), key)
}

/// The server's key, created on first use.
pub fn server_key(data_dir: &Path) -> io::Result<String> {
    if let Some(k) = read_key(data_dir)? {
        return Ok(k);
    }
    let key = random_hex(32)?;
    write_key(data_dir, &key)?;
    Ok(key)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    sha256: String,
    expires_unix: u64,
    used: bool,
}

fn load_tokens(data_dir: &Path) -> io::Result<Vec<StoredToken>> {
    match std::fs::read_to_string(data_dir.join(TOKENS_FILE)) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn store_tokens(data_dir: &Path, tokens: &[StoredToken]) -> io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let json = serde_json::to_string_pretty(tokens).map_err(io::Error::other)?;
    write_private(&data_dir.join(TOKENS_FILE), &json)
}

/// Creates a one-time join token valid for `ttl_secs` from `now_unix`.
pub fn create_join_token(data_dir: &Path, ttl_secs: u64, now_unix: u64) -> io::Result<String> {
    let token = format!("hj_{}", random_hex(24)?);
    let mut tokens = load_tokens(data_dir)?;
    tokens.retain(|t| !t.used && t.expires_unix > now_unix);
    tokens.push(StoredToken { sha256: hash(&token), expires_unix: now_unix + ttl_secs, used: false });
    store_tokens(data_dir, &tokens)?;
    Ok(token)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Redeem {
    Ok,
    Unknown,
    Expired,
    AlreadyUsed,
}

/// Spends a join token. Callers serialise calls (the server holds a lock).
pub fn redeem_join_token(data_dir: &Path, token: &str, now_unix: u64) -> io::Result<Redeem> {
    let mut tokens = load_tokens(data_dir)?;
    let h = hash(token);
    let Some(t) = tokens.iter_mut().find(|t| constant_time_eq(&t.sha256, &h)) else { return Ok(Redeem::Unknown) };
    if t.used {
        return Ok(Redeem::AlreadyUsed);
    }
    if t.expires_unix <= now_unix {
        return Ok(Redeem::Expired);
    }
    t.used = true;
    store_tokens(data_dir, &tokens)?;
    Ok(Redeem::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_are_one_time_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let t = create_join_token(dir.path(), 60, 1_000).unwrap();
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!stored.contains(&t), "tokens are stored hashed");
        assert_eq!(redeem_join_token(dir.path(), "nope", 1_001).unwrap(), Redeem::Unknown);
        assert_eq!(redeem_join_token(dir.path(), &t, 1_001).unwrap(), Redeem::Ok);
        assert_eq!(redeem_join_token(dir.path(), &t, 1_002).unwrap(), Redeem::AlreadyUsed);
        let t2 = create_join_token(dir.path(), 60, 1_000).unwrap();
        assert_eq!(redeem_join_token(dir.path(), &t2, 1_060).unwrap(), Redeem::Expired);
        let k = server_key(dir.path()).unwrap();
        assert_eq!(server_key(dir.path()).unwrap(), k, "the key is stable");
        assert!(constant_time_eq(&k, &k) && !constant_time_eq(&k, "x"));
    }
}
