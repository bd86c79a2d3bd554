//! The MetadataExtractionQuery subset of jq: any query text parses or is
//! refused, and a parsed query evaluates any record bytes to values or an
//! error, never a panic; the values are those of the record read whole
//! into a `serde_json::Value`.
#![no_main]

#[path = "../../src/delivery/route.rs"]
#[allow(dead_code)]
mod route;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (query, record) = text.split_once('\0').unwrap_or((text, "{}"));
    if let Ok(q) = route::PartitionQuery::parse(query) {
        if let Ok(values) = q.eval(record.as_bytes()) {
            assert_eq!(values.len(), q.names().len());
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(record) {
                for (v, path) in values.iter().zip(q.paths()) {
                    let whole = path.iter().try_fold(&doc, |d, seg| d.get(seg));
                    let printed = match whole {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => panic!("a value where the record has none"),
                    };
                    assert_eq!(v, &printed);
                }
            }
        }
    }
});
