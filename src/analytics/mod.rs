//! Continuous windowed aggregates over a stream's JSON records.
//!
//! Each entry of a stream's `aggregates:` list becomes one [`Aggregator`]. The server feeds it
//! every record with [`Aggregator::ingest`] and ticks it with [`Aggregator::advance`], which
//! returns the windows that just closed (ready to append elsewhere as
//! [`WindowResult::to_json_record`]). [`Aggregator::snapshot`] shows everything queryable and
//! [`Aggregator::take_updates`] drains what changed, for a live feed.
//!
//! This is not a query engine (no ad-hoc queries, joins or filters) and does no locking: the
//! caller serialises access. [`Aggregator::state`] and [`Aggregator::restore`] save and restore
//! everything it holds; `live` saves it with the log offset it covers, so that a restart goes
//! on where it was, and sends closed windows to an output stream exactly once.
//!
//! # Time
//! A record's time is its arrival time (the default) or a field in one of three formats:
//! - `iso8601`: `YYYY-MM-DD[Thh:mm:ss[.f…]][Z|±hh:mm|±hhmm|±hh]`. No zone means UTC; `t` or a
//!   space may stand for `T`; digits past milliseconds are truncated. Leap second `60`, `24:00`
//!   and the basic format without separators are rejected. JSON numbers are rejected.
//! - `epoch_seconds` / `epoch_millis`: a JSON number or numeric string, fractions allowed,
//!   rounded to the nearest millisecond.
//!
//! Times outside the years 0000–9999 are invalid.
//!
//! # Windows
//! - Tumbling: `[k·size, (k+1)·size)`, aligned to the Unix epoch.
//! - Hopping: every `[s, s+size)` with `s` a multiple of `slide` that contains the time, i.e.
//!   `size/slide` windows, rounded up or down per record when slide does not divide size.
//! - Session, per group: a record opens `[t, t+gap)`, and sessions whose intervals overlap
//!   merge (one record can bridge two), so a session is `[first, last+gap)`. A record exactly
//!   `gap` after the last one starts a new session.
//!
//! # Watermark, lateness and closing
//! With a time field, watermark = newest valid event time − `allowed_lateness_seconds`. It
//! never moves back and only records move it, so an idle stream keeps its last window open.
//! With arrival time, watermark = `now − allowed_lateness_seconds`, moved only by
//! `advance(now)`; a record whose arrival stamp is already behind the watermark (clock skew
//! between threads) is counted at the watermark, so nothing is ever late.
//!
//! A window closes once watermark ≥ its end. A record is *late* when every window it belongs
//! to has closed (for sessions: its own `[t, t+gap)` has, or it touches a closed session of its
//! group); late records are counted, never added. A hopping record whose oldest windows have
//! closed still goes into the open ones. Each closed window is returned once by `advance`, in
//! end order, and stays in snapshots until watermark ≥ end + `horizon_seconds`, when `advance`
//! prunes it.
//!
//! # Records and measures
//! Records must be JSON objects. Invalid records change nothing and are counted by reason:
//! `not_json_object`, `missing_time` (absent or null), `bad_time`, `non_numeric_measure`.
//! A missing or null group-by value groups as JSON `null`. A missing or null measure value is
//! skipped like SQL NULL; numbers and numeric strings such as `"12.5"` are accepted; anything
//! else (`true`, `"abc"`, objects) makes the whole record invalid.
//! - `count` counts records; with a `field` it counts records where that value is present and
//!   not null (SQL `COUNT(field)`).
//! - `sum`, `avg`, `min` and `max` are null for a window that saw no value. Integral results are
//!   written as JSON integers.
//! - `approx_distinct` is a HyperLogLog (p = 12: 4096 one-byte registers per window and group,
//!   relative standard error ≈ 1.6%) over each value's JSON text, so `"1"`, `1` and `1.0` are
//!   three different values, and an object's text has its keys in the order the record wrote
//!   them (`{"a":1,"b":2}` and `{"b":2,"a":1}` are two values). Nulls are not counted.
//!
//! # Memory
//! Open windows reach at most `allowed_lateness_seconds` + window size back from the newest
//! time, and each holds at most `max_groups` groups (default 10,000; for session windows, that
//! many open sessions in total). Records of further groups are counted as overflow. Closed
//! windows are kept for `horizon_seconds`. Validation caps a hopping record at 1,000 windows.

