//! The git remote, modelled as `huskies_net::git::push` treats it: per
//! story a branch ending in one run's commit, commits that know the tip
//! their run started from, and side refs keeping what was fenced or
//! replaced. A push lands unless a newer claim's commit ends the branch
//! (then it is fenced and kept); a tip it does not build on is kept.
//!
//! The oracle checks against it that no superseded claim's push ends a
//! story's branch, and that every commit a run pushed stays reachable.

use std::collections::{BTreeMap, BTreeSet};

use crate::{NodeId, PushError, StoryId, Token};

/// One run's commit: the claim it was made under.
pub type Commit = (Token, NodeId);

#[derive(Debug, Default)]
pub struct RemoteModel {
    branch: BTreeMap<StoryId, Commit>,
    parent: BTreeMap<(StoryId, Commit), Option<Commit>>,
    kept: BTreeSet<(StoryId, Commit)>,
    /// The tip each run started from.
    bases: BTreeMap<(StoryId, Commit), Option<Commit>>,
}

impl RemoteModel {
    /// A run starts: it builds on the branch as it is now.
    pub fn run_started(&mut self, story: &StoryId, token: Token, node: &NodeId) {
        let tip = self.branch.get(story).cloned();
        self.bases.insert((story.clone(), (token, node.clone())), tip);
    }

    fn descends(&self, story: &StoryId, from: &Commit, ancestor: &Commit) -> bool {
        let mut at = Some(from.clone());
        while let Some(c) = at {
            if &c == ancestor {
                return true;
            }
            at = self.parent.get(&(story.clone(), c)).cloned().flatten();
        }
        false
    }

    pub fn push(&mut self, story: &StoryId, token: Token, node: &NodeId) -> Result<(), PushError> {
        let ours: Commit = (token, node.clone());
        let base = self.bases.get(&(story.clone(), ours.clone())).cloned().flatten();
        self.parent.insert((story.clone(), ours.clone()), base);
        let tip = self.branch.get(story).cloned();
        if let Some(t) = &tip
            && t.0 > token
        {
            self.kept.insert((story.clone(), ours));
            return Err(PushError::Fenced {
                by_token: Some(t.0),
                kept: format!("refs/heads/huskies-fenced/{story}/{}-{node}", token.0),
            });
        }
        if let Some(t) = tip
            && !self.descends(story, &ours, &t)
        {
            self.kept.insert((story.clone(), t));
        }
        self.branch.insert(story.clone(), ours);
        Ok(())
    }

    /// Whether a commit made under `token` sits on a side ref of `story`
    /// (fenced, or replaced by a newer claim's push).
    pub fn is_kept(&self, story: &StoryId, token: Token) -> bool {
        self.kept.iter().any(|(s, (t, _))| s == story && *t == token)
    }

    /// The claim whose commit ends the story's branch.
    pub fn tip(&self, story: &StoryId) -> Option<&Commit> {
        self.branch.get(story)
    }

    /// Pushed commits reachable from no branch and no side ref.
    pub fn lost(&self) -> Vec<(StoryId, Commit)> {
        let reachable = |story: &StoryId, c: &Commit| {
            self.branch
                .get(story)
                .into_iter()
                .chain(self.kept.iter().filter(|(s, _)| s == story).map(|(_, k)| k))
                .any(|tip| self.descends(story, tip, c))
        };
        self.parent.keys().filter(|(s, c)| !reachable(s, c)).cloned().collect()
    }
}
