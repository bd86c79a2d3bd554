//! The messages of PostgreSQL's `pgoutput` plugin, protocol version 1
//! (PostgreSQL's "Logical Replication Message Formats"), decoded from one
//! XLogData payload each.
//!
//! The server is trusted to speak the protocol, not to be bounded: every
//! read is checked against the payload's length, and counts are bounded
//! by PostgreSQL's own limits before anything is allocated for them.

/// A table has at most this many columns (MaxTupleAttributeNumber).
const MAX_COLUMNS: usize = 1664;
/// A TRUNCATE names at most this many tables at once here (PostgreSQL has
/// no limit, but a statement naming more is no real workload).
const MAX_TRUNCATED: usize = 65_536;

#[derive(Debug, PartialEq)]
pub enum Message<'a> {
    /// `final_lsn` is where the transaction's commit record is.
    Begin {
        final_lsn: u64,
        commit_us: i64,
        xid: u32,
    },
    /// `end_lsn` is the end of the commit record: the position to resume
    /// streaming at to get the transactions after this one.
    Commit {
        end_lsn: u64,
        commit_us: i64,
    },
    Relation(Relation),
    Insert {
        rel: u32,
        new: Tuple<'a>,
    },
    Update {
        rel: u32,
        old: Old<'a>,
        new: Tuple<'a>,
    },
    Delete {
        rel: u32,
        old: Old<'a>,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// Origin, Type, logical messages: nothing hydrant acts on.
    Other(u8),
}

/// The old row of an update or a delete, as much of it as the table's
/// REPLICA IDENTITY has the server log.
#[derive(Debug, PartialEq)]
pub enum Old<'a> {
    /// Nothing: an update that left the key alone, under DEFAULT identity.
    Missing,
    /// `K`: the key columns, every other column null.
    Key(Tuple<'a>),
    /// `O`: the whole row (REPLICA IDENTITY FULL).
    Row(Tuple<'a>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `f` for REPLICA IDENTITY FULL.
    pub replica_identity: u8,
    pub columns: Vec<RelColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelColumn {
    pub name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Datum<'a> {
    Null,
    /// A TOASTed value the update did not change (sent without it).
    Unchanged,
    Text(&'a str),
}

pub type Tuple<'a> = Vec<Datum<'a>>;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("the message ends at byte {} of {}", self.at, self.b.len()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let rest = &self.b[self.at..];
        let n = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or("a name without its terminating zero byte")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a name that is not UTF-8")?;
        self.at += n + 1;
        Ok(s.to_owned())
    }
    fn count(&mut self, max: usize, what: &str) -> Result<usize, String> {
        let n = self.i16()?;
        if n < 0 || n as usize > max {
            return Err(format!("{n} {what}; at most {max}"));
        }
        Ok(n as usize)
    }
    fn tuple(&mut self) -> Result<Tuple<'a>, String> {
        let n = self.count(MAX_COLUMNS, "columns in a row")?;
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            t.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Datum::Text(
                        std::str::from_utf8(bytes).map_err(|_| "a value that is not UTF-8")?,
                    )
                }
                k => return Err(format!("a value of kind {:?}", k as char)),
            });
        }
        Ok(t)
    }
    fn tag(&mut self, want: &[u8]) -> Result<u8, String> {
        let k = self.u8()?;
        if want.contains(&k) {
            Ok(k)
        } else {
            Err(format!("{:?} where a row was expected", k as char))
        }
    }
}

/// Decodes one pgoutput message.
pub fn parse(b: &[u8]) -> Result<Message<'_>, String> {
    let mut r = Reader { b, at: 0 };
    let kind = r.u8()?;
    let m = match kind {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_us: r.u64()? as i64,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            Message::Commit {
                end_lsn: r.u64()?,
                commit_us: r.u64()? as i64,
            }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.count(MAX_COLUMNS, "columns in a table")?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let _key = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push(RelColumn { name, type_oid });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let rel = r.u32()?;
            r.tag(b"N")?;
            Message::Insert {
                rel,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let (old, new) = match r.tag(b"KON")? {
                b'N' => (Old::Missing, r.tuple()?),
                tag => {
                    let old = r.tuple()?;
                    r.tag(b"N")?;
                    let old = if tag == b'O' {
                        Old::Row(old)
                    } else {
                        Old::Key(old)
                    };
                    (old, r.tuple()?)
                }
            };
            Message::Update { rel, old, new }
        }
        b'D' => {
            let rel = r.u32()?;
            let tag = r.tag(b"KO")?;
            let old = r.tuple()?;
            Message::Delete {
                rel,
                old: if tag == b'O' {
                    Old::Row(old)
                } else {
                    Old::Key(old)
                },
            }
        }
        b'T' => {
            let n = r.u32()? as usize;
            if n > MAX_TRUNCATED {
                return Err(format!("a TRUNCATE of {n} tables; at most {MAX_TRUNCATED}"));
            }
            let _options = r.u8()?;
            let rels = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { rels }
        }
        k => Message::Other(k),
    };
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.push(b'n'),
                Some(s) => {
                    b.push(b't');
                    b.extend((s.len() as u32).to_be_bytes());
                    b.extend(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn messages_decode_as_the_protocol_lays_them_out() {
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"public\0orders\0f");
        rel.extend(2i16.to_be_bytes());
        rel.extend(b"\x01id\0");
        rel.extend(23u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.extend(b"\x00note\0");
        rel.extend(25u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = parse(&rel).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.oid, r.schema.as_str(), r.name.as_str()),
            (16384, "public", "orders")
        );
        assert_eq!(r.columns[1].name, "note");

        let mut up = vec![b'U'];
        up.extend(16384u32.to_be_bytes());
        up.push(b'O');
        up.extend(tuple(&[Some("1"), None]));
        up.push(b'N');
        up.extend(tuple(&[Some("2"), Some("é")]));
        assert_eq!(
            parse(&up).unwrap(),
            Message::Update {
                rel: 16384,
                old: Old::Row(vec![Datum::Text("1"), Datum::Null]),
                new: vec![Datum::Text("2"), Datum::Text("é")],
            }
        );
    }

    #[test]
    fn short_or_oversized_messages_are_errors_not_panics() {
        let mut up = vec![b'I'];
        up.extend(1u32.to_be_bytes());
        up.push(b'N');
        up.extend(1i16.to_be_bytes());
        up.push(b't');
        up.extend(u32::MAX.to_be_bytes());
        assert!(parse(&up).is_err());
        let mut wide = vec![b'I', 0, 0, 0, 1, b'N'];
        wide.extend(i16::MAX.to_be_bytes());
        assert!(parse(&wide).unwrap_err().contains("at most"));
        for n in 0..20 {
            let _ = parse(&up[..n.min(up.len())]);
        }
        let mut t = vec![b'T'];
        t.extend(u32::MAX.to_be_bytes());
        assert!(parse(&t).is_err());
    }
}
