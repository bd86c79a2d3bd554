//! The loading task: takes staged objects from the queue in order and loads
//! each one (see the module notes of `warehouse` for why exactly once).
//!
//! - A row the table refuses goes to the error output with its reason and
//!   its raw record; the rest of the object loads. Past `MAXERROR` refused
//!   rows nothing of the object loads: its refused rows and its manifest
//!   go to the error output.
//! - While the warehouse is unreachable, or the table or a column is
//!   missing, the object is retried with backoff for
//!   `RetryOptions.DurationInSeconds`, counted from its first failure
//!   (recorded in its queue entry, so restarts do not reset it); then its manifest goes to the error output and
//!   loading moves on. `hydrant backfill` loads such manifests later.
//!
//! Error documents have Firehose's shape (`route::error_document`), with
//! `!{firehose:error-output-type}` = `redshift-failed`; their
//! `arrivalTimestamp` is the object's oldest record's. Manifests have
//! Redshift's: `{"entries": [{"url": "s3://bucket/key", "mandatory": true}]}`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::load::{Column, CopyText, LoadError, Loader, Outcome, Rejected};
use super::queue::{Queue, Staged};
use super::{row, WarehouseStats};
use crate::delivery::route::{error_document, Diversion};
use crate::destination::lake::{encode, store::Stores};
use crate::spec::{StreamSpec, WarehouseSpec};

/// The error output type of everything the warehouse refuses.
pub const OUTPUT_TYPE: &str = "redshift-failed";
/// Largest staged object loaded, uncompressed (twice the largest buffer).
const MAX_OBJECT_BYTES: usize = 2 * crate::spec::MAX_SIZE_MB as usize * 1024 * 1024;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A row that did not load: its record and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub raw: Vec<u8>,
    /// The reason as metrics count it: a PostgreSQL condition name, or
    /// `unreadable_record`.
    pub reason: String,
    pub message: String,
}

/// What loading one object did.
#[derive(Debug, Default)]
pub struct Loaded {
    pub rows: u64,
    pub refused: Vec<Refusal>,
    /// The ledger had it: loaded before, nothing done now.
    pub already: bool,
}

#[derive(Debug)]
pub enum Failure {
    /// Worth retrying: the warehouse, the table or the store failed.
    Retry(String),
    /// More rows refused than MAXERROR allows: nothing was loaded.
    Refused(Vec<Refusal>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(m) => f.write_str(m),
            Failure::Refused(r) => write!(
                f,
                "{} rows were refused, more than MAXERROR allows; the first: {}",
                r.len(),
                r.first().map(|r| r.message.as_str()).unwrap_or("")
            ),
        }
    }
}

/// PostgreSQL's name for the conditions a row meets most.
fn condition(code: &str) -> String {
    match code {
        "22P02" => "invalid_text_representation",
        "22001" => "string_data_right_truncation",
        "22003" => "numeric_value_out_of_range",
        "22007" => "invalid_datetime_format",
        "22008" => "datetime_field_overflow",
        "22012" => "division_by_zero",
        "22021" => "character_not_in_repertoire",
        "22023" => "invalid_parameter_value",
        "23502" => "not_null_violation",
        "23503" => "foreign_key_violation",
        "23505" => "unique_violation",
        "23514" => "check_violation",
        other => return format!("sqlstate_{other}"),
    }
    .to_string()
}

/// A staged object read and turned into COPY text, ready to load.
pub struct Prepared {
    key: String,
    /// The columns it was converted for.
    columns: Vec<Column>,
    copy: CopyText,
    /// Records that are not rows.
    refused: Vec<Refusal>,
}

/// Loads a stream's staged objects: shared by the task and backfill.
#[derive(Clone)]
pub struct Loading {
    pub spec: StreamSpec,
    pub stores: Stores,
    /// The stream's directory (a mirror reads its source's table
    /// definitions there).
    pub dir: std::path::PathBuf,
}

impl Loading {
    fn warehouse(&self) -> &WarehouseSpec {
        self.spec.warehouse.as_ref().expect("a warehouse stream")
    }

