//! Glue/Hive column types (`bigint`, `decimal(10,2)`, `array<string>`,
//! `struct<id:bigint,name:string>`, `map<string,T>`, ...): the type, its
//! text, and a parser with bounded depth and size. Nothing here knows Arrow
//! or Parquet; `parquet` maps these types onto Arrow's.

use std::fmt;

/// A Glue/Hive column type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HiveType {
    Boolean,
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Float,
    Double,
    Decimal(u8, i8),
    String,
    Varchar(usize),
    Char(usize),
    Date,
    Timestamp,
    Binary,
    Array(Box<HiveType>),
    Struct(Vec<(String, HiveType)>),
    Map(Box<HiveType>),
}

impl fmt::Display for HiveType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HiveType::*;
        match self {
            Boolean => f.write_str("boolean"),
            TinyInt => f.write_str("tinyint"),
            SmallInt => f.write_str("smallint"),
            Int => f.write_str("int"),
            BigInt => f.write_str("bigint"),
            Float => f.write_str("float"),
            Double => f.write_str("double"),
            Decimal(p, s) => write!(f, "decimal({p},{s})"),
            String => f.write_str("string"),
            Varchar(n) => write!(f, "varchar({n})"),
            Char(n) => write!(f, "char({n})"),
            Date => f.write_str("date"),
            Timestamp => f.write_str("timestamp"),
            Binary => f.write_str("binary"),
            Array(t) => write!(f, "array<{t}>"),
            Map(t) => write!(f, "map<string,{t}>"),
            Struct(fields) => {
                f.write_str("struct<")?;
                for (i, (name, t)) in fields.iter().enumerate() {
                    let plain = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    let sep = if i == 0 { "" } else { "," };
                    if plain {
                        write!(f, "{sep}{name}:{t}")?;
                    } else {
                        write!(f, "{sep}`{}`:{t}", name.replace('`', "``"))?;
                    }
                }
                f.write_str(">")
            }
        }
    }
}

/// How deep types may nest (`array<array<...>>`, structs in structs), in
/// declared and in inferred schemas alike. Every function over a type
/// recurses once per level, so this bound is what keeps parsing, converting
/// and writing a record within a thread's stack. Glue tables rarely pass a
/// handful of levels.
pub const MAX_TYPE_DEPTH: usize = 32;

/// The longest type string taken, in bytes.
pub const MAX_TYPE_BYTES: usize = 64 << 10;

impl HiveType {
    pub(crate) fn parse(s: &str) -> Result<HiveType, String> {
        if s.len() > MAX_TYPE_BYTES {
            return Err(format!(
                "type is {} bytes long; at most {MAX_TYPE_BYTES} are allowed",
                s.len()
            ));
        }
        let mut p = TypeParser {
            s,
            pos: 0,
            depth: 0,
        };
        let t = p.parse_type()?;
        p.skip_ws();
        if p.pos != s.len() {
            return Err(format!("unexpected `{}` in type `{s}`", &s[p.pos..]));
        }
        Ok(t)
    }
}

/// Recursive descent over a Hive type string. Type names are case-insensitive
/// and may have spaces around punctuation; struct field names may be
/// backquoted (with `` for a backquote inside).
struct TypeParser<'a> {
    s: &'a str,
    pos: usize,
    /// How many `array<`, `map<` and `struct<` enclose the current position.
    depth: usize,
}

