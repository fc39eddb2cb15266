//! Cluster settings: the values every node must share (how long a silent
//! node keeps its claims, heartbeat and claim pacing, sync pacing), kept in
//! the document so they live in one place.
//!
//! The server writes them from its `project.toml`, signed by the cluster
//! CA, at root key `settings` as one scalar `<sig hex>:<json>`. Every node
//! checks the signature, adopts the highest revision that validates against
//! its own configuration, and reports it as [`Event::SettingsAdopted`]; an
//! enrolled but hostile node cannot write settings others would take.
//!
//! Why signed and not just "written by the server": any enrolled node can
//! write any key of the document; a claim timeout of 1 ms would make every
//! node count every other dead.

use serde::{Deserialize, Serialize};

use crate::identity;
use crate::{CommandError, Config, Engine, Event, Reply, Stage};

/// The settings that must agree across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Raised by one on every change; the highest valid one wins.
    pub revision: u64,
    pub claim_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub claim_stagger_ms: u64,
    pub claim_settle_ms: u64,
    pub sync_interval_ms: u64,
    pub mesh_sync_interval_ms: u64,
    /// Budgets (ledger.rs); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_micro_usd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_story_cost_micro_usd: Option<u64>,
}

impl ClusterSettings {
    /// The shared part of `config`, at revision 0.
    pub fn of(config: &Config) -> ClusterSettings {
        ClusterSettings {
            revision: 0,
            claim_timeout_ms: config.claim_timeout_ms,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            claim_stagger_ms: config.claim_stagger_ms,
            claim_settle_ms: config.claim_settle_ms,
            sync_interval_ms: config.sync_interval_ms,
            mesh_sync_interval_ms: config.mesh_sync_interval_ms,
            daily_budget_micro_usd: config.daily_budget_micro_usd,
            max_story_cost_micro_usd: config.max_story_cost_micro_usd,
        }
    }

    pub fn apply_to(&self, config: &mut Config) {
        config.claim_timeout_ms = self.claim_timeout_ms;
        config.heartbeat_interval_ms = self.heartbeat_interval_ms;
        config.claim_stagger_ms = self.claim_stagger_ms;
        config.claim_settle_ms = self.claim_settle_ms;
        config.sync_interval_ms = self.sync_interval_ms;
        config.mesh_sync_interval_ms = self.mesh_sync_interval_ms;
        config.daily_budget_micro_usd = self.daily_budget_micro_usd;
        config.max_story_cost_micro_usd = self.max_story_cost_micro_usd;
    }

    /// Equal but for the revision.
    pub fn same_values(&self, other: &ClusterSettings) -> bool {
        ClusterSettings { revision: other.revision, ..self.clone() } == *other
    }

    /// The fields whose values differ, as `name: ours vs theirs`.
    pub fn differences(&self, other: &ClusterSettings) -> Vec<String> {
        let pairs = [
            ("claim_timeout_ms", self.claim_timeout_ms, other.claim_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms, other.heartbeat_interval_ms),
            ("claim_stagger_ms", self.claim_stagger_ms, other.claim_stagger_ms),
            ("claim_settle_ms", self.claim_settle_ms, other.claim_settle_ms),
            ("sync_interval_ms", self.sync_interval_ms, other.sync_interval_ms),
            ("mesh_sync_interval_ms", self.mesh_sync_interval_ms, other.mesh_sync_interval_ms),
        ];
        // Budgets are the server's alone to set: an agent's file need not
        // repeat them.
        pairs.iter().filter(|(_, a, b)| a != b).map(|(n, a, b)| format!("{n}: {a} vs {b}")).collect()
    }

    fn json(&self) -> String {
        // A struct of integers: serialisation cannot fail.
        serde_json::to_string(self).expect("settings serialise")
    }

    pub(crate) fn encode_signed(&self, ca_secret: &[u8; 32]) -> String {
        let json = self.json();
        format!("{}:{json}", identity::hex(&identity::sign_settings(ca_secret, json.as_bytes())))
    }

    /// The settings in `value` when the CA signed exactly these bytes.
    pub(crate) fn decode_signed(value: &str, ca: &identity::PublicKey) -> Option<ClusterSettings> {
        let (sig, json) = value.split_once(':')?;
        let sig = identity::unhex(sig).and_then(|b| identity::Sig::try_from(b).ok())?;
        if !identity::verify_settings(ca, json.as_bytes(), &sig) {
            return None;
        }
        serde_json::from_str(json).ok()
    }
}

/// The CA-signed cluster settings in force here: adopted only at a higher
/// revision, so every replica ends on the same ones.
#[derive(Debug, Default)]
pub(crate) struct InForce {
    settings: Option<ClusterSettings>,
}

impl InForce {
    pub fn current(&self) -> Option<&ClusterSettings> {
        self.settings.as_ref()
    }