    /// Where the error output of an object goes: `what` is `rows` or
    /// `manifest`. A function of the object's key, so a retry overwrites.
    fn error_key(&self, key: &str, what: &str, at_ms: i64, extension: &str) -> String {
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{key}#{what}").as_bytes(),
        );
        crate::delivery::error_key(&self.spec, &id, at_ms, OUTPUT_TYPE, extension)
    }

    fn documents(refused: &[Refusal], arrival_ms: i64) -> Vec<u8> {
        let mut out = Vec::new();
        for r in refused {
            let d = Diversion {
                output_type: OUTPUT_TYPE.into(),
                code: format!("Redshift.{}", r.reason),
                message: r.message.clone(),
            };
            out.extend_from_slice(&error_document(&d, arrival_ms, &r.raw));
            out.push(b'\n');
        }
        out
    }

    /// The connection, made if need be: it checks the table and columns.
    pub async fn connect<'c>(
        &self,
        conn: &'c mut Option<Loader>,
    ) -> Result<&'c mut Loader, String> {
        if conn.is_none() && self.mirror() {
            let w = self.warehouse();
            let c = &w.credentials;
            let l = Loader::connect_mirror(&w.target, &c.username, &c.password.0)
                .await
                .map_err(|e| e.to_string())?;
            *conn = Some(l);
        }
        if conn.is_none() {
            let w = self.warehouse();
            let c = &w.credentials;
            let l = Loader::connect(
                &w.target,
                &c.username,
                &c.password.0,
                w.table.clone(),
                w.columns.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
            *conn = Some(l);
        }
        Ok(conn.as_mut().expect("connected"))
    }

    /// Reads a staged object and turns it into COPY text for `columns`: the
    /// work that needs no connection, so it can run ahead of the loads.
    /// Memory holds a piece of the object and a piece of the text at a time.
    pub async fn prepare(&self, key: &str, columns: &[Column]) -> Result<Prepared, Failure> {
        let scratch = self.stores.local.scratch();
        let spool_error = |e: std::io::Error| {
            Failure::Retry(format!(
                "spooling the rows of {key} to {}: {e}",
                scratch.display()
            ))
        };
        let mut copy = CopyText::spooled(scratch).map_err(spool_error)?;
        let mut refused = Vec::new();
        self.each_record(key, columns, |r| {
            match r.row {
                Ok(row) => copy.push(&row)?,
                Err(message) => refused.push(Refusal {
                    raw: r.raw.into_owned(),
                    reason: "unreadable_record".into(),
                    message,
                }),
            }
            Ok(())
        })
        .await?;
        copy.flush().map_err(spool_error)?;
        Ok(Prepared {
            key: key.to_string(),
            columns: columns.to_vec(),
            copy,
            refused,
        })
    }

    /// A staged object, decompressed as it is read, and bounded (an object
    /// in a bucket may come from anywhere): past MAX_OBJECT_BYTES the
    /// reader ends, one byte over, for the caller to refuse.
    async fn open_staged(
        &self,
        key: &str,
    ) -> std::io::Result<std::io::BufReader<std::io::Take<Box<dyn std::io::Read + '_>>>> {
        use std::io::Read;
        let file = self.stores.open(&self.spec.bucket, key).await?;
        let decoded = encode::decoder(std::io::BufReader::new(file), self.spec.compression)?;
        Ok(std::io::BufReader::with_capacity(
            256 << 10,
            decoded.take(MAX_OBJECT_BYTES as u64 + 1),
        ))
    }

    /// Each record of a staged object, in order, read a piece (a line, or a
    /// record back to back; see `Pieces`) at a time as it is decompressed;
    /// `each` failing stops the reading.
    async fn each_record(
        &self,
        key: &str,
        columns: &[Column],
        mut each: impl FnMut(row::Record<'_>) -> std::io::Result<()>,
    ) -> Result<(), Failure> {
        let (w, bucket) = (self.warehouse(), &self.spec.bucket);
        let failed = |e: std::io::Error| {
            Failure::Retry(format!("reading the staged object {bucket}/{key}: {e}"))
        };
        let mut reader = self.open_staged(key).await.map_err(failed)?;
        let mut pieces = row::Pieces::new(&w.copy, self.spec.append_delimiter);
        let (mut line, mut read) = (Vec::new(), 0usize);
        while pieces.read(&mut reader, &mut line).map_err(failed)? {
            read += line.len();
            if read > MAX_OBJECT_BYTES {
                return Err(Failure::Retry(format!(
                    "the staged object {bucket}/{key} is larger than {MAX_OBJECT_BYTES} bytes uncompressed"
                )));
            }
            if pieces.in_header(&line) {
                continue;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let mut done = Ok(());
            row::line_rows(
                text,
                &w.copy,
                columns,
                self.spec.append_delimiter,
                &mut |r| {
                    if done.is_ok() {
                        done = each(r);
                    }
                },
            );
            done.map_err(failed)?;
        }
        Ok(())
    }

    /// The records of the rows numbered `rows` (in the order COPY had
    /// them), read again from the staged object: only a refused row's
    /// record is needed, and only then.
    async fn records_of(
        &self,
        key: &str,
        columns: &[Column],
        rows: &[usize],
    ) -> Result<BTreeMap<usize, Vec<u8>>, Failure> {
        let rows: std::collections::BTreeSet<usize> = rows.iter().copied().collect();
        let mut found = BTreeMap::new();
        let mut at = 0;
        self.each_record(key, columns, |r| {
            if r.row.is_ok() {
                if rows.contains(&at) {
                    found.insert(at, r.raw.into_owned());
                }
                at += 1;
            }
            Ok(())
        })
        .await?;
        Ok(found)
    }

    /// The columns loaded into, connecting if need be.
    async fn columns(&self, conn: &mut Option<Loader>) -> Result<Vec<Column>, Failure> {
        let loader = self.connect(conn).await.map_err(Failure::Retry)?;
        Ok(loader.columns().to_vec())
    }

    /// A DatabaseAsSource stream: its objects are change records, applied
    /// to mirror tables (see `mirror`).
    pub fn mirror(&self) -> bool {
        self.spec.source.is_some()
    }

    /// A staged object of change records, read as it is decompressed and
    /// reduced (see `mirror`).
    async fn changes(&self, key: &str) -> Result<super::mirror::Changes, Failure> {
        let bucket = &self.spec.bucket;
        let failed =
            |e: String| Failure::Retry(format!("reading the staged object {bucket}/{key}: {e}"));
        let mut body = self
            .open_staged(key)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let changes = super::mirror::Changes::read(&mut body);
        if body.get_ref().limit() == 0 {
            return Err(failed(format!(
                "larger than {MAX_OBJECT_BYTES} bytes uncompressed"
            )));
        }
        changes.map_err(failed)
    }

    async fn apply_changes(&self, conn: &mut Option<Loader>, key: &str) -> Result<Loaded, Failure> {
        let changes = self.changes(key).await?;
        let schema = self.warehouse().table.table.clone();
        let loader = self.connect(conn).await.map_err(Failure::Retry)?;
        let (client, known) = loader.mirror_parts();
        let applied = super::mirror::apply(
            client,
            known,
            &schema,
            &self.dir,
            &self.spec.name,
            key,
            &changes,
        )
        .await;
        match applied {
            Ok(Outcome::Loaded { rows, .. }) => Ok(Loaded {
                rows,
                refused: Vec::new(),
                already: false,
            }),
            Ok(Outcome::AlreadyLoaded) => Ok(Loaded {
                already: true,
                ..Default::default()
            }),
            Err(e) => {
                // The next try connects afresh (and learns the tables anew).
                *conn = None;
                Err(Failure::Retry(e.to_string()))
            }
        }
    }

    /// Loads one staged object (see the module notes).
    pub async fn load(
        &self,
        conn: &mut Option<Loader>,
        key: &str,
        arrival_ms: i64,
    ) -> Result<Loaded, Failure> {
        if self.mirror() {
            return self.apply_changes(conn, key).await;
        }
        let columns = self.columns(conn).await?;
        let p = self.prepare(key, &columns).await?;
        self.commit(conn, p, arrival_ms).await
    }

    /// Loads a prepared object in one transaction with its ledger row.
    pub async fn commit(
        &self,
        conn: &mut Option<Loader>,
        p: Prepared,
        arrival_ms: i64,
    ) -> Result<Loaded, Failure> {
        let w = self.warehouse();
        let bucket = &self.spec.bucket;
        let columns = self.columns(conn).await?;
        // Read for other columns (the table changed, and the connection
        // with it): read it again.
        let p = if p.columns == columns {
            p
        } else {
            self.prepare(&p.key, &columns).await?
        };
        let key = p.key.as_str();
        let loader = self.connect(conn).await.map_err(Failure::Retry)?;
        let mut refused = p.refused;
        let max = w.copy.max_error;
        if refused.len() as u64 > max {
            return Err(Failure::Refused(refused));
        }
        let columns = &p.columns;
        // The refusals of rows PostgreSQL rejected, with their records.
        let by_row = |rejected: Vec<Rejected>| async move {
            let numbers: Vec<usize> = rejected.iter().map(|r| r.row).collect();
            let mut records = self.records_of(key, columns, &numbers).await?;
            let refusals: Vec<Refusal> = rejected
                .iter()
                .map(|r| Refusal {
                    raw: records.remove(&r.row).unwrap_or_default(),
                    reason: condition(&r.code),
                    message: r.message.clone(),
                })
                .collect();
            Ok::<_, Failure>((rejected, refusals))
        };
        let doc_key = self.error_key(key, "rows", arrival_ms, "");
        let mut all = refused.clone();
        let outcome = loader
            .load(
                &self.spec.name,
                key,
                &p.copy,
                refused.len() as u64,
                max,
                |rejected| {
                    let all = &mut all;
                    async move {
                        let (rejected, refusals) =
                            by_row(rejected).await.map_err(|e| e.to_string())?;
                        all.extend(refusals);
                        if !all.is_empty() {
                            let doc = Self::documents(all, arrival_ms);
                            self.stores
                                .put_async(bucket, &doc_key, &doc)
                                .await
                                .map_err(|e| {
                                    format!("writing the refused rows to {bucket}/{doc_key}: {e}")
                                })?;
                        }
                        Ok(rejected)
                    }
                },
            )
            .await;
        match outcome {
            Ok(Outcome::Loaded { rows, .. }) => Ok(Loaded {
                rows,
                refused: all,
                already: false,
            }),
            Ok(Outcome::AlreadyLoaded) => Ok(Loaded {
                already: true,
                ..Default::default()
            }),
            Err(LoadError::TooManyRejected(r)) => {
                refused.extend(by_row(r).await?.1);
                Err(Failure::Refused(refused))
            }
            Err(e @ (LoadError::Unavailable(_) | LoadError::Table(_))) => {
                // The next try connects afresh (and reads the table anew).
                *conn = None;
                Err(Failure::Retry(e.to_string()))
            }
        }
    }

    /// Puts an object that will not load in the error output: its refused
    /// rows (if any) and its manifest. Returns the manifest's key.
    pub async fn fail(
        &self,
        key: &str,
        arrival_ms: i64,
        refused: &[Refusal],
    ) -> std::io::Result<String> {
        let bucket = &self.spec.bucket;
        if !refused.is_empty() {
            let doc_key = self.error_key(key, "rows", arrival_ms, "");
            self.stores
                .put_async(bucket, &doc_key, &Self::documents(refused, arrival_ms))
                .await?;
        }
        let manifest = json!({
            "entries": [{ "url": format!("s3://{bucket}/{key}"), "mandatory": true }]
        });
        let manifest_key = self.error_key(key, "manifest", arrival_ms, ".manifest");
        self.stores
            .put_async(bucket, &manifest_key, manifest.to_string().as_bytes())
            .await?;
        Ok(manifest_key)
    }

    /// The staged objects a manifest names. Each must be in the stream's
    /// staging bucket: a manifest cannot load what the stream never staged.
    pub async fn manifest_entries(&self, manifest_key: &str) -> Result<Vec<String>, String> {
        let bucket = &self.spec.bucket;
        let bytes = self
            .stores
            .get(bucket, manifest_key)
            .await
            .map_err(|e| format!("reading {bucket}/{manifest_key}: {e}"))?;
        if bytes.len() > 1 << 20 {
            return Err(format!("{manifest_key}: a manifest is at most 1 MiB"));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{manifest_key} is not a manifest: {e}"))?;
        let entries = v["entries"]
            .as_array()
            .ok_or_else(|| format!("{manifest_key} has no entries"))?;
        let prefix = format!("s3://{bucket}/");
        entries
            .iter()
            .map(|e| {
                let url = e["url"].as_str().unwrap_or_default();
                url.strip_prefix(&prefix)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        format!("{manifest_key}: {url:?} is not an object of the staging bucket {bucket}")
                    })
            })
            .collect()
    }
}

