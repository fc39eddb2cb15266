//! User commands: adding and moving stories.

use crate::doc::StoryView;
use crate::story::StoryState;
use crate::{Command, CommandError, CommandId, Engine, Event, NewStory, Output, Reply, Stage, StoryId};

/// Longest story title, in bytes.
pub const MAX_TITLE_LEN: usize = 1_000;
/// Longest story body, in bytes.
pub const MAX_BODY_LEN: usize = 64 << 10;

impl Engine {
    pub(crate) fn handle_command(&mut self, id: CommandId, command: Command) {
        let result = if self.is_ready() { self.run_command(command) } else { Err(CommandError::NotReady) };
        self.outbox.push(Output::Reply { id, result });
    }

    fn run_command(&mut self, command: Command) -> Result<Reply, CommandError> {
        // What users ask of stories is the admin's to write: every node
        // refuses it from anyone else (schema.rs), so an agent does not
        // write it in the first place.
        let story_command = matches!(
            command,
            Command::AddStory(_)
                | Command::EditStory { .. }
                | Command::RemoveStory { .. }
                | Command::RetryStory { .. }
                | Command::MoveStory { .. }
        );
        if story_command && !self.signs_as_admin() {
            return Err(CommandError::ServerOnly);
        }
        match command {
            Command::AddStory(new) => self.add_story(new),
            Command::EditStory { id, title, body, priority } => self.edit_story(id, title, body, priority),
            Command::RemoveStory { id } => self.remove_story(id),
            Command::RetryStory { id } => self.retry_story(id),
            Command::MoveStory { id, stage } => self.move_story(id, stage),
            Command::RevokeNode { node } => self.revoke_node(node),
            Command::EnrollNode { node, cert } => self.enroll_node(node, cert),
            Command::SetClusterSettings { settings } => self.set_cluster_settings(settings),
            Command::SetStages { stages } => self.set_stages(stages),
            Command::Leave => self.leave(),
        }
    }

    fn check_title(title: &str) -> Result<String, CommandError> {
        let title = title.trim().to_owned();
        if title.is_empty() {
            return Err(CommandError::EmptyTitle);
        }
        if title.len() > MAX_TITLE_LEN {
            return Err(CommandError::TitleTooLong { len: title.len(), max: MAX_TITLE_LEN });
        }
        Ok(title)
    }

    fn check_body(body: &str) -> Result<(), CommandError> {
        if body.len() > MAX_BODY_LEN {
            return Err(CommandError::BodyTooLong { len: body.len(), max: MAX_BODY_LEN });
        }
        Ok(())
    }

    fn add_story(&mut self, new: NewStory) -> Result<Reply, CommandError> {
        let title = Self::check_title(&new.title)?;
        Self::check_body(&new.body)?;
        let id = match new.id {
            Some(id) if self.index.contains(&id) => return Err(CommandError::StoryExists(id)),
            Some(id) => id,
            None => self.fresh_story_id(&title)?,
        };
        let mut state = StoryState::new(new.stage);
        if new.stage == Stage::Merge {
            state.queued = self.index.next_queue_place();
        }
        let view = StoryView { title, priority: new.priority, created: new.created, state, concurrent: 1 };
        self.doc.add_story(&id, &view, &new.body);
        self.apply_story(&id, Some(view));
        assert!(self.index.contains(&id), "an added story {id} is in the index");
        self.emit(Event::StoryAdded { story: id.clone(), stage: new.stage });
        Ok(Reply::Added { id })
    }

    /// A story that exists and was not removed.
    fn live_story(&self, id: &StoryId) -> Result<&StoryView, CommandError> {
        match self.index.story(id) {
            None => Err(CommandError::UnknownStory(id.clone())),
            Some(v) if v.state.removed => Err(CommandError::Removed(id.clone())),
            Some(v) => Ok(v),
        }
    }

    fn edit_story(
        &mut self,
        id: StoryId,
        title: Option<String>,
        body: Option<String>,
        priority: Option<i64>,
    ) -> Result<Reply, CommandError> {
        let view = self.live_story(&id)?.clone();
        let title = title.map(|t| Self::check_title(&t)).transpose()?;
        if let Some(b) = &body {
            Self::check_body(b)?;
        }
        self.doc.put_fields(&id, title.as_deref(), body.as_deref(), priority);
        let view = StoryView {
            title: title.unwrap_or(view.title.clone()),
            priority: priority.unwrap_or(view.priority),
            ..view
        };
        self.apply_story(&id, Some(view));
        Ok(Reply::Edited { id })
    }

    /// A tombstone at the next token: the holder's run is fenced and, on
    /// every node that reads it, stopped.
    fn remove_story(&mut self, id: StoryId) -> Result<Reply, CommandError> {
        let view = self.live_story(&id)?;
        let state = StoryState { token: view.state.token.next(), holder: None, removed: true, ..view.state.clone() };
        let token = state.token;
        self.write_state(&id, state);
        self.claims.clear_cooldown(&id);
        assert!(self.claims.run(&id).is_none(), "a removed story {id} still runs here");
        Ok(Reply::Removed { id, token })
    }

