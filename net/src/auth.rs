//! Credentials on disk: the cluster CA, node keys, the admin key, join
//! tokens.
//!
//! The server keeps the cluster CA secret (`ca.key`) and the admin key
//! (`admin.key`, the bearer for the HTTP API and CLI) in its data dir.
//! `huskies token create` writes a one-time join token, stored only as a
//! SHA-256 hash with an expiry. A joining agent makes its own ed25519 key,
//! presents the token once (`POST /api/join`, token in the Authorization
//! header, never in a URL) with its node id and public key, and gets back
//! the CA's certificate of that key. It keeps its secret and certificate in
//! `node.json` (mode 0600); it never learns the CA secret or the admin key,
//! only the admin key's SHA-256 so that its own API can check the admin.
//! Secrets never appear in logs.

use std::io;
use std::path::Path;

use huskies_engine::Credentials;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const KEY_FILE: &str = "admin.key";
const CA_FILE: &str = "ca.key";
const NODE_FILE: &str = "node.json";
const TOKENS_FILE: &str = "join-tokens.json";

pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn random_32() -> io::Result<[u8; 32]> {
    let mut buf = [0u8; 32];
    fill_random(&mut buf)?;
    Ok(buf)
}

/// The operating system's randomness (`getrandom`).
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(|e| io::Error::other(format!("no randomness from the OS: {e}")))
}

/// SHA-256 of a secret, hex: what is stored instead of the secret.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn bad_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Creates `dir` (and parents) readable by the owner only.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The cluster CA secret in the server's data dir, created on first use.
pub fn server_ca(data_dir: &Path) -> io::Result<[u8; 32]> {
    let path = data_dir.join(CA_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => huskies_engine::identity::unhex(s.trim())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad_data(format!("{} is not a 32-byte hex key", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = random_32()?;
            private_dir(data_dir)?;
            write_private(&path, &huskies_engine::identity::hex(&secret))?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// A node's credentials as kept in its data dir.
#[derive(Serialize, Deserialize)]
struct NodeFile {
    node: String,
    secret: String,
    cert: String,
    ca: String,
    /// SHA-256 of the admin key, so this node's API can check the admin.
    admin_sha256: String,
}

/// A node's stored credentials and the admin key hash, if it has joined.
pub fn load_node(data_dir: &Path) -> io::Result<Option<(huskies_engine::NodeId, Credentials, String)>> {
    use huskies_engine::identity::unhex;
    let path = data_dir.join(NODE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: &str| bad_data(format!("{}: bad {what}", path.display()));
    let f: NodeFile = serde_json::from_str(&text).map_err(|e| bad_data(format!("{}: {e}", path.display())))?;
    let node = huskies_engine::NodeId::new(f.node).map_err(|_| bad("node id"))?;
    let key32 = |s: &str| unhex(s).and_then(|b| <[u8; 32]>::try_from(b).ok());
    let secret = key32(&f.secret).ok_or_else(|| bad("secret"))?;
    let ca = key32(&f.ca).ok_or_else(|| bad("ca"))?;
    let cert = huskies_engine::Cert::from_hex(&f.cert).ok_or_else(|| bad("cert"))?;
    if cert.key != huskies_engine::identity::public_key(&secret) {
        return Err(bad("cert: it certifies another key"));
    }
    Ok(Some((node, Credentials { ca, secret, cert, ca_secret: None }, f.admin_sha256)))
}

pub fn store_node(
    data_dir: &Path,
    node: &huskies_engine::NodeId,
    creds: &Credentials,
    admin_sha256: &str,
) -> io::Result<()> {
    use huskies_engine::identity::hex;
    let f = NodeFile {
        node: node.to_string(),
        secret: hex(&creds.secret),
        cert: creds.cert.to_hex(),
        ca: hex(&creds.ca),
        admin_sha256: admin_sha256.to_owned(),
    };
    private_dir(data_dir)?;
    write_private(&data_dir.join(NODE_FILE), &serde_json::to_string_pretty(&f).map_err(io::Error::other)?)
}

/// Compares without an early exit, so timing does not leak the key.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // A temp name of our own: two processes (the server redeeming, the CLI
    // creating) must never write through one temp file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
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
    private_dir(data_dir)?;
    write_private(&data_dir.join(KEY_FILE), key)
}

/// The server's admin key, created on first use.
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
    private_dir(data_dir)?;
    let json = serde_json::to_string_pretty(tokens).map_err(io::Error::other)?;
    write_private(&data_dir.join(TOKENS_FILE), &json)
}

/// Runs `f` holding an exclusive lock on the token store, across
/// processes: the server redeems while `huskies token create` adds, and
/// either read-modify-write could otherwise undo the other's (a lost
/// "used" mark would let a token be spent twice).
fn with_token_lock<T>(data_dir: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use std::os::fd::AsRawFd;
    private_dir(data_dir)?;
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(data_dir.join("join-tokens.lock"))?;
    // SAFETY: flock(2) on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    f()
}

/// Creates a one-time join token valid for `ttl_secs` from `now_unix`.
pub fn create_join_token(data_dir: &Path, ttl_secs: u64, now_unix: u64) -> io::Result<String> {
    with_token_lock(data_dir, || create_join_token_locked(data_dir, ttl_secs, now_unix))
}

fn create_join_token_locked(data_dir: &Path, ttl_secs: u64, now_unix: u64) -> io::Result<String> {
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

/// Spends a join token.
pub fn redeem_join_token(data_dir: &Path, token: &str, now_unix: u64) -> io::Result<Redeem> {
    with_token_lock(data_dir, || redeem_join_token_locked(data_dir, token, now_unix))
}

fn redeem_join_token_locked(data_dir: &Path, token: &str, now_unix: u64) -> io::Result<Redeem> {
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
        // Creators and redeemers racing from many threads lose nothing.
        let made: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| create_join_token(dir.path(), 60, 2_000).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        std::thread::scope(|s| {
            for t in &made {
                s.spawn(|| assert_eq!(redeem_join_token(dir.path(), t, 2_001).unwrap(), Redeem::Ok));
            }
        });
        for t in &made {
            assert_eq!(redeem_join_token(dir.path(), t, 2_002).unwrap(), Redeem::AlreadyUsed);
        }
        let k = server_key(dir.path()).unwrap();
        assert_eq!(server_key(dir.path()).unwrap(), k, "the key is stable");
        assert!(constant_time_eq(&k, &k) && !constant_time_eq(&k, "x"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn node_credentials_roundtrip_privately() {
        let dir = tempfile::tempdir().unwrap();
        let ca = server_ca(dir.path()).unwrap();
        assert_eq!(server_ca(dir.path()).unwrap(), ca, "the CA is stable");
        let node = huskies_engine::NodeId::new("agent-1").unwrap();
        let creds = Credentials::issue(&ca, &node, random_32().unwrap());
        store_node(dir.path(), &node, &creds, "abc").unwrap();
        let (n, c, admin) = load_node(dir.path()).unwrap().unwrap();
        assert_eq!((n, c, admin.as_str()), (node, creds, "abc"));
        use std::os::unix::fs::PermissionsExt;
        for f in [CA_FILE, NODE_FILE] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