mod aggregator;
mod hll;
pub mod live;
mod time;
mod window;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::Value;

pub use aggregator::{Aggregator, Ingested, InvalidReason, Snapshot, WindowResult};
pub use time::{format_iso8601, parse_iso8601};

/// Longest accepted window, gap, lateness or horizon: ten years.
pub const MAX_DURATION_SECONDS: u64 = 10 * 365 * 86_400;
/// Most hopping windows one record may fall into (`size_seconds / slide_seconds`, rounded up).
pub const MAX_WINDOWS_PER_RECORD: u64 = 1000;
/// Output names the flat record form ([`WindowResult::to_json_record`]) uses itself.
const RESERVED_NAMES: [&str; 3] = ["window_start", "window_end", "window_incomplete"];

/// One continuous aggregate: an entry of a stream's `aggregates:` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Unique within the stream; letters, digits, `_` and `-`. Appears in every result.
    pub name: String,
    /// How records are bucketed in time: tumbling, hopping or session windows.
    pub window: WindowConfig,
    /// Where a record's time comes from: `arrival` (default) or `{ field, format }`.
    #[serde(default)]
    pub time: TimeConfig,
    /// Paths whose values split each window into groups: `name`, `.name` or `.a.b`.
    /// A missing value groups as null. Output key is the path without its leading dot.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// What to compute for every window and group; at least one.
    pub measures: Vec<MeasureConfig>,
    /// How far behind the newest event time a record may be and still be added. Default 0.
    #[serde(default)]
    pub allowed_lateness_seconds: u64,
    /// How long a closed window stays queryable, counted in the aggregate's own time (the
    /// watermark) from the window's end. Default 3600.
    #[serde(default = "default_horizon_seconds")]
    pub horizon_seconds: u64,
    /// Most groups one window holds (session windows: most open sessions in total); records
    /// of further groups are counted as overflow. Default 10000.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// A delivery stream that receives every closed window as a JSON record
    /// (`window_start`, `window_end`, the group values, the measures), so results
    /// land in the lake like any other records. Optional.
    #[serde(default)]
    pub output_stream: Option<String>,
}

fn default_horizon_seconds() -> u64 {
    3600
}

fn default_max_groups() -> usize {
    10_000
}

/// Window shape, written as `{ type: tumbling | hopping | session, ... }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    /// Back-to-back windows aligned to the Unix epoch.
    Tumbling {
        /// Window length, > 0.
        size_seconds: u64,
    },
    /// Overlapping windows starting every `slide_seconds`.
    Hopping {
        /// Window length, > 0.
        size_seconds: u64,
        /// Distance between window starts, > 0 and <= `size_seconds`.
        slide_seconds: u64,
    },
    /// Per-group activity bursts separated by silence.
    Session {
        /// Silence that ends a session, > 0.
        gap_seconds: u64,
    },
}

/// Either the word `arrival` or `{ field, format }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimeConfig {
    /// When the server received the record.
    #[default]
    Arrival,
    /// A timestamp inside the record.
    Field {
        /// Path to the value: `ts`, `.ts` or `.meta.ts`.
        field: String,
        /// `iso8601`, `epoch_seconds` or `epoch_millis`.
        format: TimeFormat,
    },
}

/// How a time field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// `2026-11-24T13:05:09.123+01:00`; no zone means UTC.
    Iso8601,
    /// Seconds since the Unix epoch, fractions allowed.
    EpochSeconds,
    /// Milliseconds since the Unix epoch.
    EpochMillis,
}

