//! Staged objects into rows, with Redshift COPY's meaning of the options
//! (see `copy`). PostgreSQL then converts each value to its column's type;
//! what it refuses fails alone (see `load`).
//!
//! - Records: JSON (one or more objects per line), CSV or delimited text,
//!   one record per line; `IGNOREHEADER n` skips an object's first n lines.
//! - JSON `auto`: a key names its column (`auto ignorecase`: in any case);
//!   a missing key or `null` is NULL; numbers and booleans load as written;
//!   objects and arrays as their JSON text.
//! - CSV and text: fields in the column order; an empty field is NULL in a
//!   column that is not character, and an empty string in one that is.
//! - Character columns: `EMPTYASNULL` and `BLANKSASNULL` load empty and
//!   whitespace-only values as NULL; `TRUNCATECOLUMNS` cuts values to the
//!   column's length.
//! - Timestamp and date columns: `TIMEFORMAT 'epochsecs' | 'epochmillisecs'`
//!   read numbers (fractions allowed) as UTC; a pattern (`YYYY`, `YY`, `MM`,
//!   `MON`, `DD`, `HH24`, `HH12`, `HH`, `MI`, `SS`, `MS`, `US`, anything else
//!   literal) reads values in that form; `auto` leaves them to PostgreSQL.
//! - Invalid UTF-8 refuses the record, or with `ACCEPTINVCHARS` each invalid
//!   sequence becomes the replacement character.

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;
use serde_json::Value;

use super::copy::{CopyOptions, RecordFormat, TimeFormat};
use super::load::{Column, Row};
use crate::json::Key;

/// One record of an object: its bytes as staged, and its row, or why it
/// is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub raw: Cow<'a, [u8]>,
    pub row: Result<Row<'a>, String>,
}

impl Record<'_> {
    fn into_owned(self) -> Record<'static> {
        Record {
            raw: Cow::Owned(self.raw.into_owned()),
            row: self.row.map(|r| {
                r.into_iter()
                    .map(|v| v.map(|v| Cow::Owned(v.into_owned())))
                    .collect()
            }),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Char,
    Timestamp,
    Date,
    Other,
}

fn kind(c: &Column) -> Kind {
    match c.data_type.as_str() {
        "character varying" | "character" | "text" => Kind::Char,
        "timestamp without time zone" | "timestamp with time zone" => Kind::Timestamp,
        "date" => Kind::Date,
        _ => Kind::Other,
    }
}

/// Every record of a staged object (already decompressed), as rows or as
/// the reason it is not one, in order. `line_per_record`: the records were
/// staged one per line (AppendDelimiterToRecord), so a line that does not
/// read whole is one refused record.
pub fn rows<'a>(
    body: &'a [u8],
    opts: &CopyOptions,
    columns: &[Column],
    line_per_record: bool,
) -> Vec<Record<'a>> {
    let mut out: Vec<Record<'a>> = Vec::new();
    let mut pieces = Pieces::new(opts, line_per_record);
    let mut rest = body;
    while !rest.is_empty() {
        let n = pieces.end(rest).unwrap_or(rest.len());
        let (piece, next) = rest.split_at(n);
        rest = next;
        if pieces.in_header(piece) {
            continue;
        }
        let piece = piece.strip_suffix(b"\n").unwrap_or(piece);
        line_rows(piece, opts, columns, line_per_record, &mut |r| out.push(r));
    }
    out
}

/// Where the pieces of a staged object end, so that reading it holds one
/// piece at a time: after each newline and, with JSON records back to back
/// (no AppendDelimiterToRecord), also after each object or array at the
/// top level, so that a piece is one record rather than the whole object.
/// A malformed record runs on to the next top-level end or newline, where
/// `line_rows` refuses what does not read.
pub struct Pieces {
    objects: bool,
    header_lines: u64,
    depth: u32,
    string: bool,
    escape: bool,
}