    /// The revision in force; 0 before any.
    pub fn revision(&self) -> u64 {
        self.settings.as_ref().map_or(0, |s| s.revision)
    }

    pub fn adopt(&mut self, s: ClusterSettings) {
        assert!(s.revision > self.revision(), "settings revision {} after {}", s.revision, self.revision());
        self.settings = Some(s);
    }
}

impl Engine {
    /// The cluster settings in force here, once any were adopted.
    pub fn cluster_settings(&self) -> Option<&ClusterSettings> {
        self.settings.current()
    }

    /// The stages this node runs agents for.
    pub fn stages(&self) -> &[Stage] {
        &self.config.stages
    }

    /// Adopts the newest valid signed settings in the document, if newer
    /// than what we hold.
    pub(crate) fn absorb_settings(&mut self) {
        let current = self.settings.revision();
        let candidates = self.doc.read_settings();
        let best = candidates
            .iter()
            .filter_map(|v| ClusterSettings::decode_signed(v, &self.creds.ca))
            .filter(|s| s.revision > current)
            // Ties between equal revisions (never written by one server)
            // go to the larger encoding: the same pick on every replica.
            .max_by(|a, b| a.revision.cmp(&b.revision).then_with(|| a.json().cmp(&b.json())));
        if let Some(s) = best
            && let Err(reason) = self.adopt_settings(s.clone())
        {
            self.emit(Event::SettingsRejected { revision: s.revision, reason });
        }
    }

    fn adopt_settings(&mut self, s: ClusterSettings) -> Result<(), String> {
        let mut config = self.config.clone();
        s.apply_to(&mut config);
        config.validate().map_err(|e| e.to_string())?;
        self.config = config;
        self.liveness.set_timeout_ms(s.claim_timeout_ms);
        // The next heartbeat and scan come at the new pace.
        self.beat.no_later_than(self.now.saturating_add_ms(s.heartbeat_interval_ms));
        self.emit(Event::SettingsAdopted { settings: s.clone() });
        self.settings.adopt(s);
        Ok(())
    }

    /// Writes `settings` as the next revision (server only). Settings equal
    /// to those in force are left alone.
    pub(crate) fn set_cluster_settings(&mut self, settings: ClusterSettings) -> Result<Reply, CommandError> {
        let Some(ca_secret) = self.creds.ca_secret else { return Err(CommandError::NotAuthority) };
        if let Some(current) = self.settings.current()
            && current.same_values(&settings)
        {
            return Ok(Reply::Settings { revision: current.revision });
        }
        let revision = self.settings.revision() + 1;
        let s = ClusterSettings { revision, ..settings };
        self.adopt_settings(s.clone()).map_err(CommandError::BadSettings)?;
        self.doc.put_settings(&s.encode_signed(&ca_secret));
        Ok(Reply::Settings { revision })
    }

    /// The stages this node works, from its reloaded configuration.
    pub(crate) fn set_stages(&mut self, stages: Vec<Stage>) -> Result<Reply, CommandError> {
        if let Some(s) = stages.iter().find(|s| !s.is_active()) {
            return Err(CommandError::UnknownStage(format!("{s} (agents work current, qa or merge)")));
        }
        let mut stages = stages;
        stages.sort();
        stages.dedup();
        self.config.stages = stages.clone();
        Ok(Reply::Stages { stages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_roundtrip_and_tamper() {
        let ca_secret = [7u8; 32];
        let ca = identity::public_key(&ca_secret);
        let s = ClusterSettings { revision: 3, ..ClusterSettings::of(&Config::default()) };
        let v = s.encode_signed(&ca_secret);
        assert_eq!(ClusterSettings::decode_signed(&v, &ca), Some(s.clone()));
        let forged = v.replace("\"claim_timeout_ms\":10000", "\"claim_timeout_ms\":1");
        assert_ne!(forged, v);
        assert_eq!(ClusterSettings::decode_signed(&forged, &ca), None, "a changed value breaks the signature");
        let other = identity::public_key(&[8u8; 32]);
        assert_eq!(ClusterSettings::decode_signed(&v, &other), None, "another CA's settings are ignored");
        assert_eq!(ClusterSettings::decode_signed("zz:{}", &ca), None);
        assert_eq!(ClusterSettings::decode_signed("", &ca), None);
    }

    #[test]
    fn differences_name_fields() {
        let a = ClusterSettings::of(&Config::default());
        let b = ClusterSettings { claim_timeout_ms: 30_000, revision: 9, ..a.clone() };
        assert!(!a.same_values(&b));
        assert!(a.same_values(&ClusterSettings { revision: 4, ..a.clone() }));
        assert_eq!(a.differences(&b), vec!["claim_timeout_ms: 10000 vs 30000".to_owned()]);
    }
}
