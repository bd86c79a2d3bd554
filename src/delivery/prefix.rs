//! Firehose's S3 key rules: prefix expressions and object names.
//!
//! A key is `<evaluated prefix><stream>-<version>-YYYY-MM-DD-HH-MM-SS-<id><ext>`.
//! The prefix may hold expressions:
//!
//! * `!{timestamp:<Java DateTimeFormatter pattern>}`: the arrival time of the
//!   oldest record in the object, in UTC. Every use in one prefix is the same
//!   instant. Text in single quotes is literal, `''` is a quote.
//! * `!{firehose:random-string}`: 11 characters from `[0-9a-z]`.
//! * `!{firehose:error-output-type}`: only in ErrorOutputPrefix; the reason a
//!   record failed (`processing-failed`, `format-conversion-failed`, ...).
//!
//! A Prefix without a timestamp expression gets `!{timestamp:yyyy/MM/dd/HH/}`
//! appended, as Firehose does. Everything that varies per object (the time,
//! the random string, the id) is a function of the batch, never of the clock
//! or a random source at write time: a batch replayed after a crash must get
//! the key it got the first time, so the replay overwrites instead of
//! duplicating.

use chrono::{DateTime, Datelike, Timelike, Utc};

/// The longest an evaluated prefix may be (Firehose's limit).
pub const MAX_EVALUATED_PREFIX: usize = 512;

