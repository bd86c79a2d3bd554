//! `CopyCommand.CopyOptions`: the options Firehose users give Redshift's
//! COPY, parsed with Redshift's meaning.
//!
//! Accepted (keywords in any case, `AS` optional where Redshift allows it):
//!
//! | option | meaning |
//! |---|---|
//! | `JSON 'auto'`, `JSON 'auto ignorecase'`, `FORMAT [AS] JSON '…'` | each record is a JSON object; its keys name the columns (ignorecase: in any case) |
//! | `CSV`, `FORMAT [AS] CSV` | each record is CSV text (one or more lines) |
//! | neither | each record is text whose fields `DELIMITER` separates (default `\|`) |
//! | `DELIMITER [AS] 'c'` | the field separator (CSV: default `,`) |
//! | `QUOTE [AS] 'q'` | CSV's quote character (default `"`) |
//! | `GZIP`, `ZSTD` | the staged objects' compression; must match `S3Configuration.CompressionFormat` |
//! | `TIMEFORMAT [AS] 'auto' \| 'epochsecs' \| 'epochmillisecs' \| 'pattern'` | how timestamp values are written |
//! | `DATEFORMAT [AS] 'auto' \| 'pattern'` | how date values are written |
//! | `IGNOREHEADER [AS] n` | skip the first n lines of each staged object |
//! | `BLANKSASNULL`, `EMPTYASNULL` | whitespace-only / empty character values load as NULL |
//! | `TRUNCATECOLUMNS` | character values longer than their column are cut to fit |
//! | `ACCEPTINVCHARS [[AS] 'c']` | invalid UTF-8 is replaced by `c` (default `?`) instead of rejecting the row |
//! | `MAXERROR [AS] n` | at most n rejected rows per object; past that the object fails whole |
//!
//! Anything else is refused by name, never accepted and ignored.

use std::fmt;

/// How each record's text becomes a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFormat {
    /// JSON objects; keys match column names exactly, or in any case.
    Json {
        ignore_case: bool,
    },
    Csv {
        delimiter: char,
        quote: char,
    },
    /// Delimited text without quoting or escapes.
    Text {
        delimiter: char,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeFormat {
    Auto,
    EpochSecs,
    EpochMillis,
    /// A Redshift datetime pattern, such as `YYYY-MM-DD HH:MI:SS`.
    Pattern(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: RecordFormat,
    pub compression: Compression,
    pub time_format: TimeFormat,
    /// `None`: `auto`.
    pub date_format: Option<String>,
    pub ignore_header: u64,
    pub blanks_as_null: bool,
    pub empty_as_null: bool,
    pub truncate_columns: bool,
    /// The replacement for invalid UTF-8, if accepted.
    pub accept_inv_chars: Option<char>,
    pub max_error: u64,
}

/// Longest CopyOptions text taken.
pub const MAX_OPTIONS_BYTES: usize = 4096;
/// Redshift's bound on MAXERROR.
pub const MAX_MAXERROR: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyError(pub String);

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CopyOptions: {}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
}

fn tokens(text: &str) -> Result<Vec<Token>, CopyError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some((_, '\'')) if chars.peek().map(|p| p.1) == Some('\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    Some((_, '\'')) => break,
                    Some((_, c)) => s.push(c),
                    None => return Err(CopyError(format!("the quote at byte {at} is not closed"))),
                }
            }
            out.push(Token::Quoted(s));
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut w = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(Token::Word(w.to_ascii_uppercase()));
        } else {
            return Err(CopyError(format!("unexpected {c:?} at byte {at}")));
        }
    }
    Ok(out)
}

