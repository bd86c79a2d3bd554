//! The records of a JSON-lines object that schema inference must see.
//!
//! Arrow's inference depends only on each record's shape (its keys, in
//! order, and each value's kind as inference tells them apart), and a
//! field's position only on the first record that has it. So inferring from
//! the first record of each distinct shape is inferring from all of them.
//! Every record is still checked, strictly: a text serde_json refuses is
//! refused with serde_json's own error.
//!
//! Most objects are read by a scanner of their own here, which writes each
//! record's shape without building anything; whatever it cannot vouch for
//! (an escaped key, an unpaired surrogate, a number at the edge of f64, deep
//! nesting, anything not JSON) sends the whole text to serde_json instead,
//! which gives the same answer more slowly, or its error.

use std::collections::HashSet;

use serde_json::Value;

/// The first record of each shape, in order; then the first error, if any.
pub fn distinct_shapes(text: &[u8]) -> Vec<serde_json::Result<Value>> {
    scanned(text).unwrap_or_else(|| parsed(text))
}

/// One record's shape, written as tags: `{` `}` `[` `]` around containers,
/// each object key written so that no two runs of keys read alike, and a
/// value's kind: `0` null, `b` bool, `s` string, `i` a number that is an
/// integer in i64 (as serde_json's `is_i64`, which arrow's inference asks),
/// `f` any other number. The scanner writes a key as it stands, quotes
/// and all (it reads only keys without escapes, so none holds a quote);
/// serde_json's walk writes its length in 8 bytes, then its text.
type Tags = Vec<u8>;

/// Containers deeper than this are left to serde_json, whose own limit
/// (128) is then the one that holds.
const MAX_DEPTH: usize = 100;

/// Records whose shape no record before had, keyed by their tags.
#[derive(Default)]
struct Distinct {
    seen: HashSet<Tags>,
    last: Option<Tags>,
}

impl Distinct {
    /// Whether `tags` are a shape not seen before. Records mostly come in
    /// runs of one shape, so the last one is asked first.
    fn is_new(&mut self, tags: &Tags) -> bool {
        if self.last.as_ref() == Some(tags) {
            return false;
        }
        let new = !self.seen.contains(tags);
        if new {
            self.seen.insert(tags.clone());
        }
        match &mut self.last {
            Some(last) => last.clone_from(tags),
            None => self.last = Some(tags.clone()),
        }
        new
    }
}

/// The scanner's answer, or None where it cannot vouch for the text.
pub fn scanned(text: &[u8]) -> Option<Vec<serde_json::Result<Value>>> {
    let mut distinct = Distinct::default();
    let mut tags = Tags::new();
    let mut out = Vec::new();
    let mut at = space(text, 0);
    while at < text.len() {
        tags.clear();
        let end = value(text, at, 0, &mut tags)?;
        // Between records: whitespace, or nothing after a closed one.
        let next = space(text, end);
        let closed = matches!(text[end - 1], b'}' | b']' | b'"');
        if next == end && end < text.len() && !closed {
            return None;
        }
        if distinct.is_new(&tags) {
            out.push(serde_json::from_slice(&text[at..end]));
        }
        at = next;
    }
    Some(out)
}

/// serde_json's answer: every record parsed as a [`Shape`].
pub fn parsed(text: &[u8]) -> Vec<serde_json::Result<Value>> {
    let mut distinct = Distinct::default();
    let mut out = Vec::new();
    let mut records = serde_json::Deserializer::from_slice(text).into_iter::<Shape>();
    let mut start = 0;
    while let Some(shape) = records.next() {
        let end = records.byte_offset();
        match shape {
            Ok(Shape(tags)) => {
                if distinct.is_new(&tags) {
                    out.push(serde_json::from_slice(&text[start..end]));
                }
            }
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
        start = end;
    }
    out
}

fn space(t: &[u8], mut at: usize) -> usize {
    while matches!(t.get(at), Some(b' ' | b'\n' | b'\t' | b'\r')) {
        at += 1;
    }
    at
}

/// The value at `at` (no whitespace before it): its tags written, where it
/// ends returned.
fn value(t: &[u8], at: usize, depth: usize, tags: &mut Tags) -> Option<usize> {
    match *t.get(at)? {
        b'{' => container(t, at + 1, depth + 1, b'}', tags),
        b'[' => container(t, at + 1, depth + 1, b']', tags),
        b'"' => {
            tags.push(b's');
            string(t, at + 1).map(|(end, _)| end)
        }
        b't' => literal(t, at, b"true", b'b', tags),
        b'f' => literal(t, at, b"false", b'b', tags),
        b'n' => literal(t, at, b"null", b'0', tags),
        b'-' | b'0'..=b'9' => number(t, at, tags),
        _ => None,
    }
}

/// An object or an array, from `at` (after its opening bracket) to its
/// `close`.
fn container(t: &[u8], at: usize, depth: usize, close: u8, tags: &mut Tags) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    tags.push(t[at - 1]);
    let mut at = space(t, at);
    if *t.get(at)? == close {
        tags.push(close);
        return Some(at + 1);
    }
    loop {
        if close == b'}' {
            at = key(t, at, tags)?;
        }
        at = space(t, value(t, at, depth, tags)?);
        match *t.get(at)? {
            b',' => at = space(t, at + 1),
            c if c == close => {
                tags.push(close);
                return Some(at + 1);
            }
            _ => return None,
        }
    }
}

