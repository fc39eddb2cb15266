//! Credentials for git remotes, from what users already have, tried in
//! this order (libgit2 asks again after each one it could not use):
//!
//! - ssh: the ssh-agent (`SSH_AUTH_SOCK`), then the key file named by
//!   `HUSKIES_GIT_SSH_KEY`, then `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`;
//! - https: a token from `HUSKIES_GIT_TOKEN` (user `HUSKIES_GIT_USERNAME`,
//!   default `x-access-token`, as GitHub and GitLab take it), then
//!   `HUSKIES_GIT_USERNAME` with `HUSKIES_GIT_PASSWORD`, then git's
//!   credential helpers from the user's git config.
//!
//! ssh host keys are checked by libgit2 against `~/.ssh/known_hosts`; with
//! `HUSKIES_GIT_KNOWN_HOSTS` set, against that file instead (plain
//! `host key-type base64` lines; `[host]:port` entries match the host).
//!
//! A secret is never put in a URL or a log line: errors name the remote
//! with any user info cut out and list the sources tried, not their values.

use std::cell::RefCell;
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;

use git2::{Config, Cred, CredentialType, RemoteCallbacks};

/// Where credentials may come from, read once from the environment when a
/// node starts (so the agent child's environment can be scrubbed of them).
#[derive(Clone, Default)]
pub struct GitCredentials {
    /// An ssh-agent is reachable (`SSH_AUTH_SOCK`).
    pub ssh_agent: bool,
    /// Key files to offer, in order.
    pub ssh_keys: Vec<PathBuf>,
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Ask git's credential helpers (from the repository's git config).
    pub git_helpers: bool,
    /// Check ssh host keys against this known_hosts file instead of
    /// libgit2's default (`~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
}

/// Secrets stay out of `{:?}` too.
impl fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitCredentials")
            .field("ssh_agent", &self.ssh_agent)
            .field("ssh_keys", &self.ssh_keys)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("git_helpers", &self.git_helpers)
            .field("known_hosts", &self.known_hosts)
            .finish()
    }
}

/// Environment variables holding git secrets: kept from agent children.
pub const SECRET_VARS: [&str; 2] = ["HUSKIES_GIT_TOKEN", "HUSKIES_GIT_PASSWORD"];