impl CopyOptions {
    pub fn parse(text: &str) -> Result<CopyOptions, CopyError> {
        if text.len() > MAX_OPTIONS_BYTES {
            return Err(CopyError(format!(
                "is {} bytes; at most {MAX_OPTIONS_BYTES}",
                text.len()
            )));
        }
        let toks = tokens(text)?;
        let mut p = Parser { toks, at: 0 };
        let mut format: Option<RecordFormat> = None;
        let (mut delimiter, mut quote) = (None, None);
        let mut o = CopyOptions {
            format: RecordFormat::Text { delimiter: '|' },
            compression: Compression::None,
            time_format: TimeFormat::Auto,
            date_format: None,
            ignore_header: 0,
            blanks_as_null: false,
            empty_as_null: false,
            truncate_columns: false,
            accept_inv_chars: None,
            max_error: 0,
        };
        let mut seen: Vec<String> = Vec::new();
        while let Some(word) = p.word()? {
            let key = if word == "FORMAT" {
                p.optional("AS");
                p.word()?
                    .ok_or_else(|| CopyError("FORMAT needs JSON or CSV".into()))?
            } else {
                word
            };
            if seen.contains(&key) {
                return Err(CopyError(format!("{key} is given twice")));
            }
            seen.push(key.clone());
            let mut set_format = |f: RecordFormat| {
                if format.is_some() {
                    return Err(CopyError("give one of JSON and CSV".into()));
                }
                format = Some(f);
                Ok(())
            };
            match key.as_str() {
                "JSON" => {
                    p.optional("AS");
                    let arg = p.quoted("JSON")?;
                    let ignore_case = match arg.to_ascii_lowercase().as_str() {
                        "auto" => false,
                        "auto ignorecase" => true,
                        _ => {
                            return Err(CopyError(format!(
                                "JSON {arg:?}: only 'auto' and 'auto ignorecase' are supported (a JSONPaths file is not)"
                            )))
                        }
                    };
                    set_format(RecordFormat::Json { ignore_case })?;
                }
                "CSV" => {
                    set_format(RecordFormat::Csv {
                        delimiter: ',',
                        quote: '"',
                    })?;
                    if p.optional("QUOTE") {
                        p.optional("AS");
                        quote = Some(p.char("QUOTE")?);
                    }
                }
                "DELIMITER" => {
                    p.optional("AS");
                    delimiter = Some(p.char("DELIMITER")?);
                }
                "QUOTE" => {
                    p.optional("AS");
                    quote = Some(p.char("QUOTE")?);
                }
                "GZIP" | "ZSTD" => {
                    if o.compression != Compression::None {
                        return Err(CopyError("give one of GZIP and ZSTD".into()));
                    }
                    o.compression = if key == "GZIP" {
                        Compression::Gzip
                    } else {
                        Compression::Zstd
                    };
                }
                "TIMEFORMAT" => {
                    p.optional("AS");
                    let f = p.quoted("TIMEFORMAT")?;
                    o.time_format = match f.to_ascii_lowercase().as_str() {
                        "auto" => TimeFormat::Auto,
                        "epochsecs" => TimeFormat::EpochSecs,
                        "epochmillisecs" => TimeFormat::EpochMillis,
                        _ => TimeFormat::Pattern(check_pattern("TIMEFORMAT", &f)?),
                    };
                }
                "DATEFORMAT" => {
                    p.optional("AS");
                    let f = p.quoted("DATEFORMAT")?;
                    o.date_format = match f.to_ascii_lowercase().as_str() {
                        "auto" => None,
                        _ => Some(check_pattern("DATEFORMAT", &f)?),
                    };
                }
                "IGNOREHEADER" => {
                    p.optional("AS");
                    o.ignore_header = p.number("IGNOREHEADER", u32::MAX as u64)?;
                }
                "MAXERROR" => {
                    p.optional("AS");
                    o.max_error = p.number("MAXERROR", MAX_MAXERROR)?;
                }
                "BLANKSASNULL" => o.blanks_as_null = true,
                "EMPTYASNULL" => o.empty_as_null = true,
                "TRUNCATECOLUMNS" => o.truncate_columns = true,
                "ACCEPTINVCHARS" => {
                    let as_ = p.optional("AS");
                    o.accept_inv_chars = Some(match p.peek_quoted() {
                        true => p.char("ACCEPTINVCHARS")?,
                        false if as_ => {
                            return Err(CopyError("ACCEPTINVCHARS AS needs a character".into()))
                        }
                        false => '?',
                    });
                }
                other => {
                    return Err(CopyError(format!(
                        "{other} is not supported by hydrant's warehouse loader (supported: JSON 'auto', \
                         JSON 'auto ignorecase', CSV, DELIMITER, QUOTE, GZIP, ZSTD, TIMEFORMAT, DATEFORMAT, \
                         IGNOREHEADER, BLANKSASNULL, EMPTYASNULL, TRUNCATECOLUMNS, ACCEPTINVCHARS, MAXERROR)"
                    )))
                }
            }
        }
        o.format = match format {
            Some(RecordFormat::Json { ignore_case }) => {
                if let Some(k) = delimiter.map(|_| "DELIMITER").or(quote.map(|_| "QUOTE")) {
                    return Err(CopyError(format!("{k} does not apply to JSON")));
                }
                if o.ignore_header > 0 {
                    return Err(CopyError("IGNOREHEADER does not apply to JSON".into()));
                }
                RecordFormat::Json { ignore_case }
            }
            Some(RecordFormat::Csv { .. }) => {
                let (delimiter, quote) = (delimiter.unwrap_or(','), quote.unwrap_or('"'));
                if delimiter == quote {
                    return Err(CopyError("DELIMITER and QUOTE must differ".into()));
                }
                RecordFormat::Csv { delimiter, quote }
            }
            _ => {
                if quote.is_some() {
                    return Err(CopyError("QUOTE needs CSV".into()));
                }
                RecordFormat::Text {
                    delimiter: delimiter.unwrap_or('|'),
                }
            }
        };
        for (what, c) in [
            ("DELIMITER", delimiter),
            ("QUOTE", quote),
            ("ACCEPTINVCHARS", o.accept_inv_chars),
        ] {
            if c.is_some_and(|c| c == '\n' || c == '\r' || c == '\0') {
                return Err(CopyError(format!("{what} may not be a line break or NUL")));
            }
        }
        Ok(o)
    }
}

