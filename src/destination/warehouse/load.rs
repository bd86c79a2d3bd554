//! Loading one staged object into a PostgreSQL table, exactly once.
//!
//! # The argument
//!
//! A staged object has an identity (its stream and key, which delivery
//! derives from the log range it holds, so a replay stages the same object
//! under the same key). Loading it is one transaction that
//!
//! 1. inserts `(stream, object)` into the ledger `hydrant.loads`, whose
//!    primary key is that pair: if the row is already there, the object was
//!    loaded by a transaction that committed, and nothing more is done;
//! 2. copies the object's rows into the table (`COPY … FROM STDIN`);
//! 3. commits.
//!
//! The ledger row and the table rows commit together or not at all, so
//! whatever happens around it (hydrant SIGKILLed mid-COPY, PostgreSQL
//! restarted, the same object retried after a lost commit acknowledgement),
//! an object's rows are in the table once or not at all, and a retry
//! finishes what is missing. Two loaders racing on one object serialize on
//! the ledger's key: the second waits for the first and then finds its row.
//!
//! # One bad row fails alone
//!
//! PostgreSQL converts the values itself, with its own rules for every
//! column type. When it refuses a row, its error names the row
//! (`COPY t, line N`); the transaction is rolled back, that row is set
//! aside with PostgreSQL's reason, and the object is copied again without
//! it, until it loads or more rows than `MAXERROR` were refused, when the
//! object fails whole (and nothing of it is in the table). Each refused row
//! costs one more COPY of the object, which MAXERROR bounds.

use std::fmt;

use futures::SinkExt;
use tokio_postgres::{Client, NoTls};

use super::jdbc::Target;

/// A row as text values in the table's column order; `None` is NULL.
/// Values borrow from the staged object where they can.
pub type Row<'a> = Vec<Option<std::borrow::Cow<'a, str>>>;

/// Why a row was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its index among the object's rows.
    pub row: usize,
    /// PostgreSQL's SQLSTATE, such as `22P02` (invalid text representation).
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The rows loaded now; the ones refused.
    Loaded { rows: u64, rejected: Vec<Rejected> },
    /// A committed transaction had loaded this object before.
    AlreadyLoaded,
}

#[derive(Debug)]
pub enum LoadError {
    /// The warehouse cannot be reached or failed: retry later.
    Unavailable(String),
    /// More rows were refused than MAXERROR allows; nothing was loaded.
    TooManyRejected(Vec<Rejected>),
    /// The table or a column is missing, or the user may not write it.
    Table(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Unavailable(m) | LoadError::Table(m) => f.write_str(m),
            LoadError::TooManyRejected(r) => write!(
                f,
                "{} rows were refused, more than MAXERROR allows; first: row {}: {}",
                r.len(),
                r[0].row,
                r[0].message
            ),
        }
    }
}

fn unavailable(e: tokio_postgres::Error) -> LoadError {
    LoadError::Unavailable(match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        // "error connecting to server" says little without its cause.
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    })
}

/// `schema.table` or `table`, each part an identifier Redshift would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    pub fn parse(name: &str) -> Result<TableName, String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        };
        let (schema, table) = name.split_once('.').unwrap_or(("public", name));
        if !valid(schema) || !valid(table) {
            return Err(format!(
                "DataTableName {name:?} must be `table` or `schema.table`, each 1 to 63 letters, digits, '_' or '$'"
            ));
        }
        // Unquoted identifiers fold to lower case, in Redshift as in PostgreSQL.
        Ok(TableName {
            schema: schema.to_ascii_lowercase(),
            table: table.to_ascii_lowercase(),
        })
    }

    fn quoted(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.table)
    }
}

/// A column the loader writes: its name and what the table says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub data_type: String,
    /// For character columns, their length.
    pub max_chars: Option<usize>,
}

/// The size of each piece of COPY data sent.
const COPY_PIECE: usize = 256 << 10;

/// Rows as the text COPY reads, a line each, written to a file as they
/// come (one that has no name, so nothing is left of it after a crash):
/// an object's rows are not held in memory, only the piece being written
/// or sent.
#[derive(Debug)]
pub struct CopyText {
    file: std::fs::File,
    written: u64,
    rows: usize,
    pending: Vec<u8>,
}

