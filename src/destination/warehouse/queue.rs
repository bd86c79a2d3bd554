//! Staged objects waiting to be loaded: one small file per object in the
//! stream's `loads/` directory, named by the object's first log offset so
//! that the directory's order is the log's.
//!
//! An entry is written (and fsynced, with its directory) before delivery
//! marks its records delivered, and removed once the object is loaded or
//! its manifest is in the error output. Adding an entry that exists (a
//! replay after a crash stages the same object again) replaces it with the
//! same content, keeping when loading it first failed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A staged object: its key in the staging bucket and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub key: String,
    pub first: u64,
    pub end: u64,
    pub records: u64,
    /// Arrival time of its oldest record.
    pub oldest_ms: i64,
    /// When loading it first failed (ms), kept across restarts so that
    /// RetryOptions.DurationInSeconds counts from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<i64>,
}

pub struct Queue {
    dir: PathBuf,
    /// Entries that could not be read (damage on disk): left in place for
    /// an operator, and reported, rather than skipped in silence.
    pub unreadable: Vec<String>,
    entries: Mutex<BTreeMap<u64, Staged>>,
    /// Bumped on every add, so the loading task wakes.
    added: watch::Sender<u64>,
}

impl Queue {
    /// Opens (creating) `dir` and reads the entries in it. An entry that
    /// cannot be read is kept and listed in `unreadable`.
    pub fn open(dir: &Path) -> io::Result<Queue> {
        std::fs::create_dir_all(dir)?;
        let mut entries = BTreeMap::new();
        let mut unreadable = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(".tmp") {
                std::fs::remove_file(&path)?;
                continue;
            }
            match serde_json::from_slice::<Staged>(&std::fs::read(&path)?) {
                Ok(s) => {
                    entries.insert(s.first, s);
                }
                Err(e) => unreadable.push(format!("{}: {e}", path.display())),
            }
        }
        Ok(Queue {
            dir: dir.to_path_buf(),
            unreadable,
            entries: Mutex::new(entries),
            added: watch::channel(0).0,
        })
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.json"))
    }

    pub fn add(&self, mut s: Staged) -> io::Result<()> {
        // Staged again by a replay after a crash: its retry clock goes on.
        if let Some(queued) = self.entries.lock().unwrap().get(&s.first) {
            if queued.key == s.key && s.failing_since_ms.is_none() {
                s.failing_since_ms = queued.failing_since_ms;
            }
        }
        self.write(&s)?;
        self.entries.lock().unwrap().insert(s.first, s);
        self.added.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Records, durably, when loading `s` first failed.
    pub fn failing_since(&self, s: &Staged, ms: i64) -> io::Result<Staged> {
        let s = Staged {
            failing_since_ms: Some(ms),
            ..s.clone()
        };
        self.write(&s)?;
        self.entries.lock().unwrap().insert(s.first, s.clone());
        Ok(s)
    }

    fn write(&self, s: &Staged) -> io::Result<()> {
        let path = self.path(s.first);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(s)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::log::sync_dir(&self.dir)
    }

    /// The oldest entry.
    pub fn first(&self) -> Option<Staged> {
        self.entries.lock().unwrap().values().next().cloned()
    }

    /// The entry after `s`.
    pub fn after(&self, s: &Staged) -> Option<Staged> {
        use std::ops::Bound::Excluded;
        let e = self.entries.lock().unwrap();
        e.range((Excluded(s.first), std::ops::Bound::Unbounded))
            .next()
            .map(|(_, v)| v.clone())
    }

    pub fn remove(&self, s: &Staged) -> io::Result<()> {
        match std::fs::remove_file(self.path(s.first)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        crate::log::sync_dir(&self.dir)?;
        let mut entries = self.entries.lock().unwrap();
        // A replay may have queued the same object again meanwhile: the
        // entry is the same, and loading it again finds it in the ledger.
        if entries.get(&s.first) == Some(s) {
            entries.remove(&s.first);
        }
        Ok(())
    }

    /// Objects and records waiting, and the oldest record's arrival (ms).
    pub fn backlog(&self) -> (u64, u64, Option<i64>) {
        let e = self.entries.lock().unwrap();
        (
            e.len() as u64,
            e.values().map(|s| s.records).sum(),
            e.values().map(|s| s.oldest_ms).min(),
        )
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.added.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay after a crash stages an object again: the time its loading
    /// first failed survives, so RetryOptions does not start over.
    #[test]
    fn staging_an_object_again_keeps_its_retry_clock() {
        let dir = std::env::temp_dir().join(format!("hydrant-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let staged = Staged {
            key: "s/2026/12/07/00/o-1".into(),
            first: 10,
            end: 20,
            records: 10,
            oldest_ms: 1,
            failing_since_ms: None,
        };
        let q = Queue::open(&dir).unwrap();
        q.add(staged.clone()).unwrap();
        q.failing_since(&staged, 1234).unwrap();
        drop(q);
        let q = Queue::open(&dir).unwrap();
        q.add(staged.clone()).unwrap();
        assert_eq!(q.first().unwrap().failing_since_ms, Some(1234));
        drop(q);
        let q = Queue::open(&dir).unwrap();
        assert_eq!(q.first().unwrap().failing_since_ms, Some(1234));
        // Another object at the same offset (a log reset) starts afresh.
        let other = Staged {
            key: "s/other".into(),
            ..staged
        };
        q.add(other).unwrap();
        assert_eq!(q.first().unwrap().failing_since_ms, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
