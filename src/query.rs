//! SQL over the lake: every delivery stream is a table, queried in place with
//! DataFusion.
//!
//! A [`Lake`] knows each stream's directory and format. Tables are resolved
//! when a query names them, never earlier, so a query sees everything
//! delivered so far: a table's files are listed once for each query, and
//! the scan reads exactly that listing. A table without a declared schema
//! has its files' schemas merged; each file's schema is learned once (a
//! JSON-lines object inferred from its records, a Parquet object's read from
//! its footer by range reads) and kept across queries by path, size and
//! modification time ([`Known`]), so a query reads only the files delivered
//! since the last.
//!
//! Table names: a stream is queryable under its own name (quoted when it has
//! `-` or `.`: `"my-event-staging"`) and under an alias with `-` and `.`
//! replaced by `_` (`my_event_staging`). Unquoted names are lowercased by
//! SQL, so lookups fall back to ignoring case. An exact name beats an alias;
//! an alias shared by two streams is not registered.
//!
//! Schemas:
//! - A declared schema (`TableDef::schema`) is used as is; files are read
//!   into it (missing columns are null, `bigint` files read into a `double`
//!   column). Give one for Parquet streams (`InferredSchema::table().arrow()`
//!   or the declared table) so an empty stream still has its columns.
//! - Otherwise the schema is merged from every file's own: columns that
//!   appear only in later files are added, integers and floats merge to
//!   double, structs merge field by field; other conflicts are an error
//!   naming the column. A JSON stream with no files yet has no columns:
//!   `SELECT count(*)` gives 0 and `SELECT *` gives no rows.
//! - A stream whose directory does not exist yet is an empty table.
//! - Partition columns (`name=value/` directories) are strings and override
//!   a data field of the same name; a filter on them skips the other
//!   directories without opening their files.
//!
//! Files and directories whose names start with `.` or `_` are never read
//! (temporary and marker files). Queries are read-only: DDL, DML (including
//! COPY) and SET statements are refused.
//!
//! JSON limits: records must be JSON objects (newline-delimited or simply
//! concatenated). DataFusion's JSON reader does not convert between types, so
//! a field that holds both strings and numbers makes reads of that file fail
//! with the reader's message.

use std::collections::HashMap;
use std::fmt;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::object_store::{self, local::LocalFileSystem, path::Path, ObjectStore};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Value};

mod shape;
use shape::distinct_shapes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonCompression {
    Uncompressed,
    Gzip,
    Zstd,
    /// Snappy's framing format, which DataFusion cannot read: the table's
    /// store hands out each file decompressed.
    Snappy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    JsonLines { compression: JsonCompression },
    Parquet,
}

#[derive(Debug, Clone)]
pub struct TableDef {
    /// The stream's name; may contain '-' and '.'.
    pub name: String,
    /// A directory; files are found recursively below it.
    pub location: PathBuf,
    pub format: TableFormat,
    /// Only files whose names end with this are read: "" for Firehose's
    /// extension-less objects, ".gz", ".parquet", ...
    pub file_extension: String,
    /// Hive-style directories `name=value/` below `location`, as string
    /// columns. Files not below such directories are not part of the table.
    pub partition_cols: Vec<String>,
    /// The table's columns (without partition columns); inferred from the
    /// files when None.
    pub schema: Option<SchemaRef>,
    /// A store rooted at the table (an S3 bucket below the stream's
    /// prefix); `location` is then only its name in messages.
    pub remote: Option<Arc<dyn ObjectStore>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Planning or execution failed: DataFusion's message (syntax errors,
    /// unknown tables and columns, unreadable files).
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    #[error("invalid table definition: {0}")]
    Table(String),
    /// The query task failed unexpectedly (a panic inside the engine).
    #[error("query failed: {0}")]
    Internal(String),
    /// The query passed one of the limits; the message names it.
    #[error("{0}")]
    Limit(String),
}

/// The longest SQL text taken, in bytes.
pub const MAX_SQL_BYTES: usize = 64 << 10;

/// How deep expressions and subqueries may nest in a statement. Planning and
/// optimizing recurse once per level, so this is what keeps a query's
/// planning within its thread's stack; real queries stay far below it.
pub const MAX_SQL_DEPTH: usize = 128;

/// A query thread's stack: room for [`MAX_SQL_DEPTH`] levels of planning
/// with a wide margin.
const QUERY_STACK_BYTES: usize = 64 << 20;

/// How queries run: on a runtime of their own, at a lower CPU priority than
/// ingest, sharing one memory pool, each within a time and a result bound
/// (`query:` in the config file). A heavy query slows only itself.
pub struct Limits {
    runtime: QueryRuntime,
    pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    memory_mb: usize,
    timeout: std::time::Duration,
    max_rows: usize,
    max_bytes: usize,
    known: Arc<Known>,
}

/// The query runtime, shut down without waiting when hydrant stops (a
/// runtime may not be dropped from async code, which is where this is).
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Limits {
    pub fn start(c: &crate::config::QueryConfig) -> Result<Limits, QueryError> {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(c.threads)
            .max_blocking_threads(c.threads.max(2))
            .thread_name("query")
            .thread_stack_size(QUERY_STACK_BYTES)
            .on_thread_start(|| {
                // Nice 10: ingest's threads come first when both want a core.
                // SAFETY: setpriority on the calling thread (tid), no memory involved.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                }
            })
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(format!("starting the query threads: {e}")))?;
        let bytes = c.memory_mb << 20;
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(bytes),
            std::num::NonZeroUsize::new(3).expect("3 is not zero"),
        );
        Ok(Limits {
            runtime: QueryRuntime(Some(runtime)),
            pool: Arc::new(pool),
            memory_mb: c.memory_mb,
            timeout: std::time::Duration::from_secs(c.timeout_seconds),
            max_rows: c.max_result_rows,
            max_bytes: c.max_result_mb << 20,
            known: Arc::default(),
        })
    }

    /// What the queries so far have learned of the lake's files.
    pub fn known(&self) -> &Known {
        &self.known
    }

    /// Runs one read-only query over `tables` on the query threads, within
    /// every limit.
    pub async fn run(
        &self,
        tables: Vec<TableDef>,
        sql: &str,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        if sql.len() > MAX_SQL_BYTES {
            return Err(QueryError::Limit(format!(
                "the query is {} bytes long; at most {MAX_SQL_BYTES} (64 KiB) are taken",
                sql.len()
            )));
        }
        let handle = self
            .runtime
            .0
            .as_ref()
            .expect("the query runtime lives as long as its limits")
            .handle();
        let (pool, known) = (self.pool.clone(), self.known.clone());
        let (max_rows, max_bytes, memory_mb) = (self.max_rows, self.max_bytes, self.memory_mb);
        let sql = sql.to_string();
        let task = AbortOnDrop(handle.spawn(async move {
            let lake = Lake::build(tables, Some(pool), known).await?;
            lake.run(&sql, max_rows, max_bytes).await
        }));
        let timeout = self.timeout;
        let result = match tokio::time::timeout(timeout, task).await {
            Ok(joined) => joined.map_err(|e| QueryError::Internal(e.to_string()))?,
            Err(_) => {
                return Err(QueryError::Limit(format!(
                    "the query ran longer than {} s (query.timeout_seconds) and was stopped",
                    timeout.as_secs()
                )))
            }
        };
        result.map_err(|e| match e {
            QueryError::DataFusion(d)
                if matches!(d.find_root(), DataFusionError::ResourcesExhausted(_)) =>
            {
                QueryError::Limit(format!(
                    "the query needs more memory than the {memory_mb} MiB queries may use \
                     (query.memory_mb): {d}"
                ))
            }
            e => e,
        })
    }
}