impl CopyText {
    /// An empty one whose file is in `dir`.
    pub fn spooled(dir: &std::path::Path) -> std::io::Result<CopyText> {
        let path = dir.join(format!("copy-{}", uuid::Uuid::new_v4()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(CopyText {
            file,
            written: 0,
            rows: 0,
            pending: Vec::with_capacity(COPY_PIECE),
        })
    }

    pub fn push(&mut self, row: &Row<'_>) -> std::io::Result<()> {
        text_row(row, &mut self.pending);
        self.rows += 1;
        if self.pending.len() >= COPY_PIECE {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out what is pending: due before the rows are read.
    pub fn flush(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&self.pending, self.written)?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    pub fn from_rows(dir: &std::path::Path, rows: &[Row<'_>]) -> std::io::Result<CopyText> {
        let mut t = CopyText::spooled(dir)?;
        for r in rows {
            t.push(r)?;
        }
        t.flush()?;
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The whole rows that start at byte `from`, about a piece of them,
    /// without those `refused` (empty: none is); `row` is the index of the
    /// first, and comes back as the index after the last. Also the byte
    /// after the last.
    fn piece(
        &self,
        from: u64,
        refused: &[bool],
        row: &mut usize,
    ) -> std::io::Result<(Vec<u8>, u64)> {
        use std::os::unix::fs::FileExt;
        let left = self.written - from;
        let mut want = COPY_PIECE as u64;
        loop {
            let mut bytes = vec![0; want.min(left) as usize];
            self.file.read_exact_at(&mut bytes, from)?;
            let Some(last) = bytes.iter().rposition(|b| *b == b'\n') else {
                if want >= left {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the spooled rows end inside a row",
                    ));
                }
                // A row longer than a piece: read more of it.
                want *= 2;
                continue;
            };
            bytes.truncate(last + 1);
            let next = from + bytes.len() as u64;
            if refused.is_empty() {
                return Ok((bytes, next));
            }
            let mut kept = Vec::with_capacity(bytes.len());
            for line in bytes.split_inclusive(|b| *b == b'\n') {
                if !refused.get(*row).copied().unwrap_or(false) {
                    kept.extend_from_slice(line);
                }
                *row += 1;
            }
            return Ok((kept, next));
        }
    }
}

pub struct Loader {
    client: Client,
    table: TableName,
    columns: Vec<Column>,
    copy: String,
    /// For a mirror: what its tables are known to have.
    pub known: super::mirror::Known,
}

impl Loader {
    /// Connects, creates the ledger if need be, and checks that the table and
    /// the columns (`None`: every column of the table, in order) exist.
    pub async fn connect(
        target: &Target,
        user: &str,
        password: &str,
        table: TableName,
        columns: Option<&[String]>,
    ) -> Result<Loader, LoadError> {
        let client = open(target, user, password).await?;
        Self::with_table(client, table, columns).await
    }

    /// Connects for a mirror, whose tables come and go with the source's.
    pub async fn connect_mirror(
        target: &Target,
        user: &str,
        password: &str,
    ) -> Result<Loader, LoadError> {
        Ok(Loader {
            client: open(target, user, password).await?,
            table: TableName {
                schema: String::new(),
                table: String::new(),
            },
            columns: Vec::new(),
            copy: String::new(),
            known: Default::default(),
        })
    }

    /// The connection and what the mirror knows of its tables.
    pub fn mirror_parts(&mut self) -> (&mut Client, &mut super::mirror::Known) {
        (&mut self.client, &mut self.known)
    }

    async fn with_table(
        client: Client,
        table: TableName,
        columns: Option<&[String]>,
    ) -> Result<Loader, LoadError> {
        let found = client
            .query(
                "SELECT column_name, data_type, character_maximum_length
                   FROM information_schema.columns
                  WHERE table_schema = $1 AND table_name = $2
                  ORDER BY ordinal_position",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(unavailable)?;
        let all: Vec<Column> = found
            .iter()
            .map(|r| Column {
                name: r.get(0),
                data_type: r.get(1),
                max_chars: r.get::<_, Option<i32>>(2).map(|n| n as usize),
            })
            .collect();
        if all.is_empty() {
            return Err(LoadError::Table(format!(
                "table {}.{} does not exist (or the user cannot see it)",
                table.schema, table.table
            )));
        }
        let columns = match columns {
            None => all,
            Some(names) => names
                .iter()
                .map(|n| {
                    let folded = n.trim().to_ascii_lowercase();
                    all.iter()
                        .find(|c| c.name == folded)
                        .cloned()
                        .ok_or_else(|| {
                            LoadError::Table(format!(
                                "table {}.{} has no column {n:?}",
                                table.schema, table.table
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let list: Vec<String> = columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
        let copy = format!("COPY {} ({}) FROM STDIN", table.quoted(), list.join(", "));
        Ok(Loader {
            client,
            table,
            columns,
            copy,
            known: Default::default(),
        })
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Loads one object's rows exactly once (see the module docs), refusing
    /// at most `max_error` rows, of which `refused_before` were refused
    /// before (rows that were not rows at all). `before_commit` runs with the refused rows
    /// just before the transaction commits (to put them in the error
    /// output, so that no committed load lacks them); if it fails, nothing
    /// is committed.
    pub async fn load<F, Fut>(
        &mut self,
        stream: &str,
        object: &str,
        rows: &CopyText,
        refused_before: u64,
        max_error: u64,
        before_commit: F,
    ) -> Result<Outcome, LoadError>
    where
        F: FnOnce(Vec<Rejected>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Rejected>, String>>,
    {
        let mut before_commit = Some(before_commit);
        let mut rejected: Vec<Rejected> = Vec::new();
        debug_assert!(rows.pending.is_empty(), "rows flushed before they load");
        let mut refused = vec![false; rows.len()];
        loop {
            let keep: Vec<usize> = (0..rows.len()).filter(|i| !refused[*i]).collect();
            let tx = self.client.transaction().await.map_err(unavailable)?;
            let fresh = tx
                .execute(
                    "INSERT INTO hydrant.loads (stream, object, rows, rejected)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[
                        &stream,
                        &object,
                        &(keep.len() as i64),
                        &((rejected.len() as u64 + refused_before) as i64),
                    ],
                )
                .await
                .map_err(unavailable)?;
            if fresh == 0 {
                return Ok(Outcome::AlreadyLoaded);
            }
            // Ok(a PostgreSQL error) or Err(why the rows could not be read).
            let copied: Result<u64, Result<tokio_postgres::Error, String>> = async {
                let sink = tx
                    .copy_in::<_, bytes::Bytes>(&self.copy)
                    .await
                    .map_err(Ok)?;
                futures::pin_mut!(sink);
                // In pieces, so PostgreSQL reads while the rest arrives.
                let (mut at, mut row) = (0, 0);
                let skip: &[bool] = if refused.contains(&true) {
                    &refused
                } else {
                    &[]
                };
                while at < rows.written {
                    let (piece, next) = rows
                        .piece(at, skip, &mut row)
                        .map_err(|e| Err(format!("reading the rows spooled for COPY: {e}")))?;
                    at = next;
                    if !piece.is_empty() {
                        sink.feed(piece.into()).await.map_err(Ok)?;
                    }
                }
                sink.finish().await.map_err(Ok)
            }
            .await;
            let copied = match copied {
                Err(Err(m)) => return Err(LoadError::Unavailable(m)),
                Err(Ok(e)) => Err(e),
                Ok(n) => Ok(n),
            };
            match copied {
                Ok(n) => {
                    let hook = before_commit.take().expect("commits once");
                    let rejected = hook(rejected).await.map_err(LoadError::Unavailable)?;
                    tx.commit().await.map_err(unavailable)?;
                    return Ok(Outcome::Loaded { rows: n, rejected });
                }
                Err(e) => {
                    let Some((line, db)) = e
                        .as_db_error()
                        .and_then(|db| copy_line(db.where_()?).map(|l| (l, db)))
                    else {
                        return Err(match e.as_db_error() {
                            Some(db) if db.code().code().starts_with("42") => {
                                LoadError::Table(format!(
                                    "{}.{}: {}",
                                    self.table.schema,
                                    self.table.table,
                                    db.message()
                                ))
                            }
                            _ => unavailable(e),
                        });
                    };
                    let row = *keep.get(line - 1).ok_or_else(|| {
                        LoadError::Unavailable(format!(
                            "COPY refused line {line} of {}",
                            keep.len()
                        ))
                    })?;
                    refused[row] = true;
                    rejected.push(Rejected {
                        row,
                        code: db.code().code().to_string(),
                        message: db.message().to_string(),
                    });
                    drop(tx);
                    if rejected.len() as u64 + refused_before > max_error {
                        return Err(LoadError::TooManyRejected(rejected));
                    }
                }
            }
        }
    }
}

/// A connection to the warehouse, with the ledger created if need be.
async fn open(target: &Target, user: &str, password: &str) -> Result<Client, LoadError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .dbname(&target.database)
        .user(user)
        .password(password)
        .application_name(&target.application_name)
        // Times hydrant converts (epochs, patterns) are UTC.
        // Quiet: CREATE … IF NOT EXISTS would log a notice per connection.
        .options("-c TimeZone=UTC -c client_min_messages=warning")
        .connect_timeout(target.connect_timeout);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        let LoadError::Unavailable(m) = unavailable(e) else {
            unreachable!()
        };
        LoadError::Unavailable(format!("{}:{}: {m}", target.host, target.port))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "warehouse connection ended");
        }
    });
    client
        // Under a lock: two loaders creating the ledger at once would
        // otherwise collide inside PostgreSQL's catalog.
        .batch_execute(
            "BEGIN;
                 SELECT pg_advisory_xact_lock(7310682049);
                 CREATE SCHEMA IF NOT EXISTS hydrant;
                 CREATE TABLE IF NOT EXISTS hydrant.loads (
                     stream text NOT NULL,
                     object text NOT NULL,
                     rows bigint NOT NULL,
                     rejected bigint NOT NULL,
                     loaded_at timestamptz NOT NULL DEFAULT now(),
                     PRIMARY KEY (stream, object));
                 COMMIT",
        )
        .await
        .map_err(unavailable)?;
    Ok(client)
}

/// The line a COPY error's context names (`COPY t, line 3, column a: …`).
fn copy_line(context: &str) -> Option<usize> {
    let rest = &context[context.find(", line ")? + 7..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|n| *n > 0)
}

/// One row in COPY's text format: tab-separated, `\N` for NULL, with
/// backslash, tab, newline and carriage return escaped.
fn text_row(row: &Row<'_>, out: &mut Vec<u8>) {
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let Some(s) = v else {
            out.extend_from_slice(b"\\N");
            continue;
        };
        // Runs without a byte to escape are copied whole.
        let mut rest = s.as_bytes();
        while let Some(at) = rest
            .iter()
            .position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
        {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(match rest[at] {
                b'\\' => b"\\\\",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                _ => b"\\r",
            });
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_escape_for_copy_text() {
        let mut out = Vec::new();
        text_row(
            &vec![Some("a\tb\\c\nd\r".into()), None, Some("".into())],
            &mut out,
        );
        assert_eq!(out, b"a\\tb\\\\c\\nd\\r\t\\N\t\n");
    }

    /// Every row comes back whole and in order, however long, and a
    /// refused one does not come back at all.
    #[test]
    fn spooled_rows_come_back_in_pieces_without_the_refused() {
        let values: Vec<String> = (0..2000)
            .map(|i| match i % 500 {
                // Longer than a piece, and longer than two.
                7 => "x".repeat(COPY_PIECE + 3),
                8 => "y".repeat(3 * COPY_PIECE),
                _ => format!("row {i}\twith a tab"),
            })
            .collect();
        let rows: Vec<Row<'_>> = values
            .iter()
            .map(|v| vec![Some(v.as_str().into())])
            .collect();
        let text = CopyText::from_rows(&std::env::temp_dir(), &rows).unwrap();
        assert_eq!(text.len(), 2000);
        let expected = |refused: &[bool]| -> Vec<u8> {
            let mut out = Vec::new();
            for (r, refused) in rows.iter().zip(refused) {
                if !refused {
                    text_row(r, &mut out);
                }
            }
            out
        };
        let mut some = vec![false; 2000];
        for i in [0, 7, 8, 999, 1507, 1999] {
            some[i] = true;
        }
        for refused in [vec![], vec![false; 2000], some, vec![true; 2000]] {
            let (mut at, mut row, mut got) = (0, 0, Vec::new());
            while at < text.written {
                let (piece, next) = text.piece(at, &refused, &mut row).unwrap();
                assert!(piece.is_empty() || piece.ends_with(b"\n"));
                got.extend_from_slice(&piece);
                at = next;
            }
            let none = vec![false; 2000];
            let refused = if refused.is_empty() { &none } else { &refused };
            assert!(got == expected(refused));
        }
    }

    #[test]
    fn copy_error_context_names_the_line() {
        assert_eq!(copy_line("COPY t, line 3, column a: \"x\""), Some(3));
        assert_eq!(copy_line("COPY t, line 12"), Some(12));
        assert_eq!(copy_line("PL/pgSQL function"), None);
    }

    #[test]
    fn table_names_fold_and_refuse() {
        assert_eq!(
            TableName::parse("Sales.Events").unwrap(),
            TableName {
                schema: "sales".into(),
                table: "events".into()
            }
        );
        assert_eq!(TableName::parse("events").unwrap().schema, "public");
        for bad in ["", "a.b.c", "1t", "t;drop", "\"t\"", "s."] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }
}