    fn retry_story(&mut self, id: StoryId) -> Result<Reply, CommandError> {
        let view = self.live_story(&id)?;
        if !view.state.failed {
            return Err(CommandError::NotFailed(id));
        }
        let state = StoryState {
            token: view.state.token.next(),
            holder: None,
            attempts: 0,
            failed: false,
            reason: None,
            returns: 0,
            ..view.state.clone()
        };
        let token = state.token;
        self.write_state(&id, state);
        self.claims.clear_cooldown(&id);
        assert!(!self.index.known(&id).state.failed, "a retried story {id} still failed");
        Ok(Reply::Retried { id, token })
    }

    /// `slug-of-title-xxxx`, with a random suffix so two nodes adding the
    /// same title while apart do not collide.
    /// `<slug>-<random hex>`: 16 bits of suffix while they find a free id
    /// quickly, then 32, then 64, so a slug whose short suffixes are all
    /// taken still gets an id, after a bounded number of tries.
    fn fresh_story_id(&mut self, title: &str) -> Result<StoryId, CommandError> {
        let mut slug = String::new();
        for c in title.chars().flat_map(char::to_lowercase) {
            if slug.len() >= 40 {
                break;
            }
            if c.is_ascii_alphanumeric() {
                slug.push(c);
            } else if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let slug = slug.trim_end_matches('-');
        let slug = if slug.is_empty() { "story" } else { slug };
        const TRIES_PER_WIDTH: usize = 32;
        for (mask, width) in [(0xffff, 4), (0xffff_ffff, 8), (u64::MAX, 16)] {
            for _ in 0..TRIES_PER_WIDTH {
                let suffix = self.random_u64() & mask;
                // The slug is [a-z0-9-] starting alphanumeric, at most 40
                // bytes: with a 17-byte suffix, within MAX_ID_LEN.
                let id = StoryId::new(format!("{slug}-{suffix:0width$x}")).expect("generated ids are valid");
                if !self.index.contains(&id) {
                    assert!(id.as_str().len() <= crate::ids::MAX_ID_LEN);
                    return Ok(id);
                }
            }
        }
        // 32 collisions in a row on 64 random bits: the index is corrupt
        // or the generator broken, not merely full.
        Err(CommandError::NoFreeId(slug.to_owned()))
    }

    fn move_story(&mut self, id: StoryId, to: Stage) -> Result<Reply, CommandError> {
        let view = self.live_story(&id)?;
        let from = view.state.stage;
        if let Err(why) = from.check_move(to) {
            return Err(CommandError::IllegalMove { story: id, from, to, why });
        }
        // A move is a write of its own token: any run of the story is fenced.
        let state = StoryState {
            stage: to,
            token: view.state.token.next(),
            holder: None,
            attempts: 0,
            failed: false,
            result: view.state.result.clone(),
            reason: None,
            removed: false,
            returns: 0,
            queued: if to == Stage::Merge { self.index.next_queue_place() } else { view.state.queued },
        };
        let token = state.token;
        self.write_state(&id, state);
        self.claims.clear_cooldown(&id);
        assert_eq!(self.index.known(&id).state.stage, to, "a move of {id} to {to} did not land");
        Ok(Reply::Moved { id, from, to, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Millis, NodeId};

    /// Every 16-bit suffix of a slug taken: the next id still comes, with a
    /// longer suffix, instead of a loop that never ends.
    #[test]
    fn fresh_ids_when_every_short_suffix_is_taken() {
        let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
        let view = StoryView {
            title: "x".into(),
            priority: 0,
            created: crate::UnixMs(0),
            state: StoryState::new(Stage::Backlog),
            concurrent: 1,
        };
        for suffix in 0..=0xffffu64 {
            let id = StoryId::new(format!("fix-it-{suffix:04x}")).unwrap();
            e.index.put_story(&id, Some(view.clone()), false);
        }
        let id = e.fresh_story_id("Fix it!").unwrap();
        assert!(id.as_str().starts_with("fix-it-") && id.as_str().len() == "fix-it-".len() + 8, "{id}");
        assert!(!e.index.contains(&id));
    }

    /// The merge queue is ordered by when stories reached `merge` (their
    /// Lamport place), not by age; priority still comes first.
    #[test]
    fn merge_queue_order_is_arrival_then_priority_first() {
        let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
        e.handle(Millis(0), crate::Input::StorageLoaded { bytes: Vec::new() });
        let add = |e: &mut Engine, id: &str, stage: Stage, created_ms: u64, priority: i64| {
            let new = NewStory {
                id: Some(StoryId::new(id).unwrap()),
                title: id.into(),
                stage,
                body: String::new(),
                priority,
                created: crate::UnixMs(created_ms),
            };
            e.handle(Millis(1), crate::Input::Command { id: CommandId(created_ms), command: Command::AddStory(new) });
        };
        add(&mut e, "young", Stage::Merge, 50, 0);
        add(&mut e, "old", Stage::Merge, 10, 0);
        add(&mut e, "oldest", Stage::Qa, 1, 0);
        add(&mut e, "urgent", Stage::Merge, 60, 5);
        let mv = Command::MoveStory { id: StoryId::new("oldest").unwrap(), stage: Stage::Merge };
        e.handle(Millis(2), crate::Input::Command { id: CommandId(99), command: mv });
        let order: Vec<String> = e.queue_view().order.iter().map(|s| s.to_string()).collect();
        assert_eq!(order, ["urgent", "young", "old", "oldest"]);
    }
}
