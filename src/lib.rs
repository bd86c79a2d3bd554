//! hydrant: a self-hosted streaming data pipeline in one binary.
//!
//! The modules follow the data path:
//!
//! ```text
//! api ──► log ──► delivery ──► lake
//! (front door)  (write-ahead log)  (batcher, prefixes, objects, store)
//! ```
//!
//! `spec` is a delivery stream's definition, `stream` ties one stream's log
//! and delivery together, `config` is the config file, `server` runs it all,
//! and `client`, `generate` and `bench` are the producer side.

pub mod analytics;
pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod delivery;
pub mod generate;
pub mod histogram;
pub mod log;
pub mod metrics;
pub mod query;
pub mod server;
pub mod spec;
pub mod stream;
