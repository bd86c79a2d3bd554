//! The lake: objects in a bucket, local or on S3.
//!
//! - `store`: where each bucket lives, and atomic writes to it;
//! - `spool`: an object's bytes on their way to the store, on disk;
//! - `encode`: compression, and back;
//! - `parquet`: records into Parquet, with a declared or inferred schema;
//! - `columns`: the columns of one Parquet object, built a record at a time.

pub mod columns;
pub mod encode;
pub mod parquet;
pub mod spool;
pub mod store;

use std::io::{self, Read};

use chrono::{DateTime, Utc};

use super::{Destination, Kind, Object};
use crate::delivery::prefix::Template;
use crate::spec::Compression;
use spool::{Spool, SPILL_BYTES};
use store::Stores;

/// Objects go to one bucket, under the keys delivery gives them.
pub struct Lake {
    pub stores: Stores,
    pub bucket: String,
}

impl Destination for Lake {
    fn write(&self, rt: &tokio::runtime::Handle, o: &Object<'_>) -> io::Result<()> {
        self.stores.put_body(rt, &self.bucket, o.key, o.body)
    }
}

/// A copy of each data object in another bucket, under its own prefix and
/// compression (Firehose's S3 backup): the same object name, so a replay
/// overwrites the copy as it overwrites the original.
pub struct Backup {
    pub stores: Stores,
    pub bucket: String,
    pub prefix: Template,
    pub compression: Compression,
    /// The stream's own compression: the body is reused when they match.
    pub source_compression: Compression,
}

impl Destination for Backup {
    fn write(&self, rt: &tokio::runtime::Handle, o: &Object<'_>) -> io::Result<()> {
        if o.kind != Kind::Data {
            return Ok(());
        }
        let at = DateTime::<Utc>::from_timestamp_millis(o.oldest_ms).unwrap_or_default();
        let name = o.key.rsplit('/').next().unwrap_or(o.key);
        let name = name
            .strip_suffix(self.source_compression.extension())
            .unwrap_or(name);
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, o.key.as_bytes());
        let random = crate::delivery::prefix::random_string(&id);
        let key = self.prefix.eval(at, &random, None) + name + self.compression.extension();
        if self.compression == self.source_compression {
            return self.stores.put_body(rt, &self.bucket, &key, o.body);
        }
        // The same bytes in the backup's compression, a spill at a time.
        let mut raw =
            encode::decoder(std::fs::File::open(o.body.path())?, self.source_compression)?;
        let mut spool = Spool::new(self.stores.local.scratch(), self.compression);
        let mut chunk = vec![0; SPILL_BYTES];
        loop {
            let n = raw.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            spool.push(&chunk[..n]);
            if spool.held() >= SPILL_BYTES {
                spool.spill()?;
            }
        }
        let body = spool.finish()?;
        self.stores.put_body(rt, &self.bucket, &key, &body)
    }
}
