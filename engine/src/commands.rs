//! User commands: adding and moving stories.

use crate::story::StoryState;
use crate::{Command, CommandError, CommandId, Engine, Event, Output, Reply, Stage, StoryId};

/// Longest story title, in bytes.
pub const MAX_TITLE_LEN: usize = 1_000;

impl Engine {
    pub(crate) fn handle_command(&mut self, id: CommandId, command: Command) {
        let result = if self.ready { self.run_command(command) } else { Err(CommandError::NotReady) };
        self.pending.push(Output::Reply { id, result });
    }

    fn run_command(&mut self, command: Command) -> Result<Reply, CommandError> {
        match command {
            Command::AddStory { id, title, stage } => self.add_story(id, title, stage),
            Command::MoveStory { id, stage } => self.move_story(id, stage),
            Command::RevokeNode { node } => self.revoke_node(node),
            Command::EnrollNode { node, cert } => self.enroll_node(node, cert),
            Command::SetClusterSettings { settings } => self.set_cluster_settings(settings),
            Command::SetStages { stages } => self.set_stages(stages),
        }
    }

    fn add_story(&mut self, id: Option<StoryId>, title: String, stage: Stage) -> Result<Reply, CommandError> {
        let title = title.trim().to_owned();
        if title.is_empty() {
            return Err(CommandError::EmptyTitle);
        }
        if title.len() > MAX_TITLE_LEN {
            return Err(CommandError::TitleTooLong { len: title.len(), max: MAX_TITLE_LEN });
        }
        let id = match id {
            Some(id) if self.stories.contains_key(&id) => return Err(CommandError::StoryExists(id)),
            Some(id) => id,
            None => self.fresh_story_id(&title),
        };
        let state = StoryState::new(stage);
        self.doc.add_story(&id, &title, &state);
        self.doc.skip_touched();
        self.dirty = true;
        self.apply_story(&id, Some(crate::doc::StoryView { title, state, concurrent: 1 }));
        self.emit(Event::StoryAdded { story: id.clone(), stage });
        Ok(Reply::Added { id })
    }

    /// `slug-of-title-xxxx`, with a random suffix so two nodes adding the
    /// same title while apart do not collide.
    fn fresh_story_id(&mut self, title: &str) -> StoryId {
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
        loop {
            let suffix = self.random_u64() & 0xffff;
            // The slug is [a-z0-9-] starting alphanumeric, at most 40 bytes.
            let id = StoryId::new(format!("{slug}-{suffix:04x}")).expect("generated ids are valid");
            if !self.stories.contains_key(&id) {
                return id;
            }
        }
    }

    fn move_story(&mut self, id: StoryId, to: Stage) -> Result<Reply, CommandError> {
        let Some(view) = self.stories.get(&id) else { return Err(CommandError::UnknownStory(id)) };
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
        };
        let token = state.token;
        self.write_state(&id, state);
        self.cooldown.remove(&id);
        Ok(Reply::Moved { id, from, to, token })
    }
}
