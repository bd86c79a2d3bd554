//! The embedded lake: buckets are directories under `<data-dir>/lake/`, keys
//! are paths below them.
//!
//! A put is atomic and durable: the bytes go to a temporary file outside the
//! lake (their writeback started every 4 MiB, so that a large object never
//! queues all of itself ahead of the log's writes), are fsynced, renamed
//! into place, and the directories above are fsynced (a body delivery
//! spooled, see `spool`, is durable already and is hard-linked instead of
//! copied). A reader therefore sees the whole object or nothing, and once a
//! put returns the object survives a machine crash, which is what lets
//! delivery remove the log records it came from. Putting a key that exists
//! replaces it atomically, which is how a replayed batch overwrites instead
//! of duplicating.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::spool::Body;
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

    /// Where `bucket/key` lives on disk, once both are checked (see [`check`]).
    fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.lake.join(bucket).join(key)
    }

    pub fn get(&self, bucket: &str, key: &str) -> io::Result<Vec<u8>> {
        check(bucket, key)?;
        fs::read(self.path(bucket, key))
    }

    /// Keys under `prefix` (which need not end at a `/`), in order.
    pub fn list(&self, bucket: &str, prefix: &str) -> io::Result<Vec<String>> {
        check(bucket, "x")?;
        let root = self.lake.join(bucket);
        // Walk only below the prefix's directory part.
        let dir_part = prefix.rfind('/').map(|i| &prefix[..i]).unwrap_or("");
        let start = if dir_part.is_empty() {
            root.clone()
        } else {
            check(bucket, dir_part)?;
            root.join(dir_part)
        };
        let mut keys = Vec::new();
        let mut todo = vec![start];
        while let Some(dir) = todo.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    todo.push(path);
                } else if let Ok(rel) = path.strip_prefix(&root) {
                    let key = rel.to_string_lossy().into_owned();
                    if key.starts_with(prefix) {
                        keys.push(key);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Where bodies are written before they are put (see `spool`).
    pub fn scratch(&self) -> &Path {
        &self.tmp
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> io::Result<()> {
        check(bucket, key)?;
        self.place(bucket, key, |tmp| {
            let mut f = File::create(tmp)?;
            WriteBehind::default().write(&mut f, bytes)?;
            f.sync_all()
        })
    }

    /// Puts a finished body: linked into place (it is durable already), or
    /// copied where the scratch directory is on another file system.
    pub fn put_body(&self, bucket: &str, key: &str, body: &Body) -> io::Result<()> {
        check(bucket, key)?;
        self.place(bucket, key, |tmp| match fs::hard_link(body.path(), tmp) {
            Ok(()) => Ok(()),
            Err(_) => {
                let mut from = File::open(body.path())?;
                let mut f = File::create(tmp)?;
                let mut chunk = vec![0; WRITE_BEHIND_BYTES];
                let mut behind = WriteBehind::default();
                loop {
                    let n = io::Read::read(&mut from, &mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    behind.write(&mut f, &chunk[..n])?;
                }
                f.sync_all()
            }
        })
    }

    /// Makes `bucket/key` the durable file `fill` writes at a temporary
    /// path outside the lake: renamed into place, and every directory from
    /// the object's up to the lake's fsynced (the key is checked, so that
    /// is one per segment, all inside the lake).
    fn place(
        &self,
        bucket: &str,
        key: &str,
        fill: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let target = self.path(bucket, key);
        let bucket_dir = self.lake.join(bucket);
        let parent = target.parent().unwrap_or(&bucket_dir).to_path_buf();
        let tmp = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let result = (|| {
            fill(&tmp)?;
            fs::create_dir_all(&parent)?;
            fs::rename(&tmp, &target)?;
            let mut dir = parent.as_path();
            while dir.starts_with(&self.lake) {
                sync_dir(dir)?;
                match dir.parent() {
                    Some(up) => dir = up,
                    None => break,
                }
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// How much of an object is written before its writeback is started.
const WRITE_BEHIND_BYTES: usize = 4 << 20;

/// Writes to a file with its writeback started chunk by chunk, waiting for
/// each chunk's before the next is started: the disk never holds more than
/// two chunks of an object queued ahead of the log's small synchronous
/// writes, instead of the whole object at its final sync (which is what
/// made acknowledgements wait while a large object was delivered).
///
/// Where the file system does not support it, the bytes are simply
/// written. A write error it reports fails the write: the kernel reports a
/// writeback error to a descriptor once, so the final fsync would not.
#[derive(Debug)]
pub struct WriteBehind {
    /// Bytes written; whose writeback was started; waited for.
    written: u64,
    started: u64,
    waited: u64,
    supported: bool,
}

impl Default for WriteBehind {
    fn default() -> Self {
        WriteBehind {
            written: 0,
            started: 0,
            waited: 0,
            supported: true,
        }
    }
}

impl WriteBehind {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Forgets what was written past `len` (the file was truncated to it).
    pub fn rewind(&mut self, len: u64) {
        self.written = len;
        self.started = self.started.min(len);
        self.waited = self.waited.min(len);
    }

    /// Appends `bytes` to `f`, which holds the bytes written so far.
    pub fn write(&mut self, f: &mut File, bytes: &[u8]) -> io::Result<()> {
        for piece in bytes.chunks(WRITE_BEHIND_BYTES) {
            f.write_all(piece)?;
            self.written += piece.len() as u64;
            if self.supported && self.written - self.started >= WRITE_BEHIND_BYTES as u64 {
                self.supported = self.hint(f)?;
            }
        }
        Ok(())
    }

    /// Starts the writeback of what is not started, then waits for what
    /// was started before. Ok(false): not supported here.
    fn hint(&mut self, f: &File) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        let range = |at: u64, len: u64, flags: libc::c_uint| -> io::Result<bool> {
            // SAFETY: sync_file_range on an open descriptor, no memory involved.
            if unsafe { libc::sync_file_range(fd, at as i64, len as i64, flags) } == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE | libc::EOPNOTSUPP) => Ok(false),
                _ => Err(e),
            }
        };
        let started = self.started;
        if !range(started, self.written - started, libc::SYNC_FILE_RANGE_WRITE)? {
            return Ok(false);
        }
        self.started = self.written;
        if started > self.waited {
            if !range(
                self.waited,
                started - self.waited,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )? {
                return Ok(false);
            }
            self.waited = started;
        }
        Ok(true)
    }
}

/// Checks a bucket and key where they are used, whatever made them: a key
/// that breaks [`check_key`](crate::delivery::prefix::check_key) or a bucket that
/// breaks S3's naming rules never reaches a store. The error's kind is
/// `InvalidInput`, which delivery never retries.
pub fn check(bucket: &str, key: &str) -> io::Result<()> {
    if !crate::spec::check_bucket(bucket) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bucket {bucket:?} is not a valid S3 bucket name"),
        ));
    }
    crate::delivery::prefix::check_key(key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A bucket on an S3-compatible service, from the config file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Bucket {
    /// The service's URL, e.g. `http://127.0.0.1:9000`; AWS itself when absent.
    pub endpoint: Option<String>,
    /// The bucket's region. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Credentials; when absent, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    /// (and AWS_SESSION_TOKEN) from the environment.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need. Default true when an endpoint is given.
    pub path_style: Option<bool>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Objects larger than this go up in parts (S3's multipart upload), so a
/// large object never needs one huge request.
const MULTIPART_BYTES: usize = 16 << 20;
const PART_BYTES: usize = 8 << 20;

/// Where each bucket lives: S3 for the buckets the config names, the
/// embedded lake for the rest.
#[derive(Clone)]
pub struct Stores {
    pub local: LocalStore,
    s3: std::collections::BTreeMap<String, std::sync::Arc<dyn object_store::ObjectStore>>,
}

impl Stores {
    pub fn new(
        local: LocalStore,
        buckets: &std::collections::BTreeMap<String, S3Bucket>,
    ) -> Result<Stores, String> {
        use object_store::aws::AmazonS3Builder;
        let mut s3 = std::collections::BTreeMap::new();
        for (bucket, c) in buckets {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(&c.region)
                // Delivery retries on its own, forever; the client's own
                // retries only need to ride out a blip.
                .with_retry(object_store::RetryConfig {
                    max_retries: 2,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..Default::default()
                });
            if let Some(e) = &c.endpoint {
                b = b
                    .with_endpoint(e)
                    .with_allow_http(e.starts_with("http://"))
                    .with_virtual_hosted_style_request(!c.path_style.unwrap_or(true));
            } else if let Some(p) = c.path_style {
                b = b.with_virtual_hosted_style_request(!p);
            }
            if let Some(k) = &c.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &c.secret_access_key {
                b = b.with_secret_access_key(k);
            }
            let store = b.build().map_err(|e| format!("buckets.{bucket}: {e}"))?;
            s3.insert(bucket.clone(), std::sync::Arc::new(store) as _);
        }
        Ok(Stores { local, s3 })
    }

    pub fn s3_store(&self, bucket: &str) -> Option<std::sync::Arc<dyn object_store::ObjectStore>> {
        self.s3.get(bucket).cloned()
    }

    /// Writes an object atomically: a reader sees all of it or none.
    pub fn put(
        &self,
        rt: &tokio::runtime::Handle,
        bucket: &str,
        key: &str,
        bytes: &[u8],
    ) -> io::Result<()> {
        if !self.s3.contains_key(bucket) {
            return self.local.put(bucket, key, bytes);
        }
        rt.block_on(self.put_async(bucket, key, bytes))
    }

    /// Puts a finished body; S3 takes a large one in parts, read from its
    /// file a part at a time.
    pub fn put_body(
        &self,
        rt: &tokio::runtime::Handle,
        bucket: &str,
        key: &str,
        body: &Body,
    ) -> io::Result<()> {
        let Some(store) = self.s3.get(bucket) else {
            return self.local.put_body(bucket, key, body);
        };
        check(bucket, key)?;
        if body.len() <= MULTIPART_BYTES as u64 {
            return rt.block_on(self.put_async(bucket, key, &body.read()?));
        }
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::from(key);
        let mut file = File::open(body.path())?;
        rt.block_on(async {
            // S3 shows a multipart object only once it is completed.
            let upload = store.put_multipart(&path).await.map_err(io::Error::other)?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut part = vec![0; PART_BYTES];
            let sent: io::Result<()> = async {
                loop {
                    let n = io::Read::read(&mut file, &mut part)?;
                    if n == 0 {
                        return Ok(());
                    }
                    // At most two parts in flight: memory stays at a few parts.
                    w.wait_for_capacity(2).await.map_err(io::Error::other)?;
                    w.write(&part[..n]);
                }
            }
            .await;
            match sent {
                Ok(()) => w.finish().await.map(|_| ()).map_err(io::Error::other),
                Err(e) => {
                    // Unfinished parts are kept (and billed) until aborted.
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// An object's bytes.
    pub async fn get(&self, bucket: &str, key: &str) -> io::Result<Vec<u8>> {
        let Some(store) = self.s3.get(bucket) else {
            return self.local.get(bucket, key);
        };
        check(bucket, key)?;
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::from(key);
        let got = store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
            e => io::Error::other(e),
        })?;
        Ok(got.bytes().await.map_err(io::Error::other)?.to_vec())
    }

    /// An object, to read from the start: the embedded lake's file itself,
    /// or an S3 object fetched into a file (that has no name, so nothing is
    /// left of it after a crash) a chunk at a time. Never whole in memory.
    pub async fn open(&self, bucket: &str, key: &str) -> io::Result<File> {
        check(bucket, key)?;
        let Some(store) = self.s3.get(bucket) else {
            return File::open(self.local.path(bucket, key));
        };
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        use std::io::Seek;
        let path = object_store::path::Path::from(key);
        let got = store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
            e => io::Error::other(e),
        })?;
        let named = self
            .local
            .scratch()
            .join(format!("get-{}", uuid::Uuid::new_v4()));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&named)?;
        fs::remove_file(&named)?;
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.next().await {
            file.write_all(&chunk.map_err(io::Error::other)?)?;
        }
        file.rewind()?;
        Ok(file)
    }

    /// Keys that start with `prefix`, in order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> io::Result<Vec<String>> {
        let Some(store) = self.s3.get(bucket) else {
            return self.local.list(bucket, prefix);
        };
        use futures::TryStreamExt;
        let dir = prefix.rfind('/').map(|i| &prefix[..i]).unwrap_or("");
        let base = (!dir.is_empty()).then(|| object_store::path::Path::from(dir));
        let mut keys: Vec<String> = store
            .list(base.as_ref())
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>()
            .await
            .map_err(io::Error::other)?
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// [`Stores::put`] from async code.
    pub async fn put_async(&self, bucket: &str, key: &str, bytes: &[u8]) -> io::Result<()> {
        let Some(store) = self.s3.get(bucket) else {
            return self.local.put(bucket, key, bytes);
        };
        check(bucket, key)?;
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::from(key);
        async {
            if bytes.len() <= MULTIPART_BYTES {
                store.put(&path, bytes.to_vec().into()).await.map(|_| ())
            } else {
                // S3 shows a multipart object only once it is completed.
                let upload = store.put_multipart(&path).await?;
                let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                w.write(bytes);
                w.finish().await.map(|_| ())
            }
        }
        .await
        .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects of several write-behind chunks, and of none, come back whole.
    #[test]
    fn objects_of_any_size_are_written_whole() {
        let dir = std::env::temp_dir().join(format!("hydrant-store-{}", std::process::id()));
        let store = LocalStore::open(&dir).unwrap();
        for len in [0, 1, WRITE_BEHIND_BYTES, 2 * WRITE_BEHIND_BYTES + 12_345] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let key = format!("k/{len}");
            store.put("bucket", &key, &body).unwrap();
            assert!(store.get("bucket", &key).unwrap() == body, "{len} bytes");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