impl Pieces {
    pub fn new(opts: &CopyOptions, line_per_record: bool) -> Pieces {
        let objects = matches!(opts.format, RecordFormat::Json { .. }) && !line_per_record;
        Pieces::with(objects, opts.ignore_header)
    }

    /// Pieces of JSON records, a line each or back to back, with no header:
    /// how hydrant stages change records.
    pub fn json() -> Pieces {
        Pieces::with(true, 0)
    }

    fn with(objects: bool, header_lines: u64) -> Pieces {
        Pieces {
            objects,
            header_lines,
            depth: 0,
            string: false,
            escape: false,
        }
    }

    /// Reads the next piece of `reader` into `piece` (cleared first);
    /// false at the end. A piece is as long as its record: the caller
    /// bounds the reader.
    pub fn read(
        &mut self,
        reader: &mut impl std::io::BufRead,
        piece: &mut Vec<u8>,
    ) -> std::io::Result<bool> {
        piece.clear();
        loop {
            let buf = reader.fill_buf()?;
            let (n, ended) = match self.end(buf) {
                Some(n) => (n, true),
                None => (buf.len(), buf.is_empty()),
            };
            piece.extend_from_slice(&buf[..n]);
            reader.consume(n);
            if ended {
                return Ok(!piece.is_empty());
            }
        }
    }

