//! Behaviour tables: each case is a config and a script of records and expectations.

use serde_json::{json, Map, Value};

use super::*;
use Ingested::{Added, Late, Overflow};

enum Step {
    /// Ingest a record (JSON text) that arrived at the given ms; expect this outcome.
    In(i64, &'static str, Ingested),
    /// `advance(now_ms)` returns exactly these windows, in order.
    Advance(i64, &'static [&'static str]),
    /// `snapshot().windows` is exactly this.
    Snapshot(&'static [&'static str]),
    /// `take_updates()` returns exactly this.
    Updates(&'static [&'static str]),
    /// Watermark (ms), late count, overflow count, invalid counts as JSON.
    Counters(Option<i64>, u64, u64, &'static str),
}
use Step::*;

/// A record at event time 0 arrival; most cases read time from the record.
fn add(record: &'static str) -> Step {
    In(0, record, Added)
}

fn invalid(record: &'static str, reason: InvalidReason) -> Step {
    In(0, record, Ingested::Invalid(reason))
}

/// `[start,end) group measures` with bounds in seconds; ` open` marks open windows.
fn line(r: &WindowResult) -> String {
    let s = |ms: i64| ms as f64 / 1000.0;
    let open = if r.closed { "" } else { " open" };
    format!(
        "[{},{}) {} {}{open}",
        s(r.start_ms),
        s(r.end_ms),
        sorted(&r.group),
        sorted(&r.measures)
    )
}

/// A map rendered with sorted keys, so expectations do not depend on order.
fn sorted(m: &serde_json::Map<String, Value>) -> String {
    serde_json::to_string(&m.iter().collect::<std::collections::BTreeMap<_, _>>()).unwrap()
}

