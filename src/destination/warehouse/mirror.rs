//! The warehouse mirror: a DatabaseAsSource stream's change records
//! applied to one PostgreSQL table per source table, exactly once.
//!
//! A staged object of change records is applied in one transaction with
//! its ledger row (`hydrant.loads`), as a COPY load is (see `load`), so an
//! object's changes are in the mirror once or not at all. Within the
//! object, changes are reduced to each row's last state, in order: a row
//! inserted, updated and deleted is one delete; a primary key changed
//! deletes the old key. The transaction then deletes every key the object
//! touched and inserts the rows that exist after it, one statement per
//! table each, never row by row. A truncate empties the table first, and
//! only the changes after it count. Objects load in log order, so after
//! each commit the mirror holds every source row as of one moment of the
//! source: the last change the object holds.
//!
//! Mirror tables are created as the source's tables appear, with the
//! source's key as primary key and the column types the source recorded
//! (`source-tables.json` in the stream's directory); a column added at the
//! source is added to the mirror before the first change that has it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value as Json};
use tokio_postgres::Client;

use super::load::{LoadError, Outcome};

/// The file a change source records its tables' columns and keys in.
pub const TABLES_FILE: &str = "source-tables.json";

/// What a source says of one table: its columns with portable types, and
/// its key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TableDef {
    pub columns: Vec<ColumnDef>,
    pub key: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    /// `int8` … `uint64`, `decimal`, `float32`, `float64`, `bits`, `text`,
    /// `bytes`, `date`, `time` (MySQL's: a duration), `datetime`,
    /// `timestamp`, `year`, `json`; from PostgreSQL also `bool`, `uuid`,
    /// `timeofday`, `timetz` and `interval`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The source's tables, `database.table` (PostgreSQL: `schema.table`) to
/// definition.
pub type TableDefs = BTreeMap<String, TableDef>;

