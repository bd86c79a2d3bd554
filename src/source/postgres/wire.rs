//! A replication connection to PostgreSQL: the frontend/backend protocol
//! just far enough to sign in (trust, password, MD5, SCRAM-SHA-256), start
//! logical replication from a slot, read its XLogData and keepalives, and
//! confirm what is durable.
//!
//! tokio-postgres (which hydrant uses for every other connection) has no
//! replication mode, so this is hydrant's own; the message encoding and
//! SCRAM come from `postgres-protocol`, the crate tokio-postgres is built
//! on. Reads go into one buffer and a message is taken from it only when
//! whole, so [`Replication::next`] can be cancelled (a `select!` on a
//! timer) without losing anything.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// PostgreSQL sends no message over 1 GiB (its MaxAllocSize); a larger
/// length is a broken stream, refused before anything is allocated.
const MAX_MESSAGE: usize = 1 << 30;
const READ_SIZE: usize = 256 << 10;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
pub const PG_EPOCH_US: i64 = 946_684_800_000_000;

#[derive(Debug)]
pub enum WireError {
    /// The connection failed or the server spoke something else.
    Io(String),
    /// The server said no: its SQLSTATE and message.
    Server { code: String, message: String },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(m) => f.write_str(m),
            WireError::Server { code, message } => write!(f, "{message} (SQLSTATE {code})"),
        }
    }
}

fn io(e: std::io::Error) -> WireError {
    WireError::Io(e.to_string())
}

/// Who signs in where, with which session settings.
pub struct Login<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub database: &'a str,
    pub settings: &'a [(&'a str, &'a str)],
    pub timeout: Duration,
}

struct Conn {
    sock: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

impl Conn {
    /// The next whole message: its tag and body.
    async fn message(&mut self) -> Result<(u8, Bytes), WireError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(WireError::Io(format!(
                        "the server sent a message of {len} bytes; this is not PostgreSQL's protocol"
                    )));
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).freeze();
                    return Ok((tag, body));
                }
                self.buf.reserve(len + 1 - self.buf.len());
            }
            // Read in large pieces: BytesMut left without spare room would
            // take 64 bytes a read.
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                self.buf.reserve(READ_SIZE);
            }
            if self.sock.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                return Err(WireError::Io("the server closed the connection".into()));
            }
        }
    }

    async fn send(&mut self) -> Result<(), WireError> {
        let out = self.out.split();
        self.sock.write_all(&out).await.map_err(io)
    }
}

/// An ErrorResponse's SQLSTATE and message.
fn server_error(body: &[u8]) -> WireError {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|&b| b == 0) {
        if let Some((&t, v)) = field.split_first() {
            let v = String::from_utf8_lossy(v).into_owned();
            match t {
                b'C' => code = v,
                b'M' => message = v,
                _ => {}
            }
        }
    }
    WireError::Server { code, message }
}

fn encode(r: std::io::Result<()>) -> Result<(), WireError> {
    r.map_err(io)
}

