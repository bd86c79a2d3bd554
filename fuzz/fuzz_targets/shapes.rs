//! Schema inference's record scanner: for any bytes, where it vouches for
//! the text, the records it hands to inference (the first of each shape)
//! are exactly those serde_json's own parse of every record picks out.
#![no_main]

#[path = "../../src/query/shape.rs"]
#[allow(dead_code)]
mod shape;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let all = |shapes: Vec<serde_json::Result<serde_json::Value>>| -> Vec<Option<serde_json::Value>> {
        shapes.into_iter().map(Result::ok).collect()
    };
    if let Some(fast) = shape::scanned(data) {
        assert_eq!(all(fast), all(shape::parsed(data)));
    }
});
