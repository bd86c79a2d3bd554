//! MariaDB's global transaction ids: a binlog position that means the same
//! thing on every server of a replication topology. A stream that records
//! one resumes where it was after its source fails over to a replica, whose
//! binlog has other file names and offsets.
//!
//! A GTID is `domain-server-seq`. A position is the last GTID of each
//! replication domain, comma-separated (`0-1-100,1-2-7`), as the server's
//! `@@gtid_binlog_pos` and a replica's `@slave_connect_state` spell it.

use std::collections::BTreeMap;
use std::fmt;

/// The event a MariaDB server writes at the start of every event group.
pub const GTID_EVENT: u8 = 162;

/// Past this many domains a position is refused (servers use a handful).
const MAX_DOMAINS: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl Gtid {
    /// The GTID a GTID event carries: its body starts with the sequence
    /// number (8 bytes) and the domain (4), little-endian; the server is
    /// the event header's.
    pub fn from_event(server: u32, body: &[u8]) -> Option<Gtid> {
        let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
        let domain = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
        Some(Gtid {
            domain,
            server,
            seq,
        })
    }

    fn parse(s: &str) -> Option<Gtid> {
        let mut parts = s.split('-');
        let mut number = || {
            let p = parts.next()?;
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).then_some(p)
        };
        let domain = number()?.parse().ok()?;
        let server = number()?.parse().ok()?;
        let seq = number()?.parse().ok()?;
        parts.next().is_none().then_some(Gtid {
            domain,
            server,
            seq,
        })
    }
}

/// The last GTID of each domain: where a reader of the binlog is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, (u32, u64)>);

impl GtidPos {
    pub fn parse(s: &str) -> Result<GtidPos, String> {
        let mut pos = GtidPos::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g = Gtid::parse(part).ok_or_else(|| {
                format!(
                    "{:?} is not a GTID position (domain-server-sequence, comma-separated)",
                    s.chars().take(200).collect::<String>()
                )
            })?;
            if pos.0.insert(g.domain, (g.server, g.seq)).is_some() {
                return Err(format!(
                    "the GTID position {s:?} names domain {} twice",
                    g.domain
                ));
            }
            if pos.0.len() > MAX_DOMAINS {
                return Err(format!(
                    "a GTID position of more than {MAX_DOMAINS} domains"
                ));
            }
        }
        Ok(pos)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The position after the event group `g`.
    pub fn advance(&mut self, g: Gtid) {
        self.0.insert(g.domain, (g.server, g.seq));
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, (domain, (server, seq))) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{domain}-{server}-{seq}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_as_written_and_advance_per_domain() {
        let mut p = GtidPos::parse("1-2-7, 0-1-100").unwrap();
        assert_eq!(p.to_string(), "0-1-100,1-2-7");
        p.advance(Gtid {
            domain: 0,
            server: 3,
            seq: 101,
        });
        p.advance(Gtid {
            domain: 5,
            server: 1,
            seq: 1,
        });
        assert_eq!(p.to_string(), "0-3-101,1-2-7,5-1-1");
        assert_eq!(GtidPos::parse(&p.to_string()).unwrap(), p);
        assert!(GtidPos::parse("").unwrap().is_empty());
    }

    #[test]
    fn what_is_not_a_position_is_refused() {
        for bad in [
            "0-1",
            "0-1-2-3",
            "a-1-2",
            "0--2",
            "-0-1-2",
            "0-1-+2",
            "0-1-99999999999999999999",
            "4294967296-1-1",
            "0-1-2,0-1-3",
        ] {
            assert!(GtidPos::parse(bad).is_err(), "{bad} was accepted");
        }
        let many: Vec<String> = (0..=MAX_DOMAINS).map(|d| format!("{d}-1-1")).collect();
        assert!(GtidPos::parse(&many.join(",")).is_err());
    }

    #[test]
    fn an_event_body_gives_its_gtid_and_a_short_one_none() {
        let mut body = 42u64.to_le_bytes().to_vec();
        body.extend(7u32.to_le_bytes());
        body.push(0);
        let g = Gtid::from_event(9, &body).unwrap();
        assert_eq!(g.to_string(), "7-9-42");
        assert_eq!(Gtid::from_event(9, &body[..11]), None);
    }
}
