//! The warehouse: Firehose's Redshift destination, loading into PostgreSQL
//! (and anything that speaks its protocol).
//!
//! # How records get there
//!
//! Delivery cuts the stream's log into objects as for any destination;
//! this one *stages* each object in the S3Configuration bucket, then
//! queues it for loading (`queue`, a file per object in the stream's
//! `loads/` directory). A loading task per stream (`task`) takes the queue
//! in order and loads each object with one COPY (`load`). Staging and
//! loading are apart, as in Firehose: while the warehouse is down, records
//! are still staged (and the log freed), and loading catches up after.
//!
//! # Exactly once
//!
//! 1. An object's key is a function of its log range (see `delivery`), so a
//!    replay after a crash stages the same records under the same key, and
//!    queues it under the same name (its first offset).
//! 2. Delivery marks the range delivered only after the object is staged
//!    and queued (both durable). Every acknowledged record is therefore in
//!    a queued object or in the log.
//! 3. Loading an object is one PostgreSQL transaction that inserts the
//!    object's key into the ledger `hydrant.loads` and copies its rows; the
//!    ledger's primary key is (stream, object), so a second load of the key
//!    (a replay queued it again, or hydrant died after the commit and before
//!    removing the queue entry) finds the row and loads nothing.
//! 4. The queue entry is removed only after the commit (or after the
//!    object's manifest is in the error output). An entry may be loaded
//!    twice; by 3, its rows are in the table once.
//!
//! Rows the table refuses go to the error output (under
//! `!{firehose:error-output-type}` = `redshift-failed`) before the load
//! commits, under a key derived from the object's: a retry writes the same
//! document again. An object that cannot be loaded within
//! `RetryOptions.DurationInSeconds` (warehouse down, table missing), or
//! that has more refused rows than `MAXERROR`, goes to the error output as
//! a Redshift manifest; `hydrant backfill` loads such manifests, through
//! the same ledger, so exactly once too.
//!
//! The parts:
//!
//! - `jdbc`: where the warehouse is (`ClusterJDBCURL`);
//! - `copy`: how records become rows (`CopyCommand.CopyOptions`), with
//!   Redshift's meaning, refusing by name what hydrant does not do;
//! - `row`: a staged object into rows, or reasons they are not;
//! - `load`: one staged object into a table, in one transaction;
//! - `queue`: staged objects waiting to be loaded;
//! - `task`: the loading task, its retries, the error output, backfill.

pub mod copy;
pub mod jdbc;
pub mod load;
pub mod mirror;
pub mod queue;
pub mod row;
pub mod task;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::lake::{Backup, Lake};
use super::{Destination, Kind, Object};
use queue::{Queue, Staged};

/// What a warehouse destination has done, for the API and metrics.
pub struct WarehouseStats {
    pub objects_staged: AtomicU64,
    pub objects_loaded: AtomicU64,
    pub rows_loaded: AtomicU64,
    /// Objects whose manifest went to the error output.
    pub manifests_failed: AtomicU64,
    /// Refused rows, by reason (a PostgreSQL condition name, or
    /// `unreadable_record`).
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// Seconds from the oldest record's acknowledgement to the commit of
    /// its object, per object loaded.
    pub load_lag: crate::histogram::Histogram,
    /// The last error loading met, and when (ms); None once a load succeeds.
    pub last_error: Mutex<Option<(String, i64)>>,
}

impl Default for WarehouseStats {
    fn default() -> Self {
        WarehouseStats {
            objects_staged: AtomicU64::new(0),
            objects_loaded: AtomicU64::new(0),
            rows_loaded: AtomicU64::new(0),
            manifests_failed: AtomicU64::new(0),
            rejected: Mutex::new(BTreeMap::new()),
            load_lag: crate::histogram::Histogram::with_buckets(&crate::histogram::LAG_BUCKETS),
            last_error: Mutex::new(None),
        }
    }
}

/// Stages each object in the lake (and its backup), then queues data
/// objects for loading. Idempotent per key: staging overwrites, and the
/// queue entry is named by the object's first offset.
pub struct Warehouse {
    pub staging: Lake,
    pub backup: Option<Backup>,
    pub queue: Arc<Queue>,
    pub stats: Arc<WarehouseStats>,
}

impl Destination for Warehouse {
    fn write(&self, rt: &tokio::runtime::Handle, o: &Object<'_>) -> io::Result<()> {
        self.staging.write(rt, o)?;
        if let Some(b) = &self.backup {
            b.write(rt, o)?;
        }
        if o.kind == Kind::Data {
            self.queue.add(Staged {
                key: o.key.to_string(),
                first: o.first,
                end: o.end,
                records: o.records,
                oldest_ms: o.oldest_ms,
                failing_since_ms: None,
            })?;
            self.stats.objects_staged.fetch_add(1, Relaxed);
        }
        Ok(())
    }
}
