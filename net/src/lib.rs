//! # huskies-net: the production driver
//!
//! Runs one [`huskies_engine::Engine`] per process on tokio: serves
//! `/crdt-sync` (websocket), `/healthz` and the HTTP API with axum, dials
//! peers with tokio-tungstenite, runs agent commands in git worktrees
//! (git2), and keeps the document on disk. It turns engine outputs into I/O
//! and I/O into engine inputs; every decision stays in the engine.

pub mod agent_profile;
pub mod agent_report;
pub mod agent_stream;
pub mod api;
pub mod auth;
pub mod cold;
pub mod costs;
pub mod dashboard;
pub mod git;
pub mod git_identity;
pub mod gitauth;
pub mod land;
pub mod metrics;
pub mod node;
pub mod project;
pub mod queue;
pub mod runlog;
pub mod runner;
pub mod status;
pub mod storage;
pub mod tls;
pub mod ws;

pub use node::{NodeHandle, NodeOptions, run_node};
