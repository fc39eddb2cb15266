//! Cold storage: reading stories from a past epoch's document (see
//! `epoch.rs`). A story archived at a cut leaves the live document; the
//! driver keeps each past epoch's document, and `story show` finds the
//! story there. Reads only: nothing in cold storage is ever merged again.

use automerge::ActorId;

use crate::StoryId;
use crate::doc::{Doc, StoryView};
use crate::runs::RunRecord;

/// A story as a past epoch's document last held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedStory {
    pub view: StoryView,
    pub body: String,
    pub runs: Vec<RunRecord>,
}

/// An archived epoch's document, opened for reading.
pub struct ColdDoc {
    doc: Doc,
}

impl ColdDoc {
    /// `None` when the bytes do not load (a damaged archive is skipped,
    /// not fatal: the story may be in another).
    pub fn open(bytes: &[u8]) -> Option<ColdDoc> {
        // Storage interleaves signature blocks with the document's chunks.
        let chunks = crate::guard::split_stored(bytes, 1 << 40).chunks;
        let loaded = std::panic::catch_unwind(|| Doc::load(ActorId::from(b"huskies-cold-reader".to_vec()), &chunks));
        Some(ColdDoc { doc: loaded.ok()?.ok()? })
    }

    pub fn epoch(&self) -> u64 {
        self.doc.epoch()
    }

    pub fn story(&mut self, id: &StoryId) -> Option<ArchivedStory> {
        let view = self.doc.read_story(id)?;
        Some(ArchivedStory {
            view,
            body: self.doc.read_body(id, &|_| crate::schema::Writer::Admin),
            runs: self.doc.read_runs(id),
        })
    }

    /// Every story id the document holds, in order.
    pub fn story_ids(&mut self) -> Vec<StoryId> {
        let (stories, _, _) = self.doc.read_all();
        stories.into_keys().collect()
    }
}
