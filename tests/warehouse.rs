//! The warehouse loader against the PostgreSQL on 127.0.0.1:5432 (user
//! postgres, database test): exactly once per object, one bad row fails
//! alone, MAXERROR bounds the refusals, a missing table or column is named.
//! Without that server the tests skip loudly, and fail when CI=true.

use hydrant::destination::warehouse::jdbc::Target;
use hydrant::destination::warehouse::load::{CopyText, LoadError, Loader, Outcome, Row, TableName};

const URL: &str = "jdbc:postgresql://127.0.0.1:5432/test?connectTimeout=5";

/// A client for setting up and reading back, or None (skipped) without a server.
async fn admin() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5",
        tokio_postgres::NoTls,
    )
    .await
    {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL on 127.0.0.1:5432 is needed (CI=true): {e}"
            );
            eprintln!("SKIPPED: no PostgreSQL on 127.0.0.1:5432 ({e})");
            None
        }
    }
}

/// A fresh table named for the test.
async fn table(admin: &tokio_postgres::Client, test: &str) -> String {
    let name = format!("wh_{test}_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name};
             CREATE TABLE {name} (id int PRIMARY KEY, source varchar(8) NOT NULL, amount numeric(10,2), at timestamptz)"
        ))
        .await
        .unwrap();
    admin
        .execute("DELETE FROM hydrant.loads WHERE stream = $1", &[&name])
        .await
        .ok();
    name
}

fn row(id: &str, source: Option<&str>, amount: &str) -> Row<'static> {
    vec![
        Some(id.to_string().into()),
        source.map(|s| s.to_string().into()),
        Some(amount.to_string().into()),
        Some("2026-11-28 13:00:00+00".into()),
    ]
}

async fn ids(admin: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    admin
        .query(&format!("SELECT id FROM {name} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A loader for a table (and its columns, or all of them) on the test server.
async fn connect(table: &str, columns: Option<&[String]>) -> Result<Loader, LoadError> {
    let target = Target::parse(URL).unwrap();
    Loader::connect(
        &target,
        "postgres",
        "",
        TableName::parse(table).unwrap(),
        columns,
    )
    .await
}

async fn loader(name: &str) -> Loader {
    connect(name, None).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Drops a test's table and its rows in the ledger.
async fn drop_table(admin: &tokio_postgres::Client, name: &str) {
    admin
        .batch_execute(&format!("DROP TABLE {name}"))
        .await
        .unwrap();
    admin
        .execute("DELETE FROM hydrant.loads WHERE stream = $1", &[&name])
        .await
        .unwrap();
}

#[tokio::test]
async fn an_object_loads_once_however_often_it_is_loaded() {
    let Some(admin) = admin().await else { return };
    let name = table(&admin, "once").await;
    let mut l = loader(&name).await;
    let rows: Vec<Row> = (1..=100)
        .map(|i| row(&i.to_string(), Some("web"), "1.50"))
        .collect();
    let first = l
        .load(
            &name,
            "objects/a",
            &CopyText::from_rows(&std::env::temp_dir(), &rows).unwrap(),
            0,
            0,
            |r| async { Ok(r) },
        )
        .await
        .unwrap();
    assert_eq!(
        first,
        Outcome::Loaded {
            rows: 100,
            rejected: vec![]
        }
    );
    // A retry (after a lost commit acknowledgement, a restart) changes nothing.
    assert_eq!(
        l.load(
            &name,
            "objects/a",
            &CopyText::from_rows(&std::env::temp_dir(), &rows).unwrap(),
            0,
            0,
            |r| async { Ok(r) }
        )
        .await
        .unwrap(),
        Outcome::AlreadyLoaded
    );
    let mut other = loader(&name).await;
    assert_eq!(
        other
            .load(
                &name,
                "objects/a",
                &CopyText::from_rows(&std::env::temp_dir(), &rows).unwrap(),
                0,
                0,
                |r| async { Ok(r) }
            )
            .await
            .unwrap(),
        Outcome::AlreadyLoaded
    );
    assert_eq!(ids(&admin, &name).await, (1..=100).collect::<Vec<_>>());
    let ledger: i64 = admin
        .query_one(
            "SELECT rows FROM hydrant.loads WHERE stream = $1 AND object = 'objects/a'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger, 100);
    // Values that need escaping arrive as they were.
    let odd = vec![vec![Some("101".into()), Some("a\tb\\c".into()), None, None]];
    l.load(
        &name,
        "objects/b",
        &CopyText::from_rows(&std::env::temp_dir(), &odd).unwrap(),
        0,
        0,
        |r| async { Ok(r) },
    )
    .await
    .unwrap();
    let got: String = admin
        .query_one(&format!("SELECT source FROM {name} WHERE id = 101"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "a\tb\\c");
    drop_table(&admin, &name).await;
}

#[tokio::test]
async fn bad_rows_fail_alone_until_maxerror() {
    let Some(admin) = admin().await else { return };
    let name = table(&admin, "bad").await;
    let mut l = loader(&name).await;
    let rows = vec![
        row("1", Some("web"), "1"),
        row("x", Some("web"), "1"),              // not an int
        row("3", None, "1"),                     // NOT NULL
        row("4", Some("much-too-long"), "1"),    // varchar(8)
        row("5", Some("ios"), "12345678901234"), // numeric(10,2) overflow
        row("6", Some("ios"), "2.5"),
    ];
    match l
        .load(
            &name,
            "objects/bad",
            &CopyText::from_rows(&std::env::temp_dir(), &rows).unwrap(),
            0,
            3,
            |r| async { Ok(r) },
        )
        .await
    {
        Err(LoadError::TooManyRejected(r)) => assert_eq!(r.len(), 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ids(&admin, &name).await,
        Vec::<i32>::new(),
        "past MAXERROR nothing loads"
    );
    match l
        .load(
            &name,
            "objects/bad",
            &CopyText::from_rows(&std::env::temp_dir(), &rows).unwrap(),
            0,
            4,
            |r| async { Ok(r) },
        )
        .await
        .unwrap()
    {
        Outcome::Loaded { rows: n, rejected } => {
            assert_eq!(n, 2);
            let which: Vec<(usize, &str)> =
                rejected.iter().map(|r| (r.row, r.code.as_str())).collect();
            assert_eq!(
                which,
                [(1, "22P02"), (2, "23502"), (3, "22001"), (4, "22003")]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&admin, &name).await, [1, 6]);
    drop_table(&admin, &name).await;
}

#[tokio::test]
async fn a_missing_table_or_column_is_named() {
    let Some(admin) = admin().await else { return };
    let name = table(&admin, "cols").await;
    let err = connect("no_such_table", None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("public.no_such_table does not exist"), "{err}");
    let cols = ["id".to_string(), "nope".to_string()];
    let err = connect(&name, Some(&cols)).await.err().unwrap().to_string();
    assert!(err.contains("has no column \"nope\""), "{err}");
    let cols = ["Source".to_string(), "ID".to_string()];
    let l = connect(&name, Some(&cols)).await.unwrap();
    let names: Vec<&str> = l.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["source", "id"]);
    drop_table(&admin, &name).await;
}