impl GitCredentials {
    pub fn from_env() -> GitCredentials {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut ssh_keys: Vec<PathBuf> = env("HUSKIES_GIT_SSH_KEY").map(PathBuf::from).into_iter().collect();
        if let Some(home) = env("HOME") {
            ssh_keys
                .extend(["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|k| PathBuf::from(&home).join(".ssh").join(k)));
        }
        GitCredentials {
            ssh_agent: env("SSH_AUTH_SOCK").is_some(),
            ssh_keys,
            token: env("HUSKIES_GIT_TOKEN"),
            username: env("HUSKIES_GIT_USERNAME"),
            password: env("HUSKIES_GIT_PASSWORD"),
            git_helpers: true,
            known_hosts: env("HUSKIES_GIT_KNOWN_HOSTS").map(PathBuf::from),
        }
    }

    /// Is `key` (the raw ssh key blob) listed for `host` in our known_hosts?
    fn host_key_known(&self, path: &std::path::Path, host: &str, key: &[u8]) -> bool {
        use base64::Engine as _;
        let Ok(text) = std::fs::read_to_string(path) else { return false };
        text.lines().filter(|l| !l.trim_start().starts_with('#')).any(|line| {
            let mut fields = line.split_whitespace();
            let (Some(hosts), Some(_kind), Some(b64)) = (fields.next(), fields.next(), fields.next()) else {
                return false;
            };
            let host_matches = hosts.split(',').any(|h| {
                h == host || h.strip_prefix('[').and_then(|r| r.split_once("]:")).is_some_and(|(h, _)| h == host)
            });
            host_matches && base64::engine::general_purpose::STANDARD.decode(b64).is_ok_and(|k| k == key)
        })
    }

    /// Every source that fits the request, in order, as (label, credential).
    fn candidates(
        &self,
        url: &str,
        username: Option<&str>,
        allowed: CredentialType,
        config: Option<&Config>,
    ) -> Vec<(String, Result<Cred, git2::Error>)> {
        let mut out = Vec::new();
        if allowed.is_ssh_key() {
            let user = username.unwrap_or("git");
            if self.ssh_agent {
                out.push(("ssh-agent".to_owned(), Cred::ssh_key_from_agent(user)));
            }
            for key in self.ssh_keys.iter().filter(|k| k.is_file()) {
                out.push((format!("ssh key {}", key.display()), Cred::ssh_key(user, None, key, None)));
            }
        }
        if allowed.is_user_pass_plaintext() {
            if let Some(token) = &self.token {
                let u = self.username.as_deref().unwrap_or("x-access-token");
                out.push(("HUSKIES_GIT_TOKEN".into(), Cred::userpass_plaintext(u, token)));
            }
            if let (Some(u), Some(p)) = (&self.username, &self.password) {
                out.push(("HUSKIES_GIT_USERNAME/HUSKIES_GIT_PASSWORD".into(), Cred::userpass_plaintext(u, p)));
            }
            if self.git_helpers
                && let Some(config) = config
            {
                out.push(("git credential helper".into(), Cred::credential_helper(config, url, username)));
            }
        }
        if allowed.is_username() {
            out.push(("username".into(), Cred::username(username.unwrap_or("git"))));
        }
        if allowed.is_default() {
            out.push(("default credentials".into(), Cred::default()));
        }
        out
    }
}

/// The sources tried during one remote operation, for its error message.
#[derive(Default, Clone)]
pub struct Tried(Rc<RefCell<Vec<String>>>);

impl Tried {
    fn push(&self, source: String) {
        self.0.borrow_mut().push(source);
    }

    pub fn describe(&self) -> String {
        let t = self.0.borrow();
        if t.is_empty() { "none were asked for".into() } else { t.join(", ") }
    }
}

/// Callbacks that hand libgit2 one credential source per request, each at
/// most once (libgit2 asks again after a refusal, forever if we let it),
/// and record which were tried in `tried`.
pub fn callbacks<'a>(creds: &'a GitCredentials, config: Option<Config>, tried: Tried) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut used: Vec<String> = Vec::new();
    cb.credentials(move |url, username, allowed| {
        for (label, cred) in creds.candidates(url, username, allowed, config.as_ref()) {
            if used.contains(&label) {
                continue;
            }
            used.push(label.clone());
            match cred {
                Ok(c) => {
                    tried.push(label);
                    return Ok(c);
                }
                Err(e) => tried.push(format!("{label} (unusable: {})", e.message())),
            }
        }
        Err(git2::Error::from_str("no more credentials to try"))
    });
    if let Some(path) = &creds.known_hosts {
        cb.certificate_check(move |cert, host| {
            let Some(key) = cert.as_hostkey().and_then(|h| h.hostkey()) else {
                // Not ssh: TLS certificates get libgit2's own checks.
                return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
            };
            if creds.host_key_known(path, host, key) {
                Ok(git2::CertificateCheckStatus::CertificateOk)
            } else {
                Err(git2::Error::from_str(&format!("ssh host key of {host} is not in {}", path.display())))
            }
        });
    }
    cb
}

/// `url` without user info (`https://user:token@host/x` → `https://host/x`).
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            match path {
                Some(p) => format!("{scheme}://{host}/{p}"),
                None => format!("{scheme}://{host}"),
            }
        }
        // scp-like `user@host:path`: the user is not secret, but a
        // password could ride along as `user:pw@host`.
        None => match url.split_once('@') {
            Some((user, rest)) => format!("{}@{rest}", user.split(':').next().unwrap_or_default()),
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_cuts_user_info() {
        assert_eq!(redact("https://x-access-token:ghp_secret@github.com/o/r.git"), "https://github.com/o/r.git");
        assert_eq!(redact("https://github.com/o/r.git"), "https://github.com/o/r.git");
        assert_eq!(redact("ssh://git@host:22/r.git"), "ssh://host:22/r.git");
        assert_eq!(redact("git@github.com:o/r.git"), "git@github.com:o/r.git");
        assert_eq!(redact("me:pw@host:r.git"), "me@host:r.git");
        assert_eq!(redact("/srv/git/r.git"), "/srv/git/r.git");
        assert_eq!(redact("git://127.0.0.1:9418"), "git://127.0.0.1:9418");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = GitCredentials { token: Some("ghp_secret".into()), password: Some("pw".into()), ..Default::default() };
        let s = format!("{c:?}");
        assert!(!s.contains("ghp_secret") && !s.contains("\"pw\""), "{s}");
    }
}
