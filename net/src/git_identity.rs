//! Every agent run has a git identity.
//!
//! On a machine whose git knows nobody (a fresh container, a CI runner),
//! an agent's `git commit` fails with git's "Please tell me who you are",
//! the agent says it committed, and the run ends "no commits" with no word
//! of why. So each run gets the project's `git_author` (default
//! `huskies <node>`), through git's own variables, for exactly the parts
//! of an identity that neither the user's git configuration nor their
//! environment sets: one the user set is never overridden.

use std::ffi::OsString;

/// An identity, as git writes it: `Name <email>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitAuthor {
    pub name: String,
    pub email: String,
}

impl GitAuthor {
    /// Parses `Name <email>`.
    pub fn parse(s: &str) -> Result<GitAuthor, String> {
        let bad = || format!("git_author {s:?} is not of the form \"Name <email>\"");
        if s.contains(['\n', '\r', '\0']) {
            return Err(bad());
        }
        let (name, rest) = s.split_once('<').ok_or_else(bad)?;
        let email = rest.strip_suffix('>').ok_or_else(bad)?;
        let (name, email) = (name.trim(), email.trim());
        let clean = |v: &str| !v.is_empty() && !v.contains(['<', '>']);
        if !clean(name) || !clean(email) {
            return Err(bad());
        }
        Ok(GitAuthor { name: name.to_owned(), email: email.to_owned() })
    }

    /// The default: `huskies <node>`.
    pub fn for_node(node: &str) -> GitAuthor {
        GitAuthor { name: "huskies".to_owned(), email: node.to_owned() }
    }
}

/// The variables that give a run `author` where git would find no
/// identity: for each of author and committer, name and email, unless the
/// environment (`GIT_AUTHOR_NAME`, `EMAIL`, ...) or the configuration
/// (`user.name`, `user.email`) already says.
pub fn identity_vars(
    config: Option<&git2::Config>,
    env: impl Fn(&str) -> Option<OsString>,
    author: &GitAuthor,
) -> Vec<(&'static str, String)> {
    let configured = |key: &str| config.and_then(|c| c.get_string(key).ok()).is_some_and(|v| !v.trim().is_empty());
    let set = |var: &str| env(var).is_some_and(|v| !v.is_empty());
    let name_known = configured("user.name");
    let email_known = configured("user.email") || set("EMAIL");
    let mut vars = Vec::new();
    for (var, known, value) in [
        ("GIT_AUTHOR_NAME", name_known, &author.name),
        ("GIT_COMMITTER_NAME", name_known, &author.name),
        ("GIT_AUTHOR_EMAIL", email_known, &author.email),
        ("GIT_COMMITTER_EMAIL", email_known, &author.email),
    ] {
        if !known && !set(var) {
            vars.push((var, value.clone()));
        }
    }
    vars
}

/// What `identity_vars` needs of a worktree: its configuration as git
/// reads it (the repository's, the user's, the system's).
pub fn worktree_config(worktree: &std::path::Path) -> Option<git2::Config> {
    match git2::Repository::open(worktree).and_then(|r| r.config()) {
        Ok(mut c) => c.snapshot().ok(),
        Err(_) => git2::Config::open_default().and_then(|mut c| c.snapshot()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration of one file only: nothing of the machine's.
    fn config(text: &str) -> (tempfile::TempDir, git2::Config) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, text).unwrap();
        let mut c = git2::Config::new().unwrap();
        c.add_file(&path, git2::ConfigLevel::Local, true).unwrap();
        (dir, c)
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn parses_name_and_email_and_refuses_the_rest() {
        assert_eq!(
            GitAuthor::parse("Ada Lovelace <ada@example.org>").unwrap(),
            GitAuthor { name: "Ada Lovelace".into(), email: "ada@example.org".into() }
        );
        for bad in ["ada@example.org", "Ada <>", " <a@b>", "Ada <a@b", "Ada <a<b>", "Ada\n <a@b>"] {
            assert!(GitAuthor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_machine_with_no_identity_gets_the_whole_fallback() {
        let (_d, c) = config("");
        let vars = identity_vars(Some(&c), no_env, &GitAuthor::for_node("n1"));
        assert_eq!(
            vars,
            vec![
                ("GIT_AUTHOR_NAME", "huskies".to_owned()),
                ("GIT_COMMITTER_NAME", "huskies".to_owned()),
                ("GIT_AUTHOR_EMAIL", "n1".to_owned()),
                ("GIT_COMMITTER_EMAIL", "n1".to_owned()),
            ]
        );
        assert_eq!(identity_vars(None, no_env, &GitAuthor::for_node("n1")).len(), 4);
    }

    #[test]
    fn what_the_user_set_is_never_overridden() {
        let (_d, c) = config("[user]\n\tname = Ada\n\temail = ada@example.org\n");
        assert!(identity_vars(Some(&c), no_env, &GitAuthor::for_node("n1")).is_empty());
        // Only the email is missing: only the email is given.
        let (_d, c) = config("[user]\n\tname = Ada\n");
        let vars = identity_vars(Some(&c), no_env, &GitAuthor::for_node("n1"));
        assert_eq!(vars.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"]);
        // The environment counts as the user's too.
        let (_d, c) = config("");
        let env = |k: &str| matches!(k, "EMAIL" | "GIT_AUTHOR_NAME").then(|| OsString::from("x"));
        let vars = identity_vars(Some(&c), env, &GitAuthor::for_node("n1"));
        assert_eq!(vars, vec![("GIT_COMMITTER_NAME", "huskies".to_owned())]);
    }
}