/// Finds how deep expressions and queries nest, stopping past the bound.
#[derive(Default)]
struct Depth {
    now: usize,
    max: usize,
}

impl datafusion::sql::sqlparser::ast::Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<()> {
        self.now -= 1;
        std::ops::ControlFlow::Continue(())
    }

    fn pre_visit_query(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Query,
    ) -> std::ops::ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Query,
    ) -> std::ops::ControlFlow<()> {
        self.now -= 1;
        std::ops::ControlFlow::Continue(())
    }
}

impl Depth {
    fn enter(&mut self) -> std::ops::ControlFlow<()> {
        self.now += 1;
        self.max = self.max.max(self.now);
        if self.now > MAX_SQL_DEPTH {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }

    /// Checks a parsed statement against [`MAX_SQL_DEPTH`].
    fn check(statement: &datafusion::sql::parser::Statement) -> Result<(), QueryError> {
        use datafusion::sql::parser::{CopyToSource, Statement};
        use datafusion::sql::sqlparser::ast::Visit;
        let mut d = Depth::default();
        let _ = match statement {
            Statement::Statement(s) => s.visit(&mut d),
            Statement::Explain(e) => return Depth::check(&e.statement),
            Statement::CopyTo(c) => match &c.source {
                CopyToSource::Query(q) => q.visit(&mut d),
                CopyToSource::Relation(_) => std::ops::ControlFlow::Continue(()),
            },
            Statement::CreateExternalTable(_) | Statement::Reset(_) => {
                std::ops::ControlFlow::Continue(())
            }
        };
        if d.max > MAX_SQL_DEPTH {
            return Err(QueryError::Limit(format!(
                "the query's expressions are nested deeper than {MAX_SQL_DEPTH} levels; \
                 write long chains of AND, OR, + or || as IN lists or in steps"
            )));
        }
        Ok(())
    }
}

pub struct Lake {
    ctx: SessionContext,
}

impl Lake {
    pub async fn new(tables: Vec<TableDef>) -> Result<Lake, QueryError> {
        Lake::build(tables, None, Arc::default()).await
    }

    /// A lake that keeps what it learns of its files' schemas in `known`,
    /// for the lakes after it (one is made per query; see [`Known`]).
    pub async fn knowing(tables: Vec<TableDef>, known: Arc<Known>) -> Result<Lake, QueryError> {
        Lake::build(tables, None, known).await
    }

    async fn build(
        tables: Vec<TableDef>,
        pool: Option<Arc<dyn datafusion::execution::memory_pool::MemoryPool>>,
        known: Arc<Known>,
    ) -> Result<Lake, QueryError> {
        for (i, t) in tables.iter().enumerate() {
            if t.name.is_empty() {
                return Err(QueryError::Table("a table has an empty name".into()));
            }
            if tables[..i].iter().any(|o| o.name == t.name) {
                return Err(QueryError::Table(format!(
                    "table `{}` is defined twice",
                    t.name
                )));
            }
        }
        // The list-files cache holds each table's listing as its schema was
        // made from it, so the scan reads exactly the files the schema covers
        // and lists nothing again. Each query that names the table lists it
        // afresh and replaces the entry, so it sees what was delivered since.
        let cache = CacheManagerConfig::default().with_list_files_cache_limit(1 << 40);
        let mut runtime = RuntimeEnvBuilder::new().with_cache_manager(cache);
        if let Some(pool) = pool {
            runtime = runtime.with_memory_pool(pool);
        }
        let runtime = runtime.build_arc()?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            // Firehose's layout is YYYY/MM/DD/HH/: read subdirectories.
            .set_bool(
                "datafusion.execution.listing_table_ignore_subdirectory",
                false,
            )
            // Files are read whole, never split into byte ranges: a Snappy
            // file's listed size is not the size of what its store returns.
            .set_bool("datafusion.optimizer.repartition_file_scans", false);
        let ctx = SessionContext::new_with_config_rt(config, runtime.clone());
        let schema = LakeSchema {
            tables: tables.into_iter().map(Arc::new).collect(),
            runtime,
            known,
        };
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| QueryError::Internal("no default catalog".into()))?;
        catalog.register_schema("public", Arc::new(schema))?;
        Ok(Lake { ctx })
    }

