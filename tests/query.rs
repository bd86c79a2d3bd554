//! SQL over a lake laid out on disk the way delivery writes it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hydrant::destination::lake::parquet::{encode, InferredSchema, ParquetOptions, TableSchema};
use hydrant::query::{
    to_csv, to_json, to_table, JsonCompression, Known, Lake, QueryError, TableDef, TableFormat,
};
use serde_json::{json, Value};

/// A fresh directory per test, removed when the test ends.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lakeql-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn json_table(name: &str, location: &Path) -> TableDef {
    TableDef {
        name: name.into(),
        location: location.into(),
        remote: None,
        format: TableFormat::JsonLines {
            compression: JsonCompression::Uncompressed,
        },
        file_extension: String::new(),
        partition_cols: vec![],
        schema: None,
    }
}

fn parquet_table(name: &str, location: &Path, schema: Option<SchemaRef>) -> TableDef {
    TableDef {
        name: name.into(),
        location: location.into(),
        remote: None,
        format: TableFormat::Parquet,
        file_extension: ".parquet".into(),
        partition_cols: vec![],
        schema,
    }
}

fn parquet(schema: &TableSchema, records: &[&str]) -> Vec<u8> {
    let records: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
    encode(schema, &records, &ParquetOptions::default()).unwrap()
}

fn table_schema(cols: &[(&str, &str)]) -> TableSchema {
    let cols: Vec<(String, String)> = cols
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    TableSchema::from_columns(&cols).unwrap()
}

/// The query's rows as JSON arrays.
async fn rows(lake: &Lake, sql: &str) -> Vec<Value> {
    let batches = lake.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    match to_json(&batches)["rows"].take() {
        Value::Array(rows) => rows,
        other => panic!("rows: {other}"),
    }
}

const CHAT: &[&str] = &[
    r#"{"event_name": "JOIN", "user": 1, "room": "a"}"#,
    r#"{"event_name": "MESSAGE", "user": 1, "room": "a"}"#,
    r#"{"event_name": "MESSAGE", "user": 2, "room": "a"}"#,
    r#"{"event_name": "LEAVE", "user": 1, "room": "b"}"#,
];

/// Firehose's layout: prefix/YYYY/MM/DD/HH/stream-1-YYYY-...-uuid[.gz].
fn firehose_key(dir: &Path, hour: u32, n: u32, ext: &str) -> PathBuf {
    dir.join(format!(
        "2024/05/01/{hour:02}/s-1-2024-05-01-{hour:02}-00-00-{n}{ext}"
    ))
}

