//! # huskies-engine: the sans-IO core of huskies
//!
//! One [`Engine`] is one node of the cluster. It owns the node's replica of
//! the pipeline (an Automerge document) and decides everything: what to
//! claim, when to run, push and advance, whom to dial, what to send. It does
//! no I/O: no sockets, files, clocks, processes or global randomness. A
//! driver (`huskies-net` in production, `huskies-sim` under madsim) feeds it
//! inputs and carries out its outputs.
//!
//! ## The contract
//!
//! - [`Engine::new`]`(config, node_id, seed, now)`; then feed
//!   [`Input::StorageLoaded`] (empty bytes on first start) before anything else.
//! - [`Engine::handle`]`(now, input)` for every input; `now` is the local
//!   monotonic clock in milliseconds. It never panics on peer data: a peer
//!   that sends garbage is disconnected ([`Output::HangUp`] and
//!   [`Event::PeerRejected`]).
//! - After every `handle`, drain [`Engine::poll_output`] until `None` and
//!   carry out the outputs **in order**. Persistence before sending is a
//!   type, not a habit: after an [`Output::Persist`] the engine hands over
//!   nothing that reveals the state it saves (`Send`, `Reply`, `StartRun`,
//!   events...) until the driver feeds [`Input::Persisted`] with its
//!   sequence number. The driver may write off its event loop and keep
//!   feeding other inputs meanwhile; their outputs queue behind.
//!   A driver that cannot write stops the node.
//! - Call `handle(now, Input::Timeout)` at [`Engine::poll_timeout`]. Early
//!   or extra timeouts are harmless.
//! - Determinism: the same config, node id, seed and sequence of
//!   `(now, input)` produce the same outputs, byte for byte. Randomness
//!   comes from a ChaCha RNG seeded at construction; Automerge actors are
//!   the node id plus a seeded incarnation number.
//!
//! ## The rules it keeps
//!
//! - The document holds `stories/<id>` (title, state) and `nodes/<id>`
//!   (address, label, capacity). A story's stage, claim, attempts and
//!   result are one value, so concurrent writes resolve as a whole: highest
//!   fencing token first (see [`StoryState::precedence`]).
//! - Every claim and every user move raises the story's token; a result or
//!   advance is only written while our claim is the winning one, and a
//!   write made concurrently with a higher token loses on every replica.
//! - Liveness is gossip ([`wire::Heartbeat`]), never written to the
//!   document: an idle cluster's document does not grow.
//! - Stories of a dead holder are reclaimed with a higher token; candidates
//!   are ranked by rendezvous hashing so connected nodes rarely collide, and
//!   non-preferred nodes wait `claim_stagger_ms` per rank.
//! - At most `max_mesh_peers` supplementary connections, chosen by a hash of
//!   the node pair among live peers.
//! - Peers are nodes with a CA-certified key that answered our challenge
//!   (`identity.rs`); heartbeats are signed by their node; a CA-signed
//!   revocation in the document shuts a node out everywhere.
//! - Peer bytes are checked before Automerge sees them (`guard.rs`), each
//!   peer has a rate budget, and an Automerge panic on peer data rebuilds
//!   the document from what was persisted (`defence.rs`).
//!
//! ## The parts
//!
//! `Engine` holds the node's handles (config, identity: node id,
//! incarnation, actor and credentials; the clock; the RNG) and its parts,
//! nothing else. Each part owns its state behind private fields, checks its
//! own invariants and reports its own next deadline; the rules that span
//! parts are `impl Engine` blocks in the file named after what they decide.
//!
//! | part (state) | owns | rules |
//! |---|---|---|
//! | `Outbox` (`outbox.rs`) | every output: staged during an input, held behind an unconfirmed `Persist`, ready | |
//! | `Doc` (`doc.rs`) | the Automerge document: typed reads and writes, what a merge touched, whether it is persisted | |
//! | `Index` (`index.rs`) | every story and node as the document says, and the sets claims are decided on (free in claim order, by holder); the next merge-queue place; whether it is being rebuilt | |
//! | `Liveness` (`liveness.rs`) | heartbeats heard and grace periods: who is alive, with how many free slots; who was reported dead | |
//! | `Claims` (`claims/held.rs`) | our runs from claim to settle, run, push and result; cooldowns, stagger, worktrees, fences; the pause while our agent's API refuses us | `claims.rs` |
//! | `Peers` (`peers/links.rs`) | connections, dial targets and backoff, owed syncs, beats to relay | `peers.rs`, `defence.rs` |
//! | `Saved` (`defence.rs`) | the copy of what was persisted, which a rebuild after a panic reloads | `defence.rs` |
//! | `Refusals` (`schema.rs`) | the values not believed: the newest, and how many | `schema.rs`, `doc/validity.rs` |
//! | `Members` (`membership/known.rs`) | believed and revoked node keys | `membership.rs` (enrollments, revocations), `identity.rs` |
//! | `Train` (`landing.rs`) | landing batches of our merge-stage stories: in flight, split halves waiting | `landing.rs` |
//! | commands | what users ask for, checked, answered once | `commands.rs` |
//! | `Epochs` (`epoch.rs`) | the base of our epoch; whether a cut is wanted, since when | `epoch.rs` (cutting a base, moving to it, carrying unseen writes), `cold.rs` |
//! | `Signatures` (`signing.rs`) | the signature of every change of our epoch | `signing.rs` |
//! | `InForce` (`settings.rs`) | the CA-signed cluster settings adopted, by revision | `settings.rs` |
//! | `OwnBeat`, `Scan`, `Today` | our heartbeat's sequence and next beat; the next periodic scan; the wall clock's UTC day | `liveness.rs`, `engine.rs`, `ledger.rs` |
//!
//! `Engine` (`engine.rs`) ties them together, with the node's `Lifecycle`
//! (loading, running, leaving, revoked): `handle` routes an input,
//! `finish_input` persists and releases, `poll_timeout` takes the earliest
//! deadline any part reports (each a [`Timer`] that says why it exists,
//! `timers.rs`), and in debug builds `invariants.rs` checks
//! each part's own invariants and the parts against each other after every
//! input.

