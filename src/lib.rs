//! hydrant: a self-hosted streaming data pipeline in one binary.
//!
//! The modules follow the data path:
//!
//! ```text
//!  producers ──► server ──► api ──► stream ──► log ──► delivery ──► lake (local dir or S3)
//!               (limits,   (Firehose,  (registry,  (write-ahead   (batcher, prefixes,
//!                TLS)       S3 read,    intake)     log, group     exactly-once state,
//!                           auth)                   commit)        objects, stores)
//!                                                    │
//!                                                    └──► analytics (windowed aggregates, ──► dashboard
//!                                                          state saved with its log offset;
//!                                                          closed windows ──► stream, once)
//!  lake ──► query (SQL, on threads of its own)
//! ```
//!
//! `spec` is a delivery stream's definition, `config` the config file,
//! `metrics` and `histogram` what Prometheus reads, and `client`,
//! `generate` and `bench` the producer side.

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
pub mod warehouse;
