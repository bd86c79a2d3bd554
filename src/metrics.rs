//! Prometheus metrics at `/-/metrics`, rendered from the counters the
//! pipeline already keeps (intake, delivery, log), so there is one source of
//! truth for the dashboard, `/-/streams` and Prometheus alike.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::stream::Stream;

pub use crate::histogram::Histogram;

/// Label value escaping per the text exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(streams: &[std::sync::Arc<Stream>], extra: &str) -> String {
    let mut out = String::new();
    let now = chrono::Utc::now().timestamp_millis();
    // A stream without the thing a series measures has no sample in it.
    type Get = fn(&Stream, i64) -> Option<f64>;
    let series: [(&str, &str, &str, Get); 23] = [
        (
            "hydrant_records_in_total",
            "counter",
            "Records acknowledged (durable in the log).",
            |s, _| Some(s.intake.records.load(Relaxed) as f64),
        ),
        (
            "hydrant_bytes_in_total",
            "counter",
            "Record bytes acknowledged.",
            |s, _| Some(s.intake.bytes.load(Relaxed) as f64),
        ),
        (
            "hydrant_records_rejected_total",
            "counter",
            "Records refused at the front door because they exceed 1,000 KiB.",
            |s, _| Some(s.intake.rejected.load(Relaxed) as f64),
        ),
        (
            "hydrant_objects_delivered_total",
            "counter",
            "Objects written to the lake.",
            |s, _| Some(s.delivery.objects.load(Relaxed) as f64),
        ),
        (
            "hydrant_records_delivered_total",
            "counter",
            "Records written to the lake.",
            |s, _| Some(s.delivery.records.load(Relaxed) as f64),
        ),
        (
            "hydrant_bytes_delivered_total",
            "counter",
            "Object bytes written to the lake (after compression).",
            |s, _| Some(s.delivery.bytes.load(Relaxed) as f64),
        ),
        (
            "hydrant_delivery_failures_total",
            "counter",
            "Failed attempts to write an object (each is retried).",
            |s, _| Some(s.delivery.failures.load(Relaxed) as f64),
        ),
        (
            "hydrant_delivery_lag_records",
            "gauge",
            "Records acknowledged but not yet in the lake.",
            |s, _| Some(s.lag_records() as f64),
        ),
        (
            "hydrant_delivery_lag_seconds",
            "gauge",
            "Age of the oldest record not yet in the lake.",
            |s, now| Some(s.lag_seconds(now)),
        ),
        (
            "hydrant_log_bytes",
            "gauge",
            "Bytes of write-ahead log on disk.",
            |s, _| Some(s.log.bytes_on_disk() as f64),
        ),
        (
            "hydrant_log_records_lost",
            "gauge",
            "Acknowledged records that damage on disk destroyed, in the log as it is.",
            |s, _| Some(s.log.losses().iter().map(|l| l.records).sum::<u64>() as f64),
        ),
        (
            "hydrant_delivery_stopped",
            "gauge",
            "1 while the stream's delivery has stopped on an error (see /-/healthy).",
            |s, _| Some(s.delivery.problem().is_some_and(|p| p.stopped) as u8 as f64),
        ),
        (
            "hydrant_warehouse_objects_staged_total",
            "counter",
            "Objects staged for loading into the warehouse.",
            |s, _| Some(s.warehouse.as_ref()?.0.objects_staged.load(Relaxed) as f64),
        ),
        (
            "hydrant_warehouse_objects_loaded_total",
            "counter",
            "Staged objects loaded into the warehouse table.",
            |s, _| Some(s.warehouse.as_ref()?.0.objects_loaded.load(Relaxed) as f64),
        ),
        (
            "hydrant_warehouse_rows_loaded_total",
            "counter",
            "Rows committed into the warehouse table.",
            |s, _| Some(s.warehouse.as_ref()?.0.rows_loaded.load(Relaxed) as f64),
        ),
        (
            "hydrant_warehouse_manifests_failed_total",
            "counter",
            "Objects not loaded whose manifest went to the error output.",
            |s, _| Some(s.warehouse.as_ref()?.0.manifests_failed.load(Relaxed) as f64),
        ),
        (
            "hydrant_warehouse_lag_records",
            "gauge",
            "Records acknowledged but not yet committed in the warehouse table.",
            |s, now| s.load_lag(now).map(|(records, _)| records as f64),
        ),
        (
            "hydrant_warehouse_lag_seconds",
            "gauge",
            "Age of the oldest record not yet committed in the warehouse table.",
            |s, now| s.load_lag(now).map(|(_, seconds)| seconds),
        ),
        (
            "hydrant_source_changes_total",
            "counter",
            "Row changes read from the source database's log and appended.",
            |s, _| Some(s.source.as_ref()?.changes.load(Relaxed) as f64),
        ),
        (
            "hydrant_source_snapshot_rows_total",
            "counter",
            "Rows read by the snapshot and appended.",
            |s, _| Some(s.source.as_ref()?.snapshot_rows.load(Relaxed) as f64),
        ),
        (
            "hydrant_source_lag_seconds",
            "gauge",
            "Replication lag: how far behind the source's commit time the last change appended was (0 when caught up).",
            |s, _| Some(s.source.as_ref()?.behind_ms.load(Relaxed) as f64 / 1000.0),
        ),
        (
            "hydrant_source_reconnects_total",
            "counter",
            "Times change capture lost its source and started again.",
            |s, _| Some(s.source.as_ref()?.reconnects.load(Relaxed) as f64),
        ),
        (
            "hydrant_source_failed",
            "gauge",
            "1 while change capture has stopped for good (see Describe's FailureDescription).",
            |s, _| Some(s.source.as_ref()?.failed.lock().unwrap().is_some() as u8 as f64),
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in streams {
            if let Some(v) = get(s, now) {
                let _ = writeln!(out, "{name}{{stream=\"{}\"}} {v}", label(&s.spec.name));
            }
        }
    }
    type ByReason = fn(&Stream) -> Option<std::collections::BTreeMap<String, u64>>;
    let by_reason: [(&str, &str, ByReason); 2] = [
        (
            "hydrant_records_failed_total",
            "Records sent to the error output, by error code.",
            |s| Some(s.delivery.errors.lock().unwrap().clone()),
        ),
        (
            "hydrant_warehouse_rows_rejected_total",
            "Rows the warehouse refused (sent to the error output), by reason.",
            |s| Some(s.warehouse.as_ref()?.0.rejected.lock().unwrap().clone()),
        ),
    ];
    for (name, help, get) in by_reason {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in streams {
            for (reason, n) in get(s).unwrap_or_default() {
                let _ = writeln!(
                    out,
                    "{name}{{stream=\"{}\",reason=\"{}\"}} {n}",
                    label(&s.spec.name),
                    label(&reason)
                );
            }
        }
    }
    type PerTable = fn(&crate::source::TableStats) -> f64;
    let per_table: [(&str, &str, &str, PerTable); 5] = [
        (
            "hydrant_source_table_changes_total",
            "counter",
            "Row changes appended, by source table.",
            |t| t.changes as f64,
        ),
        (
            "hydrant_source_table_lag_seconds",
            "gauge",
            "How far behind its commit time the table's last change was appended.",
            |t| t.behind_ms as f64 / 1000.0,
        ),
        (
            "hydrant_source_table_snapshot_rows_total",
            "counter",
            "Rows the snapshot appended, by source table.",
            |t| t.snapshot_rows as f64,
        ),
        (
            "hydrant_source_table_snapshot_estimated_rows",
            "gauge",
            "The table's row count when its snapshot started (the server's estimate), for progress.",
            |t| t.estimated_rows as f64,
        ),
        (
            "hydrant_source_table_snapshot_complete",
            "gauge",
            "1 once the table's snapshot is complete.",
            |t| (t.snapshot == crate::source::SnapshotStatus::Complete) as u8 as f64,
        ),
    ];
    for (name, kind, help, get) in per_table {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in streams {
            let Some(src) = &s.source else { continue };
            for (table, t) in src.tables.lock().unwrap().iter() {
                let _ = writeln!(
                    out,
                    "{name}{{stream=\"{}\",table=\"{}\"}} {}",
                    label(&s.spec.name),
                    label(table),
                    get(t)
                );
            }
        }
    }
    type Hist = fn(&Stream) -> Option<&Histogram>;
    let histograms: [(&str, &str, Hist); 2] = [
        (
            "hydrant_log_fsync_seconds",
            "Time one group commit's fdatasync took.",
            |s| Some(s.log.fsync_histogram()),
        ),
        (
            "hydrant_warehouse_load_lag_seconds",
            "Per object loaded: from its oldest record's acknowledgement to its commit.",
            |s| Some(&s.warehouse.as_ref()?.0.load_lag),
        ),
    ];
    for (name, help, get) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for s in streams {
            if let Some(h) = get(s) {
                h.render(
                    &mut out,
                    name,
                    &format!("stream=\"{}\"", label(&s.spec.name)),
                );
            }
        }
    }
    out.push_str(extra);
    out
}

/// Renders a labelled counter family (for analytics).
pub fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: &[(Vec<(&str, &str)>, f64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
    }
}