#[test]
fn measures_keep_the_configured_order() {
    let config = cfg(
        json!({"type": "tumbling", "size_seconds": 60}),
        json!({"measures": [{"op": "sum", "field": "v"}, {"op": "count"}, {"op": "avg", "field": "v"}]}),
    );
    let mut agg = Aggregator::new(serde_json::from_value(config).unwrap()).unwrap();
    agg.ingest(br#"{"ts":1,"v":2}"#, 0);
    let names: Vec<String> = agg.snapshot().windows[0].measures.keys().cloned().collect();
    assert_eq!(names, ["sum_v", "count", "avg_v"]);
}

/// Epoch-seconds time in field `ts`, a count measure, overridden or extended by `extra`.
fn cfg(window: Value, extra: Value) -> Value {
    let mut c = json!({
        "name": "t", "window": window,
        "time": {"field": "ts", "format": "epoch_seconds"},
        "measures": [{"op": "count"}],
    });
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

fn tumbling(size: u64) -> Value {
    json!({"type": "tumbling", "size_seconds": size})
}

fn run(name: &str, config: Value, steps: Vec<Step>) {
    let cfg: AggregateConfig = serde_json::from_value(config).unwrap();
    let mut agg = Aggregator::new(cfg).unwrap();
    let lines = |rs: Vec<WindowResult>| rs.iter().map(line).collect::<Vec<_>>();
    for (i, step) in steps.into_iter().enumerate() {
        let at = format!("case {name:?}, step {i}");
        match step {
            In(arrival, rec, want) => {
                assert_eq!(agg.ingest(rec.as_bytes(), arrival), want, "{at}: {rec}")
            }
            Advance(now, want) => assert_eq!(lines(agg.advance(now)), want, "{at}"),
            Snapshot(want) => assert_eq!(lines(agg.snapshot().windows), want, "{at}"),
            Updates(want) => assert_eq!(lines(agg.take_updates()), want, "{at}"),
            Counters(wm, late, overflow, invalid) => {
                let s = agg.snapshot();
                let got = (
                    s.watermark_ms,
                    s.late_count,
                    s.overflow_count,
                    serde_json::to_string(&s.invalid_counts).unwrap(),
                );
                assert_eq!(got, (wm, late, overflow, invalid.to_string()), "{at}");
            }
        }
    }
}

#[test]
fn window_behaviour_table() {
    let cases: Vec<(&str, Value, Vec<Step>)> = vec![
        (
            "tumbling: half-open boundaries, closing on watermark, each close emitted once",
            cfg(tumbling(60), json!({})),
            vec![
                add(r#"{"ts":0}"#),
                add(r#"{"ts":59.999}"#),
                Advance(0, &[]),
                add(r#"{"ts":60}"#),
                Advance(0, &["[0,60) {} {\"count\":2}"]),
                Advance(0, &[]),
                add(r#"{"ts":119.999}"#),
                add(r#"{"ts":120}"#),
                Snapshot(&["[0,60) {} {\"count\":2}", "[60,120) {} {\"count\":2}", "[120,180) {} {\"count\":1} open"]),
                Counters(Some(120_000), 0, 0, "{}"),
            ],
        ),
        (
            "hopping: a record is in every window containing it; window end is exclusive",
            cfg(json!({"type": "hopping", "size_seconds": 60, "slide_seconds": 20}), json!({"allowed_lateness_seconds": 1000})),
            vec![
                add(r#"{"ts":50}"#),
                add(r#"{"ts":60}"#),
                Snapshot(&[
                    "[0,60) {} {\"count\":1} open",
                    "[20,80) {} {\"count\":2} open",
                    "[40,100) {} {\"count\":2} open",
                    "[60,120) {} {\"count\":1} open",
                ]),
            ],
        ),
        (
            "hopping: slide not dividing size gives 3 or 2 windows per record",
            cfg(json!({"type": "hopping", "size_seconds": 50, "slide_seconds": 20}), json!({"allowed_lateness_seconds": 1000})),
            vec![
                add(r#"{"ts":45}"#),
                add(r#"{"ts":55}"#),
                Snapshot(&["[0,50) {} {\"count\":1} open", "[20,70) {} {\"count\":2} open", "[40,90) {} {\"count\":2} open"]),
            ],
        ),
        (
            "hopping: partly closed record fills open windows; fully closed is late",
            cfg(json!({"type": "hopping", "size_seconds": 20, "slide_seconds": 10}), json!({})),
            vec![
                add(r#"{"ts":25}"#),
                add(r#"{"ts":15}"#),
                In(0, r#"{"ts":5}"#, Late),
                Snapshot(&["[10,30) {} {\"count\":2} open", "[20,40) {} {\"count\":1} open"]),
                Counters(Some(25_000), 1, 0, "{}"),
            ],
        ),
        (
            "session: exact gap starts a new session, a bridging record merges two",
            cfg(json!({"type": "session", "gap_seconds": 10}), json!({"group_by": ["k"], "allowed_lateness_seconds": 100})),
            vec![
                add(r#"{"ts":0,"k":"a"}"#),
                add(r#"{"ts":10,"k":"a"}"#),
                Snapshot(&["[0,10) {\"k\":\"a\"} {\"count\":1} open", "[10,20) {\"k\":\"a\"} {\"count\":1} open"]),
                add(r#"{"ts":5,"k":"a"}"#),
                add(r#"{"ts":30,"k":"a"}"#),
                add(r#"{"ts":0,"k":"b"}"#),
                Snapshot(&[
                    "[0,20) {\"k\":\"a\"} {\"count\":3} open",
                    "[0,10) {\"k\":\"b\"} {\"count\":1} open",
                    "[30,40) {\"k\":\"a\"} {\"count\":1} open",
                ]),
                add(r#"{"ts":200,"k":"c"}"#),
                Advance(0, &["[0,10) {\"k\":\"b\"} {\"count\":1}", "[0,20) {\"k\":\"a\"} {\"count\":3}", "[30,40) {\"k\":\"a\"} {\"count\":1}"]),
                In(0, r#"{"ts":35,"k":"a"}"#, Late),
                add(r#"{"ts":95,"k":"a"}"#),
                Snapshot(&[
                    "[0,20) {\"k\":\"a\"} {\"count\":3}",
                    "[0,10) {\"k\":\"b\"} {\"count\":1}",
                    "[30,40) {\"k\":\"a\"} {\"count\":1}",
                    "[95,105) {\"k\":\"a\"} {\"count\":1} open",
                    "[200,210) {\"k\":\"c\"} {\"count\":1} open",
                ]),
            ],
        ),
        (
            "session: a record touching a closed session of its group is late",
            cfg(json!({"type": "session", "gap_seconds": 10}), json!({"group_by": ["k"]})),
            vec![
                add(r#"{"ts":0,"k":"a"}"#),
                add(r#"{"ts":10,"k":"b"}"#),
                In(0, r#"{"ts":5,"k":"a"}"#, Late),
                add(r#"{"ts":10,"k":"a"}"#),
                Advance(0, &["[0,10) {\"k\":\"a\"} {\"count\":1}"]),
                Snapshot(&[
                    "[0,10) {\"k\":\"a\"} {\"count\":1}",
                    "[10,20) {\"k\":\"a\"} {\"count\":1} open",
                    "[10,20) {\"k\":\"b\"} {\"count\":1} open",
                ]),
                Counters(Some(10_000), 1, 0, "{}"),
            ],
        ),
        (
            "out of order within allowed lateness is added; beyond it is late",
            cfg(tumbling(10), json!({"allowed_lateness_seconds": 5})),
            vec![
                add(r#"{"ts":9}"#),
                add(r#"{"ts":12}"#),
                add(r#"{"ts":3}"#),
                add(r#"{"ts":16}"#),
                In(0, r#"{"ts":8}"#, Late),
                add(r#"{"ts":14}"#),
                Counters(Some(11_000), 1, 0, "{}"),
                Advance(0, &["[0,10) {} {\"count\":2}"]),
                Snapshot(&["[0,10) {} {\"count\":2}", "[10,20) {} {\"count\":3} open"]),
            ],
        ),
        (
            "watermark starts unset and never moves back",
            cfg(tumbling(10), json!({"allowed_lateness_seconds": 10})),
            vec![
                Counters(None, 0, 0, "{}"),
                add(r#"{"ts":20}"#),
                Counters(Some(10_000), 0, 0, "{}"),
                add(r#"{"ts":12}"#),
                Counters(Some(10_000), 0, 0, "{}"),
                In(0, r#"{"ts":9.999}"#, Late),
                add(r#"{"ts":20.5}"#),
                Counters(Some(10_500), 1, 0, "{}"),
            ],
        ),
        (
            "arrival time: windows close only via advance and nothing is late",
            cfg(tumbling(60), json!({"time": "arrival"})),
            vec![
                In(1_000, "{}", Added),
                In(59_999, "{}", Added),
                Counters(None, 0, 0, "{}"),
                Advance(59_999, &[]),
                In(60_000, "{}", Added),
                Advance(60_000, &["[0,60) {} {\"count\":2}"]),
                In(30_000, "{}", Added),
                Advance(119_999, &[]),
                Advance(50_000, &[]),
                Snapshot(&["[0,60) {} {\"count\":2}", "[60,120) {} {\"count\":2} open"]),
                Counters(Some(119_999), 0, 0, "{}"),
            ],
        ),
        (
            "measures: numeric strings accepted, missing and null skipped, empty is null",
            cfg(
                tumbling(60),
                json!({"group_by": ["k"], "measures": [
                    {"op": "count"}, {"op": "count", "field": "amount"}, {"op": "sum", "field": "amount"},
                    {"op": "avg", "field": "amount", "name": "avg"}, {"op": "min", "field": "amount"},
                    {"op": "max", "field": "amount"}, {"op": "approx_distinct", "field": "user"},
                ]}),
            ),
            vec![
                add(r#"{"ts":1,"k":"a","amount":10,"user":"u1"}"#),
                add(r#"{"ts":2,"k":"a","amount":"2.5","user":"u2"}"#),
                add(r#"{"ts":3,"k":"a","user":"u1"}"#),
                add(r#"{"ts":4,"k":"a","amount":null,"user":null}"#),
                add(r#"{"ts":5,"k":"b","user":1}"#),
                add(r#"{"ts":6,"k":"b","user":"1","amount":-4}"#),
                Snapshot(&[
                    "[0,60) {\"k\":\"a\"} {\"approx_distinct_user\":2,\"avg\":6.25,\"count\":4,\"count_amount\":2,\"max_amount\":10,\"min_amount\":2.5,\"sum_amount\":12.5} open",
                    "[0,60) {\"k\":\"b\"} {\"approx_distinct_user\":2,\"avg\":-4,\"count\":2,\"count_amount\":1,\"max_amount\":-4,\"min_amount\":-4,\"sum_amount\":-4} open",
                ]),
            ],
        ),
        (
            "measures: a group whose records all lack the field has null sum/avg/min/max",
            cfg(tumbling(60), json!({"measures": [{"op": "sum", "field": "v"}, {"op": "avg", "field": "v"}, {"op": "min", "field": "v"}, {"op": "max", "field": "v"}]})),
            vec![add(r#"{"ts":1}"#), Snapshot(&["[0,60) {} {\"avg_v\":null,\"max_v\":null,\"min_v\":null,\"sum_v\":null} open"])],
        ),
        (
            "group by nested path; missing values group as null",
            cfg(tumbling(60), json!({"group_by": [".customer.id", "region"]})),
            vec![
                add(r#"{"ts":1,"customer":{"id":7},"region":"eu"}"#),
                add(r#"{"ts":2,"customer":{},"region":"eu"}"#),
                add(r#"{"ts":3,"region":"eu"}"#),
                add(r#"{"ts":4,"customer":{"id":7}}"#),
                add(r#"{"ts":5,"customer":"flat","region":"eu"}"#),
                Snapshot(&[
                    "[0,60) {\"customer.id\":7,\"region\":\"eu\"} {\"count\":1} open",
                    "[0,60) {\"customer.id\":7,\"region\":null} {\"count\":1} open",
                    "[0,60) {\"customer.id\":null,\"region\":\"eu\"} {\"count\":3} open",
                ]),
            ],
        ),
        (
            "invalid records are counted by reason and change nothing",
            cfg(tumbling(60), json!({"time": {"field": "at", "format": "iso8601"}, "measures": [{"op": "sum", "field": "amount"}]})),
            vec![
                invalid("not json", InvalidReason::NotJsonObject),
                invalid("[1,2]", InvalidReason::NotJsonObject),
                invalid(r#"{"amount":1}"#, InvalidReason::MissingTime),
                invalid(r#"{"at":null}"#, InvalidReason::MissingTime),
                invalid(r#"{"at":"2026-13-01T00:00:00Z"}"#, InvalidReason::BadTime),
                invalid(r#"{"at":1795525509}"#, InvalidReason::BadTime),
                invalid(r#"{"at":"2026-11-24T13:05:09Z","amount":"abc"}"#, InvalidReason::NonNumericMeasure),
                invalid(r#"{"at":"2026-11-24T13:05:09Z","amount":true}"#, InvalidReason::NonNumericMeasure),
                Counters(None, 0, 0, r#"{"bad_time":2,"missing_time":2,"non_numeric_measure":2,"not_json_object":2}"#),
                add(r#"{"at":"2026-11-24T13:05:09.5+00:00","amount":"12.5"}"#),
                Snapshot(&["[1795525500,1795525560) {} {\"sum_amount\":12.5} open"]),
                Counters(Some(1_795_525_509_500), 0, 0, r#"{"bad_time":2,"missing_time":2,"non_numeric_measure":2,"not_json_object":2}"#),
            ],
        ),
        (
            "horizon: closed windows are emitted, then pruned once watermark passes end + horizon",
            cfg(tumbling(10), json!({"horizon_seconds": 20})),
            vec![
                add(r#"{"ts":5}"#),
                add(r#"{"ts":15}"#),
                add(r#"{"ts":25}"#),
                add(r#"{"ts":35}"#),
                Advance(0, &["[0,10) {} {\"count\":1}", "[10,20) {} {\"count\":1}", "[20,30) {} {\"count\":1}"]),
                Snapshot(&["[10,20) {} {\"count\":1}", "[20,30) {} {\"count\":1}", "[30,40) {} {\"count\":1} open"]),
                add(r#"{"ts":40}"#),
                Snapshot(&["[10,20) {} {\"count\":1}", "[20,30) {} {\"count\":1}", "[30,40) {} {\"count\":1}", "[40,50) {} {\"count\":1} open"]),
                Advance(0, &["[30,40) {} {\"count\":1}"]),
                Snapshot(&["[20,30) {} {\"count\":1}", "[30,40) {} {\"count\":1}", "[40,50) {} {\"count\":1} open"]),
            ],
        ),
        (
            "max_groups: a further group overflows and is counted; the next window has room",
            cfg(tumbling(60), json!({"group_by": ["k"], "max_groups": 2})),
            vec![
                add(r#"{"ts":1,"k":"a"}"#),
                add(r#"{"ts":2,"k":"b"}"#),
                In(0, r#"{"ts":3,"k":"c"}"#, Overflow),
                add(r#"{"ts":4,"k":"a"}"#),
                add(r#"{"ts":70,"k":"c"}"#),
                Counters(Some(70_000), 0, 1, "{}"),
                Snapshot(&["[0,60) {\"k\":\"a\"} {\"count\":2}", "[0,60) {\"k\":\"b\"} {\"count\":1}", "[60,120) {\"k\":\"c\"} {\"count\":1} open"]),
            ],
        ),
        (
            "max_groups for sessions caps open sessions; extending one still works",
            cfg(json!({"type": "session", "gap_seconds": 10}), json!({"group_by": ["k"], "max_groups": 1})),
            vec![
                add(r#"{"ts":0,"k":"a"}"#),
                In(0, r#"{"ts":1,"k":"b"}"#, Overflow),
                add(r#"{"ts":5,"k":"a"}"#),
                Snapshot(&["[0,15) {\"k\":\"a\"} {\"count\":2} open"]),
                Counters(Some(5_000), 0, 1, "{}"),
            ],
        ),
        (
            "take_updates drains changed windows, including ones that closed meanwhile",
            cfg(tumbling(10), json!({"group_by": ["k"]})),
            vec![
                Updates(&[]),
                add(r#"{"ts":1,"k":"a"}"#),
                add(r#"{"ts":2,"k":"b"}"#),
                add(r#"{"ts":3,"k":"a"}"#),
                Updates(&["[0,10) {\"k\":\"a\"} {\"count\":2} open", "[0,10) {\"k\":\"b\"} {\"count\":1} open"]),
                Updates(&[]),
                add(r#"{"ts":12,"k":"a"}"#),
                In(0, r#"{"ts":5,"k":"b"}"#, Late),
                Updates(&["[10,20) {\"k\":\"a\"} {\"count\":1} open"]),
                add(r#"{"ts":13,"k":"a"}"#),
                add(r#"{"ts":25,"k":"b"}"#),
                Updates(&["[10,20) {\"k\":\"a\"} {\"count\":2}", "[20,30) {\"k\":\"b\"} {\"count\":1} open"]),
            ],
        ),
        (
            "a hopping window drained and changed again is reported again, each time",
            cfg(json!({"type": "hopping", "size_seconds": 20, "slide_seconds": 10}), json!({"group_by": ["k"]})),
            vec![
                add(r#"{"ts":15,"k":"a"}"#),
                add(r#"{"ts":16,"k":"a"}"#),
                Updates(&["[0,20) {\"k\":\"a\"} {\"count\":2} open", "[10,30) {\"k\":\"a\"} {\"count\":2} open"]),
                add(r#"{"ts":17,"k":"a"}"#),
                add(r#"{"ts":17,"k":"b"}"#),
                Updates(&[
                    "[0,20) {\"k\":\"a\"} {\"count\":3} open",
                    "[0,20) {\"k\":\"b\"} {\"count\":1} open",
                    "[10,30) {\"k\":\"a\"} {\"count\":3} open",
                    "[10,30) {\"k\":\"b\"} {\"count\":1} open",
                ]),
                Updates(&[]),
                add(r#"{"ts":18,"k":"b"}"#),
                Updates(&["[0,20) {\"k\":\"b\"} {\"count\":2} open", "[10,30) {\"k\":\"b\"} {\"count\":2} open"]),
            ],
        ),
        (
            "session updates report the merged session, not the sessions it absorbed",
            cfg(json!({"type": "session", "gap_seconds": 10}), json!({"allowed_lateness_seconds": 100})),
            vec![
                add(r#"{"ts":0}"#),
                add(r#"{"ts":18}"#),
                add(r#"{"ts":9}"#),
                Updates(&["[0,28) {} {\"count\":3} open"]),
            ],
        ),
    ];
    for (name, config, steps) in cases {
        run(name, config, steps);
    }
}

#[test]
fn results_render_as_iso_times_and_flat_records() {
    let config = cfg(
        tumbling(60),
        json!({"name": "spend", "group_by": [".customer.id"], "measures": [{"op": "sum", "field": "amount", "name": "total"}]}),
    );
    let mut agg = Aggregator::new(serde_json::from_value(config).unwrap()).unwrap();
    assert_eq!(agg.name(), "spend");
    agg.ingest(
        br#"{"ts":1795525509.25,"customer":{"id":"c1"},"amount":3}"#,
        0,
    );
    agg.ingest(br#"{"ts":1795525600,"customer":{"id":"c1"},"amount":1}"#, 0);
    let closed = agg.advance(0);
    assert_eq!(closed.len(), 1);
    let r = &closed[0];
    assert_eq!(
        (r.start.as_str(), r.end.as_str()),
        ("2026-11-24T13:05:00.000Z", "2026-11-24T13:06:00.000Z")
    );
    let record: Value = serde_json::from_slice(&r.to_json_record()).unwrap();
    assert_eq!(
        record,
        json!({"window_start": "2026-11-24T13:05:00.000Z", "window_end": "2026-11-24T13:06:00.000Z", "customer.id": "c1", "total": 3})
    );
    let snapshot = serde_json::to_value(agg.snapshot()).unwrap();
    assert_eq!(snapshot["watermark"], "2026-11-24T13:06:40.000Z");
    assert_eq!(snapshot["windows"][0]["aggregate"], "spend");
    assert_eq!(snapshot["windows"][0]["closed"], true);
    assert_eq!(snapshot["windows"][1]["closed"], false);
}

#[test]
fn config_defaults_and_shapes() {
    let c: AggregateConfig = serde_json::from_value(json!({
        "name": "epm", "window": {"type": "session", "gap_seconds": 30}, "measures": [{"op": "count"}],
    }))
    .unwrap();
    assert_eq!(c.time, TimeConfig::Arrival);
    assert_eq!(
        (c.allowed_lateness_seconds, c.horizon_seconds, c.max_groups),
        (0, 3600, 10_000)
    );
    assert!(c.group_by.is_empty());
    let c: AggregateConfig = serde_json::from_value(cfg(
        tumbling(60),
        json!({"time": {"field": ".meta.ts", "format": "iso8601"}}),
    ))
    .unwrap();
    assert_eq!(
        c.time,
        TimeConfig::Field {
            field: ".meta.ts".into(),
            format: TimeFormat::Iso8601
        }
    );

    let rejected_by_serde = [
        (
            "unknown top-level key",
            cfg(tumbling(60), json!({"windw": 1})),
        ),
        (
            "unknown window key",
            cfg(
                json!({"type": "tumbling", "size_seconds": 60, "slide_seconds": 10}),
                json!({}),
            ),
        ),
        (
            "unknown window type",
            cfg(json!({"type": "sliding", "size_seconds": 60}), json!({})),
        ),
        (
            "unknown measure key",
            cfg(
                tumbling(60),
                json!({"measures": [{"op": "count", "fields": "x"}]}),
            ),
        ),
        (
            "unknown op",
            cfg(
                tumbling(60),
                json!({"measures": [{"op": "median", "field": "x"}]}),
            ),
        ),
        (
            "time word",
            cfg(tumbling(60), json!({"time": "processing"})),
        ),
        (
            "unknown time key",
            cfg(
                tumbling(60),
                json!({"time": {"field": "ts", "format": "iso8601", "zone": "UTC"}}),
            ),
        ),
        (
            "time format",
            cfg(
                tumbling(60),
                json!({"time": {"field": "ts", "format": "rfc2822"}}),
            ),
        ),
        (
            "negative lateness",
            cfg(tumbling(60), json!({"allowed_lateness_seconds": -1})),
        ),
    ];
    for (what, v) in rejected_by_serde {
        assert!(
            serde_json::from_value::<AggregateConfig>(v).is_err(),
            "{what} should be rejected"
        );
    }
}

#[test]
fn config_validation_table() {
    let hop = |size: u64, slide: u64| json!({"type": "hopping", "size_seconds": size, "slide_seconds": slide});
    let m = |ms: Value| json!({ "measures": ms });
    let table: Vec<(Value, Option<&str>)> = vec![
        (cfg(tumbling(60), json!({})), None),
        (cfg(hop(300, 60), json!({})), None),
        (cfg(hop(50, 20), json!({})), None),
        (cfg(hop(1000, 1), json!({})), None),
        (
            cfg(
                json!({"type": "session", "gap_seconds": 30}),
                json!({"group_by": ["a", ".b.c"]}),
            ),
            None,
        ),
        (
            cfg(
                tumbling(60),
                m(json!([{"op": "count", "field": "x"}, {"op": "approx_distinct", "field": "x"}])),
            ),
            None,
        ),
        (cfg(tumbling(60), json!({"name": "bad name"})), Some("name")),
        (cfg(tumbling(60), json!({"name": ""})), Some("name")),
        (cfg(tumbling(0), json!({})), Some("window.size_seconds")),
        (
            cfg(tumbling(MAX_DURATION_SECONDS + 1), json!({})),
            Some("window.size_seconds"),
        ),
        (cfg(hop(60, 0), json!({})), Some("window.slide_seconds")),
        (cfg(hop(60, 61), json!({})), Some("window.slide_seconds")),
        (cfg(hop(1001, 1), json!({})), Some("window.slide_seconds")),
        (
            cfg(json!({"type": "session", "gap_seconds": 0}), json!({})),
            Some("window.gap_seconds"),
        ),
        (
            cfg(
                tumbling(60),
                json!({"time": {"field": "", "format": "iso8601"}}),
            ),
            Some("time.field"),
        ),
        (
            cfg(tumbling(60), json!({"group_by": ["a[0]"]})),
            Some("group_by[0]"),
        ),
        (
            cfg(tumbling(60), json!({"group_by": ["a", ".a"]})),
            Some("group_by[1]"),
        ),
        (
            cfg(tumbling(60), json!({"group_by": ["window_start"]})),
            Some("group_by[0]"),
        ),
        (cfg(tumbling(60), m(json!([]))), Some("measures")),
        (
            cfg(tumbling(60), m(json!([{"op": "sum"}]))),
            Some("measures[0].field"),
        ),
        (
            cfg(
                tumbling(60),
                m(json!([{"op": "count"}, {"op": "approx_distinct"}])),
            ),
            Some("measures[1].field"),
        ),
        (
            cfg(tumbling(60), m(json!([{"op": "max", "field": "a..b"}]))),
            Some("measures[0].field"),
        ),
        (
            cfg(
                tumbling(60),
                m(json!([{"op": "count"}, {"op": "sum", "field": "x", "name": "count"}])),
            ),
            Some("measures[1].name"),
        ),
        (
            cfg(
                tumbling(60),
                json!({"group_by": ["k"], "measures": [{"op": "count", "name": "k"}]}),
            ),
            Some("measures[0].name"),
        ),
        (
            cfg(tumbling(60), m(json!([{"op": "count", "name": ""}]))),
            Some("measures[0].name"),
        ),
        (
            cfg(
                tumbling(60),
                json!({"allowed_lateness_seconds": MAX_DURATION_SECONDS + 1}),
            ),
            Some("allowed_lateness_seconds"),
        ),
        (
            cfg(
                tumbling(60),
                json!({"horizon_seconds": MAX_DURATION_SECONDS + 1}),
            ),
            Some("horizon_seconds"),
        ),
        (
            cfg(tumbling(60), json!({"max_groups": 0})),
            Some("max_groups"),
        ),
    ];
    for (v, want) in table {
        let c: AggregateConfig = serde_json::from_value(v.clone()).unwrap();
        let got = match c.validate() {
            Ok(()) => None,
            Err(ConfigError::Invalid { key, aggregate, .. }) => {
                assert_eq!(aggregate, c.name);
                Some(key)
            }
            Err(e) => panic!("unexpected {e}"),
        };
        assert_eq!(got.as_deref(), want, "{v}");
        assert_eq!(Aggregator::new(c).is_ok(), want.is_none());
    }
}

#[test]
fn config_errors_name_the_aggregate_and_key() {
    let c: AggregateConfig = serde_json::from_value(cfg(
        json!({"type": "hopping", "size_seconds": 60, "slide_seconds": 90}),
        json!({"name": "x"}),
    ))
    .unwrap();
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "aggregate \"x\": window.slide_seconds must be > 0 and <= size_seconds"
    );
    let invalid_first = [
        c.clone(),
        AggregateConfig {
            name: "y".into(),
            ..c.clone()
        },
    ];
    assert_eq!(validate_all(&invalid_first), Err(c.validate().unwrap_err()));
    let ok: AggregateConfig =
        serde_json::from_value(cfg(tumbling(60), json!({"name": "x"}))).unwrap();
    assert_eq!(
        validate_all(&[ok.clone(), ok.clone()])
            .unwrap_err()
            .to_string(),
        "aggregate \"x\" is declared more than once"
    );
    assert!(validate_all(&[
        ok.clone(),
        AggregateConfig {
            name: "y".into(),
            ..ok
        }
    ])
    .is_ok());
}

#[test]
fn approx_distinct_tracks_large_cardinalities_per_window() {
    let config = cfg(
        tumbling(60),
        json!({"measures": [{"op": "approx_distinct", "field": "user"}]}),
    );
    let mut agg = Aggregator::new(serde_json::from_value(config).unwrap()).unwrap();
    for i in 0..20_000 {
        let rec = format!(r#"{{"ts":{},"user":"u{}"}}"#, i % 60, i % 10_000);
        assert_eq!(agg.ingest(rec.as_bytes(), 0), Added);
    }
    let est = agg.snapshot().windows[0].measures["approx_distinct_user"]
        .as_u64()
        .unwrap();
    assert!(est.abs_diff(10_000) <= 490, "estimate {est}");
}

/// Every kind of window and measure, fed in two halves with a save and a
/// restore between them, ends exactly as one uninterrupted run.
#[test]
fn a_restored_state_goes_on_exactly_as_an_uninterrupted_one() {
    let measures = json!({"group_by": ["g"], "allowed_lateness_seconds": 5, "measures": [
        {"op": "sum", "field": "v"}, {"op": "avg", "field": "v"}, {"op": "min", "field": "v"},
        {"op": "max", "field": "v"}, {"op": "count"}, {"op": "approx_distinct", "field": "u"}]});
    let windows = [
        tumbling(10),
        json!({"type": "hopping", "size_seconds": 30, "slide_seconds": 10}),
        json!({"type": "session", "gap_seconds": 7}),
    ];
    let records: Vec<String> = (0..400)
        .map(|i| {
            // Bursts of 50 records (20 s quiet between them, so sessions close),
            // jitter inside the lateness, and every 53rd record late.
            let ts = i / 3 + i / 50 * 20 + (i * 7919 % 9) - 4 - if i % 53 == 0 { 40 } else { 0 };
            let v = if i % 41 == 0 {
                "null".to_string()
            } else {
                format!("{}.{:02}", i * 31 % 997, i % 100)
            };
            if i % 67 == 0 {
                format!(r#"{{"ts":"bad","g":{},"v":{v},"u":{}}}"#, i % 3, i % 17)
            } else {
                format!(r#"{{"ts":{ts},"g":{},"v":{v},"u":{}}}"#, i % 3, i % 17)
            }
        })
        .collect();
    for window in windows {
        let config: AggregateConfig =
            serde_json::from_value(cfg(window.clone(), measures.clone())).unwrap();
        let mut plain = Aggregator::new(config.clone()).unwrap();
        let mut closed_plain = Vec::new();
        for (i, r) in records.iter().enumerate() {
            plain.ingest(r.as_bytes(), 0);
            if i % 50 == 49 {
                closed_plain.extend(plain.advance(0));
            }
        }
        closed_plain.extend(plain.advance(0));

        let mut first = Aggregator::new(config.clone()).unwrap();
        let mut closed = Vec::new();
        for (i, r) in records[..230].iter().enumerate() {
            first.ingest(r.as_bytes(), 0);
            if i % 50 == 49 {
                closed.extend(first.advance(0));
            }
        }
        let saved = serde_json::to_string(&first.state()).unwrap();
        let mut second = Aggregator::new(config).unwrap();
        second
            .restore(serde_json::from_str(&saved).unwrap())
            .unwrap();
        for (i, r) in records[230..].iter().enumerate() {
            second.ingest(r.as_bytes(), 0);
            if (i + 230) % 50 == 49 {
                closed.extend(second.advance(0));
            }
        }
        closed.extend(second.advance(0));
        let text = |s: crate::analytics::Snapshot| serde_json::to_string(&s).unwrap();
        assert_eq!(text(second.snapshot()), text(plain.snapshot()), "{window}");
        assert_eq!(closed, closed_plain, "{window}");
        assert!(closed.len() > 10, "{window}: {}", closed.len());
        assert!(plain.snapshot().late_count > 0, "{window}");
    }
}

#[test]
fn a_state_from_another_config_is_refused() {
    let a: AggregateConfig = serde_json::from_value(cfg(
        tumbling(10),
        json!({"measures": [{"op": "sum", "field": "v"}]}),
    ))
    .unwrap();
    let b: AggregateConfig =
        serde_json::from_value(cfg(tumbling(10), json!({"measures": [{"op": "count"}]}))).unwrap();
    let c: AggregateConfig = serde_json::from_value(cfg(
        json!({"type": "session", "gap_seconds": 7}),
        json!({"measures": [{"op": "sum", "field": "v"}]}),
    ))
    .unwrap();
    let mut agg = Aggregator::new(a).unwrap();
    agg.ingest(br#"{"ts":1,"v":2}"#, 0);
    let saved = serde_json::to_string(&agg.state()).unwrap();
    assert!(Aggregator::new(b)
        .unwrap()
        .restore(serde_json::from_str(&saved).unwrap())
        .is_err());
    assert!(Aggregator::new(c)
        .unwrap()
        .restore(serde_json::from_str(&saved).unwrap())
        .is_err());
}

/// After a gap, the windows open then and those starting before the next
/// record are incomplete; later ones are not. Output records say so too.
#[test]
fn windows_a_gap_touches_are_marked_incomplete() {
    let config: AggregateConfig =
        serde_json::from_value(cfg(tumbling(10), json!({"measures": [{"op": "count"}]}))).unwrap();
    let mut agg = Aggregator::new(config).unwrap();
    agg.ingest(br#"{"ts":1}"#, 0);
    agg.mark_gap();
    agg.ingest(br#"{"ts":15}"#, 0);
    agg.ingest(br#"{"ts":12}"#, 0);
    agg.ingest(br#"{"ts":25}"#, 0);
    let flags: Vec<(i64, bool)> = agg
        .snapshot()
        .windows
        .iter()
        .map(|w| (w.start_ms, w.incomplete))
        .collect();
    assert_eq!(flags, [(0, true), (10_000, true), (20_000, false)]);
    let closed = agg.advance(0);
    let record: Value = serde_json::from_slice(&closed[0].to_json_record()).unwrap();
    assert_eq!(record["window_incomplete"], true);
    let record: Value = serde_json::from_slice(&closed[1].to_json_record()).unwrap();
    assert_eq!(record["window_incomplete"], true);
    assert!(serde_json::to_value(&agg.snapshot().windows[2])
        .unwrap()
        .get("incomplete")
        .is_none());
}

/// With an output, closed windows are kept until sent, past their horizon,
/// and only those ending after what was sent are offered again.
#[test]
fn unsent_windows_outlive_the_horizon_until_sent() {
    let config: AggregateConfig = serde_json::from_value(cfg(
        tumbling(10),
        json!({"horizon_seconds": 0, "measures": [{"op": "count"}]}),
    ))
    .unwrap();
    let mut agg = Aggregator::new(config).unwrap();
    agg.send_from(Some(10_000));
    for ts in [1, 11, 21, 31, 41] {
        agg.ingest(format!(r#"{{"ts":{ts}}}"#).as_bytes(), 0);
    }
    agg.advance(0);
    let (windows, through) = agg.unsent();
    let starts: Vec<i64> = windows.iter().map(|w| w.start_ms).collect();
    assert_eq!(starts, [10_000, 20_000, 30_000], "[0,10) was sent before");
    assert_eq!(through, Some(40_000));
    agg.mark_sent(40_000);
    assert_eq!(agg.unsent().0.len(), 0);
    agg.advance(0);
    assert!(
        agg.snapshot().windows.iter().all(|w| !w.closed),
        "sent windows past the horizon are pruned"
    );
}

/// A record parsed for its wanted fields says what a whole parse says, for
/// every kind of input: the same fields with the same values, or not an
/// object at all.
#[test]
fn projection_agrees_with_a_whole_parse() {
    let deep = "[".repeat(200) + &"]".repeat(200);
    let deep_skipped = format!(r#"{{"a":1,"z":{deep}}}"#);
    let records: Vec<&str> = vec![
        r#"{"a":1,"b":"x","c":{"d":[1,2.5,null]},"pad":"yyyy"}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"\u0061":"escaped key","b\"q":3}"#,
        r#"  {"b":true}  "#,
        r#"{"a":1} x"#,
        r#"{"a":1"#,
        r#"{"z":[1,2,}"#,
        r#"[1,2]"#,
        r#""a""#,
        "",
        "{}",
        r#"{"a":12345678901234567890}"#,
    ];
    // One set of slots read into again and again, as the live task does:
    // a field of one record must not show through in the next.
    fn project(record: &[u8], fields: &mut Fields) -> Option<Map<String, Value>> {
        fields.read(record).then(|| {
            let wanted = fields.wanted;
            wanted
                .iter()
                .filter_map(|w| Some((w.to_string(), fields.get(w)?.clone())))
                .collect()
        })
    }
    for wanted in [vec![], vec!["a"], vec!["a", "b", "c"], vec!["b\"q"]] {
        let mut fields = Fields::new(&wanted);
        for r in &records {
            let whole = match serde_json::from_slice::<Value>(r.as_bytes()) {
                Ok(Value::Object(mut obj)) => {
                    obj.retain(|k, _| wanted.contains(&k.as_str()));
                    Some(obj)
                }
                _ => None,
            };
            assert_eq!(
                project(r.as_bytes(), &mut fields),
                whole,
                "{r} with {wanted:?}"
            );
        }
    }
    // Nesting past serde_json's limit (128) fails a field that is read,
    // and is only checked as JSON in a field that is skipped.
    let (z, a) = (["z"], ["a"]);
    let (mut z, mut a) = (Fields::new(&z), Fields::new(&a));
    assert_eq!(project(deep_skipped.as_bytes(), &mut z), None);
    assert_eq!(
        project(deep_skipped.as_bytes(), &mut a),
        Some(json!({"a": 1}).as_object().unwrap().clone())
    );
    assert_eq!(
        project(
            format!("{{\"a\":1,\"z\":{}}}", &deep[1..]).as_bytes(),
            &mut a
        ),
        None
    );
}