/// An object's key and its colon: the key's tags written, where its value
/// starts returned. A key is tagged by its text, so an escaped one is
/// serde_json's.
fn key(t: &[u8], at: usize, tags: &mut Tags) -> Option<usize> {
    if *t.get(at)? != b'"' {
        return None;
    }
    let (end, escaped) = string(t, at + 1)?;
    if escaped {
        return None;
    }
    // With its quotes: no unescaped key holds a quote, so where one key
    // ends and the next tag starts is plain.
    tags.extend_from_slice(&t[at..end]);
    let at = space(t, end);
    if *t.get(at)? != b':' {
        return None;
    }
    Some(space(t, at + 1))
}

/// A string's body from `at` (after its opening quote): where it ends
/// (after the closing quote) and whether it holds an escape.
fn string(t: &[u8], start: usize) -> Option<(usize, bool)> {
    let (mut at, mut escaped, mut wide) = (start, false, false);
    loop {
        let b = *t.get(at)?;
        if PLAIN[usize::from(b)] {
            at += 1;
            continue;
        }
        match b {
            b'"' => break,
            b'\\' => {
                escaped = true;
                at += match *t.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' => match hex4(t, at + 2)? {
                        // A pair of surrogates is one character; a lone one
                        // is refused by serde_json.
                        0xD800..=0xDBFF => {
                            if t.get(at + 6..at + 8)? != b"\\u"
                                || !(0xDC00..=0xDFFF).contains(&hex4(t, at + 8)?)
                            {
                                return None;
                            }
                            12
                        }
                        0xDC00..=0xDFFF => return None,
                        _ => 6,
                    },
                    _ => return None,
                }
            }
            0x80.. => {
                wide = true;
                at += 1;
            }
            // A control character.
            _ => return None,
        }
    }
    if wide && std::str::from_utf8(&t[start..at]).is_err() {
        return None;
    }
    Some((at + 1, escaped))
}

/// The ASCII a string holds as it is: all but controls, the quote and the
/// backslash.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        plain[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    plain
};

fn hex4(t: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(t.get(at..at + 4)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

fn literal(t: &[u8], at: usize, word: &[u8], tag: u8, tags: &mut Tags) -> Option<usize> {
    let end = at + word.len();
    (t.get(at..end)? == word).then(|| {
        tags.push(tag);
        end
    })
}

/// A number, kind as serde_json reads it: an integer that fits i64 is `i`;
/// `-0`, an integer past i64 and a number with a fraction or an exponent are
/// f64 to serde_json, `f`.
fn number(t: &[u8], start: usize, tags: &mut Tags) -> Option<usize> {
    let negative = t[start] == b'-';
    let digits = start + usize::from(negative);
    let (mut at, magnitude) = match *t.get(digits)? {
        // A digit after a leading zero ends the number; what follows it is
        // then refused where the number is expected to end.
        b'0' => (digits + 1, 0),
        b'1'..=b'9' => whole(t, digits),
        _ => return None,
    };
    let length = at - digits;
    let mut float = false;
    if t.get(at) == Some(&b'.') {
        let end = run(t, at + 1);
        if end == at + 1 {
            return None;
        }
        (at, float) = (end, true);
    }
    if matches!(t.get(at), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(t.get(at + 1), Some(b'+' | b'-')));
        let end = run(t, at + 1 + sign);
        if end == at + 1 + sign {
            return None;
        }
        (at, float) = (end, true);
    }
    let tag = if float {
        // serde_json refuses a number out of f64's range; near the edge its
        // rounding is its own, so there it decides.
        let v: f64 = std::str::from_utf8(&t[start..at]).ok()?.parse().ok()?;
        if v.abs() >= 1e300 {
            return None;
        }
        b'f'
    } else if length > 300 {
        return None;
    } else {
        // 19 digits always fit u64, and 20 without a leading zero are past
        // i64 either way.
        let limit = if negative { 1 << 63 } else { i64::MAX as u64 };
        match magnitude {
            _ if length > 19 => b'f',
            0 if negative => b'f',
            m if m <= limit => b'i',
            _ => b'f',
        }
    };
    tags.push(tag);
    Some(at)
}

/// A run of digits from `at`: where it ends, and its value (wrapped past
/// u64, which only a run of more than 19 digits reaches).
fn whole(t: &[u8], mut at: usize) -> (usize, u64) {
    let mut value = 0u64;
    while let Some(d) = t.get(at).filter(|d| d.is_ascii_digit()) {
        value = value.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        at += 1;
    }
    (at, value)
}

/// Where a run of digits from `at` ends.
fn run(t: &[u8], mut at: usize) -> usize {
    while t.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// A record's tags as serde_json's parse of it gives them.
struct Shape(Tags);

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        let mut tags = Tags::new();
        serde::de::DeserializeSeed::deserialize(Walk(&mut tags), d)?;
        Ok(Shape(tags))
    }
}