/// Signs in with `replication=database`, ready for replication commands.
async fn login(l: &Login<'_>) -> Result<Conn, WireError> {
    let addr = format!("{}:{}", l.host, l.port);
    let sock = tokio::time::timeout(l.timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| WireError::Io(format!("no answer in {} s", l.timeout.as_secs())))?
        .map_err(io)?;
    sock.set_nodelay(true).map_err(io)?;
    let mut c = Conn {
        sock,
        buf: BytesMut::with_capacity(READ_SIZE),
        out: BytesMut::new(),
    };
    let mut params = vec![
        ("user", l.user),
        ("database", l.database),
        ("replication", "database"),
        ("application_name", "hydrant"),
    ];
    params.extend(l.settings.iter().copied());
    encode(frontend::startup_message(params, &mut c.out))?;
    c.send().await?;
    let mut scram: Option<ScramSha256> = None;
    tokio::time::timeout(l.timeout, async {
        loop {
            let (tag, mut body) = c.message().await?;
            match tag {
                b'R' => {
                    let code = body.get_i32();
                    match code {
                        0 => {}
                        3 => {
                            encode(frontend::password_message(l.password.as_bytes(), &mut c.out))?;
                            c.send().await?;
                        }
                        5 if body.len() >= 4 => {
                            let salt = [body[0], body[1], body[2], body[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                l.user.as_bytes(),
                                l.password.as_bytes(),
                                salt,
                            );
                            encode(frontend::password_message(hash.as_bytes(), &mut c.out))?;
                            c.send().await?;
                        }
                        10 => {
                            let offered = body
                                .split(|&b| b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(WireError::Io(
                                    "the server offers no SASL mechanism hydrant speaks (SCRAM-SHA-256)"
                                        .into(),
                                ));
                            }
                            let s = ScramSha256::new(
                                l.password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            encode(frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                s.message(),
                                &mut c.out,
                            ))?;
                            c.send().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| WireError::Io("SASL out of order".into()))?;
                            s.update(&body).map_err(io)?;
                            encode(frontend::sasl_response(s.message(), &mut c.out))?;
                            c.send().await?;
                        }
                        12 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| WireError::Io("SASL out of order".into()))?;
                            s.finish(&body).map_err(io)?;
                        }
                        other => {
                            return Err(WireError::Io(format!(
                                "the server asks for authentication method {other}, which hydrant does not speak \
                                 (it speaks trust, password, md5 and scram-sha-256)"
                            )))
                        }
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| WireError::Io(format!("signing in took over {} s", l.timeout.as_secs())))??;
    Ok(c)
}

/// Signs in as a replication connection would, and leaves: whether the
/// server (pg_hba.conf, the REPLICATION attribute) lets hydrant stream.
pub async fn probe(l: &Login<'_>) -> Result<(), WireError> {
    let mut c = login(l).await?;
    frontend::terminate(&mut c.out);
    c.send().await
}

/// What the replication stream brings.
pub enum Event {
    /// WAL data: one pgoutput message.
    Data(Bytes),
    /// The server's position; `reply`: it wants a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

/// A started logical replication stream.
pub struct Replication {
    conn: Conn,
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Quoted for a replication command's option list: `'…'` with `'` doubled.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Replication {
    /// Signs in and streams `slot` from `lsn`, pgoutput over `publication`.
    pub async fn start(
        login_as: &Login<'_>,
        slot: &str,
        publication: &str,
        lsn: u64,
    ) -> Result<Replication, WireError> {
        let mut conn = login(login_as).await?;
        // Slot and publication names are hydrant's own ([a-z0-9_]); the
        // publication is quoted as an identifier inside the literal.
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {} (proto_version '1', publication_names {})",
            lsn_text(lsn),
            literal(&format!("\"{publication}\""))
        );
        encode(frontend::query(&sql, &mut conn.out))?;
        conn.send().await?;
        loop {
            let (tag, body) = conn.message().await?;
            match tag {
                b'W' => return Ok(Replication { conn }),
                b'E' => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// The next event. Cancel-safe.
    pub async fn next(&mut self) -> Result<Event, WireError> {
        loop {
            let (tag, mut body) = self.conn.message().await?;
            match tag {
                b'd' if !body.is_empty() => match body.get_u8() {
                    b'w' if body.len() >= 24 => {
                        body.advance(24);
                        return Ok(Event::Data(body));
                    }
                    b'k' if body.len() >= 17 => {
                        let wal_end = body.get_u64();
                        let _time = body.get_i64();
                        return Ok(Event::Keepalive {
                            wal_end,
                            reply: body.get_u8() == 1,
                        });
                    }
                    k => {
                        return Err(WireError::Io(format!(
                            "a replication message of kind {:?}",
                            k as char
                        )))
                    }
                },
                b'E' => return Err(server_error(&body)),
                b'c' => {
                    return Err(WireError::Io(
                        "the server ended the replication stream".into(),
                    ))
                }
                _ => {}
            }
        }
    }

    /// Tells the server everything up to `lsn` is durable here, so the slot
    /// may release the WAL before it.
    pub async fn confirm(&mut self, lsn: u64) -> Result<(), WireError> {
        let now_us = chrono::Utc::now().timestamp_micros() - PG_EPOCH_US;
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(lsn); // written
        payload.put_u64(lsn); // flushed
        payload.put_u64(lsn); // applied
        payload.put_i64(now_us);
        payload.put_u8(0);
        let out = &mut self.conn.out;
        out.put_u8(b'd');
        out.put_u32(4 + payload.len() as u32);
        out.put_slice(&payload);
        self.conn.send().await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lsns_print_as_postgresql_writes_them() {
        assert_eq!(super::lsn_text(0x1_6B37_4D48), "1/6B374D48");
        assert_eq!(super::lsn_text(0), "0/0");
    }
}
