//! Log recovery over arbitrary bytes: a segment holding anything opens
//! (repairing or cutting what is damaged), reads back in offset order,
//! keeps counting offsets, and opens again to the same records and
//! producers' positions: recovery is done once and never loses what it kept.
#![no_main]

#[path = "../../src/histogram.rs"]
#[allow(dead_code)]
mod histogram;
#[path = "../../src/log/mod.rs"]
#[allow(dead_code)]
mod log;

fn read_all(l: &log::Log) -> Vec<(u64, Vec<u8>)> {
    let end = l.tail().borrow().next_offset;
    let mut r = l.reader(0).expect("a reader at the first offset");
    let mut out = Vec::new();
    while let Some(e) = r.next_below(end).expect("recovered records read back") {
        out.push((e.offset, e.data.to_vec()));
    }
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("hydrant-fuzz-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{:020}.log", 0)), data).unwrap();
    let opts = log::LogOptions {
        segment_bytes: 1 << 20,
        max_bytes: 1 << 30,
    };
    let producers = ["p", "aggregate/s/x"];
    let (first, positions) = {
        let l = log::Log::open(&dir, 0, opts).expect("any segment bytes open");
        let got = read_all(&l);
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets in order");
        assert!(offsets
            .last()
            .is_none_or(|o| *o < l.tail().borrow().next_offset));
        let positions: Vec<_> = producers.iter().map(|p| l.position(p)).collect();
        (got, positions)
    };
    let l = log::Log::open(&dir, 0, opts).expect("a recovered log opens again");
    assert_eq!(read_all(&l), first, "a second open changes nothing");
    let again: Vec<_> = producers.iter().map(|p| l.position(p)).collect();
    assert_eq!(again, positions, "nor the producers' positions");
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
});
