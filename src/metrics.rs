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
    type Get = fn(&Stream, i64) -> f64;
    let series: [(&str, &str, &str, Get); 12] = [
        (
            "hydrant_records_in_total",
            "counter",
            "Records acknowledged (durable in the log).",
            |s, _| s.intake.records.load(Relaxed) as f64,
        ),
        (
            "hydrant_bytes_in_total",
            "counter",
            "Record bytes acknowledged.",
            |s, _| s.intake.bytes.load(Relaxed) as f64,
        ),
        (
            "hydrant_records_rejected_total",
            "counter",
            "Records refused at the front door because they exceed 1,000 KiB.",
            |s, _| s.intake.rejected.load(Relaxed) as f64,
        ),
        (
            "hydrant_objects_delivered_total",
            "counter",
            "Objects written to the lake.",
            |s, _| s.delivery.objects.load(Relaxed) as f64,
        ),
        (
            "hydrant_records_delivered_total",
            "counter",
            "Records written to the lake.",
            |s, _| s.delivery.records.load(Relaxed) as f64,
        ),
        (
            "hydrant_bytes_delivered_total",
            "counter",
            "Object bytes written to the lake (after compression).",
            |s, _| s.delivery.bytes.load(Relaxed) as f64,
        ),
        (
            "hydrant_delivery_failures_total",
            "counter",
            "Failed attempts to write an object (each is retried).",
            |s, _| s.delivery.failures.load(Relaxed) as f64,
        ),
        (
            "hydrant_delivery_lag_records",
            "gauge",
            "Records acknowledged but not yet in the lake.",
            |s, _| s.lag_records() as f64,
        ),
        (
            "hydrant_delivery_lag_seconds",
            "gauge",
            "Age of the oldest record not yet in the lake.",
            |s, now| s.lag_seconds(now),
        ),
        (
            "hydrant_log_bytes",
            "gauge",
            "Bytes of write-ahead log on disk.",
            |s, _| s.log.bytes_on_disk() as f64,
        ),
        (
            "hydrant_log_records_lost",
            "gauge",
            "Acknowledged records that damage on disk destroyed, in the log as it is.",
            |s, _| s.log.losses().iter().map(|l| l.records).sum::<u64>() as f64,
        ),
        (
            "hydrant_delivery_stopped",
            "gauge",
            "1 while the stream's delivery has stopped on an error (see /-/healthy).",
            |s, _| s.delivery.problem().is_some_and(|p| p.stopped) as u8 as f64,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in streams {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{}\"}} {}",
                label(&s.spec.name),
                get(s, now)
            );
        }
    }
    let name = "hydrant_records_failed_total";
    let _ = writeln!(
        out,
        "# HELP {name} Records sent to the error output, by error code.\n# TYPE {name} counter"
    );
    for s in streams {
        for (code, n) in s.delivery.errors.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{}\",reason=\"{}\"}} {n}",
                label(&s.spec.name),
                label(code)
            );
        }
    }
    let warehouses: Vec<_> = streams
        .iter()
        .filter_map(|s| Some((s, s.warehouse.as_ref()?)))
        .collect();
    type GetW = fn(&crate::destination::warehouse::WarehouseStats) -> u64;
    let wseries: [(&str, &str, &str, GetW); 4] = [
        (
            "hydrant_warehouse_objects_staged_total",
            "counter",
            "Objects staged for loading into the warehouse.",
            |w| w.objects_staged.load(Relaxed),
        ),
        (
            "hydrant_warehouse_objects_loaded_total",
            "counter",
            "Staged objects loaded into the warehouse table.",
            |w| w.objects_loaded.load(Relaxed),
        ),
        (
            "hydrant_warehouse_rows_loaded_total",
            "counter",
            "Rows committed into the warehouse table.",
            |w| w.rows_loaded.load(Relaxed),
        ),
        (
            "hydrant_warehouse_manifests_failed_total",
            "counter",
            "Objects not loaded whose manifest went to the error output.",
            |w| w.manifests_failed.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in wseries {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (s, (w, _)) in &warehouses {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{}\"}} {}",
                label(&s.spec.name),
                get(w)
            );
        }
    }
    let name = "hydrant_warehouse_rows_rejected_total";
    let _ = writeln!(
        out,
        "# HELP {name} Rows the warehouse refused (sent to the error output), by reason.\n# TYPE {name} counter"
    );
    for (s, (w, _)) in &warehouses {
        for (reason, n) in w.rejected.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{}\",reason=\"{}\"}} {n}",
                label(&s.spec.name),
                label(reason)
            );
        }
    }
    for (name, help, pick) in [
        (
            "hydrant_warehouse_lag_records",
            "Records acknowledged but not yet committed in the warehouse table.",
            0,
        ),
        (
            "hydrant_warehouse_lag_seconds",
            "Age of the oldest record not yet committed in the warehouse table.",
            1,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (s, _) in &warehouses {
            if let Some((records, seconds)) = s.load_lag(now) {
                let v = if pick == 0 { records as f64 } else { seconds };
                let _ = writeln!(out, "{name}{{stream=\"{}\"}} {v}", label(&s.spec.name));
            }
        }
    }
    let name = "hydrant_warehouse_load_lag_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Per object loaded: from its oldest record's acknowledgement to its commit.\n# TYPE {name} histogram"
    );
    for (s, (w, _)) in &warehouses {
        w.load_lag.render(
            &mut out,
            name,
            &format!("stream=\"{}\"", label(&s.spec.name)),
        );
    }
    let name = "hydrant_log_fsync_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time one group commit's fdatasync took.\n# TYPE {name} histogram"
    );
    for s in streams {
        s.log.fsync_histogram().render(
            &mut out,
            name,
            &format!("stream=\"{}\"", label(&s.spec.name)),
        );
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