/// Redshift datetime pattern parts hydrant reads; anything else is refused.
const PATTERN_PARTS: [&str; 12] = [
    "YYYY", "YY", "MM", "MON", "DD", "HH24", "HH12", "HH", "MI", "SS", "US", "MS",
];

fn check_pattern(what: &str, f: &str) -> Result<String, CopyError> {
    let mut rest = f;
    while let Some(c) = rest.chars().next() {
        if let Some(part) = PATTERN_PARTS.iter().find(|p| rest.starts_with(**p)) {
            rest = &rest[part.len()..];
        } else if c.is_ascii_alphanumeric() {
            return Err(CopyError(format!(
                "{what} {f:?}: {:?} is not a pattern part hydrant reads (YYYY, YY, MM, MON, DD, HH24, HH12, HH, MI, SS, MS, US)",
                rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect::<String>()
            )));
        } else {
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(f.to_owned())
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
}

impl Parser {
    fn word(&mut self) -> Result<Option<String>, CopyError> {
        match self.toks.get(self.at) {
            None => Ok(None),
            Some(Token::Word(w)) => {
                self.at += 1;
                Ok(Some(w.clone()))
            }
            Some(Token::Quoted(q)) => Err(CopyError(format!("{q:?} follows no option"))),
        }
    }

    fn optional(&mut self, word: &str) -> bool {
        let hit = matches!(self.toks.get(self.at), Some(Token::Word(w)) if w == word);
        self.at += hit as usize;
        hit
    }

    fn peek_quoted(&self) -> bool {
        matches!(self.toks.get(self.at), Some(Token::Quoted(_)))
    }

    fn quoted(&mut self, what: &str) -> Result<String, CopyError> {
        match self.toks.get(self.at) {
            Some(Token::Quoted(q)) => {
                self.at += 1;
                Ok(q.clone())
            }
            _ => Err(CopyError(format!("{what} needs a quoted value"))),
        }
    }

    fn char(&mut self, what: &str) -> Result<char, CopyError> {
        let q = self.quoted(what)?;
        let mut cs = q.chars();
        match (cs.next(), cs.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(CopyError(format!("{what} {q:?} must be one character"))),
        }
    }

    fn number(&mut self, what: &str, max: u64) -> Result<u64, CopyError> {
        let n = match self.toks.get(self.at) {
            Some(Token::Word(w)) => w.parse::<u64>().ok(),
            Some(Token::Quoted(q)) => q.parse::<u64>().ok(),
            None => None,
        };
        match n {
            Some(n) if n <= max => {
                self.at += 1;
                Ok(n)
            }
            _ => Err(CopyError(format!(
                "{what} needs a whole number from 0 to {max}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> CopyOptions {
        CopyOptions::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn the_options_firehose_users_write() {
        assert_eq!(
            ok("json 'auto'").format,
            RecordFormat::Json { ignore_case: false }
        );
        assert_eq!(
            ok("JSON 'auto ignorecase'").format,
            RecordFormat::Json { ignore_case: true }
        );
        let o = ok("FORMAT AS JSON 'auto' GZIP TIMEFORMAT 'epochmillisecs' MAXERROR 10");
        assert_eq!(o.format, RecordFormat::Json { ignore_case: false });
        assert_eq!(
            (o.compression, o.time_format, o.max_error),
            (Compression::Gzip, TimeFormat::EpochMillis, 10)
        );
        let o = ok("CSV QUOTE AS '''' DELIMITER ';' IGNOREHEADER 1 EMPTYASNULL BLANKSASNULL TRUNCATECOLUMNS ZSTD");
        assert_eq!(
            o.format,
            RecordFormat::Csv {
                delimiter: ';',
                quote: '\''
            }
        );
        assert!(o.empty_as_null && o.blanks_as_null && o.truncate_columns);
        assert_eq!((o.ignore_header, o.compression), (1, Compression::Zstd));
        assert_eq!(
            ok("delimiter '|' gzip").format,
            RecordFormat::Text { delimiter: '|' }
        );
        assert_eq!(ok("").format, RecordFormat::Text { delimiter: '|' });
        assert_eq!(ok("json 'auto' acceptinvchars").accept_inv_chars, Some('?'));
        assert_eq!(
            ok("json 'auto' ACCEPTINVCHARS AS '^'").accept_inv_chars,
            Some('^')
        );
        assert_eq!(
            ok("json 'auto' timeformat 'YYYY-MM-DD HH:MI:SS' dateformat 'DD/MM/YYYY'")
                .date_format
                .as_deref(),
            Some("DD/MM/YYYY")
        );
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        for (text, says) in [
            ("JSON 'auto' MANIFEST", "MANIFEST is not supported"),
            ("json 's3://bucket/jsonpaths.json'", "JSONPaths"),
            ("BZIP2", "BZIP2 is not supported"),
            ("csv json 'auto'", "one of JSON and CSV"),
            ("GZIP ZSTD", "one of GZIP and ZSTD"),
            (
                "json 'auto' delimiter ','",
                "DELIMITER does not apply to JSON",
            ),
            ("quote '\"'", "QUOTE needs CSV"),
            ("csv delimiter '\"'", "must differ"),
            ("delimiter 'ab'", "one character"),
            ("MAXERROR 100001", "0 to 100000"),
            ("MAXERROR -1", "unexpected '-'"),
            ("IGNOREHEADER", "whole number"),
            ("timeformat 'YYYY-MM-DD Q'", "\"Q\" is not a pattern part"),
            ("json 'auto", "not closed"),
            ("'auto'", "follows no option"),
            ("GZIP GZIP", "GZIP is given twice"),
            ("json 'auto'; drop table x", "unexpected ';'"),
        ] {
            let err = CopyOptions::parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text:?}: {err:?} lacks {says:?}");
            assert!(err.starts_with("CopyOptions: "), "{err}");
        }
        let long = "GZIP ".repeat(1000);
        assert!(CopyOptions::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 4096"));
    }
}