    /// Runs one read-only query. Always returns at least one batch (empty
    /// when there are no rows) so the result's columns are known. Without
    /// [`Limits`]: for tests and tools that own the whole machine.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let ctx = self.ctx.clone();
        let sql = sql.to_string();
        // A task of its own, so that an engine panic becomes an error; it is
        // aborted if the caller stops waiting.
        let task = AbortOnDrop(tokio::spawn(async move {
            Lake { ctx }.run(&sql, usize::MAX, usize::MAX).await
        }));
        task.await
            .map_err(|e| QueryError::Internal(e.to_string()))?
    }

    /// Parses, checks, plans and runs `sql`, collecting at most `max_rows`
    /// rows and `max_bytes` bytes of result.
    async fn run(
        &self,
        sql: &str,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        Depth::check(&statement)?;
        let plan = state.statement_to_plan(statement).await?;
        options.verify_plan(&plan)?;
        check_allocations(&plan, max_bytes)?;
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema = df.schema().inner().clone();
        let mut stream = df.execute_stream().await?;
        let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            // What the rows hold, not the buffers they are slices of.
            bytes += batch
                .columns()
                .iter()
                .map(|c| {
                    c.to_data()
                        .get_slice_memory_size()
                        .unwrap_or_else(|_| c.get_array_memory_size())
                })
                .sum::<usize>();
            if rows > max_rows {
                return Err(QueryError::Limit(format!(
                    "the result has more than {max_rows} rows (query.max_result_rows); \
                     add a LIMIT or aggregate"
                )));
            }
            if bytes > max_bytes {
                return Err(QueryError::Limit(format!(
                    "the result holds more than {} MiB (query.max_result_mb); \
                     select fewer columns or rows",
                    max_bytes >> 20
                )));
            }
            batches.push(batch);
        }
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema));
        }
        Ok(batches)
    }
}

/// Functions whose one call can allocate without bound, and that run
/// outside the memory pool's accounting (it covers operators, not scalar
/// functions): with literal arguments, what they would make is known before
/// they run, and so is refused before they run, even before the planner
/// folds constants (which would run them). With arguments from data, the
/// rows in the lake bound them.
fn check_allocations(
    plan: &datafusion::logical_expr::LogicalPlan,
    max_bytes: usize,
) -> Result<(), QueryError> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Expr;
    use datafusion::scalar::ScalarValue;
    fn int(e: &Expr) -> Option<i128> {
        match e {
            Expr::Literal(v, _) => match v {
                ScalarValue::Int8(Some(n)) => Some(*n as i128),
                ScalarValue::Int16(Some(n)) => Some(*n as i128),
                ScalarValue::Int32(Some(n)) => Some(*n as i128),
                ScalarValue::Int64(Some(n)) => Some(*n as i128),
                ScalarValue::UInt8(Some(n)) => Some(*n as i128),
                ScalarValue::UInt16(Some(n)) => Some(*n as i128),
                ScalarValue::UInt32(Some(n)) => Some(*n as i128),
                ScalarValue::UInt64(Some(n)) => Some(*n as i128),
                ScalarValue::Float64(Some(f)) => Some(*f as i128),
                ScalarValue::Float32(Some(f)) => Some(*f as i128),
                _ => None,
            },
            Expr::Cast(c) => int(&c.expr),
            Expr::TryCast(c) => int(&c.expr),
            Expr::Negative(e) => int(e).map(|n| -n),
            _ => None,
        }
    }
    let text_len = |e: &Expr| match e {
        Expr::Literal(v, _) => v.to_string().len().max(1) as i128,
        _ => 1,
    };
    let mut refused: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let Expr::ScalarFunction(f) = e else {
                    return Ok(TreeNodeRecursion::Continue);
                };
                let name = f.func.name().to_ascii_lowercase();
                let a = &f.args;
                let bytes: Option<i128> = match name.as_str() {
                    "repeat" if a.len() == 2 => int(&a[1]).map(|n| n * text_len(&a[0])),
                    "lpad" | "rpad" if !a.is_empty() => a.get(1).and_then(int).map(|n| n * 4),
                    "array_repeat" if a.len() == 2 => int(&a[1]).map(|n| n * 8),
                    "range" | "generate_series" => {
                        let (start, stop, step) = match a.len() {
                            1 => (Some(0), int(&a[0]), Some(1)),
                            2 => (int(&a[0]), int(&a[1]), Some(1)),
                            3 => (int(&a[0]), int(&a[1]), int(&a[2])),
                            _ => (None, None, None),
                        };
                        match (start, stop, step) {
                            (Some(s), Some(e), Some(st)) if st != 0 => Some((e - s) / st * 8),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if let Some(b) = bytes.filter(|b| *b > max_bytes as i128) {
                    refused = Some(format!(
                        "{name}(...) would build about {b} bytes in one call, more than a result may hold \
                         ({} MiB, query.max_result_mb)",
                        max_bytes >> 20
                    ));
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    match refused {
        Some(m) => Err(QueryError::Limit(m)),
        None => Ok(()),
    }
}

/// A task that is aborted when whoever waits for it stops waiting.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The lake's tables, resolved afresh each time a query names one.
struct LakeSchema {
    tables: Vec<Arc<TableDef>>,
    runtime: Arc<RuntimeEnv>,
    known: Arc<Known>,
}

impl fmt::Debug for LakeSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeSchema")
            .field("tables", &self.tables.len())
            .finish()
    }
}

fn alias(name: &str) -> String {
    name.replace(['-', '.'], "_")
}

impl LakeSchema {
    /// Exact name, then alias, then both ignoring case; a name matching
    /// several tables at the same step matches none.
    fn find(&self, name: &str) -> Option<(usize, &Arc<TableDef>)> {
        let rules: [&dyn Fn(&str) -> bool; 4] = [
            &|n| n == name,
            &|n| alias(n) == name,
            &|n| n.eq_ignore_ascii_case(name),
            &|n| alias(n).eq_ignore_ascii_case(name),
        ];
        for rule in rules {
            let mut found = self
                .tables
                .iter()
                .enumerate()
                .filter(|(_, t)| rule(&t.name));
            match (found.next(), found.next()) {
                (Some(one), None) => return Some(one),
                (Some(_), Some(_)) => return None,
                _ => {}
            }
        }
        None
    }

    async fn provider(
        &self,
        index: usize,
        def: Arc<TableDef>,
    ) -> Result<Arc<dyn TableProvider>, DataFusionError> {
        let partitions: Vec<_> = def
            .partition_cols
            .iter()
            .map(|c| (c.clone(), DataType::Utf8))
            .collect();
        let mut local = None;
        let store: Option<Arc<dyn ObjectStore>> = match &def.remote {
            Some(r) => Some(r.clone()),
            None => match std::fs::canonicalize(&def.location) {
                Ok(root) => {
                    let fs = Arc::new(
                        LocalFileSystem::new_with_prefix(&root)
                            .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?,
                    );
                    local = Some(fs.clone());
                    Some(fs)
                }
                Err(_) => None,
            },
        };
        // Each table gets a store rooted at its directory that hides
        // dot/underscore names below it.
        let files = match &store {
            Some(store) => list_files(store.as_ref(), &def.file_extension).await?,
            None => Vec::new(),
        };
        let (Some(store), false) = (store, files.is_empty() && def.schema.is_none()) else {
            // Nothing delivered yet.
            let mut fields: Vec<Field> = match &def.schema {
                Some(s) => s.fields().iter().map(|f| f.as_ref().clone()).collect(),
                None => Vec::new(),
            };
            fields.retain(|f| !def.partition_cols.contains(f.name()));
            fields.extend(
                partitions
                    .iter()
                    .map(|(c, t)| Field::new(c, t.clone(), true)),
            );
            return Ok(Arc::new(EmptyTable::new(Arc::new(Schema::new(fields)))));
        };
        let snappy = matches!(
            def.format,
            TableFormat::JsonLines {
                compression: JsonCompression::Snappy
            }
        );
        let visible = Arc::new(VisibleFiles {
            store,
            snappy,
            local,
            kept: Mutex::new(Kept {
                files: HashMap::new(),
                memory: MemoryConsumer::new("schema reads kept for the scan")
                    .register(&self.runtime.memory_pool),
            }),
        });
        let store: Arc<dyn ObjectStore> = visible.clone();
        let url = ObjectStoreUrl::parse(format!("hydrant-lake://t{index}"))?;
        self.runtime
            .register_object_store(url.as_ref(), store.clone());

        let format: Arc<dyn FileFormat> = match def.format {
            TableFormat::Parquet => Arc::new(ParquetFormat::default()),
            TableFormat::JsonLines { compression } => Arc::new(
                JsonFormat::default().with_file_compression_type(compression_type(compression)),
            ),
        };
        let file_schema = match &def.schema {
            Some(s) => s.clone(),
            None => infer_schema(&def, &visible, &files, &self.known).await?,
        };
        // The scan takes the files from this listing (the table's key in
        // the list-files cache is its name in this lake).
        let name = datafusion::common::TableReference::bare(format!("t{index}"));
        if let Some(cache) = self.runtime.cache_manager.get_list_files_cache() {
            use datafusion::execution::cache::cache_manager::{CachedFileList, TableScopedPath};
            let key = TableScopedPath {
                table: Some(name.clone()),
                path: Path::default(),
            };
            cache.put(&key, CachedFileList::new(files));
        }
        // A partition value wins over a data field of the same name.
        let fields: Vec<_> = file_schema
            .fields()
            .iter()
            .filter(|f| !def.partition_cols.contains(f.name()))
            .cloned()
            .collect();
        let options = ListingOptions::new(format)
            .with_file_extension(def.file_extension.clone())
            .with_table_partition_cols(partitions);
        let config = ListingTableConfig::new(
            ListingTableUrl::parse(format!("hydrant-lake://t{index}/"))?.with_table_ref(name),
        )
        .with_listing_options(options)
        .with_schema(Arc::new(Schema::new(fields)));
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

fn compression_type(c: JsonCompression) -> FileCompressionType {
    match c {
        JsonCompression::Uncompressed => FileCompressionType::UNCOMPRESSED,
        JsonCompression::Gzip => FileCompressionType::GZIP,
        JsonCompression::Zstd => FileCompressionType::ZSTD,
        JsonCompression::Snappy => FileCompressionType::UNCOMPRESSED,
    }
}

// The methods below are `async fn` in the trait (via async_trait); they are
// written out as boxed futures to avoid a proc-macro dependency.
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables.iter().map(|t| t.name.clone()).collect();
        for t in &self.tables {
            let a = alias(&t.name);
            if !names.contains(&a) && self.find(&a).is_some() {
                names.push(a);
            }
        }
        names
    }

    fn table<'a, 'b, 'c>(
        &'a self,
        name: &'b str,
    ) -> BoxFuture<'c, Result<Option<Arc<dyn TableProvider>>, DataFusionError>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            match self.find(name) {
                Some((i, def)) => self.provider(i, def.clone()).await.map(Some),
                None => Ok(None),
            }
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
}

