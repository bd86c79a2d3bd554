//! `ClusterJDBCURL`: where the warehouse is.
//!
//! `jdbc:redshift://host[:port]/database[?params]` (default port 5439) and
//! `jdbc:postgresql://host[:port]/database[?params]` (default port 5432).
//! The host is a name or an IPv4 address, or an IPv6 address in brackets.
//! Parameters are honoured or refused by name: `sslmode=disable` (the only
//! mode hydrant speaks: connections to the warehouse are not encrypted, so
//! run it on the same host or a private network), `connectTimeout` (seconds)
//! and `ApplicationName`.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub connect_timeout: Duration,
    pub application_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterJDBCURL: {}", self.0)
    }
}

/// Longest URL taken.
pub const MAX_URL_BYTES: usize = 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Target {
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let bad = |m: String| Err(UrlError(m));
        if url.len() > MAX_URL_BYTES {
            return bad(format!("is {} bytes; at most {MAX_URL_BYTES}", url.len()));
        }
        let (rest, default_port) = if let Some(r) = url.strip_prefix("jdbc:redshift://") {
            (r, 5439)
        } else if let Some(r) = url.strip_prefix("jdbc:postgresql://") {
            (r, 5432)
        } else {
            return bad(format!(
                "{url:?} is not jdbc:redshift://host:port/database or jdbc:postgresql://host:port/database"
            ));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let Some((authority, database)) = rest.split_once('/') else {
            return bad(format!("{url:?} names no database (…/database)"));
        };
        if database.is_empty()
            || database.len() > 63
            || !database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
        {
            return bad(format!(
                "database {database:?} must be 1 to 63 letters, digits, '_', '-' or '$'"
            ));
        }
        if authority.contains('@') {
            return bad("user and password go in Username and Password, not the URL".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return bad(format!(
                    "{authority:?}: the IPv6 address is not closed with ']'"
                ));
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return bad(format!("{h:?} is not an IPv6 address"));
            }
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && (host.contains(':')
                || host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                }));
        if !valid_host {
            return bad(format!("{host:?} is not a host name or address"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return bad(format!("port {p:?} is not 1 to 65535")),
            },
        };
        let mut target = Target {
            host,
            port,
            database: database.to_string(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            application_name: "hydrant".into(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" if v == "disable" => {}
                "sslmode" => {
                    return bad(format!(
                        "sslmode={v} is not supported: hydrant connects to the warehouse without TLS \
                         (sslmode=disable); keep it on the same host or a private network"
                    ))
                }
                "connectTimeout" => match v.parse::<u64>() {
                    Ok(s) if (1..=300).contains(&s) => target.connect_timeout = Duration::from_secs(s),
                    _ => return bad(format!("connectTimeout={v} is not 1 to 300 seconds")),
                },
                "ApplicationName" => {
                    if v.is_empty() || v.len() > 63 || !v.chars().all(|c| c.is_ascii_graphic()) {
                        return bad(format!("ApplicationName={v:?} must be 1 to 63 printable characters"));
                    }
                    target.application_name = v.to_string();
                }
                _ => {
                    return bad(format!(
                        "parameter {k:?} is not supported (supported: sslmode=disable, connectTimeout, ApplicationName)"
                    ))
                }
            }
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redshift_and_postgresql_urls() {
        let t = Target::parse(
            "jdbc:redshift://examplecluster.abc123.us-east-1.redshift.amazonaws.com:5439/dev",
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.database.as_str()),
            (
                "examplecluster.abc123.us-east-1.redshift.amazonaws.com",
                5439,
                "dev"
            )
        );
        let t = Target::parse("jdbc:postgresql://127.0.0.1/test?sslmode=disable&connectTimeout=3&ApplicationName=loader").unwrap();
        assert_eq!(
            (t.port, t.connect_timeout, t.application_name.as_str()),
            (5432, Duration::from_secs(3), "loader")
        );
        assert_eq!(Target::parse("jdbc:redshift://h/db").unwrap().port, 5439);
        assert_eq!(
            Target::parse("jdbc:postgresql://[::1]:6543/db")
                .unwrap()
                .host,
            "::1"
        );
    }

    #[test]
    fn malformed_urls_and_parameters_are_refused_by_name() {
        for (url, says) in [
            ("postgresql://h/db", "is not jdbc:redshift"),
            ("jdbc:mysql://h/db", "is not jdbc:redshift"),
            ("jdbc:redshift://h:5439", "names no database"),
            ("jdbc:redshift://h:5439/", "database \"\""),
            ("jdbc:redshift://h:0/db", "port \"0\""),
            ("jdbc:redshift://h:99999/db", "port \"99999\""),
            ("jdbc:redshift://user:pw@h/db", "Username and Password"),
            ("jdbc:redshift://h_x!/db", "not a host name"),
            ("jdbc:redshift:///db", "not a host name"),
            ("jdbc:redshift://[::1/db", "not closed"),
            ("jdbc:redshift://h/db;drop", "database \"db;drop\""),
            (
                "jdbc:redshift://h/db?sslmode=require",
                "sslmode=require is not supported",
            ),
            (
                "jdbc:redshift://h/db?ssl=true",
                "parameter \"ssl\" is not supported",
            ),
            ("jdbc:redshift://h/db?connectTimeout=0", "connectTimeout=0"),
        ] {
            let err = Target::parse(url).expect_err(url).to_string();
            assert!(err.contains(says), "{url}: {err:?} lacks {says:?}");
            assert!(err.starts_with("ClusterJDBCURL: "), "{err}");
        }
        let long = format!("jdbc:redshift://h/{}", "d".repeat(2000));
        assert!(Target::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 1024"));
    }
}
