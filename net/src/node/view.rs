//! What the node shows: status, the board, a story's detail.

use std::collections::BTreeMap;

use huskies_engine::{Millis, NodeId};

use super::NodeLoop;
use crate::status::{Board, BoardNode, NodeStatus, RunStatus, Status, StoryStatus};

impl NodeLoop {
    pub(super) fn story_detail(&mut self, id: &huskies_engine::StoryId) -> Option<crate::status::StoryDetail> {
        let view = self.engine.stories().find(|(s, _)| *s == id).map(|(_, v)| v.clone())?;
        Some(crate::status::StoryDetail {
            story: StoryStatus::of(id, &view),
            body: self.engine.story_body(id),
            runs: self.engine.story_runs(id),
        })
    }

    pub(super) fn board(&mut self) -> Board {
        let now = self.now();
        let me = self.engine.node_id().clone();
        let alive = self.engine.alive_nodes();
        let revoked = self.engine.revoked_keys();
        let connected = self.engine.connected_nodes();
        let heard: BTreeMap<NodeId, (Millis, u32)> =
            self.engine.heartbeats().map(|(n, at, free)| (n.clone(), (at, free))).collect();
        let mut holding: BTreeMap<&str, u32> = BTreeMap::new();
        for (_, v) in self.engine.stories() {
            if let Some(h) = &v.state.holder {
                *holding.entry(h.as_str()).or_default() += 1;
            }
        }
        let nodes = self
            .engine
            .nodes()
            .map(|(id, r)| {
                let is_self = *id == me;
                let beat = heard.get(id);
                BoardNode {
                    id: id.to_string(),
                    label: r.label.clone(),
                    address: r.address.clone(),
                    capacity: r.capacity,
                    alive: alive.contains(id),
                    revoked: r.cert.is_some_and(|c| revoked.contains(&(id.clone(), c.key))),
                    holding: holding.get(id.as_str()).copied().unwrap_or(0),
                    free_slots: if is_self {
                        Some(r.capacity.saturating_sub(self.engine.runs().count() as u32))
                    } else {
                        beat.map(|(_, free)| *free)
                    },
                    heartbeat_age_ms: if is_self { Some(0) } else { beat.map(|(at, _)| now.0.saturating_sub(at.0)) },
                    linked: connected.contains(id),
                    is_self,
                }
            })
            .collect();
        let costs = crate::costs::Costs::of(&mut self.engine);
        Board {
            node: me.to_string(),
            is_server: self.opts.is_server,
            stages: huskies_engine::Stage::ALL.iter().map(|s| s.to_string()).collect(),
            stories: self.board_stories(&costs),
            nodes,
            connected: connected.iter().map(|n| n.to_string()).collect(),
            counters: self.metrics.counters(),
            queue: crate::queue::queue(&mut self.engine, &self.landed),
            costs,
            runs: self.run_statuses(),
            refused: crate::status::Refused::of(&self.engine),
        }
    }

    /// The board's stories with what each cost (its kept run records;
    /// not read for archived stories, which the board folds away).
    pub(super) fn board_stories(&mut self, costs: &crate::costs::Costs) -> Vec<StoryStatus> {
        let mut stories: Vec<StoryStatus> = self.engine.stories().map(|(id, v)| StoryStatus::of(id, v)).collect();
        // Run records are read only once some agent reported a cost: a
        // cluster of plain commands pays nothing for the column.
        if costs.lines.is_empty() {
            return stories;
        }
        let skip = [huskies_engine::Stage::Archived.as_str(), huskies_engine::Stage::Backlog.as_str()];
        for s in stories.iter_mut().filter(|s| !skip.contains(&s.stage.as_str())) {
            s.cost_micro_usd = self.engine.story_cost_micro_usd(&s.id);
        }
        stories
    }

    /// Our runs, with what each agent is doing now.
    pub(super) fn run_statuses(&self) -> Vec<RunStatus> {
        let progress: BTreeMap<(huskies_engine::StoryId, huskies_engine::Token), crate::agent_stream::Progress> =
            self.runner.progress().into_iter().map(|(s, t, p)| ((s, t), p)).collect();
        self.engine
            .runs()
            .map(|(s, t, st)| RunStatus {
                story: s.clone(),
                stage: st.to_string(),
                token: t.0,
                progress: progress.get(&(s.clone(), t)).cloned(),
            })
            .collect()
    }

    pub(super) fn status(&mut self) -> Status {
        let alive = self.engine.alive_nodes();
        let revoked = self.engine.revoked_keys();
        let mut nodes: Vec<NodeStatus> = self
            .engine
            .nodes()
            .map(|(id, r)| NodeStatus {
                id: id.clone(),
                label: r.label.clone(),
                address: r.address.clone(),
                capacity: r.capacity,
                alive: alive.contains(id),
                key: r.cert.map(|c| huskies_engine::identity::hex(&c.key)),
                revoked: r.cert.is_some_and(|c| revoked.contains(&(id.clone(), c.key))),
            })
            .collect();
        // Nodes known only by a handshake or a revocation, without a record.
        let bare = self.engine.node_keys().iter().flat_map(|(id, ks)| ks.iter().map(|k| (id.clone(), *k, false)));
        for (id, key, is_revoked) in bare.chain(revoked.iter().map(|(id, k)| (id.clone(), *k, true))) {
            if !nodes.iter().any(|n| n.id == id) {
                nodes.push(NodeStatus {
                    id: id.clone(),
                    label: String::new(),
                    address: None,
                    capacity: 0,
                    alive: alive.contains(&id),
                    key: Some(huskies_engine::identity::hex(&key)),
                    revoked: is_revoked,
                });
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<huskies_engine::StoryId> = self.engine.stories().map(|(id, _)| id.clone()).collect();
        let mut fenced = Vec::new();
        for id in ids {
            for r in self.engine.story_runs(&id) {
                if r.outcome == huskies_engine::RunOutcomeKind::Fenced {
                    let kept = r.reason.clone().unwrap_or_default();
                    fenced.push(crate::status::FencedRun {
                        story: id.to_string(),
                        node: r.node.to_string(),
                        token: r.token.0,
                        stage: r.stage.to_string(),
                        reason: kept,
                    });
                }
            }
        }
        Status {
            fenced,
            epoch: self.engine.epoch(),
            costs: crate::costs::Costs::of(&mut self.engine),
            paused: {
                let now = self.now();
                self.engine.claims_paused().map(|(until, reason)| crate::status::Paused {
                    reason: reason.to_owned(),
                    seconds_left: until.0.saturating_sub(now.0).div_ceil(1000),
                })
            },
            refused: crate::status::Refused::of(&self.engine),
            node: self.engine.node_id().clone(),
            label: self
                .engine
                .nodes()
                .find(|(id, _)| *id == self.engine.node_id())
                .map(|(_, r)| r.label.clone())
                .unwrap_or_default(),
            peers: self.engine.peer_count(),
            connected: self.engine.connected_nodes().to_vec(),
            mesh_peers: self.engine.mesh_peer_count(),
            stories: self.engine.stories().map(|(id, v)| StoryStatus::of(id, v)).collect(),
            nodes,
            runs: self.run_statuses(),
            counters: self.metrics.counters(),
            settings: self.engine.cluster_settings().cloned(),
            stages: self.engine.stages().iter().map(|s| s.to_string()).collect(),
        }
    }
}