struct Walk<'a>(&'a mut Tags);

/// An object key, written length first.
struct KeyTag<'a>(&'a mut Tags);

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(b'0');
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.0.push(b'b');
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.0.push(b'i');
        Ok(())
    }
    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        self.0
            .push(if i64::try_from(n).is_ok() { b'i' } else { b'f' });
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.0.push(b'f');
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.0.push(b's');
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push(b'[');
        while seq.next_element_seed(Walk(self.0))?.is_some() {}
        self.0.push(b']');
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push(b'{');
        while map.next_key_seed(KeyTag(self.0))?.is_some() {
            map.next_value_seed(Walk(self.0))?;
        }
        self.0.push(b'}');
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for KeyTag<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyTag<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, k: &str) -> Result<(), E> {
        self.0.extend_from_slice(&(k.len() as u64).to_le_bytes());
        self.0.extend_from_slice(k.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(shapes: Vec<serde_json::Result<Value>>) -> Vec<Result<Value, String>> {
        shapes
            .into_iter()
            .map(|s| s.map_err(|e| e.to_string()))
            .collect()
    }

    /// What the scanner gives, where it vouches for the text, is serde_json's.
    fn agrees(text: &str) -> bool {
        let fast = scanned(text.as_bytes());
        if let Some(fast) = &fast {
            let fast: Vec<_> = fast.iter().map(|s| s.as_ref().ok().cloned()).collect();
            let slow: Vec<_> = plain(parsed(text.as_bytes()))
                .into_iter()
                .map(Result::ok)
                .collect();
            assert_eq!(fast, slow, "{text}");
        }
        fast.is_some()
    }

    #[test]
    fn the_scanner_reads_everyday_records_as_serde_json_does() {
        for text in [
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3,\"b\":\"x\"}\n{\"a\":4}\n",
            "{\"v\":1}\n{\"v\":2.5}\n{\"v\":-3}\n{\"v\":-0}\n{\"v\":1e5}\n{\"v\":0.5E-3}\n",
            "{\"n\":9223372036854775807}\n{\"n\":9223372036854775808}\n",
            "{\"n\":-9223372036854775808}\n{\"n\":-9223372036854775809}\n",
            "{\"n\":18446744073709551616123}\n",
            "{\"n\":1}\n{\"n\":18446744073709551615}\n{\"n\":1}\n{\"n\":-10000000000000000000}\n",
            "{\"n\":1}\n{\"n\":999999999999999999}\n{\"n\":1000000000000000000}\n{\"n\":0}\n",
            " {\"o\" : { \"x\" : 1 , \"y\" : [ 1 , 2 ] } }\r\n\t{\"o\":{\"y\":[],\"z\":null}}",
            "{\"s\":\"caf\u{e9} \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00\"}\n",
            "{\"\u{1F600}\":true,\"\":false}\n",
            "{\"ab\":1,\"c\":1}\n{\"a\":1,\"bc\":1}\n{\"d\":1,\"d\":\"t\"}\n",
            "{\"a\":1} {\"b\":true}{\"a\":false}[1][\"x\"]\"s\"",
            "1\n2.5\ntrue\nnull\n",
            "",
            "\n\n",
        ] {
            assert!(agrees(text), "left to serde_json: {text}");
        }
    }

    #[test]
    fn what_the_scanner_cannot_vouch_for_is_left_to_serde_json() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let deepest = "{\"a\":".repeat(127) + "1" + &"}".repeat(127);
        for text in [
            // Not JSON, each in its own way.
            "{\"a\":1}\n{\"a\":",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "[1,]",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":\"x\ty\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\\ud83d\"}",
            "{\"a\":\"\\ude00\"}",
            "{\"a\":\"\\ud83d\\u0041\"}",
            "{'a':1}",
            "\u{feff}{\"a\":1}",
            "1x",
            "true,false",
            "nullnull",
            // JSON, but serde_json's to judge.
            "{\"a\\u0062\":1}",
            "{\"a\":1e400}",
            "{\"a\":-1.7976931348623157e308}",
            &deep,
            &deepest,
        ] {
            assert!(!agrees(text), "vouched for: {text}");
        }
        // Invalid UTF-8 in a string, and a lone continuation byte.
        for bytes in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"\xc3\":1}",
            b"{\"a\":\"\x80\"}",
        ] {
            assert!(scanned(bytes).is_none());
            assert!(parsed(bytes).last().unwrap().is_err());
        }
    }

    #[test]
    fn an_error_is_serde_jsons_placed_in_the_whole_text() {
        let bad = "{\"a\":1}\n{\"a\":1}\n\n{\"a\" 1}\n{\"b\":2}\n";
        let shapes = plain(distinct_shapes(bad.as_bytes()));
        assert_eq!(shapes[0], Ok(serde_json::json!({"a": 1})));
        // Where in the whole text, not in the one record.
        assert_eq!(
            shapes[1].as_ref().unwrap_err(),
            "expected `:` at line 4 column 6"
        );
        assert_eq!(shapes.len(), 2);
    }
}
