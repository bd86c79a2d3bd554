//! PutRecord and PutRecordBatch bodies: any bytes decode or are refused
//! with a message; every record decodes to exactly its base64's bytes, and
//! a record over 1,000 KiB is measured and left out, never framed.
#![no_main]

#[path = "../../src/histogram.rs"]
#[allow(dead_code)]
mod histogram;
#[path = "../../src/log/mod.rs"]
#[allow(dead_code)]
mod log;
#[path = "../../src/api/wire.rs"]
#[allow(dead_code)]
mod wire;
/// wire.rs fills a `stream::Batch`, which is the log's frames underneath;
/// the target checks the frames themselves.
mod stream {
    pub type Batch = crate::log::Frames;
}

use base64::Engine;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<wire::PutRecordBatchIn>(data) {
        let mut frames = log::Frames::default();
        let (mut framed, mut framed_bytes) = (0u64, 0usize);
        for (i, r) in req.records.iter().flatten().enumerate() {
            match wire::frame(&mut frames, 7, wire::Field::Batch(i), r) {
                Ok(size) => {
                    let expected = base64::engine::general_purpose::STANDARD
                        .decode(r.data.as_deref().unwrap())
                        .expect("what framed is base64");
                    assert_eq!(size, expected.len());
                    if size <= wire::MAX_RECORD_BYTES {
                        framed += 1;
                        framed_bytes += log::FRAME_HEADER + size;
                    }
                }
                Err(wire::WireError::Missing(_)) => assert!(r.data.is_none()),
                Err(wire::WireError::Base64(_)) => {}
            }
        }
        assert_eq!(frames.count(), framed);
        assert_eq!(frames.bytes(), framed_bytes);
    }
    if let Ok(req) = serde_json::from_slice::<wire::PutRecordIn>(data) {
        if let Some(r) = req.record {
            let mut frames = log::Frames::default();
            let _ = wire::frame(&mut frames, 7, wire::Field::Record, &r);
        }
    }
});
