//! The running state of one aggregate: open windows, closed results, watermark, counters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::time::{self, format_iso8601};
use super::window::{Cell, Input};
use super::{lookup, AggregateConfig, ConfigError, Fields, Path, Plan, TimeSource, WindowKind};

/// What happened to one ingested record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Added to every still-open window it belongs to.
    Added,
    /// All its windows had closed; counted in `late_count`, not added.
    Late,
    /// Its group did not fit in at least one window (`max_groups`); counted in `overflow_count`.
    Overflow,
    /// Not added anywhere; counted under the reason in `invalid_counts`.
    Invalid(InvalidReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidReason {
    NotJsonObject,
    MissingTime,
    BadTime,
    NonNumericMeasure,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJsonObject => "not_json_object",
            Self::MissingTime => "missing_time",
            Self::BadTime => "bad_time",
            Self::NonNumericMeasure => "non_numeric_measure",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The measures of one group in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowResult {
    pub aggregate: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// `start_ms` as ISO-8601 UTC, e.g. `2026-11-24T13:05:00.000Z`.
    pub start: String,
    pub end: String,
    /// Group-by output name → value (null when the record lacked it).
    pub group: Map<String, Value>,
    pub measures: Map<String, Value>,
    /// False while records can still change it.
    pub closed: bool,
    /// True when records that belonged to it were lost before the aggregate
    /// read them (see [`Aggregator::mark_gap`]): its measures undercount.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

impl WindowResult {
    /// A flat JSON object (`window_start`, `window_end`, group values, measures) suitable for
    /// appending to another stream. Config validation keeps these names from colliding.
    pub fn to_json_record(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("window_start".into(), self.start.clone().into());
        obj.insert("window_end".into(), self.end.clone().into());
        obj.extend(self.group.clone());
        obj.extend(self.measures.clone());
        if self.incomplete {
            obj.insert("window_incomplete".into(), true.into());
        }
        Value::Object(obj).to_string().into_bytes()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub aggregate: String,
    /// None until the first record (field time) or `advance` (arrival time).
    pub watermark_ms: Option<i64>,
    pub watermark: Option<String>,
    pub late_count: u64,
    pub overflow_count: u64,
    /// Invalid records by reason (`not_json_object`, `missing_time`, `bad_time`, ...).
    pub invalid_counts: BTreeMap<String, u64>,
    /// Open and retained closed windows, sorted by (start, group).
    pub windows: Vec<WindowResult>,
}

/// (start, end, group key) of changed windows, in that order; a key already
/// there is found without being copied.
#[derive(Default)]
struct Dirty(BTreeMap<(i64, i64), BTreeSet<String>>);

impl Dirty {
    fn insert(&mut self, start: i64, end: i64, key: &str) {
        let keys = self.0.entry((start, end)).or_default();
        if !keys.contains(key) {
            keys.insert(key.to_string());
        }
    }

    fn remove(&mut self, start: i64, end: i64, key: &str) {
        if let Some(keys) = self.0.get_mut(&(start, end)) {
            keys.remove(key);
            if keys.is_empty() {
                self.0.remove(&(start, end));
            }
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A record reduced to what the windows need, borrowing the buffers an
/// aggregator reuses from record to record.
struct Row<'a> {
    t: i64,
    /// Canonical JSON of the group values: a cheap, orderable map key.
    key: &'a str,
    inputs: &'a [Input],
    /// The record, for the group values of a cell it opens.
    obj: &'a Fields<'a>,
}

impl Row<'_> {
    /// The group values, copied: only a new cell needs them.
    fn group(&self, groups: &[(String, Path)]) -> Vec<Value> {
        groups
            .iter()
            .map(|(_, p)| lookup(self.obj, p).cloned().unwrap_or(Value::Null))
            .collect()
    }
}

/// The buffers a record's [`Row`] is made in.
#[derive(Default)]
struct Scratch {
    key: Vec<u8>,
    inputs: Vec<Input>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Session {
    start: i64,
    last: i64,
    cell: Cell,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SessionGroup {
    open: Vec<Session>,
    /// End of this group's newest closed session: records before it would reopen closed state.
    closed_until: i64,
}

/// By group key. Every record looks its groups up, so the hash is ahash's
/// (randomly keyed per process, as std's SipHash is, but several times
/// cheaper on short keys): group keys come from records.
type Groups<V> = HashMap<String, V, ahash::RandomState>;

pub struct Aggregator {
    name: String,
    plan: Plan,
    watermark: Option<i64>,
    /// Tumbling and hopping windows by start, then by group key.
    fixed: BTreeMap<i64, Groups<Cell>>,
    sessions: Groups<SessionGroup>,
    /// (end, group key, start) of every open session, so closing need not scan all groups.
    session_ends: BTreeSet<(i64, String, i64)>,
    /// Retained closed windows by (end, start, group key); ordered by end for pruning.
    closed: BTreeMap<(i64, i64, String), Cell>,
    /// Keys into `closed` not yet returned by `advance`.
    pending: Vec<(i64, i64, String)>,
    /// Windows changed since the last `take_updates`.
    dirty: Dirty,
    scratch: Scratch,
    late: u64,
    overflow: u64,
    invalid: BTreeMap<&'static str, u64>,
    /// With an output stream: every closed window ending at or before this
    /// has been sent, and later ones are kept until they are.
    sent_through: Option<i64>,
    /// Records were lost at a gap: windows starting before the first record
    /// read after it (`None` while none has been) are incomplete.
    gap: Option<Option<i64>>,
}

/// Everything an [`Aggregator`] needs to go on where it was: what it saves
/// with the log offset it covers (see `live`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct State {
    watermark: Option<i64>,
    fixed: Vec<(i64, Vec<(String, Cell)>)>,
    sessions: Vec<(String, SessionGroup)>,
    closed: Vec<((i64, i64, String), Cell)>,
    pending: Vec<(i64, i64, String)>,
    late: u64,
    overflow: u64,
    invalid: BTreeMap<String, u64>,
    gap: Option<Option<i64>>,
}

impl fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregator")
            .field("name", &self.name)
            .field("watermark", &self.watermark)
            .field(
                "open_windows",
                &(self.fixed.len() + self.session_ends.len()),
            )
            .field("closed_windows", &self.closed.len())
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    pub fn new(cfg: AggregateConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            plan: cfg.compile()?,
            name: cfg.name,
            watermark: None,
            fixed: BTreeMap::new(),
            sessions: Groups::default(),
            session_ends: BTreeSet::new(),
            closed: BTreeMap::new(),
            pending: Vec::new(),
            dirty: Dirty::default(),
            scratch: Scratch::default(),
            late: 0,
            overflow: 0,
            invalid: BTreeMap::new(),
            sent_through: None,
            gap: None,
        })
    }

    /// The state to save; see [`Aggregator::restore`].
    pub fn state(&self) -> State {
        State {
            watermark: self.watermark,
            fixed: self
                .fixed
                .iter()
                .map(|(s, w)| (*s, w.iter().map(|(k, c)| (k.clone(), c.clone())).collect()))
                .collect(),
            sessions: self
                .sessions
                .iter()
                .map(|(k, g)| {
                    let open = g
                        .open
                        .iter()
                        .map(|s| Session {
                            start: s.start,
                            last: s.last,
                            cell: s.cell.clone(),
                        })
                        .collect();
                    (
                        k.clone(),
                        SessionGroup {
                            open,
                            closed_until: g.closed_until,
                        },
                    )
                })
                .collect(),
            closed: self
                .closed
                .iter()
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect(),
            pending: self.pending.clone(),
            late: self.late,
            overflow: self.overflow,
            invalid: self
                .invalid
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            gap: self.gap,
        }
    }

    /// Goes on from a saved state. Err if the state does not fit this
    /// aggregate's measures, groups or window kind (its config changed).
    pub fn restore(&mut self, state: State) -> Result<(), String> {
        let (groups, measures) = (self.plan.groups.len(), &self.plan.measures);
        let cells = state
            .fixed
            .iter()
            .flat_map(|(_, w)| w.iter().map(|(_, c)| c))
            .chain(state.closed.iter().map(|(_, c)| c))
            .chain(
                state
                    .sessions
                    .iter()
                    .flat_map(|(_, g)| g.open.iter().map(|s| &s.cell)),
            );
        for c in cells {
            if !c.fits(groups, measures) {
                return Err("the saved windows do not fit the aggregate's measures".into());
            }
        }
        let session = matches!(self.plan.kind, WindowKind::Session { .. });
        if session && !state.fixed.is_empty() || !session && !state.sessions.is_empty() {
            return Err("the saved windows are of another window type".into());
        }
        let reasons = [
            InvalidReason::NotJsonObject,
            InvalidReason::MissingTime,
            InvalidReason::BadTime,
            InvalidReason::NonNumericMeasure,
        ];
        let mut invalid = BTreeMap::new();
        for (k, v) in state.invalid {
            let r = reasons
                .iter()
                .find(|r| r.as_str() == k)
                .ok_or_else(|| format!("unknown invalid reason {k:?}"))?;
            invalid.insert(r.as_str(), v);
        }
        self.watermark = state.watermark;
        self.fixed = state
            .fixed
            .into_iter()
            .map(|(s, w)| (s, w.into_iter().collect()))
            .collect();
        self.session_ends.clear();
        if let WindowKind::Session { gap_ms } = self.plan.kind {
            for (key, g) in &state.sessions {
                for s in &g.open {
                    self.session_ends
                        .insert((s.last + gap_ms, key.clone(), s.start));
                }
            }
        }
        self.sessions = state.sessions.into_iter().collect();
        self.closed = state.closed.into_iter().collect();
        self.pending = state.pending;
        self.late = state.late;
        self.overflow = state.overflow;
        self.invalid = invalid;
        self.gap = state.gap;
        self.dirty.clear();
        Ok(())
    }

    /// Records this aggregate should have read were lost: every window open
    /// now, and every window starting before the next record read, is
    /// marked incomplete.
    pub fn mark_gap(&mut self) {
        for w in self.fixed.values_mut() {
            w.values_mut().for_each(|c| c.incomplete = true);
        }
        for g in self.sessions.values_mut() {
            g.open.iter_mut().for_each(|s| s.cell.incomplete = true);
        }
        self.gap = Some(None);
    }

    /// Starts sending closed windows to an output stream, which already
    /// holds every one ending at or before `through`. Closed windows are
    /// kept, past the horizon if need be, until [`Aggregator::mark_sent`].
    pub fn send_from(&mut self, through: Option<i64>) {
        self.sent_through = Some(through.unwrap_or(i64::MIN));
    }

    /// Closed windows not yet sent, by end; and the end to pass to
    /// [`Aggregator::mark_sent`] once they are.
    pub fn unsent(&self) -> (Vec<WindowResult>, Option<i64>) {
        let Some(through) = self.sent_through else {
            return (Vec::new(), None);
        };
        let windows: Vec<WindowResult> = self
            .closed
            .range((through.saturating_add(1), i64::MIN, String::new())..)
            .map(|((end, start, _), c)| self.render(*start, *end, c, true))
            .collect();
        let last = windows.last().map(|w| w.end_ms);
        (windows, last)
    }

    /// Every closed window ending at or before `through` is in the output stream.
    pub fn mark_sent(&mut self, through: i64) {
        if let Some(t) = &mut self.sent_through {
            *t = (*t).max(through);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The top-level fields of a record that this aggregate reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> + '_ {
        let time = match &self.plan.time {
            TimeSource::Field(path, _) => Some(path),
            TimeSource::Arrival => None,
        };
        self.plan
            .groups
            .iter()
            .map(|(_, path)| path)
            .chain(self.plan.measures.iter().filter_map(|m| m.path.as_ref()))
            .chain(time)
            .filter_map(|path| path.first().map(String::as_str))
    }

    /// Feeds one record that arrived at `arrival_ms` (ms since the epoch).
    pub fn ingest(&mut self, record: &[u8], arrival_ms: i64) -> Ingested {
        let wanted: Vec<String> = self.fields().map(str::to_owned).collect();
        let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let mut fields = Fields::new(&wanted);
        let object = fields.read(record);
        self.ingest_object(object.then_some(&fields), arrival_ms)
    }

    /// Feeds a record already parsed (`None`: not a JSON object), so several
    /// aggregates over one stream parse each record once.
    pub fn ingest_object(&mut self, obj: Option<&Fields>, arrival_ms: i64) -> Ingested {
        let mut scratch = std::mem::take(&mut self.scratch);
        let outcome = self.ingest_into(obj, arrival_ms, &mut scratch);
        self.scratch = scratch;
        outcome
    }

    fn ingest_into(
        &mut self,
        obj: Option<&Fields>,
        arrival_ms: i64,
        scratch: &mut Scratch,
    ) -> Ingested {
        let row = match obj
            .ok_or(InvalidReason::NotJsonObject)
            .and_then(|obj| self.parse(obj, arrival_ms, scratch))
        {
            Ok(row) => row,
            Err(reason) => {
                *self.invalid.entry(reason.as_str()).or_default() += 1;
                return Ingested::Invalid(reason);
            }
        };
        if let Some(first) = &mut self.gap {
            first.get_or_insert(row.t);
        }
        let outcome = match self.plan.kind {
            WindowKind::Fixed { size_ms, slide_ms } => self.add_fixed(&row, size_ms, slide_ms),
            WindowKind::Session { gap_ms } => self.add_session(&row, gap_ms),
        };
        match outcome {
            Ingested::Late => self.late += 1,
            Ingested::Overflow => self.overflow += 1,
            _ => {}
        }
        if let TimeSource::Field(..) = self.plan.time {
            self.raise_watermark(row.t - self.plan.lateness_ms);
        }
        outcome
    }

    /// Moves processing time to `now_ms`: closes arrival-time windows, returns every window
    /// closed since the last call (ordered by end, start, group), then prunes past the horizon.
    pub fn advance(&mut self, now_ms: i64) -> Vec<WindowResult> {
        if let TimeSource::Arrival = self.plan.time {
            let now = now_ms.clamp(time::MIN_MS, time::MAX_MS);
            self.raise_watermark(now - self.plan.lateness_ms);
        }
        let mut keys = std::mem::take(&mut self.pending);
        keys.sort();
        let closed: Vec<WindowResult> = keys
            .iter()
            .filter_map(|k| {
                let (end, start, _) = k;
                self.closed
                    .get(k)
                    .map(|c| self.render(*start, *end, c, true))
            })
            .collect();
        if let Some(wm) = self.watermark {
            let cutoff = (wm - self.plan.horizon_ms).min(self.sent_through.unwrap_or(i64::MAX));
            self.closed = self
                .closed
                .split_off(&(cutoff + 1, i64::MIN, String::new()));
            self.dirty.0.retain(|(_, end), _| *end > cutoff);
            if let WindowKind::Session { gap_ms } = self.plan.kind {
                // A group with nothing open whose last session ended over a gap ago can only
                // see late records, which the watermark alone already rejects.
                self.sessions
                    .retain(|_, g| !g.open.is_empty() || g.closed_until + gap_ms > wm);
            }
        }
        closed
    }

    /// Every open window and every retained closed one, sorted by (start, group).
    pub fn snapshot(&self) -> Snapshot {
        let mut rows: Vec<((i64, &str, i64), WindowResult)> = Vec::new();
        if let WindowKind::Fixed { size_ms, .. } = self.plan.kind {
            for (&start, window) in &self.fixed {
                for (key, cell) in window {
                    rows.push((
                        (start, key, start + size_ms),
                        self.render(start, start + size_ms, cell, false),
                    ));
                }
            }
        }
        if let WindowKind::Session { gap_ms } = self.plan.kind {
            for (key, group) in &self.sessions {
                for s in &group.open {
                    let end = s.last + gap_ms;
                    rows.push((
                        (s.start, key, end),
                        self.render(s.start, end, &s.cell, false),
                    ));
                }
            }
        }
        for ((end, start, key), c) in &self.closed {
            rows.push(((*start, key, *end), self.render(*start, *end, c, true)));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            aggregate: self.name.clone(),
            watermark_ms: self.watermark,
            watermark: self.watermark.map(format_iso8601),
            late_count: self.late,
            overflow_count: self.overflow,
            invalid_counts: self
                .invalid
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            windows: rows.into_iter().map(|(_, r)| r).collect(),
        }
    }

    /// Drains the windows that ingest changed since the last call, in their current state
    /// (closed ones included, until pruned), sorted by (start, group).
    pub fn take_updates(&mut self) -> Vec<WindowResult> {
        let dirty = std::mem::take(&mut self.dirty);
        for ((start, _), keys) in &dirty.0 {
            if let Some(window) = self.fixed.get_mut(start) {
                for k in keys {
                    if let Some(cell) = window.get_mut(k) {
                        cell.dirty = false;
                    }
                }
            }
        }
        dirty
            .0
            .into_iter()
            .flat_map(|((start, end), keys)| keys.into_iter().map(move |k| (start, end, k)))
            .filter_map(|k| self.current(&k))
            .collect()
    }

    fn parse<'a>(
        &self,
        obj: &'a Fields,
        arrival_ms: i64,
        scratch: &'a mut Scratch,
    ) -> Result<Row<'a>, InvalidReason> {
        let t = match &self.plan.time {
            TimeSource::Arrival => {
                let t = time::in_range(arrival_ms).ok_or(InvalidReason::BadTime)?;
                t.max(self.watermark.unwrap_or(i64::MIN))
            }
            TimeSource::Field(path, format) => match lookup(obj, path) {
                None | Some(Value::Null) => return Err(InvalidReason::MissingTime),
                Some(v) => time::parse_value(v, *format).ok_or(InvalidReason::BadTime)?,
            },
        };
        scratch.inputs.clear();
        for m in &self.plan.measures {
            scratch.inputs.push(m.input(obj)?);
        }
        // The same text as `Value::Array(group).to_string()`.
        const NULL: Value = Value::Null;
        let group: Vec<&Value> = self
            .plan
            .groups
            .iter()
            .map(|(_, p)| lookup(obj, p).unwrap_or(&NULL))
            .collect();
        scratch.key.clear();
        serde_json::to_writer(&mut scratch.key, &group).expect("JSON values serialize");
        Ok(Row {
            t,
            key: std::str::from_utf8(&scratch.key).expect("serde_json writes UTF-8"),
            inputs: &scratch.inputs,
            obj,
        })
    }

    /// Windows starting before this may miss records lost at a gap.
    fn complete_from(&self) -> i64 {
        match self.gap {
            None => i64::MIN,
            Some(None) => i64::MAX,
            Some(Some(t)) => t,
        }
    }

    fn add_fixed(&mut self, row: &Row, size: i64, slide: i64) -> Ingested {
        let wm = self.watermark.unwrap_or(i64::MIN);
        let complete_from = self.complete_from();
        // Starts descend, so ends do too: stop at the first window that misses t or has closed.
        let mut start = row.t.div_euclid(slide) * slide;
        let mut outcome = Ingested::Late;
        while start + size > row.t && start + size > wm {
            if outcome == Ingested::Late {
                outcome = Ingested::Added;
            }
            let window = self.fixed.entry(start).or_default();
            let full = window.len() >= self.plan.max_groups;
            // Most records land in a group that exists: no key is copied then.
            let cell = match window.get_mut(row.key) {
                Some(cell) => Some(cell),
                None if full => {
                    outcome = Ingested::Overflow;
                    None
                }
                None => {
                    let mut cell = Cell::new(row.group(&self.plan.groups), &self.plan.measures);
                    cell.incomplete = start < complete_from;
                    Some(window.entry(row.key.to_owned()).or_insert(cell))
                }
            };
            if let Some(cell) = cell {
                cell.add(row.inputs);
                if !cell.dirty {
                    cell.dirty = true;
                    self.dirty.insert(start, start + size, row.key);
                }
            }
            start -= slide;
        }
        outcome
    }

    fn add_session(&mut self, row: &Row, gap: i64) -> Ingested {
        let (t, key) = (row.t, row.key);
        let wm = self.watermark.unwrap_or(i64::MIN);
        let closed_until = self.sessions.get(key).map_or(i64::MIN, |g| g.closed_until);
        if t + gap <= wm || t < closed_until {
            return Ingested::Late;
        }
        let complete_from = self.complete_from();
        let touches = |s: &Session| s.start < t + gap && t < s.last + gap;
        let group = self
            .sessions
            .entry(key.to_owned())
            .or_insert_with(|| SessionGroup {
                open: Vec::new(),
                closed_until: i64::MIN,
            });
        if !group.open.iter().any(touches) && self.session_ends.len() >= self.plan.max_groups {
            return Ingested::Overflow;
        }
        let (touching, rest): (Vec<Session>, Vec<Session>) = std::mem::take(&mut group.open)
            .into_iter()
            .partition(touches);
        group.open = rest;
        let mut merged = Session {
            start: t,
            last: t,
            cell: Cell::new(row.group(&self.plan.groups), &self.plan.measures),
        };
        for s in touching {
            let end = s.last + gap;
            self.session_ends.remove(&(end, key.to_owned(), s.start));
            self.dirty.remove(s.start, end, key);
            merged.start = merged.start.min(s.start);
            merged.last = merged.last.max(s.last);
            merged.cell.merge(&s.cell);
        }
        merged.cell.incomplete |= merged.start < complete_from;
        merged.cell.add(row.inputs);
        let end = merged.last + gap;
        self.session_ends
            .insert((end, key.to_owned(), merged.start));
        self.dirty.insert(merged.start, end, key);
        group.open.push(merged);
        Ingested::Added
    }

    fn raise_watermark(&mut self, wm: i64) {
        if self.watermark >= Some(wm) {
            return;
        }
        self.watermark = Some(wm);
        match self.plan.kind {
            WindowKind::Fixed { size_ms, .. } => {
                while let Some(entry) = self.fixed.first_entry() {
                    let start = *entry.key();
                    if start + size_ms > wm {
                        break;
                    }
                    for (key, cell) in entry.remove() {
                        self.close(start, start + size_ms, key, cell);
                    }
                }
            }
            WindowKind::Session { .. } => {
                while let Some((end, key, start)) = self.session_ends.first().cloned() {
                    if end > wm {
                        break;
                    }
                    self.session_ends.pop_first();
                    let Some(group) = self.sessions.get_mut(&key) else {
                        continue;
                    };
                    let Some(i) = group.open.iter().position(|s| s.start == start) else {
                        continue;
                    };
                    let session = group.open.swap_remove(i);
                    group.closed_until = group.closed_until.max(end);
                    self.close(start, end, key, session.cell);
                }
            }
        }
    }

    fn close(&mut self, start: i64, end: i64, key: String, cell: Cell) {
        self.pending.push((end, start, key.clone()));
        self.closed.insert((end, start, key), cell);
    }

    /// The present state of a window, open or retained closed.
    fn current(&self, (start, end, key): &(i64, i64, String)) -> Option<WindowResult> {
        let open = match self.plan.kind {
            WindowKind::Fixed { .. } => self.fixed.get(start).and_then(|w| w.get(key)),
            WindowKind::Session { gap_ms } => self
                .sessions
                .get(key)
                .and_then(|g| {
                    g.open
                        .iter()
                        .find(|s| s.start == *start && s.last + gap_ms == *end)
                })
                .map(|s| &s.cell),
        };
        match open {
            Some(cell) => Some(self.render(*start, *end, cell, false)),
            None => self
                .closed
                .get(&(*end, *start, key.clone()))
                .map(|c| self.render(*start, *end, c, true)),
        }
    }

    fn render(&self, start: i64, end: i64, cell: &Cell, closed: bool) -> WindowResult {
        WindowResult {
            aggregate: self.name.clone(),
            start_ms: start,
            end_ms: end,
            start: format_iso8601(start),
            end: format_iso8601(end),
            group: self
                .plan
                .groups
                .iter()
                .map(|(n, _)| n.clone())
                .zip(cell.group.iter().cloned())
                .collect(),
            measures: self
                .plan
                .measures
                .iter()
                .map(|m| m.name.clone())
                .zip(cell.values())
                .collect(),
            closed,
            incomplete: cell.incomplete,
        }
    }
}