#[tokio::test]
async fn counts_and_group_by_over_plain_and_gzip_json() {
    let tmp = TempDir::new("groupby");
    let plain = tmp.0.join("events/my-event-staging");
    write(
        &firehose_key(&plain, 10, 1, ""),
        (CHAT[..2].join("\n") + "\n").as_bytes(),
    );
    write(
        &firehose_key(&plain, 11, 2, ""),
        (CHAT[2..].join("\n") + "\n").as_bytes(),
    );
    let zipped = tmp.0.join("events/zipped");
    write(
        &firehose_key(&zipped, 10, 1, ".gz"),
        &gzip(CHAT.join("\n").as_bytes()),
    );
    write(
        &firehose_key(&zipped, 10, 2, ".gz"),
        &gzip(CHAT.join("\n").as_bytes()),
    );
    let mut gz = json_table("zipped", &zipped);
    gz.format = TableFormat::JsonLines {
        compression: JsonCompression::Gzip,
    };
    gz.file_extension = ".gz".into();
    let lake = Lake::new(vec![json_table("my-event-staging", &plain), gz])
        .await
        .unwrap();

    assert_eq!(
        rows(&lake, r#"SELECT count(*) FROM "my-event-staging""#).await,
        [json!([4])]
    );
    assert_eq!(
        rows(&lake, "SELECT count(*) FROM zipped").await,
        [json!([8])]
    );
    assert_eq!(
        rows(&lake, "SELECT event_name, count(*) AS n FROM my_event_staging GROUP BY event_name ORDER BY n DESC, event_name").await,
        [json!(["MESSAGE", 2]), json!(["JOIN", 1]), json!(["LEAVE", 1])]
    );
    assert_eq!(
        rows(
            &lake,
            "SELECT count(DISTINCT user) FROM zipped WHERE room = 'a'"
        )
        .await,
        [json!([2])]
    );
}

#[tokio::test]
async fn zstd_json_and_concatenated_records() {
    let tmp = TempDir::new("zstd");
    let dir = tmp.0.join("z");
    write(
        &dir.join("f1.zst"),
        &zstd::encode_all(CHAT.join("\n").as_bytes(), 0).unwrap(),
    );
    // Without AppendDelimiterToRecord, Firehose objects are records back to back.
    let raw = tmp.0.join("raw");
    write(&raw.join("f1"), CHAT.concat().as_bytes());
    let mut z = json_table("z", &dir);
    z.format = TableFormat::JsonLines {
        compression: JsonCompression::Zstd,
    };
    let lake = Lake::new(vec![z, json_table("raw", &raw)]).await.unwrap();
    assert_eq!(rows(&lake, "SELECT sum(user) FROM z").await, [json!([5])]);
    assert_eq!(
        rows(&lake, "SELECT sum(user), count(*) FROM raw").await,
        [json!([5, 4])]
    );
}

#[tokio::test]
async fn json_schema_is_merged_across_files() {
    let tmp = TempDir::new("merge");
    let dir = tmp.0.join("s");
    write(&dir.join("2024/01/a"), br#"{"id": 1, "amount": 2}"#);
    // Fields that only appear in later files (and late in a file) are columns.
    let later = [r#"{"id": 2, "amount": 0.5}"#; 1500].join("\n")
        + "\n"
        + r#"{"id": 3, "country": "NO", "o": {"x": 1}}"#;
    write(&dir.join("2024/02/b"), later.as_bytes());
    write(&dir.join("2024/03/c"), br#"{"id": 4, "o": {"y": "z"}}"#);
    let lake = Lake::new(vec![json_table("s", &dir)]).await.unwrap();
    assert_eq!(
        rows(&lake, "SELECT id, country FROM s WHERE country IS NOT NULL").await,
        [json!([3, "NO"])]
    );
    // Integers and floats merge to double.
    assert_eq!(
        rows(&lake, "SELECT sum(amount) FROM s").await,
        [json!([752.0])]
    );
    assert_eq!(
        rows(&lake, "SELECT o FROM s WHERE o IS NOT NULL ORDER BY id").await,
        [json!([{"x": 1, "y": null}]), json!([{"x": null, "y": "z"}])]
    );
}

#[tokio::test]
async fn hidden_files_and_directories_are_not_read() {
    let tmp = TempDir::new("hidden");
    let dir = tmp.0.join("s");
    write(&dir.join("2024/05/01/10/obj"), CHAT.join("\n").as_bytes());
    for hidden in [
        ".obj.tmp",
        "_SUCCESS",
        "2024/.staging/obj",
        "_temporary/0/obj",
        "2024/05/01/10/.obj.swp",
    ] {
        write(&dir.join(hidden), b"not json at all {{{");
    }
    // With a declared schema nothing is inferred: the scan itself skips them.
    let mut declared = json_table("declared", &dir);
    declared.schema = Some(Arc::new(Schema::new(vec![Field::new(
        "user",
        DataType::Int64,
        true,
    )])));
    let lake = Lake::new(vec![json_table("s", &dir), declared])
        .await
        .unwrap();
    assert_eq!(rows(&lake, "SELECT count(*) FROM s").await, [json!([4])]);
    assert_eq!(
        rows(&lake, "SELECT sum(user) FROM declared").await,
        [json!([5])]
    );
    // The same garbage in a visible file does break the table: the test is real.
    write(&dir.join("2024/obj2"), b"not json at all {{{");
    assert!(lake.sql("SELECT count(*) FROM s").await.is_err());
    assert!(lake.sql("SELECT sum(user) FROM declared").await.is_err());
}

#[tokio::test]
async fn partition_filters_prune_directories() {
    let tmp = TempDir::new("partitions");
    let schema = table_schema(&[("user", "bigint"), ("amount", "decimal(10,2)")]);
    let dir = tmp.0.join("sales");
    write(
        &dir.join("dt=2024-05-01/part-0.parquet"),
        &parquet(
            &schema,
            &[
                r#"{"user": 1, "amount": 0.10}"#,
                r#"{"user": 2, "amount": 0.20}"#,
            ],
        ),
    );
    write(
        &dir.join("dt=2024-05-02/part-0.parquet"),
        &parquet(&schema, &[r#"{"user": 3, "amount": 5}"#]),
    );
    // An unreadable object in the other partition: only a pruned query can succeed.
    write(
        &dir.join("dt=2024-05-02/part-1.parquet"),
        b"garbage, not parquet",
    );
    let mut def = parquet_table("sales", &dir, Some(schema.arrow()));
    def.partition_cols = vec!["dt".into()];
    let lake = Lake::new(vec![def]).await.unwrap();

    let pruned = "SELECT dt, count(*), sum(amount) FROM sales WHERE dt = '2024-05-01' GROUP BY dt";
    let batches = lake.sql(pruned).await.unwrap();
    assert_eq!(
        to_csv(&batches),
        "dt,count(*),sum(sales.amount)\n2024-05-01,2,0.30\n"
    );
    assert!(
        lake.sql("SELECT count(*) FROM sales").await.is_err(),
        "unpruned scan reads the garbage"
    );

    // JSON partitions: the plan lists only the matching directory's files.
    let jdir = tmp.0.join("events");
    write(&jdir.join("region=eu/day=1/a"), CHAT[0].as_bytes());
    write(&jdir.join("region=us/day=1/b"), CHAT[1].as_bytes());
    write(&jdir.join("region=us/day=2/c"), CHAT[2].as_bytes());
    let mut def = json_table("events", &jdir);
    def.partition_cols = vec!["region".into(), "day".into()];
    let lake = Lake::new(vec![def]).await.unwrap();
    let plan = to_table(
        &lake
            .sql("EXPLAIN SELECT * FROM events WHERE region = 'us' AND day = '2'")
            .await
            .unwrap(),
    );
    assert!(plan.contains("region=us/day=2/c"), "{plan}");
    assert!(!plan.contains("day=1/"), "{plan}");
    assert_eq!(
        rows(
            &lake,
            "SELECT region, day, count(*) FROM events GROUP BY region, day ORDER BY region, day"
        )
        .await,
        [
            json!(["eu", "1", 1]),
            json!(["us", "1", 1]),
            json!(["us", "2", 1])
        ]
    );
}

#[tokio::test]
async fn quoted_names_and_aliases() {
    let tmp = TempDir::new("names");
    let a = tmp.0.join("a");
    write(&a.join("x"), CHAT[0].as_bytes());
    let b = tmp.0.join("b");
    write(&b.join("x"), [CHAT[0], CHAT[1]].join("\n").as_bytes());
    let lake = Lake::new(vec![
        json_table("my-event-staging", &a),
        json_table("Data.Stream", &b),
    ])
    .await
    .unwrap();
    for (sql, n) in [
        (r#"SELECT count(*) FROM "my-event-staging""#, 1),
        ("SELECT count(*) FROM my_event_staging", 1),
        ("SELECT count(*) FROM MY_EVENT_STAGING", 1),
        (r#"SELECT count(*) FROM "Data.Stream""#, 2),
        ("SELECT count(*) FROM data_stream", 2),
    ] {
        assert_eq!(rows(&lake, sql).await, [json!([n])], "{sql}");
    }
    let tables = rows(&lake, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name").await;
    assert_eq!(
        tables,
        [
            json!(["Data.Stream"]),
            json!(["Data_Stream"]),
            json!(["my-event-staging"]),
            json!(["my_event_staging"])
        ]
    );
    let err = lake
        .sql("SELECT * FROM my-event-staging")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::DataFusion(_)), "{err}");
}

#[tokio::test]
async fn files_delivered_after_new_are_seen() {
    let tmp = TempDir::new("fresh");
    let dir = tmp.0.join("s");
    write(&firehose_key(&dir, 10, 1, ""), CHAT[0].as_bytes());
    let lake = Lake::new(vec![json_table("s", &dir)]).await.unwrap();
    assert_eq!(rows(&lake, "SELECT count(*) FROM s").await, [json!([1])]);
    write(
        &firehose_key(&dir, 11, 2, ""),
        br#"{"event_name": "NEW", "user": 9, "late_field": true}"#,
    );
    assert_eq!(rows(&lake, "SELECT count(*) FROM s").await, [json!([2])]);
    assert_eq!(
        rows(&lake, "SELECT user FROM s WHERE late_field").await,
        [json!([9])]
    );
    // An object replaced in place (a replayed delivery) is read anew.
    write(
        &firehose_key(&dir, 11, 2, ""),
        br#"{"event_name": "NEW", "user": 10, "late_field": true}"#,
    );
    assert_eq!(
        rows(&lake, "SELECT user FROM s WHERE late_field").await,
        [json!([10])]
    );
}

#[tokio::test]
async fn streams_with_nothing_delivered_are_empty() {
    let tmp = TempDir::new("empty");
    let declared = table_schema(&[("user", "bigint"), ("amount", "decimal(10,2)")]).arrow();
    let empty_dir = tmp.0.join("exists");
    std::fs::create_dir_all(empty_dir.join("2024")).unwrap();
    let mut partitioned = parquet_table("p", &tmp.0.join("missing-p"), Some(declared.clone()));
    partitioned.partition_cols = vec!["dt".into()];
    let lake = Lake::new(vec![
        json_table("missing", &tmp.0.join("not-yet")),
        json_table("exists", &empty_dir),
        parquet_table("pq", &tmp.0.join("missing-pq"), Some(declared)),
        partitioned,
    ])
    .await
    .unwrap();
    for t in ["missing", "exists", "pq", "p"] {
        assert_eq!(
            rows(&lake, &format!("SELECT count(*) FROM {t}")).await,
            [json!([0])],
            "{t}"
        );
        let batches = lake.sql(&format!("SELECT * FROM {t}")).await.unwrap();
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            0,
            "{t}"
        );
    }
    // A declared schema gives the columns even with no files.
    let out = to_json(&lake.sql("SELECT user, amount FROM pq").await.unwrap());
    assert_eq!(
        out,
        json!({"columns": [{"name": "user", "type": "Int64"}, {"name": "amount", "type": "Decimal128(10, 2)"}], "rows": []})
    );
    assert_eq!(
        to_json(&lake.sql("SELECT dt, user FROM p").await.unwrap())["columns"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn errors_are_typed_with_datafusions_message() {
    let tmp = TempDir::new("errors");
    let dir = tmp.0.join("s");
    write(&dir.join("x"), CHAT[0].as_bytes());
    let lake = Lake::new(vec![json_table("s", &dir)]).await.unwrap();
    let cases = [
        ("SELEC * FROM s", "SELEC"),
        ("SELECT * FROM nope", "nope"),
        ("SELECT no_such_column FROM s", "no_such_column"),
        ("CREATE TABLE t AS SELECT 1", "DDL not supported"),
        ("COPY s TO '/tmp/x.csv'", "not supported"),
        ("INSERT INTO s SELECT * FROM s", "not supported"),
        ("SET datafusion.execution.batch_size = 1", "not supported"),
    ];
    for (sql, want) in cases {
        match lake.sql(sql).await {
            Err(e @ QueryError::DataFusion(_)) => {
                assert!(e.to_string().contains(want), "{sql}: {e}")
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    let dup = Lake::new(vec![json_table("s", &dir), json_table("s", &dir)]).await;
    assert!(matches!(dup, Err(QueryError::Table(_))));
}

#[tokio::test]
async fn parquet_streams_with_evolving_schema() {
    let tmp = TempDir::new("evolve");
    let dir = tmp.0.join("s");
    let mut inferred = InferredSchema::new();
    let first = [r#"{"user": 1, "customer": {"id": 1}}"#];
    let second = [r#"{"user": 2.5, "customer": {"id": 2, "name": "Ann"}, "ok": true}"#];
    for (i, batch) in [&first[..], &second[..]].into_iter().enumerate() {
        for r in batch {
            inferred.observe(r.as_bytes()).unwrap();
        }
        write(
            &dir.join(format!("2024/0{i}.parquet")),
            &parquet(&inferred.table(), batch),
        );
    }
    // Inferred from the files' own schemas, and with the stream's schema declared.
    let declared = parquet_table("declared", &dir, Some(inferred.table().arrow()));
    let lake = Lake::new(vec![parquet_table("merged", &dir, None), declared])
        .await
        .unwrap();
    for t in ["merged", "declared"] {
        assert_eq!(
            rows(
                &lake,
                &format!("SELECT user, customer, ok FROM {t} ORDER BY user")
            )
            .await,
            [
                json!([1.0, {"id": 1, "name": null}, null]),
                json!([2.5, {"id": 2, "name": "Ann"}, true])
            ],
            "{t}"
        );
    }
}

#[tokio::test]
async fn output_formats() {
    let tmp = TempDir::new("output");
    let dir = tmp.0.join("s");
    let schema = table_schema(&[
        ("at", "timestamp"),
        ("amount", "decimal(10,2)"),
        ("note", "string"),
        ("tags", "array<string>"),
        ("customer", "struct<id:bigint,name:string>"),
        ("attrs", "map<string,int>"),
        ("day", "date"),
        ("ratio", "double"),
    ]);
    let records = [
        r#"{"at": "2024-05-01T12:00:00.123Z", "amount": "10.30", "note": "a, \"quoted\"\nline", "tags": ["x", "y"],
            "customer": {"id": 7, "name": "Ann"}, "attrs": {"k": 1}, "day": "2024-05-01", "ratio": 0.5}"#,
        r#"{"at": 1714564800000}"#,
    ];
    write(&dir.join("a.parquet"), &parquet(&schema, &records));
    let lake = Lake::new(vec![parquet_table("s", &dir, Some(schema.arrow()))])
        .await
        .unwrap();
    let batches = lake.sql("SELECT * FROM s ORDER BY at DESC").await.unwrap();

    let out = to_json(&batches);
    assert_eq!(
        out["columns"][0],
        json!({"name": "at", "type": r#"Timestamp(µs, "UTC")"#})
    );
    assert_eq!(
        out["columns"][1],
        json!({"name": "amount", "type": "Decimal128(10, 2)"})
    );
    assert_eq!(
        out["rows"],
        json!([
            ["2024-05-01T12:00:00.123Z", 10.3, "a, \"quoted\"\nline", ["x", "y"], {"id": 7, "name": "Ann"}, {"k": 1}, "2024-05-01", 0.5],
            ["2024-05-01T12:00:00Z", null, null, null, null, null, null, null]
        ])
    );

    let csv = to_csv(&batches);
    assert_eq!(
        csv,
        "at,amount,note,tags,customer,attrs,day,ratio\n\
         2024-05-01T12:00:00.123Z,10.30,\"a, \"\"quoted\"\"\nline\",\"[\"\"x\"\",\"\"y\"\"]\",\"{\"\"id\"\":7,\"\"name\"\":\"\"Ann\"\"}\",\"{\"\"k\"\":1}\",2024-05-01,0.5\n\
         2024-05-01T12:00:00Z,,,,,,,\n"
    );

    let text = to_table(
        &lake
            .sql("SELECT amount, customer FROM s ORDER BY at")
            .await
            .unwrap(),
    );
    let want = "\
+--------+--------------------+
| amount | customer           |
+--------+--------------------+
|        |                    |
| 10.30  | {id: 7, name: Ann} |
+--------+--------------------+";
    assert_eq!(text, want);

    // An empty result still names its columns.
    let empty = lake.sql("SELECT amount FROM s WHERE false").await.unwrap();
    assert_eq!(
        to_json(&empty),
        json!({"columns": [{"name": "amount", "type": "Decimal128(10, 2)"}], "rows": []})
    );
    assert_eq!(to_csv(&empty), "amount\n");
}

#[tokio::test]
async fn decimal_sums_are_exact() {
    let tmp = TempDir::new("decimal");
    let dir = tmp.0.join("s");
    let schema = table_schema(&[("amount", "decimal(10,2)")]);
    let records: Vec<String> = (0..1000)
        .map(|_| r#"{"amount": 0.1}"#.to_string())
        .collect();
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    write(&dir.join("a.parquet"), &parquet(&schema, &records));
    let lake = Lake::new(vec![parquet_table("s", &dir, None)])
        .await
        .unwrap();
    assert_eq!(
        to_csv(
            &lake
                .sql("SELECT sum(amount) AS total FROM s")
                .await
                .unwrap()
        ),
        "total\n100.00\n"
    );
    let schema = lake.sql("SELECT * FROM s").await.unwrap()[0].schema();
    let want: SchemaRef = Arc::new(Schema::new(vec![Field::new(
        "amount",
        DataType::Decimal128(10, 2),
        true,
    )]));
    assert_eq!(schema.fields(), want.fields());
}

fn limits(edit: impl FnOnce(&mut hydrant::config::QueryConfig)) -> hydrant::query::Limits {
    let mut c = hydrant::config::QueryConfig::default();
    edit(&mut c);
    hydrant::query::Limits::start(&c).unwrap()
}

/// Deeply nested SQL of every shape is refused with the limit's name, and
/// never takes the process down (a stack overflow would abort the test).
#[tokio::test]
async fn deep_sql_is_refused_not_a_crash() {
    let l = limits(|_| {});
    let chain = |op: &str, n: usize, term: &str| vec![term; n].join(op);
    let deep: Vec<(String, &str)> = vec![
        (
            format!("select {}", chain("+", 2000, "1")),
            "nested deeper than 128",
        ),
        (
            format!("select 1 where {}", chain(" and ", 3000, "true")),
            "nested deeper than 128",
        ),
        (
            format!("select 1 where {}", chain(" or ", 3000, "false")),
            "nested deeper than 128",
        ),
        (
            format!("select {}", chain(" || ", 3000, "'a'")),
            "nested deeper than 128",
        ),
        (
            format!("select {}1{}", "abs(".repeat(3000), ")".repeat(3000)),
            "",
        ),
        (
            format!("select {}1{}", "(".repeat(5000), ")".repeat(5000)),
            "",
        ),
        (
            format!("select {}1{}", "(select ".repeat(200), ")".repeat(200)),
            "",
        ),
        (
            format!(
                "select {}1{}",
                "case when true then ".repeat(1000),
                " end".repeat(1000)
            ),
            "",
        ),
        ("select 1 -- ".to_string() + &"x".repeat(70 << 10), "64 KiB"),
    ];
    for (sql, want) in deep {
        let err = l
            .run(vec![], &sql)
            .await
            .expect_err(&sql[..60.min(sql.len())]);
        assert!(err.to_string().contains(want), "{}: {err}", &sql[..60]);
    }
    // A query of ordinary depth still runs.
    let ok = l
        .run(vec![], &format!("select {}", chain("+", 100, "1")))
        .await
        .unwrap();
    assert_eq!(to_json(&ok)["rows"][0][0], json!(100));
}

#[tokio::test]
async fn results_time_and_memory_are_bounded_with_the_limit_named() {
    let l = limits(|c| c.max_result_rows = 1000);
    let err = l
        .run(vec![], "select * from unnest(range(100000))")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("query.max_result_rows"), "{err}");
    assert!(l
        .run(vec![], "select * from unnest(range(1000))")
        .await
        .is_ok());

    let l = limits(|c| c.max_result_mb = 1);
    let err = l
        .run(vec![], "select repeat('x', 1000) from unnest(range(10000))")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("query.max_result_mb"), "{err}");

    // One call that would allocate gigabytes is refused before it runs.
    let l = limits(|_| {});
    for sql in [
        "select repeat('x', 2000000000)",
        "select length(repeat('ab', 1000000000))",
        "select lpad('x', 2000000000)",
        "select count(*) from unnest(range(1000000000))",
        "select count(*) from unnest(generate_series(1, 2000000000))",
        "select array_repeat(1, 2000000000)",
    ] {
        let err = l.run(vec![], sql).await.expect_err(sql);
        assert!(
            err.to_string().contains("query.max_result_mb"),
            "{sql}: {err}"
        );
    }
    assert!(l
        .run(vec![], "select length(repeat('x', 1000))")
        .await
        .is_ok());

    let l = limits(|c| c.timeout_seconds = 1);
    let err = l
        .run(
            vec![],
            "select count(*) from unnest(range(200000)) a(x), unnest(range(200000)) b(y) where x + y = -1",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("query.timeout_seconds"), "{err}");

    let l = limits(|c| c.memory_mb = 16);
    let err = l
        .run(
            vec![],
            "select length(string_agg(x, ',')) from (select cast(v as varchar) || 'padding-padding' as x from unnest(range(3000000)) t(v))",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("query.memory_mb"), "{err}");
}

/// A query the way the server runs one: a lake of its own, knowing what
/// the queries before it learned.
async fn fresh(table: TableDef, known: &Arc<Known>, sql: &str) -> Vec<Value> {
    let lake = Lake::knowing(vec![table], known.clone()).await.unwrap();
    rows(&lake, sql).await
}

/// Each object's schema is learned once; the table's follows its objects
/// as they are added, replaced and removed.
#[tokio::test]
async fn file_schemas_are_learned_once_and_follow_the_files() {
    let tmp = TempDir::new("known");
    let dir = tmp.0.join("s");
    for n in 0..3 {
        write(
            &firehose_key(&dir, 10, n, ""),
            format!("{{\"a\":{n}}}\n").as_bytes(),
        );
    }
    let known = Arc::new(Known::default());
    let t = || json_table("s", &dir);
    assert_eq!(
        fresh(t(), &known, "SELECT sum(a) FROM s").await,
        [json!([3])]
    );
    assert_eq!(known.reads().0, 3);
    assert_eq!(
        fresh(t(), &known, "SELECT sum(a) FROM s").await,
        [json!([3])]
    );
    assert_eq!(known.reads().0, 3, "a repeated query reads no schema");

    write(&firehose_key(&dir, 11, 3, ""), br#"{"a":5,"b":"x"}"#);
    assert_eq!(
        fresh(t(), &known, "SELECT sum(a), count(b) FROM s").await,
        [json!([8, 1])]
    );
    assert_eq!(known.reads().0, 4, "only the new object is read");

    // Replaced in place with other fields: read anew.
    write(&firehose_key(&dir, 10, 0, ""), br#"{"a":10,"c":true}"#);
    assert_eq!(
        fresh(t(), &known, "SELECT sum(a), count(b), count(c) FROM s").await,
        [json!([18, 1, 1])]
    );
    assert_eq!(known.reads().0, 5);

    // Removed: its column goes with it.
    std::fs::remove_file(firehose_key(&dir, 11, 3, "")).unwrap();
    let columns = "SELECT column_name FROM information_schema.columns \
                   WHERE table_name = 's' ORDER BY column_name";
    assert_eq!(
        fresh(t(), &known, columns).await,
        [json!(["a"]), json!(["c"])]
    );
    assert_eq!(known.reads().0, 5);
}

/// The server's queries share what they learn.
#[tokio::test]
async fn queries_through_limits_share_what_they_learn() {
    let tmp = TempDir::new("known-limits");
    let dir = tmp.0.join("s");
    for n in 0..4 {
        write(
            &firehose_key(&dir, 10, n, ""),
            format!("{{\"a\":{n}}}\n").as_bytes(),
        );
    }
    let l = limits(|_| {});
    for _ in 0..3 {
        let batches = l
            .run(vec![json_table("s", &dir)], "SELECT sum(a) FROM s")
            .await
            .unwrap();
        assert_eq!(to_json(&batches)["rows"], json!([[6]]));
    }
    assert_eq!(l.known().reads().0, 4);
}

/// A Parquet object's schema is read from its footer, not the whole file.
#[tokio::test]
async fn parquet_schemas_come_from_footers_by_range_reads() {
    let tmp = TempDir::new("footer");
    let dir = tmp.0.join("p");
    let schema = table_schema(&[("id", "bigint"), ("pad", "string")]);
    let records: Vec<String> = (0..100_000)
        .map(|i| {
            format!(
                r#"{{"id":{i},"pad":"{:032x}"}}"#,
                (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
            )
        })
        .collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let body = parquet(&schema, &refs);
    assert!(body.len() > 1 << 20, "a file of {} bytes", body.len());
    write(&dir.join("part-0.parquet"), &body);
    let known = Arc::new(Known::default());
    assert_eq!(
        fresh(
            parquet_table("p", &dir, None),
            &known,
            "SELECT count(*), max(id) FROM p"
        )
        .await,
        [json!([100_000, 99_999])]
    );
    let (files, bytes) = known.reads();
    assert_eq!(files, 1);
    assert!(
        bytes <= 64 << 10 && (bytes as usize) < body.len() / 10,
        "{bytes} bytes read for the schema of a {}-byte file",
        body.len()
    );
}

/// A footer past the bound is refused by name, without reading it.
#[tokio::test]
async fn an_oversized_parquet_footer_is_refused() {
    use std::io::{Seek, SeekFrom};
    let tmp = TempDir::new("footer-big");
    let dir = tmp.0.join("p");
    std::fs::create_dir_all(&dir).unwrap();
    // A sparse 70 MiB file whose trailer claims a 66 MiB footer.
    let mut f = std::fs::File::create(dir.join("big.parquet")).unwrap();
    f.set_len(70 << 20).unwrap();
    f.seek(SeekFrom::End(-8)).unwrap();
    f.write_all(&(66u32 << 20).to_le_bytes()).unwrap();
    f.write_all(b"PAR1").unwrap();
    drop(f);
    let known = Arc::new(Known::default());
    let lake = Lake::knowing(vec![parquet_table("p", &dir, None)], known.clone())
        .await
        .unwrap();
    let e = lake
        .sql("SELECT count(*) FROM p")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("big.parquet") && e.contains("footer") && e.contains("67108864"),
        "{e}"
    );
    assert!(known.reads().1 <= 64 << 10, "{:?}", known.reads());
}

/// What is kept is bounded: other tables are forgotten first, and a table
/// larger than the bound alone is read again each time, still answering.
#[tokio::test]
async fn known_schemas_are_bounded() {
    let tmp = TempDir::new("known-bound");
    let (a, b) = (tmp.0.join("a"), tmp.0.join("b"));
    for n in 0..2 {
        write(&firehose_key(&a, 10, n, ""), b"{\"x\":1}\n");
    }
    write(&firehose_key(&b, 10, 0, ""), b"{\"x\":2}\n");
    let known = Arc::new(Known::bounded(2));
    let q = |t: &str| format!("SELECT sum(x) FROM {t}");
    let mut reads = Vec::new();
    for (dir, name, want) in [(&a, "a", 2), (&a, "a", 2), (&b, "b", 2), (&a, "a", 2)] {
        assert_eq!(
            fresh(json_table(name, dir), &known, &q(name)).await,
            [json!([want])]
        );
        reads.push(known.reads().0);
    }
    // b pushed a out; a coming back pushed b out.
    assert_eq!(reads, [2, 2, 3, 5]);
    write(&firehose_key(&a, 10, 2, ""), b"{\"x\":1}\n");
    let mut reads = Vec::new();
    for _ in 0..3 {
        assert_eq!(
            fresh(json_table("a", &a), &known, &q("a")).await,
            [json!([3])]
        );
        reads.push(known.reads().0);
    }
    assert_eq!(reads, [6, 9, 12]);
}

/// Columns come in the order of their first object in the listing, whether
/// that object's schema was read now or by an earlier query.
#[tokio::test]
async fn column_order_follows_the_listing_across_queries() {
    let tmp = TempDir::new("known-order");
    let dir = tmp.0.join("s");
    write(&firehose_key(&dir, 11, 1, ""), br#"{"b":1}"#);
    write(&firehose_key(&dir, 12, 2, ""), br#"{"a":1}"#);
    let known = Arc::new(Known::default());
    let columns = "SELECT column_name FROM information_schema.columns \
                   WHERE table_name = 's' ORDER BY ordinal_position";
    let t = || json_table("s", &dir);
    assert_eq!(
        fresh(t(), &known, columns).await,
        [json!(["b"]), json!(["a"])]
    );
    // An earlier object with the later one's schema: `a` comes first now.
    write(&firehose_key(&dir, 10, 0, ""), br#"{"a":2}"#);
    assert_eq!(
        fresh(t(), &known, columns).await,
        [json!(["a"]), json!(["b"])]
    );
    assert_eq!(known.reads().0, 3);
    let fresh_lake = Lake::new(vec![t()]).await.unwrap();
    assert_eq!(
        rows(&fresh_lake, columns).await,
        [json!(["a"]), json!(["b"])]
    );
}

/// A remote store that counts whole-object reads.
#[derive(Debug, Default)]
struct CountedStore {
    inner: object_store::memory::InMemory,
    gets: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Display for CountedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountedStore")
    }
}

type Fut<'c, T> = futures::future::BoxFuture<'c, object_store::Result<T>>;

impl object_store::ObjectStore for CountedStore {
    fn put_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b object_store::path::Path,
        payload: object_store::PutPayload,
        options: object_store::PutOptions,
    ) -> Fut<'c, object_store::PutResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_opts(location, payload, options)
    }

    fn put_multipart_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b object_store::path::Path,
        options: object_store::PutMultipartOptions,
    ) -> Fut<'c, Box<dyn object_store::MultipartUpload>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_multipart_opts(location, options)
    }

    fn get_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b object_store::path::Path,
        options: object_store::GetOptions,
    ) -> Fut<'c, object_store::GetResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        if options.range.is_none() && !options.head {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.get_opts(location, options)
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_delimiter<'a, 'b, 'c>(
        &'a self,
        prefix: Option<&'b object_store::path::Path>,
    ) -> Fut<'c, object_store::ListResult>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.list_with_delimiter(prefix)
    }

    fn copy_opts<'a, 'b, 'c, 'd>(
        &'a self,
        from: &'b object_store::path::Path,
        to: &'c object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> Fut<'d, ()>
    where
        'a: 'd,
        'b: 'd,
        'c: 'd,
        Self: 'd,
    {
        self.inner.copy_opts(from, to, options)
    }
}

/// Twelve objects of 3 MiB in a bucket that counts its reads.
async fn counted_objects() -> Arc<CountedStore> {
    use object_store::ObjectStoreExt;
    let store = Arc::new(CountedStore::default());
    let pad = "x".repeat(3 << 20);
    for n in 0..12 {
        let key = format!("2024/05/01/10/s-1-2024-05-01-10-00-00-{n}");
        let text = format!("{{\"a\":{n},\"pad\":\"{pad}\"}}\n");
        store
            .put(
                &object_store::path::Path::from(key),
                text.into_bytes().into(),
            )
            .await
            .unwrap();
    }
    store
}

fn counted_table(store: &Arc<CountedStore>) -> TableDef {
    TableDef {
        remote: Some(store.clone()),
        ..json_table("s", Path::new("s"))
    }
}

/// An object read to learn its schema is handed to the query's scan, not
/// fetched again (for a bucket, one GET per object instead of two), up to
/// the 32 MiB a query keeps; past that, objects are fetched again.
#[tokio::test]
async fn a_first_query_fetches_each_object_once_up_to_what_it_keeps() {
    let store = counted_objects().await;
    let table = || counted_table(&store);
    let gets = || store.gets.load(std::sync::atomic::Ordering::Relaxed);
    let known = Arc::new(Known::default());
    // Ten of the twelve fit in 32 MiB.
    let sql = "SELECT sum(a), min(length(pad)) FROM s";
    assert_eq!(fresh(table(), &known, sql).await, [json!([66, 3 << 20])]);
    assert_eq!(known.reads().0, 12);
    assert_eq!(gets(), 12 + 2, "ten objects fetched once, two twice");
    // Schemas known: the scan alone fetches.
    assert_eq!(fresh(table(), &known, sql).await, [json!([66, 3 << 20])]);
    assert_eq!(gets(), 14 + 12);
}

/// What a query keeps is held in the queries' memory pool: with 8 MiB for
/// queries, two of the 3 MiB objects are kept, and the query still runs.
#[tokio::test]
async fn what_a_query_keeps_counts_against_its_memory() {
    let store = counted_objects().await;
    let l = limits(|c| c.memory_mb = 8);
    let batches = l
        .run(vec![counted_table(&store)], "SELECT sum(a) FROM s")
        .await
        .unwrap();
    assert_eq!(to_json(&batches)["rows"], json!([[66]]));
    let gets = store.gets.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(gets, 12 + 10, "two objects kept, ten fetched again");
}