fn hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// Lists the table's data files as DataFusion will: visible (no part of
/// the path starts with '.' or '_'), non-empty, with the extension.
async fn list_files(
    store: &dyn ObjectStore,
    ext: &str,
) -> Result<Vec<object_store::ObjectMeta>, DataFusionError> {
    let mut out: Vec<object_store::ObjectMeta> = store
        .list(None)
        .filter(|m| {
            std::future::ready(m.as_ref().map_or(true, |m| {
                visible(&m.location) && m.size > 0 && m.location.as_ref().ends_with(ext)
            }))
        })
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?;
    out.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(out)
}

/// What queries learn about the lake's files and keep for the next: each
/// file's schema, known by the file's path, size and modification time, so
/// a JSON-lines object is inferred once and a Parquet footer read once. A
/// table's schema is then merged from its files' distinct schemas, which a
/// stream's files mostly share, without reading any file it has seen.
///
/// Bounded: a table's entries are those of its latest listing (files gone
/// from the lake are forgotten), and at most [`MAX_KNOWN_FILES`] files are
/// kept in all; past that the other tables are forgotten first, and a table
/// larger than the bound alone is inferred again on each query.
pub struct Known {
    tables: Mutex<HashMap<String, KnownTable>>,
    max_files: usize,
    /// Files read, and bytes fetched, to learn schemas.
    reads: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Default for Known {
    fn default() -> Known {
        Known::bounded(MAX_KNOWN_FILES)
    }
}

/// Files whose schemas are kept, over all tables.
pub const MAX_KNOWN_FILES: usize = 200_000;

/// The most of a Parquet file's end read for its footer.
pub const MAX_FOOTER_BYTES: u64 = 64 << 20;

/// Path → size, modification time, schema (files with equal schemas share
/// one).
type KnownTable = HashMap<Path, (u64, chrono::DateTime<chrono::Utc>, SchemaRef)>;

impl Known {
    /// Keeps at most `max_files` files' schemas.
    pub fn bounded(max_files: usize) -> Known {
        Known {
            tables: Mutex::default(),
            max_files,
            reads: Default::default(),
            bytes: Default::default(),
        }
    }