impl TypeParser<'_> {
    fn skip_ws(&mut self) {
        // Whitespace may be more than one byte (U+3000 is three).
        let rest = &self.s[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            let rest = &self.s[self.pos..];
            let found = if rest.is_empty() { "end" } else { rest };
            Err(format!("expected `{c}` at `{found}` in type `{}`", self.s))
        }
    }

    fn word(&mut self) -> String {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        self.pos += n;
        rest[..n].to_string()
    }

    fn number(&mut self) -> Result<usize, String> {
        let w = self.word();
        w.parse()
            .map_err(|_| format!("expected a number, got `{w}` in type `{}`", self.s))
    }

    fn field_name(&mut self) -> Result<String, String> {
        self.skip_ws();
        if !self.eat('`') {
            let w = self.word();
            return match w.is_empty() {
                true => Err(format!("expected a field name in type `{}`", self.s)),
                false => Ok(w),
            };
        }
        let mut name = String::new();
        loop {
            let rest = &self.s[self.pos..];
            let Some(i) = rest.find('`') else {
                return Err(format!("unterminated ` in type `{}`", self.s));
            };
            name.push_str(&rest[..i]);
            self.pos += i + 1;
            if self.s[self.pos..].starts_with('`') {
                name.push('`');
                self.pos += 1;
            } else {
                return Ok(name);
            }
        }
    }

    fn parse_type(&mut self) -> Result<HiveType, String> {
        let word = self.word().to_ascii_lowercase();
        if matches!(word.as_str(), "array" | "map" | "struct") {
            self.depth += 1;
            if self.depth > MAX_TYPE_DEPTH {
                return Err(format!(
                    "type is nested deeper than {MAX_TYPE_DEPTH} levels (array, map and struct)"
                ));
            }
        }
        let t = self.parse_word(&word);
        if matches!(word.as_str(), "array" | "map" | "struct") {
            self.depth -= 1;
        }
        t
    }

    fn parse_word(&mut self, word: &str) -> Result<HiveType, String> {
        use HiveType::*;
        Ok(match word {
            "boolean" => Boolean,
            "tinyint" => TinyInt,
            "smallint" => SmallInt,
            "int" | "integer" => Int,
            "bigint" => BigInt,
            "float" => Float,
            "double" => Double,
            "string" => String,
            "date" => Date,
            "timestamp" => Timestamp,
            "binary" => Binary,
            "decimal" => {
                // Hive's defaults: decimal = decimal(10,0), decimal(p) = decimal(p,0).
                let (mut p, mut s) = (10, 0);
                if self.eat('(') {
                    p = self.number()?;
                    s = if self.eat(',') { self.number()? } else { 0 };
                    self.expect(')')?;
                }
                if !(1..=38).contains(&p) || s > p {
                    return Err(format!(
                        "decimal({p},{s}): precision must be 1..=38 and scale at most the precision"
                    ));
                }
                Decimal(p as u8, s as i8)
            }
            "varchar" | "char" => {
                self.expect('(')?;
                let n = self.number()?;
                self.expect(')')?;
                if n == 0 {
                    return Err(format!("{word}(0): length must be at least 1"));
                }
                if word == "char" {
                    Char(n)
                } else {
                    Varchar(n)
                }
            }
            "array" => {
                self.expect('<')?;
                let t = self.parse_type()?;
                self.expect('>')?;
                Array(Box::new(t))
            }
            "map" => {
                self.expect('<')?;
                let k = self.parse_type()?;
                if k != String {
                    return Err(format!("map keys must be string, not {k}"));
                }
                self.expect(',')?;
                let v = self.parse_type()?;
                self.expect('>')?;
                Map(Box::new(v))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<(std::string::String, HiveType)> = Vec::new();
                loop {
                    let name = self.field_name()?;
                    self.expect(':')?;
                    let t = self.parse_type()?;
                    if fields.iter().any(|(n, _)| same_name(n, &name)) {
                        return Err(format!("struct field `{name}` appears twice"));
                    }
                    fields.push((name, t));
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect('>')?;
                Struct(fields)
            }
            "" => return Err(format!("expected a type in `{}`", self.s)),
            other => return Err(format!("unknown type `{other}`")),
        })
    }
}

/// Column and field names compare like the OpenX SerDe compares them with
/// JSON keys: ignoring case (Unicode lowercase, like Java's toLowerCase).
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type text, what it parses to, printed, or the error's text)
    const TYPES: &[(&str, Result<&str, &str>)] = &[
        ("int", Ok("int")),
        (
            " struct < a : int , `b c` : array<string> > ",
            Ok("struct<a:int,`b c`:array<string>>"),
        ),
        // Whitespace of more than one byte (found by fuzzing: it split a character).
        ("\u{3000}int\u{3000}", Ok("int")),
        ("\u{3000}", Err("expected a type")),
        ("decimal(99,99)", Err("precision must be 1..=38")),
        ("map<int,string>", Err("map keys must be string")),
        ("struct<a:int,A:int>", Err("appears twice")),
        ("array<int", Err("expected `>`")),
    ];

    #[test]
    fn type_table() {
        for (text, want) in TYPES {
            let got = HiveType::parse(text).map(|t| t.to_string());
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "{text:?}"),
                Err(w) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(w)),
                    "{text:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let nest = |n: usize| "array<".repeat(n) + "int" + &">".repeat(n);
        assert!(HiveType::parse(&nest(MAX_TYPE_DEPTH)).is_ok());
        for n in [MAX_TYPE_DEPTH + 1, 200, 5000] {
            let err = HiveType::parse(&nest(n)).unwrap_err();
            assert!(err.contains("nested deeper than 32"), "{n}: {err}");
        }
        let long = format!("struct<{}a:int>", "x:int,".repeat(MAX_TYPE_BYTES / 6));
        assert!(HiveType::parse(&long).unwrap_err().contains("bytes long"));
    }
}