mod claims;
pub mod cold;
mod commands;
mod config;
mod defence;
mod doc;
mod engine;
mod epoch;
mod error;
pub mod guard;
pub mod hash;
/// Crafted hostile messages: for tests, benches and the sims only.
#[cfg(any(test, feature = "testkit"))]
pub mod hostile;
pub mod identity;
mod ids;
mod index;
mod invariants;
mod io;
pub mod landing;
pub mod ledger;
mod liveness;
mod membership;
mod outbox;
mod peers;
pub mod runs;
pub mod schema;
mod settings;
mod signing;
mod story;
/// Fixtures for tests, benches and the sims (`testkit` feature).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod timers;
mod view;
pub mod wire;

pub use commands::{MAX_BODY_LEN, MAX_TITLE_LEN};
pub use config::{Config, StageLimits};
pub use doc::{NodeRecord, Signed, SignedKind, StoryView};
pub use engine::Engine;
pub use epoch::EPOCH_MEMORY;
pub use error::{CommandError, ConfigError, IdError};
pub use identity::{Cert, Credentials, SigMemo};
pub use ids::{CommandId, ConnId, MAX_ID_LEN, Millis, NodeId, StoryId, Token, UnixMs};
pub use io::{
    Command, Event, Input, NewStory, Output, PersistKind, PersistSeq, PushError, RejectKind, Reply, RunOutcome,
};
pub use liveness::chain::BeatChecks;
pub use peers::links::SyncSent;
pub use peers::receive::receive_sync_message;
pub use runs::{RunOutcomeKind, RunRecord, RunReport};
pub use settings::ClusterSettings;
pub use story::{RunResult, Stage, StoryState};
pub use timers::Timer;
