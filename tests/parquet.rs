//! JSON → Parquet conversion: what a user of Firehose's record format
//! conversion would check in the files it writes.

use std::path::PathBuf;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::statistics::Statistics;
use hydrant::destination::lake::parquet::{
    encode, Columns, InferredSchema, ParquetCompression, ParquetOptions, TableSchema,
};

fn schema(cols: &[(&str, &str)]) -> TableSchema {
    let cols: Vec<(String, String)> = cols
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    TableSchema::from_columns(&cols).unwrap()
}

/// Encodes, writes the object to disk, and reads it back with the parquet crate.
fn roundtrip(
    schema: &TableSchema,
    records: &[&str],
    opts: &ParquetOptions,
) -> (Vec<RecordBatch>, ParquetMetaData) {
    let records: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
    let bytes = encode(schema, &records, opts).unwrap();
    let path = std::env::temp_dir().join(format!(
        "lakeql-pq-{}-{:?}.parquet",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, bytes).unwrap();
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let meta = builder.metadata().as_ref().clone();
    let batches = builder
        .build()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    (batches, meta)
}

fn show(col: &dyn Array, row: usize) -> String {
    let opts = FormatOptions::default().with_null("NULL");
    ArrayFormatter::try_new(col, &opts)
        .unwrap()
        .value(row)
        .to_string()
}

/// One column of `ty`, one record `{"c": value}`: the value read back from
/// the Parquet file, or the rejection from `check`.
fn convert_one(ty: &str, value: &str) -> Result<String, String> {
    let s = schema(&[("c", ty)]);
    let record = format!(r#"{{"c": {value}}}"#);
    s.check(record.as_bytes())?;
    let (batches, _) = roundtrip(&s, &[&record], &ParquetOptions::default());
    Ok(show(batches[0].column(0).as_ref(), 0))
}

#[test]
fn values_convert_per_type() {
    use Err as Rejected;
    // (hive type, JSON value, value read back | substring of the rejection)
    let table: &[(&str, &str, Result<&str, &str>)] = &[
        ("boolean", "true", Ok("true")),
        ("boolean", r#""false""#, Ok("false")),
        (
            "boolean",
            "1",
            Rejected("field `c`: expected boolean, got 1"),
        ),
        ("tinyint", "127", Ok("127")),
        (
            "tinyint",
            "128",
            Rejected("field `c`: expected tinyint, got 128 (out of range)"),
        ),
        ("tinyint", r#""-5""#, Ok("-5")),
        ("tinyint", "1.5", Rejected("expected tinyint, got 1.5")),
        ("smallint", "-32768", Ok("-32768")),
        ("int", r#"" 42 ""#, Ok("42")),
        ("int", "2147483648", Rejected("out of range")),
        ("int", "1e3", Rejected("expected int, got 1e3")),
        ("bigint", "9223372036854775807", Ok("9223372036854775807")),
        (
            "bigint",
            r#""abc""#,
            Rejected(r#"field `c`: expected bigint, got "abc""#),
        ),
        ("bigint", "[1]", Rejected("expected bigint, got [1]")),
        ("float", "1.5", Ok("1.5")),
        (
            "float",
            "1e39",
            Rejected("expected float, got 1e39 (out of range)"),
        ),
        ("double", "-2.25", Ok("-2.25")),
        ("double", r#""NaN""#, Ok("NaN")),
        ("double", "true", Rejected("expected double, got true")),
        // Decimals are exact: 1.005 is 1.00499999999999989... as a double.
        ("decimal(10,2)", "0.30", Ok("0.30")),
        ("decimal(10,2)", r#""0.30""#, Ok("0.30")),
        ("decimal(10,2)", "1.005", Ok("1.01")),
        ("decimal(10,2)", "-1.005", Ok("-1.01")),
        ("decimal(10,2)", "1.004", Ok("1.00")),
        ("decimal(10,2)", "2.5e1", Ok("25.00")),
        ("decimal(10,2)", "12345678.9", Ok("12345678.90")),
        (
            "decimal(10,2)",
            "123456789",
            Rejected("expected decimal(10,2), got 123456789 (out of range)"),
        ),
        ("decimal(10,2)", "99999999.995", Rejected("out of range")),
        (
            "decimal(10,2)",
            r#""abc""#,
            Rejected(r#"field `c`: expected decimal(10,2), got "abc""#),
        ),
        (
            "decimal(38,10)",
            "1234567890123456789012345678.0123456789",
            Ok("1234567890123456789012345678.0123456789"),
        ),
        ("decimal", "7", Ok("7")),
        ("string", r#""héllo \"q\"""#, Ok(r#"héllo "q""#)),
        ("string", "42", Ok("42")),
        ("string", r#"{"a": [1, 2]}"#, Ok(r#"{"a": [1, 2]}"#)),
        ("varchar(3)", r#""abc""#, Ok("abc")),
        (
            "varchar(3)",
            r#""abcd""#,
            Rejected("expected varchar(3), got \"abcd\" (too long)"),
        ),
        ("char(2)", r#""éé""#, Ok("éé")),
        ("date", r#""2024-02-29""#, Ok("2024-02-29")),
        ("date", r#""2023-02-29""#, Rejected("expected date")),
        ("date", "19000", Rejected("expected date, got 19000")),
        (
            "timestamp",
            r#""2024-05-01T12:00:00Z""#,
            Ok("2024-05-01T12:00:00Z"),
        ),
        (
            "timestamp",
            r#""2024-05-01 12:00:00.123456""#,
            Ok("2024-05-01T12:00:00.123456Z"),
        ),
        (
            "timestamp",
            r#""2024-05-01T14:00:00.5+02:00""#,
            Ok("2024-05-01T12:00:00.500Z"),
        ),
        (
            "timestamp",
            r#""2024-05-01T12:00:00.123456789Z""#,
            Ok("2024-05-01T12:00:00.123456Z"),
        ),
        ("timestamp", "1714564800123", Ok("2024-05-01T12:00:00.123Z")),
        (
            "timestamp",
            "1714564800123.5",
            Rejected("expected timestamp"),
        ),
        (
            "timestamp",
            r#""yesterday""#,
            Rejected(r#"expected timestamp, got "yesterday""#),
        ),
        ("binary", r#""aGk=""#, Ok("6869")),
        ("binary", r#""aGk""#, Ok("6869")),
        ("binary", r#""!!""#, Rejected("(invalid base64)")),
        ("array<int>", "[1, null, 3]", Ok("[1, NULL, 3]")),
        (
            "array<int>",
            "[1, \"x\"]",
            Rejected(r#"field `c[1]`: expected int, got "x""#),
        ),
        ("array<int>", "5", Rejected("expected array<int>, got 5")),
        (
            "map<string,int>",
            r#"{"a": 1, "b": null}"#,
            Ok("{a: 1, b: NULL}"),
        ),
        (
            "map<string,int>",
            r#"{"a": 1, "b": "x"}"#,
            Rejected(r#"field `c["b"]`: expected int"#),
        ),
        (
            "struct<id:bigint,name:string>",
            r#"{"ID": 7, "extra": 1}"#,
            Ok("{id: 7, name: NULL}"),
        ),
        (
            "struct<id:bigint>",
            r#"{"id": "x"}"#,
            Rejected(r#"field `c.id`: expected bigint, got "x""#),
        ),
        (
            "struct<id:bigint>",
            "[]",
            Rejected("expected struct<id:bigint>, got []"),
        ),
    ];
    // Null converts to null in every type.
    let nulls: Vec<_> = table
        .iter()
        .map(|(ty, _, _)| (*ty, "null", Ok("NULL")))
        .collect();
    let mut failures = Vec::new();
    for (ty, value, want) in table.iter().chain(&nulls) {
        let got = convert_one(ty, value);
        let ok = match (&got, want) {
            (Ok(g), Ok(w)) => g == w,
            (Err(g), Err(w)) => g.contains(w),
            _ => false,
        };
        if !ok {
            failures.push(format!("{ty} {value}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hive_types_map_to_arrow() {
    let s = schema(&[
        ("ts", "TIMESTAMP"),
        ("amount", "decimal(10, 2)"),
        ("tags", "array<string>"),
        ("customer", "struct< id : bigint , `full name`:string>"),
        ("attrs", "map<string,string>"),
        ("n", "Integer"),
    ]);
    let arrow = s.arrow();
    assert_eq!(
        arrow.field(0).data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(arrow.field(1).data_type(), &DataType::Decimal128(10, 2));
    assert!(
        matches!(arrow.field(2).data_type(), DataType::List(f) if f.data_type() == &DataType::Utf8)
    );
    match arrow.field(3).data_type() {
        DataType::Struct(f) => assert_eq!(f[1].name(), "full name"),
        t => panic!("customer is {t}"),
    }
    assert!(matches!(
        arrow.field(4).data_type(),
        DataType::Map(_, false)
    ));
    assert_eq!(arrow.field(5).data_type(), &DataType::Int32);
    assert!(arrow.fields().iter().all(|f| f.is_nullable()));
    // Canonical spellings, as persisted.
    assert_eq!(s.columns()[3].1, "struct<id:bigint,`full name`:string>");
}

#[test]
fn bad_declarations_are_rejected_naming_the_column() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("a", "int"), ("b", "varchar2(5)")],
            "column `b`: unknown type `varchar2`",
        ),
        (&[("a", "uuid")], "column `a`: unknown type `uuid`"),
        (
            &[("a", "map<int,string>")],
            "column `a`: map keys must be string",
        ),
        (&[("a", "decimal(40,2)")], "column `a`: decimal(40,2)"),
        (&[("a", "array<int")], "column `a`: expected `>`"),
        (&[("a", "struct<>")], "column `a`: expected a field name"),
        (
            &[("a", "struct<x:int,X:int>")],
            "column `a`: struct field `X` appears twice",
        ),
        (&[("a", "int"), ("A", "int")], "column `A` appears twice"),
        (&[], "at least one column"),
    ];
    for (cols, want) in cases {
        let cols: Vec<(String, String)> = cols
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let err = TableSchema::from_columns(&cols).unwrap_err();
        assert!(err.contains(want), "{cols:?}: {err}");
    }
}

#[test]
fn records_match_columns_ignoring_case_and_skip_extras() {
    let s = schema(&[
        ("event_time", "timestamp"),
        ("amount", "decimal(10,2)"),
        ("user", "string"),
    ]);
    let records = [
        r#"{"Event_Time": "2024-05-01T12:00:00Z", "AMOUNT": 10.5, "unknown": {"x": 1}}"#,
        r#"{"amount": 1, "Amount": 2}"#,
        r#"{}"#,
    ];
    let (batches, _) = roundtrip(&s, &records, &ParquetOptions::default());
    let b = &batches[0];
    let rows: Vec<Vec<String>> = (0..3)
        .map(|r| (0..3).map(|c| show(b.column(c).as_ref(), r)).collect())
        .collect();
    assert_eq!(rows[0], ["2024-05-01T12:00:00Z", "10.50", "NULL"]);
    // The last of several matching keys wins.
    assert_eq!(rows[1], ["NULL", "2.00", "NULL"]);
    assert_eq!(rows[2], ["NULL", "NULL", "NULL"]);
}

#[test]
fn records_that_are_not_objects_are_rejected() {
    let s = schema(&[("a", "int")]);
    assert_eq!(
        s.check(b"[1, 2]").unwrap_err(),
        "record is not a JSON object"
    );
    assert_eq!(s.check(b"42").unwrap_err(), "record is not a JSON object");
    assert!(s
        .check(b"{\"a\": 1")
        .unwrap_err()
        .starts_with("record is not valid JSON"));
    assert!(
        s.check(b"{\"a\": 1}\n").is_ok(),
        "a trailing newline (Firehose's delimiter) is fine"
    );
}

#[test]
fn nested_structs_lists_and_maps_round_trip() {
    let s = schema(&[
        (
            "customer",
            "struct<id:bigint,name:string,address:struct<city:string,zip:int>>",
        ),
        ("tags", "array<string>"),
        (
            "items",
            "array<struct<sku:string,qty:int,price:decimal(8,2)>>",
        ),
        ("attrs", "map<string,array<int>>"),
    ]);
    let records = [
        r#"{"customer": {"id": 1, "name": "Ann", "address": {"city": "Oslo", "zip": "0150"}},
            "tags": ["a", "b"], "items": [{"sku": "x", "qty": 2, "price": 9.99}, null],
            "attrs": {"k": [1, 2], "e": []}}"#,
        r#"{"customer": {"id": 2}, "tags": [], "items": null, "attrs": {}}"#,
        r#"{"customer": null}"#,
    ];
    let (batches, meta) = roundtrip(&s, &records, &ParquetOptions::default());
    assert_eq!(meta.file_metadata().num_rows(), 3);
    let b = &batches[0];
    let row = |r: usize| -> Vec<String> { (0..4).map(|c| show(b.column(c).as_ref(), r)).collect() };
    assert_eq!(
        row(0),
        [
            "{id: 1, name: Ann, address: {city: Oslo, zip: 150}}",
            "[a, b]",
            "[{sku: x, qty: 2, price: 9.99}, NULL]",
            "{k: [1, 2], e: []}",
        ]
    );
    assert_eq!(
        row(1),
        ["{id: 2, name: NULL, address: NULL}", "[]", "NULL", "{}"]
    );
    assert_eq!(row(2), ["NULL", "NULL", "NULL", "NULL"]);
    // The arrow schema is embedded, so readers get the declared types back.
    assert_eq!(b.schema().fields(), s.arrow().fields());

    let err = s
        .check(br#"{"items": [{"qty": 1}, {"qty": 1.5}]}"#)
        .unwrap_err();
    assert_eq!(err, "field `items[1].qty`: expected int, got 1.5");
    let err = s.check(br#"{"attrs": {"k": [1, "no"]}}"#).unwrap_err();
    assert_eq!(err, r#"field `attrs["k"][1]`: expected int, got "no""#);
}

/// A deterministic pseudo-random generator, for property-style tests.
struct Lcg(u64);
impl Lcg {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items[(self.0 >> 33) as usize % items.len()]
    }
}

#[test]
fn check_and_encode_agree() {
    let columns: &[(&str, &str, &[&str])] = &[
        (
            "b",
            "boolean",
            &["true", "\"TRUE\"", "0", "null", "\"yes\""],
        ),
        (
            "i",
            "tinyint",
            &["-128", "127", "128", "\"12\"", "1.0", "null", "{}"],
        ),
        (
            "n",
            "bigint",
            &[
                "0",
                "-9223372036854775808",
                "9223372036854775808",
                "\"x\"",
                "1e2",
            ],
        ),
        (
            "f",
            "float",
            &["3.4e38", "3.5e38", "\"-inf\"", "0.1", "\"\""],
        ),
        (
            "d",
            "decimal(5,3)",
            &[
                "12.3456", "99.9995", "-0.0005", "\"1e-3\"", "100", "\"1,5\"", "1E+1",
            ],
        ),
        (
            "s",
            "varchar(2)",
            &["\"ab\"", "\"abc\"", "12", "123", "[]", "null"],
        ),
        (
            "t",
            "timestamp",
            &[
                "0",
                "-1",
                "\"1970-01-01\"",
                "\"1970-13-01\"",
                "9223372036854775807",
                "\"\"",
            ],
        ),
        (
            "dt",
            "date",
            &["\"2000-01-01\"", "\"2000-1-1\"", "\"x\"", "1"],
        ),
        (
            "bin",
            "binary",
            &["\"\"", "\"AA==\"", "\"A\"", "\"AAA\"", "7"],
        ),
        (
            "l",
            "array<decimal(3,1)>",
            &["[]", "[1.25, null]", "[999]", "[[1]]", "{}"],
        ),
        (
            "m",
            "map<string,struct<x:boolean>>",
            &[
                "{}",
                "{\"a\":{\"x\":true}}",
                "{\"a\":{\"x\":1}}",
                "{\"a\":5}",
                "[]",
            ],
        ),
        (
            "o",
            "struct<a:array<int>,b:date>",
            &[
                "{\"a\":[1],\"b\":\"2020-02-02\"}",
                "{\"A\":[\"1\"]}",
                "{\"a\":[\"z\"]}",
                "{\"b\":2}",
            ],
        ),
    ];
    let s = schema(&columns.iter().map(|(n, t, _)| (*n, *t)).collect::<Vec<_>>());
    let mut rng = Lcg(7);
    let mut records = Vec::new();
    for _ in 0..400 {
        let mut fields = Vec::new();
        for (n, _, values) in columns {
            if rng.pick(&["in", "out", "out", "out"]) == "in" {
                fields.push(format!("\"{n}\": {}", rng.pick(values)));
            }
        }
        records.push(format!("{{{}}}", fields.join(", ")));
    }
    let opts = ParquetOptions::default();
    let mut passed: Vec<&[u8]> = Vec::new();
    for r in &records {
        let one = encode(&s, &[r.as_bytes()], &opts);
        match s.check(r.as_bytes()) {
            Ok(()) => {
                assert!(
                    one.is_ok(),
                    "check passed but encode failed: {r}: {:?}",
                    one.err()
                );
                passed.push(r.as_bytes());
            }
            Err(reason) => {
                assert!(
                    reason.starts_with("field `"),
                    "reason names the field: {reason}"
                );
                let err = one.expect_err(&format!("check failed but encode succeeded: {r}"));
                assert_eq!(err, format!("record 0: {reason}"));
            }
        }
    }
    // Both outcomes are well represented, and all passing records encode together.
    assert!(
        passed.len() > 40 && passed.len() < 360,
        "{} of 400 passed",
        passed.len()
    );
    let bytes = encode(&s, &passed, &opts).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(tmp_file(&bytes)).unwrap();
    assert_eq!(
        reader.metadata().file_metadata().num_rows() as usize,
        passed.len()
    );

    // A failing record among good ones is reported with its index.
    let bad = records
        .iter()
        .find(|r| s.check(r.as_bytes()).is_err())
        .unwrap();
    let mixed = [passed[0], passed[1], bad.as_bytes()];
    assert!(encode(&s, &mixed, &opts)
        .unwrap_err()
        .starts_with("record 2: field `"));
}

fn tmp_file(bytes: &[u8]) -> std::fs::File {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "lakeql-tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, bytes).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

#[test]
fn files_have_statistics_codec_and_row_groups_by_size() {
    let s = schema(&[("id", "bigint"), ("payload", "string")]);
    let records: Vec<String> = (0..20_000)
        .map(|i| format!(r#"{{"id": {i}, "payload": "{}-{i}"}}"#, "x".repeat(100)))
        .collect();
    let records: Vec<&str> = records.iter().map(String::as_str).collect();

    for (codec, expect) in [
        (ParquetCompression::Uncompressed, "UNCOMPRESSED"),
        (ParquetCompression::Snappy, "SNAPPY"),
        (ParquetCompression::Gzip, "GZIP"),
        (ParquetCompression::Zstd, "ZSTD"),
    ] {
        let opts = ParquetOptions {
            compression: codec,
            ..Default::default()
        };
        let (batches, meta) = roundtrip(&s, &records[..1000], &opts);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
        let chunk = meta.row_group(0).column(0);
        let name = match chunk.compression() {
            Compression::GZIP(_) => "GZIP".to_string(),
            Compression::ZSTD(_) => "ZSTD".to_string(),
            c => c.to_string(),
        };
        assert_eq!(name, expect);
        match chunk.statistics() {
            Some(Statistics::Int64(st)) => {
                assert_eq!((st.min_opt(), st.max_opt()), (Some(&0), Some(&999)));
                assert_eq!(st.null_count_opt(), Some(0));
            }
            other => panic!("no bigint statistics: {other:?}"),
        }
        assert!(meta.row_group(0).column(1).statistics().is_some());
    }

    // The default 128 MiB block holds everything in one row group...
    let (_, meta) = roundtrip(&s, &records, &ParquetOptions::default());
    assert_eq!(meta.num_row_groups(), 1);
    assert_eq!(meta.file_metadata().num_rows(), 20_000);
    let kv = meta.file_metadata().key_value_metadata().unwrap();
    assert!(
        kv.iter().any(|k| k.key == "ARROW:schema"),
        "arrow schema embedded"
    );

    // ...while 256 KiB blocks cut ~2.3 MB of uncompressed data into several.
    let block = 256 * 1024;
    let opts = ParquetOptions {
        block_size_bytes: block,
        compression: ParquetCompression::Uncompressed,
        ..Default::default()
    };
    let (_, meta) = roundtrip(&s, &records, &opts);
    assert!(
        meta.num_row_groups() >= 5,
        "{} row groups",
        meta.num_row_groups()
    );
    let rows: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    assert_eq!(rows, 20_000);
    for g in &meta.row_groups()[..meta.num_row_groups() - 1] {
        let size = g.total_byte_size() as usize;
        assert!(
            size > block / 2 && size < block * 2,
            "row group of {size} bytes for a {block}-byte block"
        );
    }

    // Dictionary encoding follows the option.
    for dict in [true, false] {
        let opts = ParquetOptions {
            enable_dictionary: dict,
            ..Default::default()
        };
        let (_, meta) = roundtrip(&s, &records[..100], &opts);
        assert_eq!(
            meta.row_group(0)
                .column(1)
                .dictionary_page_offset()
                .is_some(),
            dict
        );
    }
    assert!(encode(
        &s,
        &[],
        &ParquetOptions {
            block_size_bytes: 0,
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn inferred_schema_evolves_safely() {
    let mut inf = InferredSchema::new();
    let cols = |inf: &InferredSchema| inf.table().columns();
    inf.observe(br#"{"user": 42, "event": "JOIN", "meta": null, "tags": []}"#)
        .unwrap();
    assert_eq!(
        cols(&inf),
        [
            ("user".into(), "bigint".into()),
            ("event".into(), "string".into())
        ]
    );

    // New fields become new nullable columns; bigint widens to double.
    inf.observe(br#"{"User": 1.5, "ok": true, "tags": ["a"], "at": "2024-05-01T00:00:00Z"}"#)
        .unwrap();
    let want: Vec<(String, String)> = [
        ("user", "double"),
        ("event", "string"),
        ("ok", "boolean"),
        ("tags", "array<string>"),
        ("at", "string"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(cols(&inf), want);
    assert!(inf.table().arrow().fields().iter().all(|f| f.is_nullable()));
    // An integer still fits the double column; anything fits a string one.
    inf.observe(br#"{"user": 3, "event": {"nested": 1}, "tags": [1, "b"]}"#)
        .unwrap();
    assert_eq!(cols(&inf), want);

    // A conflicting record is rejected with the reason, and not applied.
    let before = serde_json::to_string(&inf).unwrap();
    let err = inf
        .observe(br#"{"brand_new": 1, "user": "forty-two"}"#)
        .unwrap_err();
    assert_eq!(err, "field `user`: column is double, record has string");
    let err = inf.observe(br#"{"ok": "yes"}"#).unwrap_err();
    assert_eq!(err, "field `ok`: column is boolean, record has string");
    assert!(inf
        .observe(br#"{"x": [true, 1]}"#)
        .unwrap_err()
        .starts_with("field `x[]`: "));
    assert_eq!(serde_json::to_string(&inf).unwrap(), before);

    // Structs are inferred recursively and gain fields.
    inf.observe(br#"{"customer": {"id": 1, "home town": {"zip": 1}}}"#)
        .unwrap();
    inf.observe(br#"{"customer": {"name": "Ann", "ID": 2.5}}"#)
        .unwrap();
    let customer = cols(&inf).pop().unwrap();
    assert_eq!(
        customer.1,
        "struct<id:double,`home town`:struct<zip:bigint>,name:string>"
    );
    assert!(inf
        .observe(br#"{"customer": {"home town": 5}}"#)
        .unwrap_err()
        .contains("field `customer.home town`"));

    // Persisted and restored exactly.
    let text = serde_json::to_string(&inf).unwrap();
    assert!(
        text.starts_with(r#"{"columns":[{"name":"user","type":"double"},"#),
        "{text}"
    );
    let back: InferredSchema = serde_json::from_str(&text).unwrap();
    assert_eq!(back, inf);
    assert_eq!(back.table().arrow(), inf.table().arrow());
    let broken = r#"{"columns":[{"name":"a","type":"int4"}]}"#;
    assert!(serde_json::from_str::<InferredSchema>(broken)
        .unwrap_err()
        .to_string()
        .contains("unknown type `int4`"));
}

#[test]
fn records_accepted_by_inference_convert() {
    let records = [
        r#"{"a": 1, "b": {"c": [1, 2]}, "d": "x"}"#,
        r#"{"a": 2.5, "b": {"c": [3.5], "e": false}, "d": 7}"#,
        r#"{"A": -3, "b": {"C": null}, "d": {"deep": [null]}}"#,
        r#"{"f": [[1], [2, 3]], "g": [{"h": 1}, {"i": "j"}]}"#,
        r#"{"a": 18446744073709551615}"#,
    ];
    let mut inf = InferredSchema::new();
    assert!(encode(&inf.table(), &[], &ParquetOptions::default())
        .unwrap_err()
        .contains("no columns"));
    for r in records {
        inf.observe(r.as_bytes()).unwrap();
    }
    let table = inf.table();
    for r in records {
        table.check(r.as_bytes()).unwrap();
    }
    let all: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
    let (batches, _) = roundtrip(&table, &records, &ParquetOptions::default());
    assert_eq!(batches[0].num_rows(), all.len());
    assert_eq!(show(batches[0].column(0).as_ref(), 1), "2.5");
}

/// Records of the shapes `check_and_encode_agree` uses, appended to one set
/// of columns as delivery does: a rejected record, whichever of its values
/// failed and however deep, leaves no trace, so the columns equal those of
/// the accepted records alone.
#[test]
fn a_rejected_record_leaves_the_columns_as_they_were() {
    let columns: &[(&str, &str, &[&str])] = &[
        ("i", "int", &["1", "\"2\"", "2.5", "null"]),
        ("s", "varchar(2)", &["\"ab\"", "\"abc\"", "12"]),
        ("d", "decimal(4,1)", &["1.25", "\"-3\"", "99999", "\"x\""]),
        ("bin", "binary", &["\"AA==\"", "\"A\""]),
        (
            "l",
            "array<array<int>>",
            &["[]", "[[1], [2, 3]]", "[[1], [\"z\"]]", "[null, []]"],
        ),
        (
            "m",
            "map<string,struct<x:boolean,y:array<string>>>",
            &[
                "{}",
                "{\"a\":{\"x\":true,\"y\":[\"q\"]}}",
                "{\"a\":{\"x\":true},\"b\":{\"x\":3}}",
                "{\"a\":null}",
            ],
        ),
        (
            "o",
            "struct<a:array<int>,b:date>",
            &[
                "{\"a\":[1],\"b\":\"2020-02-02\"}",
                "{\"a\":[1, \"z\"]}",
                "{\"b\":2}",
                "null",
            ],
        ),
    ];
    let s = schema(&columns.iter().map(|(n, t, _)| (*n, *t)).collect::<Vec<_>>());
    let mut rng = Lcg(3);
    let mut all = Columns::new(&s);
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for _ in 0..500 {
        let mut fields = Vec::new();
        for (n, _, values) in columns {
            if rng.pick(&["in", "in", "out"]) == "in" {
                fields.push(format!("\"{n}\": {}", rng.pick(values)));
            }
        }
        let r = format!("{{{}}}", fields.join(", "));
        match all.append(r.as_bytes()) {
            Ok(()) => accepted.push(r),
            Err(e) => {
                assert_eq!(s.check(r.as_bytes()), Err(e));
                rejected += 1;
            }
        }
    }
    assert!(
        rejected > 50 && accepted.len() > 50,
        "{rejected} rejected, {} accepted",
        accepted.len()
    );
    let mut fresh = Columns::new(&s);
    for r in &accepted {
        fresh.append(r.as_bytes()).unwrap();
    }
    assert_eq!(all.rows(), accepted.len());
    assert_eq!(all.finish().unwrap(), fresh.finish().unwrap());
}

/// Two buffers under one inferred schema, as with two partitions: each
/// record folds into the schema and goes into its buffer's columns, which
/// widen as the schema grows. At the end each buffer's columns equal the
/// columns rebuilt from its records under the final schema, which is what
/// a redone object is.
#[test]
fn inferred_columns_built_as_records_arrive_equal_a_rebuild() {
    let fields: &[(&str, &[&str])] = &[
        ("a", &["1", "2.5", "-3", "null", "\"x\""]),
        ("b", &["\"x\"", "{\"c\":1}", "[1]", "true", "7"]),
        (
            "s",
            &[
                "{\"x\":1}",
                "{\"y\":\"z\"}",
                "{\"x\":2.5,\"w\":[true]}",
                "null",
                "{\"X\":\"no\"}",
            ],
        ),
        ("l", &["[1, 2]", "[]", "[1.5]", "[{\"k\":1}]", "[null]"]),
        ("t", &["true", "false", "\"yes\""]),
    ];
    let mut rng = Lcg(11);
    let mut inf = InferredSchema::new();
    let mut buffers = [Columns::new(&inf.table()), Columns::new(&inf.table())];
    let mut accepted: [Vec<String>; 2] = [vec![], vec![]];
    let mut rejected = 0;
    for i in 0..600 {
        let mut present = Vec::new();
        for (n, values) in fields {
            if rng.pick(&["in", "out"]) == "in" {
                present.push(format!("\"{n}\": {}", rng.pick(values)));
            }
        }
        let r = format!("{{{}}}", present.join(", "));
        let before = inf.clone();
        match inf.append(r.as_bytes(), &mut buffers[i % 2]) {
            Ok(()) => accepted[i % 2].push(r),
            Err(_) => {
                assert_eq!(inf, before, "a rejected record leaves the schema as it was");
                rejected += 1;
            }
        }
    }
    let table = inf.table();
    let types: Vec<String> = table.columns().into_iter().map(|(_, t)| t).collect();
    assert!(rejected > 20, "{rejected} rejected");
    assert!(types.iter().any(|t| t == "double"), "{types:?}");
    assert!(
        types
            .iter()
            .any(|t| t.starts_with("struct<") && t.contains(',')),
        "{types:?}"
    );
    for (columns, records) in buffers.into_iter().zip(&accepted) {
        let mut columns = columns;
        inf.conform(&mut columns);
        let mut rebuilt = Columns::new(&table);
        for r in records {
            rebuilt.append(r.as_bytes()).unwrap();
        }
        assert_eq!(columns.finish().unwrap(), rebuilt.finish().unwrap());
    }
}

#[test]
fn inference_refuses_what_no_column_could_hold() {
    let mut inf = InferredSchema::new();
    let mut columns = Columns::new(&inf.table());
    // A double past f64's range would be infinity: refused, not inferred.
    assert_eq!(
        inf.observe(br#"{"x": 1e999}"#).unwrap_err(),
        "field `x`: 1e999 is out of range for a double"
    );
    // A record that gives no column while there is none: a Parquet file needs one.
    assert!(inf
        .append(br#"{"x": null, "y": []}"#, &mut columns)
        .unwrap_err()
        .contains("no column can be inferred"));
    inf.append(br#"{"x": 1}"#, &mut columns).unwrap();
    // Once there is one, such a record is a row of nulls.
    inf.append(br#"{}"#, &mut columns).unwrap();
    assert_eq!(columns.rows(), 2);
}