    /// The length of the start of `buf` that ends the piece being read,
    /// if it ends in `buf`; otherwise the piece goes on in what follows.
    pub fn end(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.objects {
            return buf.iter().position(|&b| b == b'\n').map(|i| i + 1);
        }
        for (i, &b) in buf.iter().enumerate() {
            if b == b'\n' {
                // A newline ends a piece even in a string (where JSON has none).
                (self.depth, self.string, self.escape) = (0, false, false);
                return Some(i + 1);
            }
            if self.string {
                match (self.escape, b) {
                    (true, _) => self.escape = false,
                    (false, b'\\') => self.escape = true,
                    (false, b'"') => self.string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Whether `piece` (whole, as `end` cut it) is in the lines
    /// IGNOREHEADER skips.
    pub fn in_header(&mut self, piece: &[u8]) -> bool {
        if self.header_lines == 0 {
            return false;
        }
        if piece.ends_with(b"\n") {
            self.header_lines -= 1;
        }
        true
    }
}

/// The records of one line of a staged object (without its `\n`; see
/// [`rows`]), each handed to `out` as soon as it is read: a line of
/// records back to back may be a whole object.
pub fn line_rows<'a>(
    line: &'a [u8],
    opts: &CopyOptions,
    columns: &[Column],
    line_per_record: bool,
    out: &mut dyn FnMut(Record<'a>),
) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    let record = |raw: &'a [u8], row: Result<Row<'a>, String>| Record {
        raw: Cow::Borrowed(raw),
        row,
    };
    let text: Cow<'a, str> = match (std::str::from_utf8(line), opts.accept_inv_chars) {
        (Ok(t), _) => Cow::Borrowed(t),
        (Err(_), Some(c)) => line
            .utf8_chunks()
            .flat_map(|ch| {
                let bad = (!ch.invalid().is_empty()).then_some(c);
                ch.valid().chars().chain(bad)
            })
            .collect::<String>()
            .into(),
        (Err(e), None) => {
            out(record(
                line,
                Err(format!("not UTF-8 ({e}); ACCEPTINVCHARS would replace it")),
            ));
            return;
        }
    };
    match &opts.format {
        RecordFormat::Json { ignore_case } => match text {
            Cow::Borrowed(t) => {
                json_line(t, line, *ignore_case, opts, columns, line_per_record, out)
            }
            Cow::Owned(t) => json_line(
                &t,
                line,
                *ignore_case,
                opts,
                columns,
                line_per_record,
                &mut |r| out(r.into_owned()),
            ),
        },
        RecordFormat::Csv { delimiter, quote } => {
            out(record(
                line,
                csv_fields(&text, *delimiter, *quote).and_then(|f| fields_row(f, opts, columns)),
            ));
        }
        RecordFormat::Text { delimiter } => {
            let f = text
                .split(*delimiter)
                .map(|s| (s.to_string(), false))
                .collect();
            out(record(line, fields_row(f, opts, columns)));
        }
    }
}

/// The JSON records of one line (see [`rows`]); `line` is its bytes as
/// staged, the record when the line is refused whole.
fn json_line<'t>(
    text: &'t str,
    line: &'t [u8],
    ignore_case: bool,
    opts: &CopyOptions,
    columns: &[Column],
    line_per_record: bool,
    emit: &mut dyn FnMut(Record<'t>),
) {
    // A record may hold several objects, and without a delimiter a line
    // holds records back to back (Firehose writes them so): each object is
    // a row.
    //
    // A line that does not read as JSON: with a record per line, the line
    // is one refused record, and none of its objects load. Back to back,
    // there are no record bounds to go by; reading resumes where one object
    // ends and the next begins (`}{`), and the bytes skipped are refused.
    let record = |raw: &'t str, row| Record {
        raw: Cow::Borrowed(raw.as_bytes()),
        row,
    };
    // With a record per line, its objects load only if all of them read:
    // held until the line is read. Back to back, each goes at once.
    let mut held = Vec::new();
    let mut out = |r: Record<'t>| {
        if line_per_record {
            held.push(r)
        } else {
            emit(r)
        }
    };
    let mut slots = Vec::with_capacity(columns.len());
    // Most lines are one object: read it in one pass.
    let whole = text.trim();
    if whole.starts_with('{') {
        if let Ok(row) = json_row(whole, &mut slots, ignore_case, opts, columns) {
            emit(record(whole, Ok(row)));
            return;
        }
    }
    let mut base = 0;
    'line: while base < text.len() {
        let mut values = serde_json::Deserializer::from_str(&text[base..]).into_iter::<&RawValue>();
        let mut at = 0;
        while let Some(v) = values.next() {
            let end = values.byte_offset();
            match v {
                Ok(v) => {
                    let raw = text[base + at..base + end].trim();
                    at = end;
                    let row = if v.get().starts_with('{') {
                        json_row(v.get(), &mut slots, ignore_case, opts, columns)
                    } else {
                        Err("not a JSON object".into())
                    };
                    out(record(raw, row));
                }
                Err(e) if line_per_record => {
                    emit(Record {
                        raw: Cow::Borrowed(line),
                        row: Err(format!("not JSON: {e}")),
                    });
                    return;
                }
                Err(e) => {
                    let start =
                        base + at + text[base + at..].len() - text[base + at..].trim_start().len();
                    let next = text[start..]
                        .match_indices('}')
                        .map(|(i, _)| start + i + 1)
                        .find(|&i| text[i..].trim_start().starts_with('{'))
                        .map_or(text.len(), |i| {
                            i + text[i..].len() - text[i..].trim_start().len()
                        });
                    out(record(
                        text[start..next].trim(),
                        Err(format!("not JSON: {e}")),
                    ));
                    base = next;
                    continue 'line;
                }
            }
        }
        break;
    }
    held.into_iter().for_each(emit);
}

/// Reads an object's members into the column slots they name (the last
/// one, if a name repeats; with ignorecase, an exact match wins), leaving
/// every value borrowed from the text.
struct Slots<'s, 't, 'c> {
    slots: &'s mut Vec<Option<(&'t RawValue, bool)>>,
    columns: &'c [Column],
    ignore_case: bool,
}