    /// Files read and bytes fetched to learn schemas so far.
    pub fn reads(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.reads.load(Relaxed), self.bytes.load(Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, KnownTable>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The table's schema merged from its files', in listing order: columns
/// that appear only in later files are added, and so on (see the module
/// documentation).
async fn infer_schema(
    def: &TableDef,
    store: &Arc<VisibleFiles>,
    files: &[object_store::ObjectMeta],
    known: &Known,
) -> Result<SchemaRef, DataFusionError> {
    // The format is part of the key: a stream deleted and made again in
    // another format reads the same directory differently.
    let key = format!("{:?} {}", def.format, def.location.display());
    // Each file's schema: known, or to be learned (by index into `files`).
    let schemas: Vec<Option<SchemaRef>> = {
        let tables = known.lock();
        let table = tables.get(&key);
        files
            .iter()
            .map(|m| {
                let (size, modified, schema) = table?.get(&m.location)?;
                ((*size, *modified) == (m.size, m.last_modified)).then(|| schema.clone())
            })
            .collect()
    };
    let missing: Vec<usize> = (0..files.len()).filter(|&i| schemas[i].is_none()).collect();
    let learned: Vec<(usize, Schema)> = futures::stream::iter(missing)
        .map(|i| {
            let store = store.clone();
            async move {
                let meta = &files[i];
                file_schema(def.format, store, meta, known)
                    .await
                    .map(|s| (i, s))
                    .map_err(|e| {
                        DataFusionError::Execution(format!(
                            "table `{}`: {}: {e}",
                            def.name, meta.location
                        ))
                    })
            }
        })
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    // Remember what was learned; the table's entries become its listing's.
    let mut tables = known.lock();
    let others: usize = tables
        .iter()
        .filter(|(k, _)| **k != key)
        .map(|(_, t)| t.len())
        .sum();
    if others + files.len() > known.max_files {
        tables.retain(|k, _| *k == key);
    }
    let mut table = tables.remove(&key).unwrap_or_default();
    // Each distinct schema of the listing, with the first file that has it;
    // a learned schema equal to one of them shares it.
    let mut order: Vec<(usize, SchemaRef)> = Vec::new();
    for (i, s) in schemas.iter().enumerate() {
        if let Some(s) = s {
            if !order.iter().any(|(_, o)| Arc::ptr_eq(o, s) || **o == **s) {
                order.push((i, s.clone()));
            }
        }
    }
    for (i, schema) in learned {
        let s = match order.iter_mut().find(|(_, o)| **o == schema) {
            Some((first, o)) => {
                *first = (*first).min(i);
                o.clone()
            }
            None => {
                let s = Arc::new(schema);
                order.push((i, s.clone()));
                s
            }
        };
        let meta = &files[i];
        table.insert(meta.location.clone(), (meta.size, meta.last_modified, s));
    }
    // The first file with each schema, in listing order.
    order.sort_by_key(|(i, _)| *i);
    // Merging a schema again changes nothing, so the distinct ones suffice.
    let mut merged: Vec<Field> = Vec::new();
    for (i, schema) in &order {
        for field in schema.fields() {
            merge_field(&mut merged, field).map_err(|e| {
                DataFusionError::Plan(format!(
                    "table `{}`: {e} (in {})",
                    def.name, files[*i].location
                ))
            })?;
        }
    }
    let listed: std::collections::HashSet<&Path> = files.iter().map(|m| &m.location).collect();
    table.retain(|p, _| listed.contains(p));
    if table.len() <= known.max_files {
        tables.insert(key, table);
    }
    Ok(Arc::new(Schema::new(merged)))
}

/// One file's schema: a Parquet file's from its footer, read by ranges from
/// the end; a JSON-lines file's from every record.
async fn file_schema(
    format: TableFormat,
    store: Arc<VisibleFiles>,
    meta: &object_store::ObjectMeta,
    known: &Known,
) -> Result<Schema, DataFusionError> {
    use object_store::ObjectStoreExt;
    use std::sync::atomic::Ordering::Relaxed;
    known.reads.fetch_add(1, Relaxed);
    let fetched = |n: usize| known.bytes.fetch_add(n as u64, Relaxed);
    let object = |e: object_store::Error| DataFusionError::ObjectStore(Box::new(e));
    let compression = match format {
        TableFormat::JsonLines { compression } => compression,
        TableFormat::Parquet => {
            use datafusion::parquet::arrow::arrow_reader::{
                ArrowReaderMetadata, ArrowReaderOptions,
            };
            use datafusion::parquet::errors::ParquetError;
            use datafusion::parquet::file::metadata::ParquetMetaDataReader;
            let size = meta.size;
            // Most footers fit the first read; a larger one says how much.
            let mut want = size.min(64 << 10);
            let metadata = loop {
                let tail = store
                    .get_range(&meta.location, size - want..size)
                    .await
                    .map_err(object)?;
                fetched(tail.len());
                let mut reader = ParquetMetaDataReader::new();
                match reader.try_parse_sized(&tail, size) {
                    Ok(()) => break reader.finish()?,
                    Err(ParquetError::NeedMoreData(n)) if (n as u64) > want => {
                        if n as u64 > MAX_FOOTER_BYTES {
                            return Err(DataFusionError::Execution(format!(
                                "its footer is {n} bytes; at most {MAX_FOOTER_BYTES} are read"
                            )));
                        }
                        want = n as u64;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let arrow =
                ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())?;
            return Ok(arrow.schema().as_ref().clone());
        }
    };
    let got = store.get(&meta.location).await.map_err(object)?;
    let read = got.meta.clone();
    let bytes = got.bytes().await.map_err(object)?;
    fetched(bytes.len());
    store.keep(read, bytes.clone());
    let small = bytes.len() as u64 <= INLINE_BYTES;
    let learn = move || -> Result<Schema, DataFusionError> {
        // Every record of the file: a field first seen late still counts.
        use bytes::Buf;
        let error = |e: serde_json::Error| ArrowError::JsonError(e.to_string());
        let infer = |values: &mut dyn Iterator<Item = serde_json::Result<Value>>| {
            infer_json_schema_from_iterator(values.map(|v| v.map_err(error)))
        };
        Ok(match compression {
            // In memory already (the table's store has decompressed a snappy
            // one): read in place, and built only where the shape is new.
            JsonCompression::Uncompressed | JsonCompression::Snappy => {
                infer(&mut distinct_shapes(&bytes).into_iter())?
            }
            // Decompressed as it is read, never whole.
            c => {
                let reader = compression_type(c).convert_read(bytes.reader())?;
                infer(
                    &mut serde_json::Deserializer::from_reader(BufReader::new(reader)).into_iter(),
                )?
            }
        })
    };
    let plain = matches!(
        compression,
        JsonCompression::Uncompressed | JsonCompression::Snappy
    );
    if plain && small {
        return learn();
    }
    tokio::task::spawn_blocking(learn)
        .await
        .map_err(|e| DataFusionError::Execution(e.to_string()))?
}

fn merge_field(fields: &mut Vec<Field>, new: &Field) -> Result<(), String> {
    match fields.iter_mut().find(|f| f.name() == new.name()) {
        None => fields.push(Field::new(new.name(), new.data_type().clone(), true)),
        Some(f) => {
            let t = merge_type(f.data_type(), new.data_type()).ok_or_else(|| {
                format!(
                    "column `{}` is {} in some files and {} in others",
                    new.name(),
                    f.data_type(),
                    new.data_type()
                )
            })?;
            *f = Field::new(new.name(), t, true);
        }
    }
    Ok(())
}

fn merge_type(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    Some(match (a, b) {
        _ if a == b => a.clone(),
        (Null, t) | (t, Null) => t.clone(),
        (Int64 | Float64, Int64 | Float64) => Float64,
        (Struct(fa), Struct(fb)) => {
            let mut fields: Vec<Field> = fa.iter().map(|f| f.as_ref().clone()).collect();
            for f in fb.iter() {
                merge_field(&mut fields, f).ok()?;
            }
            Struct(Fields::from(fields))
        }
        (List(ia), List(ib)) => List(Arc::new(Field::new(
            ia.name(),
            merge_type(ia.data_type(), ib.data_type())?,
            true,
        ))),
        _ => return None,
    })
}

/// Local files up to this size are read, and their schemas inferred, on the
/// query's own thread: for a small object, handing the work to a blocking
/// thread and back costs more than the work.
const INLINE_BYTES: u64 = 256 << 10;

/// The most of the files read to learn their schemas that one query keeps
/// for its scan.
const KEPT_BYTES: usize = 32 << 20;

/// One table's store as a query sees it: the files and directories whose
/// names start with '.' or '_' hidden, read-only. Made for one query.
#[derive(Debug)]
struct VisibleFiles {
    store: Arc<dyn ObjectStore>,
    /// Files are Snappy-framed: each is handed out decompressed.
    snappy: bool,
    /// The store when it is the local file system.
    local: Option<Arc<LocalFileSystem>>,
    /// Whole files the query has read to learn their schemas, up to
    /// [`KEPT_BYTES`], each handed to the scan once instead of being read
    /// again; the rest go when the query does.
    kept: Mutex<Kept>,
}

#[derive(Debug)]
struct Kept {
    files: HashMap<Path, (object_store::ObjectMeta, bytes::Bytes)>,
    /// What they hold, in the queries' memory pool.
    memory: MemoryReservation,
}

impl VisibleFiles {
    /// Keeps a whole file just read, for the scan, if there is room (in
    /// [`KEPT_BYTES`] and in the queries' memory pool).
    fn keep(&self, meta: object_store::ObjectMeta, bytes: bytes::Bytes) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.memory.size() + bytes.len() <= KEPT_BYTES
            && kept.memory.try_grow(bytes.len()).is_ok()
        {
            if let Some((_, old)) = kept.files.insert(meta.location.clone(), (meta, bytes)) {
                kept.memory.shrink(old.len());
            }
        }
    }

    /// A kept file, handed out (and no longer kept).
    fn take(&self, location: &Path) -> Option<object_store::GetResult> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let (meta, bytes) = kept.files.remove(location)?;
        kept.memory.shrink(bytes.len());
        Some(whole_file(meta, bytes))
    }

    /// A whole local file, opened on the calling thread: an open is
    /// microseconds, while handing it to a blocking thread and back (what
    /// the local store does) costs more than that for every small object.
    fn open_whole(
        local: &LocalFileSystem,
        location: &Path,
    ) -> object_store::Result<object_store::GetResult> {
        use std::os::unix::fs::MetadataExt;
        let path = local.path_to_filesystem(location)?;
        let failed = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => object_store::Error::NotFound {
                path: path.display().to_string(),
                source: Box::new(e),
            },
            _ => object_store::Error::Generic {
                store: "lake",
                source: Box::new(e),
            },
        };
        let file = std::fs::File::open(&path).map_err(failed)?;
        let m = file.metadata().map_err(failed)?;
        if m.is_dir() {
            return Err(failed(std::io::ErrorKind::NotFound.into()));
        }
        let modified: chrono::DateTime<chrono::Utc> = m.modified().map_err(failed)?.into();
        let meta = object_store::ObjectMeta {
            location: location.clone(),
            last_modified: modified,
            size: m.len(),
            // The local store's own tag: inode, modification time, size.
            e_tag: Some(format!(
                "{:x}-{:x}-{:x}",
                m.ino(),
                modified.timestamp_micros().max(0),
                m.len()
            )),
            version: None,
        };
        if meta.size <= INLINE_BYTES {
            // Small: read here too, not on a blocking thread.
            use std::io::Read;
            let mut bytes = Vec::with_capacity(meta.size as usize);
            (&file)
                .take(INLINE_BYTES)
                .read_to_end(&mut bytes)
                .map_err(failed)?;
            return Ok(whole_file(meta, bytes.into()));
        }
        Ok(object_store::GetResult {
            range: 0..meta.size,
            meta,
            attributes: Default::default(),
            payload: object_store::GetResultPayload::File(file, path.clone()),
        })
    }
}

/// A whole file's bytes as a store's answer.
fn whole_file(meta: object_store::ObjectMeta, bytes: bytes::Bytes) -> object_store::GetResult {
    let chunk: object_store::Result<bytes::Bytes> = Ok(bytes);
    object_store::GetResult {
        range: 0..meta.size,
        meta,
        attributes: Default::default(),
        payload: object_store::GetResultPayload::Stream(Box::pin(futures::stream::once(async {
            chunk
        }))),
    }
}

impl fmt::Display for VisibleFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VisibleFiles({})", self.store)
    }
}

fn visible(path: &Path) -> bool {
    !path.parts().any(|p| hidden(p.as_ref()))
}

fn read_only<T>(operation: &str) -> object_store::Result<T> {
    Err(object_store::Error::NotImplemented {
        operation: operation.to_string(),
        implementer: "the lake's query store (read-only)".to_string(),
    })
}

// As for SchemaProvider: the trait's async methods written out.
impl ObjectStore for VisibleFiles {
    fn put_opts<'a, 'b, 'c>(
        &'a self,
        _: &'b Path,
        _: object_store::PutPayload,
        _: object_store::PutOptions,
    ) -> BoxFuture<'c, object_store::Result<object_store::PutResult>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async { read_only("put") })
    }

    fn put_multipart_opts<'a, 'b, 'c>(
        &'a self,
        _: &'b Path,
        _: object_store::PutMultipartOptions,
    ) -> BoxFuture<'c, object_store::Result<Box<dyn object_store::MultipartUpload>>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async { read_only("put_multipart") })
    }

    fn get_opts<'a, 'b, 'c>(
        &'a self,
        location: &'b Path,
        options: object_store::GetOptions,
    ) -> BoxFuture<'c, object_store::Result<object_store::GetResult>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        let o = &options;
        let whole = o.range.is_none()
            && !o.head
            && o.version.is_none()
            && o.if_match.is_none()
            && o.if_none_match.is_none()
            && o.if_modified_since.is_none()
            && o.if_unmodified_since.is_none();
        if whole {
            if let Some(r) = self.take(location) {
                return Box::pin(async move { Ok(r) });
            }
        }
        if let (Some(local), true, false) = (&self.local, whole, self.snappy) {
            let r = VisibleFiles::open_whole(local, location);
            return Box::pin(async move { r });
        }
        if !self.snappy {
            return self.store.get_opts(location, options);
        }
        Box::pin(async move {
            let r = self.store.get_opts(location, options).await?;
            let (mut meta, attributes) = (r.meta.clone(), r.attributes.clone());
            let packed = r.bytes().await?;
            let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<bytes::Bytes> {
                use std::io::Read;
                let mut out = Vec::new();
                snap::read::FrameDecoder::new(&packed[..]).read_to_end(&mut out)?;
                Ok(out.into())
            })
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "lake",
                source: Box::new(e),
            })?
            .map_err(|e| object_store::Error::Generic {
                store: "lake",
                source: Box::new(e),
            })?;
            meta.size = bytes.len() as u64;
            Ok(object_store::GetResult {
                range: 0..meta.size,
                meta,
                attributes,
                payload: object_store::GetResultPayload::Stream(
                    futures::stream::once(async move { Ok(bytes) }).boxed(),
                ),
            })
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| read_only("delete")).boxed()
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.store
            .list(prefix)
            .filter(|m| std::future::ready(m.as_ref().map_or(true, |m| visible(&m.location))))
            .boxed()
    }

    fn list_with_delimiter<'a, 'b, 'c>(
        &'a self,
        prefix: Option<&'b Path>,
    ) -> BoxFuture<'c, object_store::Result<object_store::ListResult>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move {
            let mut result = self.store.list_with_delimiter(prefix).await?;
            result.common_prefixes.retain(visible);
            result.objects.retain(|m| visible(&m.location));
            Ok(result)
        })
    }

    fn copy_opts<'a, 'b, 'c, 'd>(
        &'a self,
        _: &'b Path,
        _: &'c Path,
        _: object_store::CopyOptions,
    ) -> BoxFuture<'d, object_store::Result<()>>
    where
        'a: 'd,
        'b: 'd,
        'c: 'd,
        Self: 'd,
    {
        Box::pin(async { read_only("copy") })
    }
}