// Hand-written because an untagged enum would report every mistake as "did not match any
// variant"; this keeps serde's precise messages such as unknown-field errors.
impl<'de> Deserialize<'de> for TimeConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FieldTime {
            field: String,
            format: TimeFormat,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TimeConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`arrival` or `{ field, format }`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TimeConfig, E> {
                match s {
                    "arrival" => Ok(TimeConfig::Arrival),
                    _ => Err(E::invalid_value(Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeConfig, A::Error> {
                let f = FieldTime::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TimeConfig::Field {
                    field: f.field,
                    format: f.format,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One computed column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureConfig {
    /// `count`, `sum`, `avg`, `min`, `max` or `approx_distinct`.
    pub op: MeasureOp,
    /// Path of the measured value. Required except for `count`, where it makes the count
    /// skip records whose value is missing or null.
    #[serde(default)]
    pub field: Option<String>,
    /// Output name. Default: `<op>_<field>` with dots as `_` (e.g. `sum_amount`), or `count`.
    #[serde(default)]
    pub name: Option<String>,
}

/// The aggregation function of a measure; see the module docs for null and type handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureOp {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    ApproxDistinct,
}

impl MeasureOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::ApproxDistinct => "approx_distinct",
        }
    }
}

/// Why an aggregate config was refused; the message names the aggregate and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("aggregate {aggregate:?}: {key} {problem}")]
    Invalid {
        aggregate: String,
        /// Dotted key, e.g. `window.slide_seconds` or `measures[1].field`.
        key: String,
        problem: String,
    },
    #[error("aggregate {0:?} is declared more than once")]
    DuplicateName(String),
}

/// Validates a stream's whole `aggregates:` list, including name uniqueness.
pub fn validate_all(configs: &[AggregateConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for c in configs {
        c.validate()?;
        if !seen.insert(c.name.as_str()) {
            return Err(ConfigError::DuplicateName(c.name.clone()));
        }
    }
    Ok(())
}

type Path = Vec<String>;

/// A record's top-level fields that the stream's aggregates read (slot `i`
/// holds `wanted[i]`), parsed once for all of them and into the same slots
/// from record to record: no key is copied and no map is built.
pub struct Fields<'w> {
    wanted: &'w [&'w str],
    values: Vec<Option<Value>>,
}

impl<'w> Fields<'w> {
    pub fn new(wanted: &'w [&'w str]) -> Self {
        Fields {
            wanted,
            values: vec![None; wanted.len()],
        }
    }

    /// The record's field `name`, if it is wanted and the record has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let i = self.wanted.iter().position(|w| *w == name)?;
        self.values[i].as_ref()
    }

    /// Reads `record`'s wanted fields; the others are checked as JSON and
    /// skipped without being built. False unless the record is one JSON
    /// object. Skipping does not recurse, so serde_json's nesting limit
    /// (128) applies only to the fields that are read.
    pub fn read(&mut self, record: &[u8]) -> bool {
        use crate::json::Key;
        use serde::de::{DeserializeSeed, IgnoredAny};

        struct Seed<'f, 'w>(&'f mut Fields<'w>);
        impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_map(self)
            }
        }
        impl<'de> Visitor<'de> for Seed<'_, '_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
                while let Some(Key(key)) = m.next_key()? {
                    match self.0.wanted.iter().position(|w| *w == key) {
                        // A repeated key: the last one counts, as in a whole parse.
                        Some(i) => self.0.values[i] = Some(m.next_value()?),
                        None => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(())
            }
        }

        self.values.fill(None);
        let mut de = serde_json::Deserializer::from_slice(record);
        Seed(self).deserialize(&mut de).is_ok() && de.end().is_ok()
    }
}

/// `a`, `.a` and `.a.b`; jq's brackets, quotes and pipes are not supported.
fn parse_path(p: &str) -> Option<Path> {
    let segments: Path = p
        .strip_prefix('.')
        .unwrap_or(p)
        .split('.')
        .map(str::to_owned)
        .collect();
    let bad =
        |s: &String| s.is_empty() || s.contains(|c: char| "[]\"|".contains(c) || c.is_whitespace());
    (!segments.iter().any(bad)).then_some(segments)
}

fn lookup<'a>(obj: &'a Fields, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(obj.get(first)?, |v, seg| v.as_object()?.get(seg))
}

/// A JSON number or a numeric string; `None` for everything else, including null.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

/// A validated config in the form the aggregator runs on.
struct Plan {
    kind: WindowKind,
    time: TimeSource,
    /// Output name and path of each group-by value.
    groups: Vec<(String, Path)>,
    measures: Vec<Measure>,
    lateness_ms: i64,
    horizon_ms: i64,
    max_groups: usize,
}

#[derive(Clone, Copy)]
enum WindowKind {
    /// Tumbling is the case `slide_ms == size_ms`.
    Fixed {
        size_ms: i64,
        slide_ms: i64,
    },
    Session {
        gap_ms: i64,
    },
}

enum TimeSource {
    Arrival,
    Field(Path, TimeFormat),
}

struct Measure {
    name: String,
    op: MeasureOp,
    path: Option<Path>,
}