impl<'de> Visitor<'de> for Slots<'_, 'de, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(k) = m.next_key::<Key<'de>>()? {
            let v: &'de RawValue = m.next_value()?;
            for (i, c) in self.columns.iter().enumerate() {
                if *k.0 == c.name {
                    self.slots[i] = Some((v, true));
                } else if self.ignore_case
                    && k.0.eq_ignore_ascii_case(&c.name)
                    && !self.slots[i].is_some_and(|(_, exact)| exact)
                {
                    self.slots[i] = Some((v, false));
                }
            }
        }
        Ok(())
    }
}

/// A JSON object into a row: each column takes the member of its name.
fn json_row<'t>(
    obj: &'t str,
    slots: &mut Vec<Option<(&'t RawValue, bool)>>,
    ignore_case: bool,
    opts: &CopyOptions,
    columns: &[Column],
) -> Result<Row<'t>, String> {
    slots.clear();
    slots.resize(columns.len(), None);
    let mut de = serde_json::Deserializer::from_str(obj);
    de.deserialize_map(Slots {
        slots,
        columns,
        ignore_case,
    })
    .and_then(|()| de.end())
    .map_err(|e| format!("not JSON: {e}"))?;
    slots
        .iter()
        .zip(columns)
        .map(|(v, c)| {
            let Some((v, _)) = v else { return Ok(None) };
            let raw: &'t str = v.get();
            match raw.as_bytes().first() {
                Some(b'n') => Ok(None),
                Some(b'"') if !raw.contains('\\') => {
                    value(Cow::Borrowed(&raw[1..raw.len() - 1]), opts, c)
                }
                Some(b'"') => value(
                    Cow::Owned(serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?),
                    opts,
                    c,
                ),
                // Objects and arrays load as their JSON text.
                Some(b'{' | b'[') => Ok(Some(Cow::Owned(
                    serde_json::from_str::<Value>(raw)
                        .map_err(|e| e.to_string())?
                        .to_string(),
                ))),
                // Numbers as written, and booleans.
                _ => value(Cow::Borrowed(raw), opts, c),
            }
        })
        .collect()
}

/// A CSV line's fields, each with whether it was quoted.
fn csv_fields(line: &str, delimiter: char, quote: char) -> Result<Vec<(String, bool)>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        let quoted = chars.peek() == Some(&quote);
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some(c) if c == quote && chars.peek() == Some(&quote) => {
                        chars.next();
                        field.push(quote);
                    }
                    Some(c) if c == quote => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted CSV field is not closed on its line".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push((field, true));
                    return Ok(fields);
                }
                Some(c) if c == delimiter => fields.push((field, true)),
                Some(c) => return Err(format!("{c:?} after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push((field, false));
                        return Ok(fields);
                    }
                    Some(c) if c == delimiter => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push((field, false));
        }
    }
}

fn fields_row(
    fields: Vec<(String, bool)>,
    opts: &CopyOptions,
    columns: &[Column],
) -> Result<Row<'static>, String> {
    if fields.len() != columns.len() {
        return Err(format!(
            "{} fields for {} columns",
            fields.len(),
            columns.len()
        ));
    }
    fields
        .into_iter()
        .zip(columns)
        .map(|((f, quoted), c)| {
            if f.is_empty() && !quoted && kind(c) != Kind::Char {
                return Ok(None);
            }
            value(Cow::Owned(f), opts, c)
        })
        .collect()
}

/// One value for its column, after the options that apply to it.
fn value<'a>(
    s: Cow<'a, str>,
    opts: &CopyOptions,
    c: &Column,
) -> Result<Option<Cow<'a, str>>, String> {
    match kind(c) {
        Kind::Char => {
            if opts.empty_as_null && s.is_empty()
                || opts.blanks_as_null && !s.is_empty() && s.trim().is_empty()
            {
                return Ok(None);
            }
            match c.max_chars {
                Some(n) if opts.truncate_columns && s.chars().count() > n => {
                    Ok(Some(Cow::Owned(s.chars().take(n).collect())))
                }
                _ => Ok(Some(s)),
            }
        }
        Kind::Timestamp => match &opts.time_format {
            TimeFormat::Auto => Ok(Some(s)),
            TimeFormat::EpochSecs => epoch(&s, 1000.0, c),
            TimeFormat::EpochMillis => epoch(&s, 1.0, c),
            TimeFormat::Pattern(p) => pattern(&s, p, true, c),
        },
        Kind::Date => match &opts.date_format {
            Some(p) => pattern(&s, p, false, c),
            None => Ok(Some(s)),
        },
        Kind::Other => Ok(Some(s)),
    }
}