// ---------------------------------------------------------------------------
// Output

/// A pretty text table (DataFusion's CLI layout).
pub fn to_table(batches: &[RecordBatch]) -> String {
    match pretty_format_batches(batches) {
        Ok(t) => t.to_string(),
        Err(e) => format!("cannot format the result: {e}"),
    }
}

/// `{"columns":[{"name","type"}],"rows":[[...],...]}`. Values are JSON's own
/// where JSON has them: numbers (decimals too, as the nearest double, since
/// any JSON reader would parse them so), booleans, strings, null, and
/// objects/arrays for structs, maps and lists. Timestamps, dates and other
/// types are their ISO/display strings; floats that JSON cannot hold
/// (NaN, infinities) are strings.
pub fn to_json(batches: &[RecordBatch]) -> Value {
    let Some(first) = batches.first() else {
        return json!({"columns": [], "rows": []});
    };
    let columns: Vec<Value> = first
        .schema()
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let mut rows = Vec::new();
    for batch in batches {
        let cols: Vec<ArrayRef> = batch.columns().iter().map(plain).collect();
        for row in 0..batch.num_rows() {
            rows.push(Value::Array(
                cols.iter().map(|c| json_value(c.as_ref(), row)).collect(),
            ));
        }
    }
    json!({"columns": columns, "rows": rows})
}