/// The longest object key, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// The one rule every object key obeys before any store sees it, whatever
/// produced it (a prefix's expressions, partition values, a replay): a key
/// is a relative path inside its bucket. So no leading `/`, no empty, `.` or
/// `..` segment, no `\\`, no NUL or other control character, and at most
/// [`MAX_KEY_BYTES`]. S3 itself would take some of these; the embedded lake
/// maps keys onto directories, where they would alias or escape, and one rule
/// for every store keeps a stream portable between them.
pub fn check_key(key: &str) -> Result<(), String> {
    let bad = if key.is_empty() {
        Some("it is empty")
    } else if key.len() > MAX_KEY_BYTES {
        Some("it is longer than 1024 bytes")
    } else if key.starts_with('/') {
        Some("it starts with '/'")
    } else if key.chars().any(|c| c.is_control()) {
        Some("it holds a control character")
    } else if key.contains('\\') {
        Some("it holds a '\\'")
    } else if key.split('/').any(|seg| seg.is_empty()) {
        Some("it has an empty path segment ('//' or a trailing '/')")
    } else if key.split('/').any(|seg| seg == "." || seg == "..") {
        Some("it has a '.' or '..' path segment")
    } else {
        None
    };
    match bad {
        Some(why) => Err(format!(
            "object key {:?} is not allowed: {why}; keys are paths inside the bucket",
            key.chars().take(200).collect::<String>()
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Timestamp(Vec<DatePart>),
    RandomString,
    ErrorOutputType,
    PartitionKey(String),
}

#[derive(Debug, Clone, PartialEq)]
enum DatePart {
    Literal(String),
    /// A pattern letter and how many times it was repeated.
    Field(char, usize),
}

/// A parsed Prefix or ErrorOutputPrefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is for: the rules differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Prefix,
    ErrorOutputPrefix,
}

impl Template {
    /// Parses a template. Errors name the expression and what is allowed.
    pub fn parse(src: &str, kind: Kind) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| {
                format!("unterminated expression in {src:?}: `!{{` needs a closing `}}`")
            })?;
            let expr = &after[..end];
            let (ns, value) = expr
                .split_once(':')
                .ok_or_else(|| format!("expression !{{{expr}}} must be !{{namespace:value}}"))?;
            parts.push(match (ns, value) {
                ("timestamp", pattern) => Part::Timestamp(parse_date_pattern(pattern)?),
                ("firehose", "random-string") => Part::RandomString,
                ("firehose", "error-output-type") => {
                    if kind == Kind::Prefix {
                        return Err("!{firehose:error-output-type} may only be used in ErrorOutputPrefix".into());
                    }
                    Part::ErrorOutputType
                }
                ("firehose", other) => {
                    return Err(format!(
                        "!{{firehose:{other}}} is not a firehose expression; use random-string or error-output-type"
                    ))
                }
                ("partitionKeyFromQuery", name) => {
                    if kind == Kind::ErrorOutputPrefix {
                        return Err(format!("!{{{expr}}} may not be used in ErrorOutputPrefix"));
                    }
                    Part::PartitionKey(name.to_string())
                }
                ("partitionKeyFromLambda", _) => {
                    return Err(format!(
                        "!{{{expr}}} needs a Lambda processor, which hydrant does not support; \
                         use partitionKeyFromQuery with a MetadataExtraction processor"
                    ))
                }
                (other, _) => {
                    return Err(format!(
                        "unknown namespace {other:?} in !{{{expr}}}; use timestamp or firehose"
                    ))
                }
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// True if the template has any expression.
    pub fn has_expressions(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Literal(_)))
    }

    fn has(&self, f: impl Fn(&Part) -> bool) -> bool {
        self.parts.iter().any(f)
    }

    /// Firehose's rule: a Prefix with no timestamp gets the hourly folders.
    pub fn with_default_time(mut self) -> Template {
        if !self.has(|p| matches!(p, Part::Timestamp(_))) {
            self.parts.push(Part::Timestamp(
                parse_date_pattern("yyyy/MM/dd/HH/").unwrap(),
            ));
        }
        self
    }

    pub fn has_error_output_type(&self) -> bool {
        self.has(|p| matches!(p, Part::ErrorOutputType))
    }

    /// Evaluates the template for one object.
    pub fn eval(&self, at: DateTime<Utc>, random: &str, error_type: Option<&str>) -> String {
        self.eval_with(at, random, error_type, &[])
    }

    /// Evaluates with partition keys: `(name, value)` pairs from the
    /// MetadataExtraction query.
    pub fn eval_with(
        &self,
        at: DateTime<Utc>,
        random: &str,
        error_type: Option<&str>,
        keys: &[(&str, &str)],
    ) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Timestamp(pattern) => format_date(pattern, at, &mut out),
                Part::RandomString => out.push_str(random),
                Part::ErrorOutputType => out.push_str(error_type.unwrap_or("processing-failed")),
                Part::PartitionKey(name) => {
                    // Names are checked against the query at create time; a
                    // missing one evaluates empty, which the key check refuses.
                    let value = keys.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
                    out.push_str(value.unwrap_or(""));
                }
            }
        }
        out
    }

    /// Where a table of the stream's objects starts: the literal text before
    /// the first expression, up to its last '/'.
    pub fn static_dir(&self) -> String {
        let mut lit = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => lit.push_str(s),
                _ => break,
            }
        }
        match lit.rfind('/') {
            Some(i) => lit[..=i].to_string(),
            None => String::new(),
        }
    }

    /// Hive-style partition columns right below [`Template::static_dir`]:
    /// the leading `name=!{partitionKeyFromQuery:key}/` segments.
    pub fn hive_columns(&self) -> Vec<String> {
        let dir = self.static_dir();
        // Walk the parts after the static directory as text with markers.
        let mut rest = String::new();
        let mut consumed = 0;
        for p in &self.parts {
            match p {
                Part::Literal(s) => {
                    let skip = dir.len().saturating_sub(consumed).min(s.len());
                    consumed += s.len();
                    rest.push_str(&s[skip..]);
                }
                Part::PartitionKey(_) => rest.push('\u{1}'),
                _ => rest.push('\u{2}'),
            }
        }
        let mut cols = Vec::new();
        for seg in rest.split('/') {
            match seg.strip_suffix('\u{1}').and_then(|n| n.strip_suffix('=')) {
                Some(name)
                    if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    cols.push(name.to_string())
                }
                _ => break,
            }
        }
        cols
    }

    /// The partition key names the template uses.
    pub fn partition_keys(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::PartitionKey(k) => Some(k.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Validates a Prefix/ErrorOutputPrefix pair by Firehose's rules and returns
/// the templates delivery uses.
pub fn validate(
    prefix: &str,
    error_prefix: Option<&str>,
) -> Result<(Template, Option<Template>), String> {
    validate_partitioned(prefix, error_prefix, None)
}

/// [`validate`] for a stream with dynamic partitioning: `keys` are the names
/// the MetadataExtraction query defines (None: partitioning is off).
pub fn validate_partitioned(
    prefix: &str,
    error_prefix: Option<&str>,
    keys: Option<&[String]>,
) -> Result<(Template, Option<Template>), String> {
    let p = Template::parse(prefix, Kind::Prefix).map_err(|e| format!("Prefix: {e}"))?;
    match keys {
        None => {
            if let Some(k) = p.partition_keys().first() {
                return Err(format!(
                    "Prefix: !{{partitionKeyFromQuery:{k}}} needs DynamicPartitioningConfiguration with Enabled: true"
                ));
            }
        }
        Some(keys) => {
            let used = p.partition_keys();
            if used.is_empty() {
                return Err("Prefix: with dynamic partitioning the Prefix must use at least one !{partitionKeyFromQuery:key}".into());
            }
            if let Some(k) = used.iter().find(|k| !keys.iter().any(|d| d == *k)) {
                return Err(format!(
                    "Prefix: !{{partitionKeyFromQuery:{k}}} is not defined by the MetadataExtractionQuery (it defines {})",
                    keys.join(", ")
                ));
            }
        }
    }
    let e = match error_prefix {
        Some(src) => {
            let t = Template::parse(src, Kind::ErrorOutputPrefix)
                .map_err(|e| format!("ErrorOutputPrefix: {e}"))?;
            if t.has_expressions() && !t.has_error_output_type() {
                return Err(
                    "ErrorOutputPrefix: an ErrorOutputPrefix with expressions must include !{firehose:error-output-type}"
                        .into(),
                );
            }
            Some(t)
        }
        None => None,
    };
    if p.has_expressions() && e.is_none() {
        return Err("ErrorOutputPrefix is required when Prefix contains expressions".into());
    }
    let p = p.with_default_time();
    // The longest evaluation: a two-digit-per-field date is fixed width, so
    // any instant measures the same; random strings are fixed width too.
    let probe = DateTime::<Utc>::from_timestamp(4102444799, 999_999_999).unwrap();
    for (name, t) in [("Prefix", Some(&p)), ("ErrorOutputPrefix", e.as_ref())] {
        if let Some(t) = t {
            // Partition values vary; they are bounded where they are made.
            let pk: Vec<(&str, &str)> = t.partition_keys().into_iter().map(|k| (k, "")).collect();
            let n = t
                .eval_with(probe, "aaaaaaaaaaa", Some("format-conversion-failed"), &pk)
                .len();
            if n > MAX_EVALUATED_PREFIX {
                return Err(format!(
                    "{name} evaluates to {n} characters; at most {MAX_EVALUATED_PREFIX} are allowed"
                ));
            }
            check_evaluations(t).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok((p, e))
}

/// Refuses a template any of whose evaluations would not be a valid key.
///
/// Date fields print digits and letters only, never `/`, `.` or nothing, so
/// the path structure of an evaluation (its separators, empty and dot
/// segments, control characters) comes from literal text alone and is the
/// same at every instant: evaluating at two instants whose fields all differ
/// covers every instant. Partition values and the random string are letters
/// here; the real ones are checked where they are made (route) and the whole
/// key again at the store.
fn check_evaluations(t: &Template) -> Result<(), String> {
    let pk: Vec<(&str, &str)> = t.partition_keys().into_iter().map(|k| (k, "v")).collect();
    for instant in [4102444799, 0] {
        let at = DateTime::<Utc>::from_timestamp(instant, 0).expect("a valid instant");
        let prefix = t.eval_with(at, "aaaaaaaaaaa", Some("processing-failed"), &pk);
        check_key(&format!("{prefix}object")).map_err(|e| {
            format!("evaluates to {prefix:?}, which cannot start an object key: {e}")
        })?;
    }
    Ok(())
}

fn parse_date_pattern(pattern: &str) -> Result<Vec<DatePart>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut lit = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // 'text' is literal; '' is one quote.
            if chars.get(i + 1) == Some(&'\'') {
                lit.push('\'');
                i += 2;
                continue;
            }
            let close = chars[i + 1..]
                .iter()
                .position(|&c| c == '\'')
                .ok_or_else(|| format!("unterminated quote in timestamp pattern {pattern:?}"))?;
            lit.extend(&chars[i + 1..i + 1 + close]);
            i += close + 2;
        } else if c.is_ascii_alphabetic() {
            let n = chars[i..].iter().take_while(|&&x| x == c).count();
            if !"yuMLdDHhkKmsSEaZXz".contains(c) {
                return Err(format!(
                    "pattern letter {c:?} in timestamp pattern {pattern:?} is not supported \
                     (use y u M L d D H h k K m s S E a Z X z, and quote literal text)"
                ));
            }
            if !lit.is_empty() {
                out.push(DatePart::Literal(std::mem::take(&mut lit)));
            }
            out.push(DatePart::Field(c, n));
            i += n;
        } else if "#{}[]".contains(c) {
            return Err(format!(
                "character {c:?} is reserved in timestamp pattern {pattern:?}"
            ));
        } else {
            lit.push(c);
            i += 1;
        }
    }
    if !lit.is_empty() {
        out.push(DatePart::Literal(lit));
    }
    if out.is_empty() {
        return Err("empty timestamp pattern".into());
    }
    Ok(out)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn format_date(pattern: &[DatePart], t: DateTime<Utc>, out: &mut String) {
    use std::fmt::Write;
    for part in pattern {
        let (c, n) = match part {
            DatePart::Literal(s) => {
                out.push_str(s);
                continue;
            }
            DatePart::Field(c, n) => (*c, *n),
        };
        let num = |out: &mut String, v: i64| {
            let _ = write!(out, "{v:0n$}");
        };
        match c {
            'y' | 'u' if n == 2 => {
                let _ = write!(out, "{:02}", t.year().rem_euclid(100));
            }
            'y' | 'u' => num(out, t.year() as i64),
            'M' | 'L' if n >= 4 => out.push_str(MONTHS[t.month0() as usize]),
            'M' | 'L' if n == 3 => out.push_str(&MONTHS[t.month0() as usize][..3]),
            'M' | 'L' => num(out, t.month() as i64),
            'd' => num(out, t.day() as i64),
            'D' => num(out, t.ordinal() as i64),
            'H' => num(out, t.hour() as i64),
            'k' => num(out, if t.hour() == 0 { 24 } else { t.hour() as i64 }),
            'K' => num(out, (t.hour() % 12) as i64),
            'h' => num(
                out,
                if t.hour() % 12 == 0 {
                    12
                } else {
                    (t.hour() % 12) as i64
                },
            ),
            'm' => num(out, t.minute() as i64),
            's' => num(out, t.second() as i64),
            'S' => {
                let nanos = format!("{:09}", t.nanosecond() % 1_000_000_000);
                out.push_str(&nanos[..n.min(9)]);
                for _ in 9..n {
                    out.push('0');
                }
            }
            'E' if n >= 4 => out.push_str(DAYS[t.weekday().num_days_from_monday() as usize]),
            'E' => out.push_str(&DAYS[t.weekday().num_days_from_monday() as usize][..3]),
            'a' => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
            // Timestamps are UTC, so zone fields print UTC's forms.
            'Z' => out.push_str("+0000"),
            'X' => out.push('Z'),
            'z' => out.push_str("UTC"),
            _ => unreachable!("rejected when parsed"),
        }
    }
}

/// Firehose's object name below the prefix:
/// `<stream>-<version>-YYYY-MM-DD-HH-MM-SS-<id><ext>`.
pub fn object_name(stream: &str, version: u32, at: DateTime<Utc>, id: &str, ext: &str) -> String {
    format!(
        "{stream}-{version}-{}-{id}{ext}",
        at.format("%Y-%m-%d-%H-%M-%S")
    )
}

/// The 11-character random string of a batch, derived from its id so that a
/// replay evaluates the same prefix.
pub fn random_string(id: &uuid::Uuid) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = id.as_u128();
    (0..11)
        .map(|_| {
            let c = ALPHABET[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// (Prefix, ErrorOutputPrefix, instant, evaluated prefix or the error's text)
    const PREFIX_TABLE: &[(&str, Option<&str>, &str, Result<&str, &str>)] = &[
        (
            "events/my-event-staging/",
            None,
            "2026-11-24T13:05:09Z",
            Ok("events/my-event-staging/2026/11/24/13/"),
        ),
        ("", None, "2026-01-02T03:04:05Z", Ok("2026/01/02/03/")),
        (
            "plain",
            None,
            "2026-01-02T03:04:05Z",
            Ok("plain2026/01/02/03/"),
        ),
        (
            "y=!{timestamp:yyyy}/m=!{timestamp:MM}/d=!{timestamp:dd}/",
            Some("err/!{firehose:error-output-type}/"),
            "2026-03-09T23:59:59Z",
            Ok("y=2026/m=03/d=09/"),
        ),
        (
            "!{timestamp:yyyy-MM-dd'T'HH:mm:ss.SSS}/",
            Some("e/!{firehose:error-output-type}"),
            "2026-11-24T13:05:09.123456Z",
            Ok("2026-11-24T13:05:09.123/"),
        ),
        (
            "!{timestamp:yy/M/d/H/EEE/MMM/a/h/DDD/''/}",
            Some("e!{firehose:error-output-type}"),
            "2026-02-03T14:00:00Z",
            Ok("26/2/3/14/Tue/Feb/PM/2/034/'/"),
        ),
        (
            "!{timestamp:EEEE MMMM}/",
            Some("e!{firehose:error-output-type}"),
            "2026-02-03T00:00:00Z",
            Ok("Tuesday February/"),
        ),
        (
            "r/!{firehose:random-string}/",
            Some("e/!{firehose:error-output-type}"),
            "2026-11-24T13:05:09Z",
            Ok("r/RANDOMSTRNG/2026/11/24/13/"),
        ),
        (
            "!{timestamp:yyyy}",
            None,
            "2026-11-24T13:05:09Z",
            Err("ErrorOutputPrefix is required when Prefix contains expressions"),
        ),
        (
            "!{firehose:error-output-type}/",
            Some("e/"),
            "2026-11-24T13:05:09Z",
            Err("may only be used in ErrorOutputPrefix"),
        ),
        (
            "!{timestamp:yyyy}/",
            Some("e/!{timestamp:yyyy}/"),
            "2026-11-24T13:05:09Z",
            Err("must include !{firehose:error-output-type}"),
        ),
        (
            "!{timestamp:yyyy",
            Some("e/"),
            "2026-11-24T13:05:09Z",
            Err("unterminated expression"),
        ),
        (
            "!{nope:x}/",
            Some("e/"),
            "2026-11-24T13:05:09Z",
            Err("unknown namespace"),
        ),
        (
            "!{firehose:nope}/",
            Some("e/"),
            "2026-11-24T13:05:09Z",
            Err("is not a firehose expression"),
        ),
        (
            "!{timestamp:yyyy-QQ}/",
            Some("e/!{firehose:error-output-type}"),
            "2026-11-24T13:05:09Z",
            Err("pattern letter 'Q'"),
        ),
        (
            "!{timestamp:'unterminated}/",
            Some("e/!{firehose:error-output-type}"),
            "2026-11-24T13:05:09Z",
            Err("unterminated quote"),
        ),
        (
            "!{partitionKeyFromQuery:id}/",
            Some("e/!{firehose:error-output-type}"),
            "2026-11-24T13:05:09Z",
            Err("needs DynamicPartitioningConfiguration"),
        ),
    ];

    #[test]
    fn prefix_table() {
        for (prefix, error_prefix, instant, want) in PREFIX_TABLE {
            let got = validate(prefix, *error_prefix)
                .map(|(t, _)| t.eval(at(instant), "RANDOMSTRNG", None));
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "prefix {prefix:?}"),
                Err(w) => {
                    let e = got.expect_err(prefix);
                    assert!(
                        e.contains(w),
                        "prefix {prefix:?}: error {e:?} should mention {w:?}"
                    );
                }
            }
        }
    }

    /// (Prefix, keys the query defines, evaluated with event_name=JOIN / error text)
    const PARTITIONED: &[(&str, &[&str], Result<&str, &str>)] = &[
        (
            "event_name=!{partitionKeyFromQuery:event_name}/",
            &["event_name"],
            Ok("event_name=JOIN/2026/11/24/13/"),
        ),
        (
            "!{partitionKeyFromQuery:event_name}/!{timestamp:yyyy}/",
            &["event_name", "x"],
            Ok("JOIN/2026/"),
        ),
        ("static/", &["event_name"], Err("must use at least one")),
        (
            "!{partitionKeyFromQuery:nope}/",
            &["event_name"],
            Err("not defined by the MetadataExtractionQuery"),
        ),
    ];

    #[test]
    fn partitioned_prefix_table() {
        for (prefix, keys, want) in PARTITIONED {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let got = validate_partitioned(
                prefix,
                Some("err/!{firehose:error-output-type}/"),
                Some(&keys),
            )
            .map(|(t, _)| {
                t.eval_with(
                    at("2026-11-24T13:05:09Z"),
                    "r",
                    None,
                    &[("event_name", "JOIN"), ("x", "1")],
                )
            });
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "{prefix}"),
                Err(w) => assert!(got.as_ref().unwrap_err().contains(w), "{prefix}: {got:?}"),
            }
        }
        let err =
            Template::parse("e/!{partitionKeyFromQuery:a}", Kind::ErrorOutputPrefix).unwrap_err();
        assert!(
            err.contains("may not be used in ErrorOutputPrefix"),
            "{err}"
        );
    }

    /// (Prefix, static directory, Hive columns)
    const TABLES: &[(&str, &str, &[&str])] = &[
        ("events/my-event-staging/", "events/my-event-staging/", &[]),
        ("", "", &[]),
        (
            "events/event_name=!{partitionKeyFromQuery:e}/region=!{partitionKeyFromQuery:r}/",
            "events/",
            &["event_name", "region"],
        ),
        (
            "a/b=!{partitionKeyFromQuery:b}/!{timestamp:yyyy}/c=!{partitionKeyFromQuery:c}/",
            "a/",
            &["b"],
        ),
        ("a/x!{partitionKeyFromQuery:b}/", "a/", &[]),
        ("logs/!{timestamp:yyyy}/", "logs/", &[]),
    ];

    #[test]
    fn table_location_and_hive_columns() {
        for (prefix, dir, cols) in TABLES {
            let keys: Vec<String> = ["e", "r", "b", "c"].iter().map(|s| s.to_string()).collect();
            let partitioned = prefix.contains("partitionKey");
            let (t, _) = validate_partitioned(
                prefix,
                Some("err/!{firehose:error-output-type}/"),
                partitioned.then_some(&keys[..]),
            )
            .unwrap();
            assert_eq!(t.static_dir(), *dir, "{prefix}");
            assert_eq!(t.hive_columns(), *cols, "{prefix}");
        }
    }

    #[test]
    fn error_prefix_names_the_failure() {
        let (_, e) = validate(
            "ok/",
            Some("failed/!{firehose:error-output-type}/!{timestamp:yyyy}/"),
        )
        .unwrap();
        let t = at("2026-11-24T13:05:09Z");
        assert_eq!(
            e.unwrap().eval(t, "x", Some("format-conversion-failed")),
            "failed/format-conversion-failed/2026/"
        );
    }

    /// Prefixes whose evaluation leaves the bucket or aliases another key:
    /// each is refused at create time, whichever expression produces it.
    const ESCAPES: &[(&str, &str, &str)] = &[
        (
            "!{timestamp:'..'}/x/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "a/!{timestamp:'/'}b/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{timestamp:'/tmp/x/'}",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{timestamp:yyyy}/../../escape/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{timestamp:yyyy}/!{timestamp:'..'}/!{timestamp:'..'}/escape/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{timestamp:yyyy}/!{timestamp:'.'}!{timestamp:'.'}/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{timestamp:'a\u{0}b'}/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{timestamp:'a\u{1}b'}/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{timestamp:'a\\b'}/",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "!{firehose:random-string}//",
            "e/!{firehose:error-output-type}/",
            "Prefix:",
        ),
        (
            "ok/",
            "!{timestamp:'..'}/!{firehose:error-output-type}/",
            "ErrorOutputPrefix:",
        ),
        (
            "ok/",
            "!{timestamp:'/abs/'}!{firehose:error-output-type}/",
            "ErrorOutputPrefix:",
        ),
        (
            "ok/",
            "e/!{firehose:error-output-type}//",
            "ErrorOutputPrefix:",
        ),
        (
            "ok/",
            "e/!{firehose:error-output-type}/!{timestamp:'..'}/",
            "ErrorOutputPrefix:",
        ),
    ];

    #[test]
    fn prefixes_that_escape_the_bucket_are_refused() {
        for (prefix, error_prefix, which) in ESCAPES {
            let err = validate(prefix, Some(error_prefix)).expect_err(prefix);
            assert!(
                err.starts_with(which),
                "{prefix:?} / {error_prefix:?}: {err}"
            );
            assert!(
                err.contains("cannot start an object key"),
                "{prefix:?}: {err}"
            );
        }
    }

    /// (key, allowed)
    const KEYS: &[(&str, bool)] = &[
        ("events/2026/11/24/13/s-1-2026-11-24-13-05-09-id", true),
        ("a", true),
        ("a.b/..c/c..", true),
        ("", false),
        ("/abs", false),
        ("a//b", false),
        ("a/", false),
        ("a/./b", false),
        ("a/../b", false),
        ("..", false),
        ("a\\b", false),
        ("a\u{0}b", false),
        ("a\nb", false),
        ("a\u{7f}b", false),
    ];

    #[test]
    fn key_rules() {
        for (key, ok) in KEYS {
            assert_eq!(check_key(key).is_ok(), *ok, "{key:?}: {:?}", check_key(key));
        }
        assert!(check_key(&"a".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key(&"a".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn evaluated_prefix_length_is_bounded() {
        let long = "a".repeat(MAX_EVALUATED_PREFIX);
        assert!(validate(&long[..MAX_EVALUATED_PREFIX - 14], None).is_ok());
        let err = validate(&long, None).unwrap_err();
        assert!(err.contains("at most 512"), "{err}");
    }

    /// (stream, version, instant, id, extension, name)
    const NAME_TABLE: &[(&str, u32, &str, &str, &str, &str)] = &[
        (
            "my-event-staging",
            1,
            "2026-11-24T13:05:09.999Z",
            "0b6c6c0e-6f5e-5d4c-8b1a-2f0e0c6d1a11",
            "",
            "my-event-staging-1-2026-11-24-13-05-09-0b6c6c0e-6f5e-5d4c-8b1a-2f0e0c6d1a11",
        ),
        (
            "s",
            3,
            "2026-01-02T03:04:05Z",
            "id",
            ".gz",
            "s-3-2026-01-02-03-04-05-id.gz",
        ),
    ];

    #[test]
    fn object_name_table() {
        for (stream, version, instant, id, ext, want) in NAME_TABLE {
            assert_eq!(object_name(stream, *version, at(instant), id, ext), *want);
        }
    }

    #[test]
    fn random_string_is_stable_and_well_formed() {
        let id = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        let a = random_string(&id);
        assert_eq!(a, random_string(&id));
        assert_eq!(a.len(), 11);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, random_string(&uuid::Uuid::from_u128(1)));
    }
}
