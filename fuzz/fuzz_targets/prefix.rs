//! Prefix templates: any text either parses or is refused with a message;
//! a template that validates evaluates, at any instant and with any
//! partition values the router lets through, to a key that passes the key
//! rules or is caught by them, never a panic.
#![no_main]

#[path = "../../src/delivery/prefix.rs"]
#[allow(dead_code)]
mod prefix;

use chrono::{DateTime, Utc};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Prefix, ErrorOutputPrefix and a partition value, split on NUL.
    let mut parts = text.splitn(3, '\0');
    let (p, e, v) = (
        parts.next().unwrap_or(""),
        parts.next(),
        parts.next().unwrap_or("v"),
    );
    let keys = vec!["k".to_string()];
    for keys in [None, Some(&keys[..])] {
        let Ok((t, et)) = prefix::validate_partitioned(p, e, keys) else {
            continue;
        };
        let instant = DateTime::<Utc>::from_timestamp(data.len() as i64 * 7_919_993, 0).unwrap();
        let out = t.eval_with(instant, "abcdefghijk", None, &[("k", v)]);
        let _ = prefix::check_key(&format!("{out}x"));
        // Validation promised this: no value-free evaluation leaves the bucket.
        let plain = t.eval_with(instant, "abcdefghijk", None, &[("k", "v")]);
        assert!(
            prefix::check_key(&format!("{plain}x")).is_ok(),
            "{p:?} validated but gives {plain:?}"
        );
        if let Some(et) = et {
            let err = et.eval(instant, "abcdefghijk", Some("processing-failed"));
            assert!(
                prefix::check_key(&format!("{err}x")).is_ok(),
                "{e:?} validated but gives {err:?}"
            );
        }
    }
});