impl AggregateConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(drop)
    }

    fn compile(&self) -> Result<Plan, ConfigError> {
        let bad = |key: &str, problem: &str| ConfigError::Invalid {
            aggregate: self.name.clone(),
            key: key.to_owned(),
            problem: problem.to_owned(),
        };
        let ms = |key: &str, secs: u64, min: u64| {
            if (min..=MAX_DURATION_SECONDS).contains(&secs) {
                Ok(secs as i64 * 1000)
            } else {
                Err(bad(
                    key,
                    &format!("must be between {min} and {MAX_DURATION_SECONDS}"),
                ))
            }
        };
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !valid_name(&self.name) {
            return Err(bad("name", "must be non-empty and use only [a-zA-Z0-9_-]"));
        }
        let kind = match self.window {
            WindowConfig::Tumbling { size_seconds } => {
                let size_ms = ms("window.size_seconds", size_seconds, 1)?;
                WindowKind::Fixed {
                    size_ms,
                    slide_ms: size_ms,
                }
            }
            WindowConfig::Hopping {
                size_seconds,
                slide_seconds,
            } => {
                let size_ms = ms("window.size_seconds", size_seconds, 1)?;
                if slide_seconds == 0 || slide_seconds > size_seconds {
                    return Err(bad(
                        "window.slide_seconds",
                        "must be > 0 and <= size_seconds",
                    ));
                }
                if size_seconds.div_ceil(slide_seconds) > MAX_WINDOWS_PER_RECORD {
                    return Err(bad(
                        "window.slide_seconds",
                        "must be >= size_seconds / 1000 (1000 windows per record)",
                    ));
                }
                WindowKind::Fixed {
                    size_ms,
                    slide_ms: slide_seconds as i64 * 1000,
                }
            }
            WindowConfig::Session { gap_seconds } => WindowKind::Session {
                gap_ms: ms("window.gap_seconds", gap_seconds, 1)?,
            },
        };
        let time = match &self.time {
            TimeConfig::Arrival => TimeSource::Arrival,
            TimeConfig::Field { field, format } => TimeSource::Field(
                parse_path(field)
                    .ok_or_else(|| bad("time.field", "is not a path like `ts` or `.meta.ts`"))?,
                *format,
            ),
        };
        let mut outputs: Vec<String> = RESERVED_NAMES.iter().map(|s| s.to_string()).collect();
        let mut claim = |key: &str, name: String| {
            if outputs.contains(&name) {
                return Err(bad(
                    key,
                    &format!("output name {name:?} is reserved or already used"),
                ));
            }
            outputs.push(name.clone());
            Ok(name)
        };
        let mut groups = Vec::new();
        for (i, g) in self.group_by.iter().enumerate() {
            let key = format!("group_by[{i}]");
            let path =
                parse_path(g).ok_or_else(|| bad(&key, "is not a path like `name` or `.a.b`"))?;
            groups.push((claim(&key, path.join("."))?, path));
        }
        if self.measures.is_empty() {
            return Err(bad("measures", "must list at least one measure"));
        }
        let mut measures = Vec::new();
        for (i, m) in self.measures.iter().enumerate() {
            let path = match &m.field {
                None if m.op != MeasureOp::Count => {
                    return Err(bad(
                        &format!("measures[{i}].field"),
                        &format!("is required for {}", m.op.as_str()),
                    ));
                }
                None => None,
                Some(f) => Some(parse_path(f).ok_or_else(|| {
                    bad(
                        &format!("measures[{i}].field"),
                        "is not a path like `amount` or `.a.b`",
                    )
                })?),
            };
            let name = match (&m.name, &path) {
                (Some(n), _) if n.is_empty() => {
                    return Err(bad(&format!("measures[{i}].name"), "must not be empty"))
                }
                (Some(n), _) => n.clone(),
                (None, Some(p)) => format!("{}_{}", m.op.as_str(), p.join("_")),
                (None, None) => m.op.as_str().to_owned(),
            };
            let name = claim(&format!("measures[{i}].name"), name)?;
            measures.push(Measure {
                name,
                op: m.op,
                path,
            });
        }
        let lateness_ms = ms("allowed_lateness_seconds", self.allowed_lateness_seconds, 0)?;
        let horizon_ms = ms("horizon_seconds", self.horizon_seconds, 0)?;
        if self.max_groups == 0 {
            return Err(bad("max_groups", "must be > 0"));
        }
        Ok(Plan {
            kind,
            time,
            groups,
            measures,
            lateness_ms,
            horizon_ms,
            max_groups: self.max_groups,
        })
    }
}
