//! The lake: objects in a bucket, local or on S3.
//!
//! - `store`: where each bucket lives, and atomic writes to it;
//! - `encode`: records into JSON lines, compressed;
//! - `parquet`: records into Parquet, with a declared or inferred schema;
//! - `columns`: the columns of one Parquet object, built a record at a time.

pub mod columns;
pub mod encode;
pub mod parquet;
pub mod store;

use std::io;

use chrono::{DateTime, Utc};

use super::{Destination, Kind, Object};
use crate::delivery::prefix::Template;
use crate::spec::Compression;
use store::Stores;

/// Objects go to one bucket, under the keys delivery gives them.
pub struct Lake {
    pub stores: Stores,
    pub bucket: String,
}

impl Destination for Lake {
    fn write(&self, rt: &tokio::runtime::Handle, o: &Object<'_>) -> io::Result<()> {
        self.stores.put(rt, &self.bucket, o.key, o.body)
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
    pub append_delimiter: bool,
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
            return self.stores.put(rt, &self.bucket, &key, o.body);
        }
        let body = encode::compress(
            encode::json_lines(&o.records, self.append_delimiter),
            self.compression,
        );
        self.stores.put(rt, &self.bucket, &key, &body)
    }
}
