//! Hive types: any text parses or is refused (never a stack overflow, at
//! any depth), and what parses prints as text that parses to the same type.
#![no_main]

#[path = "../../src/delivery/hive.rs"]
#[allow(dead_code)]
mod hive;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = hive::HiveType::parse(text) {
        let printed = t.to_string();
        let again = hive::HiveType::parse(&printed).unwrap_or_else(|e| {
            panic!("{text:?} parsed, printed as {printed:?}, which fails: {e}")
        });
        assert_eq!(t, again, "{text:?} -> {printed:?}");
    }
});
