//! The merge queue as a node shows it: what waits in `merge` and in which
//! order, which batches are being tested where, and what landed last.

use std::collections::VecDeque;

use huskies_engine::{Engine, Event, Stage, StoryId};

use crate::status::{LandedItem, Queue, QueueBatch, QueueItem};

/// Landings shown, newest first.
const LANDED_SHOWN: usize = 20;

/// The last landings this node saw (a story reaching `done` with a landed
/// commit), newest first.
#[derive(Debug, Default)]
pub struct LandedLog(VecDeque<LandedItem>);

impl LandedLog {
    /// Notes a landing the event shows.
    pub fn observe(&mut self, engine: &Engine, e: &Event, now_unix_ms: u64) {
        let Event::StageChanged { story, to: Stage::Done, .. } = e else { return };
        let Some(item) = landed_item(engine, story, now_unix_ms) else { return };
        self.0.retain(|l| l.id != item.id);
        self.0.push_front(item);
        self.0.truncate(LANDED_SHOWN);
    }
}

fn landed_item(engine: &Engine, story: &StoryId, seen_ms: u64) -> Option<LandedItem> {
    let v = engine.story(story)?;
    let r = v.state.result.as_ref()?;
    Some(LandedItem {
        id: story.to_string(),
        title: v.title.clone(),
        commit: r.landed.clone()?,
        node: r.node.to_string(),
        seen_ms,
    })
}

/// The queue as `engine` sees it now.
pub fn queue(engine: &mut Engine, landed: &LandedLog) -> Queue {
    let view = engine.queue_view();
    let order = view
        .order
        .iter()
        .filter_map(|id| {
            let v = engine.story(id)?;
            Some(QueueItem {
                id: id.to_string(),
                title: v.title.clone(),
                priority: v.priority,
                holder: v.state.holder.as_ref().map(|h| h.to_string()),
                returns: v.state.returns,
            })
        })
        .collect();
    let testing = view
        .testing
        .into_iter()
        .map(|(node, car)| QueueBatch {
            node: node.to_string(),
            batch: car.batch,
            stories: car.stories.iter().map(|(s, _)| s.to_string()).collect(),
            ahead: car.ahead.iter().map(|(s, _)| s.to_string()).collect(),
        })
        .collect();
    let mut landed: Vec<LandedItem> = landed.0.iter().cloned().collect();
    if landed.is_empty() {
        // Nothing seen land since this node started: what the document
        // says landed, without times.
        landed = engine
            .stories()
            .filter(|(_, v)| v.state.stage == Stage::Done)
            .filter_map(|(id, _)| landed_item(engine, id, 0))
            .take(LANDED_SHOWN)
            .collect();
    }
    Queue { order, testing, landed }
}