fn epoch(s: &str, to_ms: f64, c: &Column) -> Result<Option<Cow<'static, str>>, String> {
    let ms = s
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(|x| (x * to_ms).round())
        .filter(|ms| ms.abs() < 253_402_300_800_000.0)
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
        .ok_or_else(|| format!("column {}: {s:?} is not an epoch time", c.name))?;
    Ok(Some(
        ms.format("%Y-%m-%d %H:%M:%S%.3f+00").to_string().into(),
    ))
}

/// A Redshift datetime pattern as a chrono format.
fn chrono_format(p: &str) -> String {
    const PARTS: [(&str, &str); 12] = [
        ("YYYY", "%Y"),
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("MON", "%b"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%H"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("MS", "%3f"),
        ("US", "%6f"),
    ];
    let mut out = String::new();
    let mut rest = p;
    while let Some(c) = rest.chars().next() {
        if let Some((from, to)) = PARTS.iter().find(|(f, _)| rest.starts_with(*f)) {
            out.push_str(to);
            rest = &rest[from.len()..];
        } else {
            if c == '%' {
                out.push('%');
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn pattern(
    s: &str,
    p: &str,
    with_time: bool,
    c: &Column,
) -> Result<Option<Cow<'static, str>>, String> {
    let f = chrono_format(p);
    let bad = || format!("column {}: {s:?} does not match {p:?}", c.name);
    if with_time {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s.trim(), &f) {
            return Ok(Some(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string().into()));
        }
    }
    let d = chrono::NaiveDate::parse_from_str(s.trim(), &f).map_err(|_| bad())?;
    Ok(Some(
        if with_time {
            d.format("%Y-%m-%d 00:00:00").to_string()
        } else {
            d.format("%Y-%m-%d").to_string()
        }
        .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<Column> {
        let c = |name: &str, t: &str, n: Option<usize>| Column {
            name: name.into(),
            data_type: t.into(),
            max_chars: n,
        };
        vec![
            c("id", "integer", None),
            c("source", "character varying", Some(4)),
            c("at", "timestamp with time zone", None),
            c("day", "date", None),
        ]
    }

    fn opts(text: &str) -> CopyOptions {
        CopyOptions::parse(text).unwrap()
    }

    fn ok(rows: Vec<Record>) -> Vec<Vec<Option<String>>> {
        rows.into_iter()
            .map(|r| {
                r.row
                    .unwrap()
                    .into_iter()
                    .map(|v| v.map(|v| v.into_owned()))
                    .collect()
            })
            .collect()
    }

    fn v(xs: &[Option<&str>]) -> Vec<Option<String>> {
        xs.iter().map(|x| x.map(str::to_string)).collect()
    }

    #[test]
    fn json_auto_and_ignorecase() {
        let body = br#"{"id": 1, "source": "web", "at": "2026-11-28T13:00:00Z", "extra": [1]}
{"ID": 2, "Source": "ios"} {"id": 3, "source": null}
"#;
        let got = ok(rows(body, &opts("json 'auto'"), &cols(), false));
        assert_eq!(
            got,
            [
                v(&[Some("1"), Some("web"), Some("2026-11-28T13:00:00Z"), None]),
                v(&[None, None, None, None]),
                v(&[Some("3"), None, None, None]),
            ]
        );
        let got = ok(rows(body, &opts("json 'auto ignorecase'"), &cols(), false));
        assert_eq!(got[1], v(&[Some("2"), Some("ios"), None, None]));
    }

    #[test]
    fn bad_records_are_reasons_and_the_rest_go_on() {
        let body =
            b"{\"id\": 1}\nnot json\n[1,2]\n{\"id\": 4, \"source\": \"a\xffb\"}\n{\"id\": 5}\n";
        let got = rows(body, &opts("json 'auto'"), &cols(), false);
        let reasons: Vec<String> = got
            .iter()
            .map(|r| match &r.row {
                Ok(_) => "ok".into(),
                Err(u) => u.split(' ').take(2).collect::<Vec<_>>().join(" "),
            })
            .collect();
        assert_eq!(reasons, ["ok", "not JSON:", "not a", "not UTF-8", "ok"]);
        assert_eq!(&got[1].raw[..], b"not json");
        assert_eq!(&got[2].raw[..], b"[1,2]");
        assert_eq!(&got[4].raw[..], b"{\"id\": 5}");
        let got = rows(
            body,
            &opts("json 'auto' acceptinvchars as '^'"),
            &cols(),
            false,
        );
        assert_eq!(got[3].row.as_ref().unwrap()[1].as_deref(), Some("a^b"));
    }

    #[test]
    fn a_bad_record_back_to_back_fails_alone() {
        let body = br#"{"id": 1}garbage{"id": 2}{"id": 3, "source": }{"id": 4}"#;
        let got = rows(body, &opts("json 'auto'"), &cols(), false);
        let raws: Vec<&[u8]> = got.iter().map(|r| &r.raw[..]).collect();
        assert_eq!(
            raws,
            [
                &br#"{"id": 1}"#[..],
                br#"garbage{"id": 2}"#,
                br#"{"id": 3, "source": }"#,
                br#"{"id": 4}"#
            ]
        );
        let ok: Vec<bool> = got.iter().map(|r| r.row.is_ok()).collect();
        assert_eq!(ok, [true, false, false, true]);
    }

    #[test]
    fn back_to_back_records_are_read_a_piece_at_a_time_across_any_cut() {
        let body = br#"{"id": 1, "source": "a}\"{"}[1,{"x":[]}] {"id": 2}{"id": oops{"id": 3}}"#;
        let body = [&body[..], b"\n{\"id\": 4}\n"].concat();
        let whole = |p: &mut Pieces, b: &[u8]| {
            let mut out = Vec::new();
            let mut rest = b;
            while let Some(n) = p.end(rest) {
                out.push(String::from_utf8_lossy(&rest[..n]).into_owned());
                rest = &rest[n..];
            }
            (out, rest.len())
        };
        let mut p = Pieces::new(&opts("json 'auto'"), false);
        let (pieces, left) = whole(&mut p, &body);
        assert_eq!(
            pieces,
            [
                r#"{"id": 1, "source": "a}\"{"}"#,
                r#"[1,{"x":[]}]"#,
                r#" {"id": 2}"#,
                r#"{"id": oops{"id": 3}}"#,
                "\n",
                "{\"id\": 4}",
                "\n",
            ]
        );
        assert_eq!(left, 0);
        // Fed a byte at a time, the cuts fall in the same places.
        let mut p = Pieces::new(&opts("json 'auto'"), false);
        let (mut cuts, mut at) = (Vec::new(), 0);
        for (i, b) in body.iter().enumerate() {
            if p.end(std::slice::from_ref(b)).is_some() {
                cuts.push(String::from_utf8_lossy(&body[at..=i]).into_owned());
                at = i + 1;
            }
        }
        assert_eq!(cuts, pieces);
        // One record per line: pieces are lines.
        let mut p = Pieces::new(&opts("json 'auto'"), true);
        assert_eq!(whole(&mut p, &body).0.len(), 2);
        let got = rows(&body, &opts("json 'auto'"), &cols(), false);
        let ok: Vec<bool> = got.iter().map(|r| r.row.is_ok()).collect();
        assert_eq!(ok, [true, false, true, false, true]);
    }

    #[test]
    fn with_a_record_per_line_a_bad_line_is_one_refused_record() {
        let body = b"{\"id\": 1}\n{\"id\": 5, \"x\": oops, \"e\": {\"id\": 7}}\n{\"id\": 2}{\"id\": oops}\n{\"id\": 3}\n";
        let got = rows(body, &opts("json 'auto'"), &cols(), true);
        let raws: Vec<&[u8]> = got.iter().map(|r| &r.raw[..]).collect();
        assert_eq!(
            raws,
            [
                &br#"{"id": 1}"#[..],
                br#"{"id": 5, "x": oops, "e": {"id": 7}}"#,
                br#"{"id": 2}{"id": oops}"#,
                br#"{"id": 3}"#
            ]
        );
        let ok: Vec<bool> = got.iter().map(|r| r.row.is_ok()).collect();
        assert_eq!(ok, [true, false, false, true]);
    }

    #[test]
    fn csv_text_and_the_null_options() {
        let cols = cols();
        let body = b"id,source,at,day\n1,\"a,b\",,\n2,\"\",2026-11-28 13:00:00,2026-11-28\n3, ,,\n";
        let got = ok(rows(body, &opts("csv ignoreheader 1"), &cols, false));
        assert_eq!(got[0], v(&[Some("1"), Some("a,b"), None, None]));
        assert_eq!(got[1][1].as_deref(), Some(""));
        assert_eq!(got[2][1].as_deref(), Some(" "));
        let got = ok(rows(
            body,
            &opts("csv ignoreheader 1 emptyasnull blanksasnull"),
            &cols,
            false,
        ));
        assert_eq!((got[1][1].as_deref(), got[2][1].as_deref()), (None, None));
        let got = rows(
            b"1|toolong|x|y\n1|x\n",
            &opts("delimiter '|'"),
            &cols,
            false,
        );
        assert_eq!(got[0].row.as_ref().unwrap()[1].as_deref(), Some("toolong"));
        assert_eq!(got[1].row.as_ref().unwrap_err(), "2 fields for 4 columns");
        let got = ok(rows(
            b"1|toolong||\n",
            &opts("truncatecolumns"),
            &cols,
            false,
        ));
        assert_eq!(got[0][1].as_deref(), Some("tool"));
        assert!(rows(b"1,\"open\n", &opts("csv"), &cols, false)[0]
            .row
            .is_err());
    }

    #[test]
    fn time_formats() {
        let cols = cols();
        let got = ok(rows(
            br#"{"at": 1795698000.5}"#,
            &opts("json 'auto' timeformat 'epochsecs'"),
            &cols,
            false,
        ));
        assert_eq!(got[0][2].as_deref(), Some("2026-11-26 13:00:00.500+00"));
        let got = ok(rows(
            br#"{"at": "1795698000123"}"#,
            &opts("json 'auto' timeformat 'epochmillisecs'"),
            &cols,
            false,
        ));
        assert_eq!(got[0][2].as_deref(), Some("2026-11-26 13:00:00.123+00"));
        let got = ok(rows(
            br#"{"at": "28/11/2026 13.05.09", "day": "11-28-2026"}"#,
            &opts("json 'auto' timeformat 'DD/MM/YYYY HH24.MI.SS' dateformat 'MM-DD-YYYY'"),
            &cols,
            false,
        ));
        assert_eq!(got[0][2].as_deref(), Some("2026-11-28 13:05:09.000000"));
        assert_eq!(got[0][3].as_deref(), Some("2026-11-28"));
        let bad = rows(
            br#"{"at": "yesterday"}"#,
            &opts("json 'auto' timeformat 'epochsecs'"),
            &cols,
            false,
        );
        assert!(bad[0]
            .row
            .as_ref()
            .unwrap_err()
            .contains("not an epoch time"));
    }
}