/// CSV with a header line (RFC 4180 quoting). Null is an empty field;
/// structs, maps and lists are their JSON text.
pub fn to_csv(batches: &[RecordBatch]) -> String {
    let mut out = String::new();
    let Some(first) = batches.first() else {
        return out;
    };
    let header: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .map(|f| csv_field(f.name()))
        .collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for batch in batches {
        let cols: Vec<ArrayRef> = batch.columns().iter().map(plain).collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| match json_value(c.as_ref(), row) {
                    Value::Null => String::new(),
                    Value::String(s) => csv_field(&s),
                    v @ (Value::Array(_) | Value::Object(_)) => csv_field(&v.to_string()),
                    // Numbers and booleans: the column's own text (exact decimals).
                    _ => csv_field(&display(c.as_ref(), row)),
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Dictionary-encoded columns (partition columns are) as plain arrays.
fn plain(col: &ArrayRef) -> ArrayRef {
    match col.data_type() {
        DataType::Dictionary(_, value) => cast(col, value).unwrap_or_else(|_| col.clone()),
        _ => col.clone(),
    }
}

fn display(array: &dyn Array, row: usize) -> String {
    match ArrayFormatter::try_new(array, &FormatOptions::default()) {
        Ok(f) => f.value(row).to_string(),
        Err(e) => format!("<{e}>"),
    }
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number)
}

fn json_value(array: &dyn Array, row: usize) -> Value {
    use datafusion::arrow::datatypes::*;
    if array.is_null(row) {
        return Value::Null;
    }
    macro_rules! int {
        ($t:ty) => {
            json!(array.as_primitive::<$t>().value(row))
        };
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float16 => float(array.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => display(array, row)
            .parse::<f64>()
            .map_or(Value::Null, float),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let entries = fields
                .iter()
                .zip(s.columns())
                .map(|(f, c)| (f.name().clone(), json_value(plain(c).as_ref(), row)));
            Value::Object(entries.collect())
        }
        DataType::List(_) => elements(&array.as_list::<i32>().value(row)),
        DataType::LargeList(_) => elements(&array.as_list::<i64>().value(row)),
        DataType::FixedSizeList(..) => elements(&array.as_fixed_size_list().value(row)),
        DataType::Map(..) => {
            let m = array.as_map().value(row);
            let (keys, values) = (plain(m.column(0)), plain(m.column(1)));
            let entries = (0..m.len()).map(|i| {
                let key = match json_value(keys.as_ref(), i) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (key, json_value(values.as_ref(), i))
            });
            Value::Object(entries.collect())
        }
        DataType::Dictionary(..) => json_value(plain(&array.slice(row, 1)).as_ref(), 0),
        _ => Value::String(display(array, row)),
    }
}

fn elements(values: &ArrayRef) -> Value {
    let values = plain(values);
    Value::Array(
        (0..values.len())
            .map(|i| json_value(values.as_ref(), i))
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// The lake's tables: one per delivery stream

/// A table for every stream: its objects below the Prefix's fixed
/// directory, in the embedded lake or its S3 bucket, Hive-style partition
/// directories as columns.
pub fn lake_tables(registry: &crate::stream::Registry) -> Vec<TableDef> {
    use crate::spec::{Compression, Format, ParquetSchema};
    let mut tables = Vec::new();
    for s in registry.list() {
        let spec = &s.spec;
        let format = match (&spec.format, spec.compression) {
            (Format::Parquet { .. }, _) => TableFormat::Parquet,
            (Format::Raw, Compression::Uncompressed) => TableFormat::JsonLines {
                compression: JsonCompression::Uncompressed,
            },
            (Format::Raw, Compression::Gzip) => TableFormat::JsonLines {
                compression: JsonCompression::Gzip,
            },
            (Format::Raw, Compression::Zstd) => TableFormat::JsonLines {
                compression: JsonCompression::Zstd,
            },
            (Format::Raw, Compression::Snappy) => TableFormat::JsonLines {
                compression: JsonCompression::Snappy,
            },
        };
        let schema = match &spec.format {
            Format::Parquet {
                schema: ParquetSchema::Declared(t),
                ..
            } => Some(t.arrow()),
            _ => None,
        };
        let dir = spec.prefix_template.static_dir();
        let remote = registry.s3_store(&spec.bucket).map(|store| {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                dir.trim_end_matches('/'),
            )) as Arc<dyn ObjectStore>
        });
        tables.push(TableDef {
            name: spec.name.clone(),
            location: match &remote {
                Some(_) => PathBuf::from(format!("s3://{}/{dir}", spec.bucket)),
                None => registry.lake().join(&spec.bucket).join(&dir),
            },
            remote,
            format,
            file_extension: spec.extension().to_string(),
            partition_cols: spec.prefix_template.hive_columns(),
            schema,
        });
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema arrow infers from every record of `text`.
    fn from_all(text: &str) -> Result<Schema, ArrowError> {
        let values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        infer_json_schema_from_iterator(
            values.map(|v| v.map_err(|e| ArrowError::JsonError(e.to_string()))),
        )
    }

    fn from_shapes(text: &str) -> Result<Schema, ArrowError> {
        let values = distinct_shapes(text.as_bytes()).into_iter();
        infer_json_schema_from_iterator(
            values.map(|v| v.map_err(|e| ArrowError::JsonError(e.to_string()))),
        )
    }

    #[test]
    fn distinct_shapes_infer_what_all_records_infer() {
        let texts = [
            // A field first seen late, after a run of one shape.
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3,\"b\":\"x\"}\n{\"a\":4}\n",
            // An integer column that later holds a float, and back.
            "{\"v\":1}\n{\"v\":2.5}\n{\"v\":3}\n",
            // Beyond i64: a float to arrow, as in serde_json's is_i64.
            "{\"n\":9223372036854775807}\n{\"n\":18446744073709551615}\n",
            "{\"n\":-9223372036854775808}\n",
            // Nested objects and arrays, a key that moves.
            "{\"o\":{\"x\":1,\"y\":[1,2]}}\n{\"o\":{\"y\":[1.5],\"x\":1,\"z\":null}}\n{\"o\":{\"x\":\"s\"}}\n",
            "{\"l\":[]}\n{\"l\":[{\"k\":true}]}\n{\"l\":[{\"k\":true},{\"j\":1}]}\n",
            // Keys whose concatenations read alike.
            "{\"ab\":1,\"c\":1}\n{\"a\":1,\"bc\":1}\n",
            // Null then a value, and duplicate keys.
            "{\"z\":null}\n{\"z\":\"s\"}\n{\"d\":1,\"d\":\"t\"}\n",
            // Records on one line, and none at all.
            "{\"a\":1} {\"b\":true}{\"a\":false}",
            "",
        ];
        for text in texts {
            assert_eq!(
                from_shapes(text).unwrap(),
                from_all(text).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn distinct_shapes_build_one_record_per_shape_and_stop_at_an_error() {
        let text = "{\"a\":1}\n".repeat(1000) + "{\"a\":\"x\"}\n" + &"{\"a\":2}\n".repeat(1000);
        let shapes = distinct_shapes(text.as_bytes());
        assert_eq!(shapes.len(), 2);
        assert!(shapes.iter().all(|s| s.is_ok()));

        for bad in [
            "{\"a\":1}\n{\"a\":",
            "{\"a\":1}\n{\"a\" 1}\n{\"b\":2}\n",
            "{\"a\":1}\n[1,\n",
        ] {
            let shapes = distinct_shapes(bad.as_bytes());
            assert!(shapes.last().unwrap().is_err(), "{bad}");
            assert!(from_shapes(bad).is_err() && from_all(bad).is_err(), "{bad}");
        }
    }
}
