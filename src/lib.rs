//! hydrant: a self-hosted streaming data pipeline in one binary.
//!
//! The modules follow the data path:
//!
//! ```text
//!  producers ──► server ──► api ──► stream ──► log ──► delivery ──► destination
//!               (limits,   (Firehose,  (registry,  (write-ahead   (batcher,      lake: objects, local dir or S3
//!                TLS)       S3 read,    intake)     log, group     prefixes,      warehouse: staged in the lake,
//!                           auth)                   commit)        exactly-once   then COPY into PostgreSQL,
//!                                                                  state)         once per object (ledger)
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
pub mod destination;
pub mod generate;
pub mod histogram;
pub mod json;
pub mod log;
pub mod metrics;
pub mod query;
pub mod server;
pub mod source;
pub mod spec;
pub mod stream;