/// The loading task of one stream.
pub struct Task {
    pub loading: Loading,
    pub queue: Arc<Queue>,
    pub stats: Arc<WarehouseStats>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Task {
    /// Runs until `stop`; the queue keeps what is left for the next start.
    pub fn start(
        self,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name(format!("load-{}", self.loading.spec.name))
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| self.run(&rt, stop));
                if let Err(p) = std::panic::catch_unwind(run) {
                    let what = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    tracing::error!(error = %what, "loading stopped unexpectedly; staged objects stay queued for the next start");
                }
            })
    }

    fn count_refused(&self, refused: &[Refusal]) {
        let mut counts = self.stats.rejected.lock().unwrap();
        for (reason, n) in by_reason(refused) {
            *counts.entry(reason).or_default() += n;
        }
    }

    fn report(&self, message: String) {
        *self.stats.last_error.lock().unwrap() = Some((message, now_ms()));
    }

    fn run(&self, rt: &tokio::runtime::Handle, mut stop: watch::Receiver<bool>) {
        let mut added = self.queue.watch();
        let mut conn: Option<Loader> = None;
        type Ahead = std::thread::JoinHandle<Result<Prepared, Failure>>;
        let mut ahead: Option<(String, Ahead)> = None;
        // A missing table or an unreachable warehouse shows at once, not
        // only when the first object is due.
        if let Err(e) = rt.block_on(self.loading.connect(&mut conn)) {
            tracing::warn!(stream = %self.loading.spec.name, error = %e, "the warehouse cannot be loaded yet");
            self.report(e);
        }
        if !self.queue.unreadable.is_empty() {
            let m = format!(
                "staged objects whose queue entries cannot be read are not loaded (fix or remove the files, then restart): {}",
                self.queue.unreadable.join("; ")
            );
            tracing::error!(stream = %self.loading.spec.name, "{m}");
            self.report(m);
        }
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            let Some(s) = self.queue.first() else {
                rt.block_on(async {
                    tokio::select! {
                        _ = added.changed() => {}
                        _ = stop.changed() => {}
                    }
                });
                continue;
            };
            // The object read ahead, if it is this one.
            let ready = match ahead.take() {
                Some((key, h)) => {
                    let p = h.join().ok();
                    p.filter(|_| key == s.key)
                }
                None => None,
            };
            // Read the next object while this one loads: PostgreSQL and
            // hydrant then work at once.
            let next = self.queue.after(&s).filter(|_| !self.loading.mirror());
            if let (Some(next), Some(c)) = (next, conn.as_ref()) {
                let (loading, columns, rt2) =
                    (self.loading.clone(), c.columns().to_vec(), rt.clone());
                let key = next.key.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("read-{}", self.loading.spec.name))
                    .spawn(move || rt2.block_on(loading.prepare(&key, &columns)));
                if let Ok(h) = spawned {
                    ahead = Some((next.key, h));
                }
            }
            if !self.deliver(rt, &mut conn, &s, ready, &mut stop) {
                return;
            }
            let mut backoff = Duration::from_millis(100);
            let s = self
                .queue
                .first()
                .filter(|q| q.first == s.first)
                .unwrap_or(s);
            while let Err(e) = self.queue.remove(&s) {
                self.report(format!("removing a loaded object from the queue: {e}"));
                if !sleep(rt, &mut stop, &mut backoff) {
                    return;
                }
            }
        }
    }

    /// Loads one object, or puts its manifest in the error output once its
    /// retries are over. False if hydrant stopped first.
    fn deliver(
        &self,
        rt: &tokio::runtime::Handle,
        conn: &mut Option<Loader>,
        s: &Staged,
        mut ready: Option<Result<Prepared, Failure>>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let name = &self.loading.spec.name;
        let retry = Duration::from_secs(self.loading.warehouse().retry_seconds as u64);
        let mut s = s.clone();
        let mut backoff = Duration::from_millis(100);
        let refused = loop {
            let attempt = match ready.take() {
                Some(Ok(p)) => rt.block_on(self.loading.commit(conn, p, s.oldest_ms)),
                // Read ahead and failed, or not read ahead: read it now.
                _ => rt.block_on(self.loading.load(conn, &s.key, s.oldest_ms)),
            };
            match attempt {
                Ok(l) => {
                    let st = &self.stats;
                    if !l.already {
                        st.objects_loaded.fetch_add(1, Relaxed);
                        st.rows_loaded.fetch_add(l.rows, Relaxed);
                        self.count_refused(&l.refused);
                    }
                    st.load_lag
                        .observe(Duration::from_millis((now_ms() - s.oldest_ms).max(0) as u64));
                    *st.last_error.lock().unwrap() = None;
                    tracing::debug!(stream = %name, key = %s.key, rows = l.rows, already = l.already, "loaded");
                    return true;
                }
                Err(Failure::Refused(r)) => {
                    self.report(Failure::Refused(r.clone()).to_string());
                    break r;
                }
                Err(Failure::Retry(m)) => {
                    let since = match s.failing_since_ms {
                        Some(ms) => ms,
                        None => {
                            let now = now_ms();
                            // If this cannot be written, the clock starts
                            // again at the next start; loading goes on.
                            if let Ok(marked) = self.queue.failing_since(&s, now) {
                                s = marked;
                            }
                            now
                        }
                    };
                    self.report(m.clone());
                    tracing::warn!(stream = %name, key = %s.key, error = %m, retry_in = ?backoff,
                        "loading failed; retrying");
                    if now_ms() - since >= retry.as_millis() as i64 {
                        tracing::error!(stream = %name, key = %s.key, error = %m,
                            "RetryOptions.DurationInSeconds is over: the object's manifest goes to the error output");
                        break Vec::new();
                    }
                    if !sleep(rt, stop, &mut backoff) {
                        return false;
                    }
                }
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match rt.block_on(self.loading.fail(&s.key, s.oldest_ms, &refused)) {
                Ok(manifest) => {
                    let st = &self.stats;
                    st.manifests_failed.fetch_add(1, Relaxed);
                    self.count_refused(&refused);
                    tracing::warn!(stream = %name, key = %s.key, %manifest, "not loaded; manifest in the error output");
                    return true;
                }
                Err(e) => {
                    self.report(format!("writing the manifest of {}: {e}", s.key));
                    if !sleep(rt, stop, &mut backoff) {
                        return false;
                    }
                }
            }
        }
    }
}

