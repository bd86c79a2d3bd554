//! Destinations: where delivery's objects go.
//!
//! Delivery (see `delivery`) cuts the log into objects and drives the
//! exactly-once protocol; a destination only has to write one object so
//! that writing it again changes nothing. An object's key is a function of
//! the log range it holds (delivery records the range before writing, and
//! derives the key from it), so a replay after a crash hands the
//! destination the same object under the same key:
//!
//! - the lake (`lake`) overwrites the key with the same bytes;
//! - the warehouse (`warehouse`) stages the object in the lake, then loads
//!   it in one transaction with a ledger row keyed by the object, which a
//!   second load of the same key finds.
//!
//! Iceberg tables and HTTP endpoints plug in here the same way: one
//! `Destination`, idempotent per key, and no copy of the protocol.

pub mod lake;
pub mod warehouse;

use std::io;

use crate::destination::lake::spool::Body;

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The stream's records (one partition's, when partitioned).
    Data,
    /// Error documents for records that could not be delivered.
    Errors,
}

/// One object delivery cut from the log: the records `[first, end)` of one
/// buffer, encoded for the stream's store.
pub struct Object<'a> {
    /// The object's identity: its key, derived from its log range.
    pub key: &'a str,
    pub kind: Kind,
    /// The object's bytes, durable in a file (see `lake::spool`).
    pub body: &'a Body,
    /// How many records (or error documents) it holds.
    pub records: u64,
    pub first: u64,
    pub end: u64,
    /// Arrival time of the oldest record; the time in the object's key.
    pub oldest_ms: i64,
}

/// Where a stream's objects go. `write` must be idempotent per key: writing
/// an object that was written before (a replay after a crash, a retry after
/// an error) leaves what writing it once leaves. An error is retried by
/// delivery, with backoff, until it succeeds; an error of kind
/// `InvalidInput` means it never can, and stops the stream's delivery.
pub trait Destination: Send + Sync {
    fn write(&self, rt: &tokio::runtime::Handle, object: &Object<'_>) -> io::Result<()>;
}
