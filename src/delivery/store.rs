//! The embedded lake: buckets are directories under `<data-dir>/lake/`, keys
//! are paths below them.
//!
//! A put is atomic and durable: the bytes go to a temporary file outside the
//! lake, are fsynced, renamed into place, and the directories above are
//! fsynced. A reader therefore sees the whole object or nothing, and once a
//! put returns the object survives a machine crash, which is what lets
//! delivery remove the log records it came from. Putting a key that exists
//! replaces it atomically, which is how a replayed batch overwrites instead
//! of duplicating.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::log::sync_dir;

#[derive(Debug, Clone)]
pub struct LocalStore {
    lake: PathBuf,
    tmp: PathBuf,
}

impl LocalStore {
    pub fn open(data_dir: &Path) -> io::Result<LocalStore> {
        let lake = data_dir.join("lake");
        let tmp = data_dir.join("tmp");
        fs::create_dir_all(&lake)?;
        // Leftovers of puts that a crash interrupted: never visible, now garbage.
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        Ok(LocalStore { lake, tmp })
    }

    pub fn root(&self) -> &Path {
        &self.lake
    }

    /// Where `bucket/key` lives on disk.
    pub fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.lake.join(bucket).join(key)
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> io::Result<()> {
        let target = self.path(bucket, key);
        let parent = target.parent().expect("a key has a parent directory");
        let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::create_dir_all(parent)?;
            fs::rename(&tmp, &target)?;
            // Make the rename, and any directory it needed, durable.
            let mut dir = parent;
            loop {
                sync_dir(dir)?;
                if dir == self.lake {
                    break;
                }
                dir = dir.parent().expect("inside the lake");
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}