/// Waits `backoff` (then doubles it), or until hydrant stops: false then.
fn sleep(
    rt: &tokio::runtime::Handle,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    rt.block_on(async {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.changed() => false,
        }
    }) && !*stop.borrow()
}

/// The time in an object's name (`<stream>-1-YYYY-MM-DD-HH-MM-SS-<uuid>[ext]`), in ms.
fn object_time(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    (0..name.len()).rev().find_map(|p| {
        let time = name.get(p..p + 19)?;
        let id = name.get(p + 20..p + 56)?;
        uuid::Uuid::parse_str(id).ok()?;
        chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d-%H-%M-%S")
            .ok()
            .map(|t| t.and_utc().timestamp_millis())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_time_in_an_object_name() {
        let key = "orders/2026/11/28/13/my.stream-1-2026-11-28-13-05-09-1855d0cc-59ea-55d1-924c-b42d6dd62f04.gz";
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-28T13:05:09Z").unwrap();
        assert_eq!(super::object_time(key), Some(at.timestamp_millis()));
        assert_eq!(super::object_time("orders/not-an-object"), None);
    }
}

/// Refused rows counted by reason, for a summary.
pub fn by_reason(refused: &[Refusal]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in refused {
        *m.entry(r.reason.clone()).or_default() += 1;
    }
    m
}

/// `hydrant backfill`: loads the staged objects that manifests name, each
/// exactly once (an object the ledger has is skipped), and reports each.
/// Without manifest keys, takes every manifest the stream put in its error
/// output. Safe beside a running hydrant, and safe to run again.
pub async fn backfill(
    data_dir: &std::path::Path,
    config: &crate::config::Config,
    stream: &str,
    manifests: Vec<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let request = crate::stream::definition(data_dir, stream)?;
    let declared = config.declared().map_err(|e| anyhow::anyhow!(e))?;
    let spec = crate::spec::parse(&request, &declared)
        .with_context(|| format!("delivery stream {stream}"))?;
    anyhow::ensure!(
        spec.warehouse.is_some(),
        "delivery stream {stream} has no RedshiftDestinationConfiguration: there is nothing to backfill"
    );
    let local = crate::destination::lake::store::LocalStore::open(data_dir)
        .with_context(|| format!("opening the lake in {}", data_dir.display()))?;
    let stores = Stores::new(local, &config.buckets).map_err(|e| anyhow::anyhow!(e))?;
    let loading = Loading {
        spec,
        stores,
        dir: data_dir.join("streams").join(stream),
    };
    let manifests = if manifests.is_empty() {
        let head = loading
            .spec
            .error_output_prefix
            .as_deref()
            .map(|p| p.split("!{").next().unwrap_or(""))
            .unwrap_or("")
            .to_string();
        let own = format!("{stream}-{}-", crate::delivery::STREAM_VERSION);
        loading
            .stores
            .list(&loading.spec.bucket, &head)
            .await
            .with_context(|| format!("listing {}/{head}", loading.spec.bucket))?
            .into_iter()
            .filter(|k| {
                k.ends_with(".manifest")
                    && k.rsplit('/').next().is_some_and(|n| n.starts_with(&own))
            })
            .collect()
    } else {
        manifests
    };
    if manifests.is_empty() {
        println!("no manifests of {stream} to load");
        return Ok(());
    }
    let mut conn = None;
    let mut failed = 0;
    let now = chrono::Utc::now().timestamp_millis();
    for m in &manifests {
        let objects = match loading.manifest_entries(m).await {
            Ok(o) => o,
            Err(e) => {
                println!("{m}: {e}");
                failed += 1;
                continue;
            }
        };
        for key in objects {
            // The time in the object's name is its oldest record's arrival
            // (to the second): the error output goes where loading put it.
            let arrival = object_time(&key).unwrap_or(now);
            match loading.load(&mut conn, &key, arrival).await {
                Ok(l) if l.already => println!("{m}: {key}: already loaded, skipped"),
                Ok(l) => println!(
                    "{m}: {key}: loaded {} rows{}",
                    l.rows,
                    if l.refused.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", {} refused ({:?}) and in the error output",
                            l.refused.len(),
                            by_reason(&l.refused)
                        )
                    }
                ),
                Err(e) => {
                    println!("{m}: {key}: not loaded: {e}");
                    failed += 1;
                }
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of the manifests' objects could not be loaded (see above); run backfill again once fixed"
    );
    Ok(())
}