pub fn read_defs(dir: &Path) -> Result<TableDefs, String> {
    let path = dir.join(TABLES_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TableDefs::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Records the source's tables (atomically: write aside, then rename).
pub fn write_defs(dir: &Path, defs: &TableDefs) -> std::io::Result<()> {
    let tmp = dir.join(format!("{TABLES_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(defs).expect("serializes"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(TABLES_FILE))?;
    crate::log::sync_dir(dir)
}

/// The PostgreSQL type a portable column type is mirrored as.
pub fn pg_type(kind: &str) -> &'static str {
    match kind {
        "int8" | "uint8" | "int16" | "year" => "smallint",
        "uint16" | "int24" | "uint24" | "int32" => "integer",
        "uint32" | "int64" => "bigint",
        "uint64" | "bits" => "numeric(20,0)",
        "bool" => "boolean",
        "uuid" => "uuid",
        "timeofday" => "time",
        "timetz" => "timetz",
        "interval" => "interval",
        "decimal" => "numeric",
        "float32" => "real",
        "float64" => "double precision",
        "bytes" => "bytea",
        "date" => "date",
        "time" => "interval",
        "datetime" => "timestamp",
        "timestamp" => "timestamptz",
        "json" => "jsonb",
        _ => "text",
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One table's changes in an object, reduced.
#[derive(Default)]
struct Net {
    truncate: bool,
    /// Key (JSON text) to the row after the object (None: deleted), and
    /// the key itself.
    rows: HashMap<String, (Json, Option<Json>)>,
    /// Keys in first-seen order, so statements are reproducible.
    order: Vec<String>,
}

impl Net {
    fn set(&mut self, key: Json, row: Option<Json>) {
        let text = key.to_string();
        if !self.rows.contains_key(&text) {
            self.order.push(text.clone());
        }
        self.rows.insert(text, (key, row));
    }
}

/// The mirror's connection state: the columns each mirror table is known
/// to have.
#[derive(Default)]
pub struct Known {
    columns: HashMap<String, HashSet<String>>,
}

/// One staged object's change records, reduced: what applying it does.
#[derive(Default)]
pub struct Changes {
    tables: BTreeMap<String, Net>,
    count: u64,
}

impl Changes {
    /// Reads an object's change records as they are decompressed: memory
    /// holds a record and the reduced rows, not the object.
    pub fn read(mut body: impl std::io::BufRead) -> Result<Changes, String> {
        let mut changes = Changes::default();
        let (mut pieces, mut piece) = (super::row::Pieces::json(), Vec::new());
        while pieces
            .read(&mut body, &mut piece)
            .map_err(|e| format!("reading it: {e}"))?
        {
            let text = piece.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let record: Json =
                serde_json::from_slice(text).map_err(|e| format!("not a change record: {e}"))?;
            changes.add(&record)?;
        }
        Ok(changes)
    }

    fn add(&mut self, record: &Json) -> Result<(), String> {
        let source = &record["source"];
        // The table's namespace: PostgreSQL's schema, MySQL's database.
        let (Some(db), Some(table), Some(op)) = (
            source["schema"].as_str().or(source["db"].as_str()),
            source["table"].as_str(),
            record["op"].as_str(),
        ) else {
            return Err("a record without op, source.db and source.table".into());
        };
        let net = self.tables.entry(format!("{db}.{table}")).or_default();
        self.count += 1;
        match op {
            "t" => {
                *net = Net {
                    truncate: true,
                    ..Net::default()
                }
            }
            "d" => net.set(record["key"].clone(), None),
            "c" | "r" | "u" => {
                if op == "u" {
                    if let (Some(before), Some(key)) =
                        (record["before"].as_object(), record["key"].as_object())
                    {
                        let old: Map<String, Json> = key
                            .keys()
                            .map(|k| (k.clone(), before.get(k).cloned().unwrap_or(Json::Null)))
                            .collect();
                        if old != *key {
                            net.set(Json::Object(old), None);
                        }
                    }
                }
                net.set(record["key"].clone(), Some(record["after"].clone()));
            }
            other => return Err(format!("unknown op {other:?}")),
        }
        Ok(())
    }
}

/// Applies one staged object's changes (see the module notes).
pub async fn apply(
    client: &mut Client,
    known: &mut Known,
    schema: &str,
    dir: &Path,
    stream: &str,
    object: &str,
    changes: &Changes,
) -> Result<Outcome, LoadError> {
    let bad = |m: String| LoadError::Table(format!("{object}: {m}"));
    let (tables, changes) = (&changes.tables, changes.count);
    let tx = client.transaction().await.map_err(unavailable)?;
    let fresh = tx
        .execute(
            "INSERT INTO hydrant.loads (stream, object, rows, rejected)
             VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
            &[&stream, &object, &(changes as i64)],
        )
        .await
        .map_err(unavailable)?;
    if fresh == 0 {
        return Ok(Outcome::AlreadyLoaded);
    }
    // Read once per object: it is small, and the source rewrites it only
    // at DDL.
    let defs = read_defs(dir).map_err(bad)?;
    for (name, net) in tables {
        let Some((_, table)) = name.split_once('.') else {
            continue;
        };
        let target = format!("{}.{}", ident(schema), ident(table));
        // The columns the changes carry, which the mirror must have.
        let mut needed: Vec<String> = Vec::new();
        for (_, row) in net.rows.values() {
            if let Some(Json::Object(m)) = row {
                for k in m.keys() {
                    if !needed.contains(k) {
                        needed.push(k.clone());
                    }
                }
            }
        }
        let have = known.columns.entry(target.clone()).or_default();
        let def = defs
            .get(name)
            .ok_or_else(|| bad(format!("the source recorded no definition of {name}")))?;
        if have.is_empty() || needed.iter().any(|c| !have.contains(c)) {
            ensure(&tx, schema, table, def, &needed, have).await?;
        }
        let kinds: HashMap<String, String> = def
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.kind.clone()))
            .collect();
        if net.truncate {
            tx.batch_execute(&format!("TRUNCATE {target}"))
                .await
                .map_err(|e| table_error(&target, e))?;
        }
        let keys: Vec<&Json> = net.order.iter().map(|k| &net.rows[k].0).collect();
        if !keys.is_empty() && !net.truncate {
            let key_cols: Vec<String> = keys[0]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let on: Vec<String> = key_cols
                .iter()
                .map(|c| format!("m.{c} = k.{c}", c = ident(c)))
                .collect();
            let sql = format!(
                "DELETE FROM {target} m USING jsonb_populate_recordset(NULL::{target}, $1::text::jsonb) k WHERE {}",
                on.join(" AND ")
            );
            let param =
                serde_json::to_string(&keys.iter().map(|k| typed(k, &kinds)).collect::<Vec<_>>())
                    .expect("serializes");
            tx.execute(&sql, &[&param])
                .await
                .map_err(|e| table_error(&target, e))?;
        }
        let rows: Vec<Json> = net
            .order
            .iter()
            .filter_map(|k| net.rows[k].1.as_ref().map(|r| typed(r, &kinds)))
            .collect();
        if !rows.is_empty() {
            let sql = format!(
                "INSERT INTO {target} SELECT * FROM jsonb_populate_recordset(NULL::{target}, $1::text::jsonb)"
            );
            let param = serde_json::to_string(&rows).expect("serializes");
            tx.execute(&sql, &[&param])
                .await
                .map_err(|e| table_error(&target, e))?;
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(Outcome::Loaded {
        rows: changes,
        rejected: Vec::new(),
    })
}

/// A row with its values as PostgreSQL reads them from JSON: binary
/// (base64 in the record) as bytea's hex text.
fn typed(row: &Json, kinds: &HashMap<String, String>) -> Json {
    let Json::Object(m) = row else {
        return row.clone();
    };
    Json::Object(
        m.iter()
            .map(|(k, v)| {
                let v = match (kinds.get(k).map(String::as_str), v) {
                    (Some("bytes"), Json::String(s)) => {
                        match base64::engine::general_purpose::STANDARD.decode(s) {
                            Ok(b) => {
                                let mut hex = String::with_capacity(2 + 2 * b.len());
                                hex.push_str("\\x");
                                for x in b {
                                    hex.push_str(&format!("{x:02x}"));
                                }
                                Json::String(hex)
                            }
                            Err(_) => v.clone(),
                        }
                    }
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// Creates the mirror table if need be, and adds the columns it lacks.
async fn ensure(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    def: &TableDef,
    needed: &[String],
    have: &mut HashSet<String>,
) -> Result<(), LoadError> {
    let target = format!("{}.{}", ident(schema), ident(table));
    let existing = tx
        .query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            &[&schema, &table],
        )
        .await
        .map_err(unavailable)?;
    have.clear();
    have.extend(existing.iter().map(|r| r.get::<_, String>(0)));
    let type_of = |c: &str| {
        def.columns
            .iter()
            .find(|d| d.name == c)
            .map_or("text", |d| pg_type(&d.kind))
    };
    if have.is_empty() {
        let mut cols: Vec<String> = def
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), pg_type(&c.kind)))
            .collect();
        let key: Vec<String> = def.key.iter().map(|k| ident(k)).collect();
        cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
        // Under a lock: two streams creating one schema at once collide.
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(7310682050);
             CREATE SCHEMA IF NOT EXISTS {};
             CREATE TABLE IF NOT EXISTS {target} ({})",
            ident(schema),
            cols.join(", ")
        ))
        .await
        .map_err(|e| table_error(&target, e))?;
        have.extend(def.columns.iter().map(|c| c.name.clone()));
    }
    for c in needed {
        if !have.contains(c) {
            tx.batch_execute(&format!(
                "ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {} {}",
                ident(c),
                type_of(c)
            ))
            .await
            .map_err(|e| table_error(&target, e))?;
            have.insert(c.clone());
        }
    }
    Ok(())
}

fn unavailable(e: tokio_postgres::Error) -> LoadError {
    LoadError::Unavailable(match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    })
}

fn table_error(target: &str, e: tokio_postgres::Error) -> LoadError {
    match e.as_db_error() {
        Some(db) => LoadError::Table(format!("mirror table {target}: {}", db.message())),
        None => LoadError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object's changes reduce to each row's last state, read a record
    /// at a time from a reader that hands over a few bytes per call.
    #[test]
    fn changes_reduce_to_each_rows_last_state_read_in_small_pieces() {
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let rec = |op: &str, table: &str, key: i64, before: Json, after: Json| {
            serde_json::json!({"op": op, "source": {"db": "shop", "table": table},
                "key": {"id": key}, "before": before, "after": after})
            .to_string()
        };
        let body = [
            rec("t", "a", 0, Json::Null, Json::Null),
            rec(
                "c",
                "a",
                1,
                Json::Null,
                serde_json::json!({"id": 1, "v": 1}),
            ),
            rec(
                "c",
                "a",
                2,
                Json::Null,
                serde_json::json!({"id": 2, "v": 2}),
            ),
            // A key change: 2 becomes 3.
            rec(
                "u",
                "a",
                3,
                serde_json::json!({"id": 2, "v": 2}),
                serde_json::json!({"id": 3, "v": 2}),
            ),
            rec(
                "d",
                "a",
                1,
                serde_json::json!({"id": 1, "v": 1}),
                Json::Null,
            ),
            rec("r", "b", 9, Json::Null, serde_json::json!({"id": 9})),
        ]
        .join("\n");
        let c = Changes::read(std::io::BufReader::new(Trickle(body.as_bytes()))).unwrap();
        assert_eq!(c.count, 6);
        let a = &c.tables["shop.a"];
        assert!(a.truncate);
        let state: Vec<(String, Option<Json>)> = a
            .order
            .iter()
            .map(|k| (k.clone(), a.rows[k].1.clone()))
            .collect();
        assert_eq!(
            state,
            [
                (r#"{"id":1}"#.into(), None),
                (r#"{"id":2}"#.into(), None),
                (
                    r#"{"id":3}"#.into(),
                    Some(serde_json::json!({"id": 3, "v": 2}))
                ),
            ]
        );
        assert_eq!(c.tables["shop.b"].order, [r#"{"id":9}"#]);
        let e = Changes::read(&b"{\"op\": \"c\"} {oops"[..]).err().unwrap();
        assert!(e.contains("a record without op"), "{e}");
        let e = Changes::read(
            &b"{\"op\": \"c\", \"source\": {\"db\": \"d\", \"table\": \"t\"}} {oops"[..],
        )
        .err()
        .unwrap();
        assert!(e.starts_with("not a change record"), "{e}");
    }
}
