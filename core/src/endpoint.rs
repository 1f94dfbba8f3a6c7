//! Endpoints: the one line of configuration that picks a transport.
//!
//! An endpoint is written `SCHEME://ADDRESS[?KEY=VALUE[&KEY=VALUE...]]`:
//!
//! | scheme | address | example |
//! |---|---|---|
//! | `tcp` | `host:port` | `tcp://10.0.0.5:7000` |
//! | `udp` | `host:port` | `udp://127.0.0.1:7001` |
//! | `unix` | an absolute path, or `./`-relative | `unix:///run/orders.sock` |
//! | `shm` | a name | `shm://orders?capacity=1MiB` |
//! | `pipe` | a name, or `server/name` (Windows) | `pipe://orders` |
//! | `mailslot` | a name, or `*/name` (Windows domain broadcast) | `mailslot://events` |
//! | `copydata` | a name (Windows) | `copydata://ui` |
//!
//! Options every transport understands:
//!
//! - `max_frame`: the largest message payload, in bytes or with a `KiB`/`MiB`/`GiB` suffix
//!   (default 16 MiB).
//! - `connect_timeout`: how long `connect` may take in all, from the first system call to a
//!   usable connection, before it fails with [`ErrorKind::Timeout`] naming the endpoint and the
//!   deadline: a duration such as `500ms`, `10s` or a bare number of milliseconds (default
//!   [`DEFAULT_CONNECT_TIMEOUT`], 10 s; at most one day). The older spelling
//!   `connect_timeout_ms` (milliseconds) still works on the transports that had it (`udp`,
//!   `pipe`); giving both is an error.
//!
//! Each transport documents its own further options and rejects options it does not know, so a
//! typo is an error, not a silent default.

use crate::error::{Error, ErrorKind, Result};
use ductwork_codec::{DEFAULT_MAX_FRAME, MAX_CONFIGURABLE_FRAME};
use std::{fmt, str::FromStr, time::Duration};

/// The option every transport accepts: the largest message payload.
pub const OPT_MAX_FRAME: &str = "max_frame";

/// The option every transport accepts: the deadline of `connect`.
pub const OPT_CONNECT_TIMEOUT: &str = "connect_timeout";

/// The older, milliseconds-only spelling of [`OPT_CONNECT_TIMEOUT`], kept for the transports
/// that accepted it (they list it among their own options).
pub const OPT_CONNECT_TIMEOUT_MS: &str = "connect_timeout_ms";

/// How long `connect` waits for a listener that does not answer, unless `connect_timeout`
/// says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `connect_timeout` accepted: one day (a typo in the unit should not mean
/// "forever").
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The options every transport accepts.
const UNIVERSAL: &[&str] = &[OPT_MAX_FRAME, OPT_CONNECT_TIMEOUT];

/// A parsed endpoint: scheme, address and options.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    scheme: String,
    address: String,
    options: Vec<(String, String)>,
}

impl Endpoint {
    /// Parses an endpoint string. See the [module docs](self) for the syntax.
    pub fn parse(s: &str) -> Result<Endpoint> {
        let bad = |why: &str| Error::new(ErrorKind::InvalidEndpoint, s, why.to_string());
        let s_trim = s.trim();
        let (scheme, rest) = s_trim
            .split_once("://")
            .ok_or_else(|| bad("expected SCHEME://ADDRESS, e.g. tcp://127.0.0.1:7000"))?;
        let scheme = scheme.to_ascii_lowercase();
        // Only the syntax (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`): which
        // schemes exist is the transports' table, checked when a transport is looked up.
        let mut chars = scheme.chars();
        let syntax_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !syntax_ok {
            return Err(bad(&format!(
                "`{scheme}` is not a scheme (a letter, then letters, digits, `+`, `-` or `.`)"
            )));
        }
        // Whitespace around the address, a key or a value is dropped, as around the whole
        // string, so that an endpoint prints as text that parses back to it.
        let (address, query) = match rest.split_once('?') {
            Some((a, q)) => (a.trim(), Some(q)),
            None => (rest, None),
        };
        if address.is_empty() {
            return Err(bad("the address is empty"));
        }
        if address.chars().any(|c| c.is_control()) {
            return Err(bad("the address contains control characters"));
        }
        let mut options: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.trim().is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("option `{pair}` is not KEY=VALUE")))?;
                let (k, v) = (k.trim(), v.trim());
                if k.is_empty() {
                    return Err(bad(&format!("option `{pair}` has an empty key")));
                }
                if options.iter().any(|(ek, _)| ek == k) {
                    return Err(bad(&format!("option `{k}` is given twice")));
                }
                options.push((k.to_string(), v.to_string()));
            }
        }
        let ep = Endpoint {
            scheme,
            address: address.to_string(),
            options,
        };
        // Their errors name the endpoint as written, as every error above does (the parsed
        // one has whitespace dropped, so it may read differently).
        let as_written = |e: Error| Error::new(e.kind(), s, e.detail().to_string());
        ep.max_frame().map_err(as_written)?;
        ep.connect_timeout().map_err(as_written)?;
        Ok(ep)
    }

    /// The scheme, lower-case (`tcp`, `shm`, ...).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The address part: everything between `://` and `?`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The address as host and port, for schemes whose address is `HOST:PORT` (`tcp`, `udp`).
    /// An IPv6 host is written in brackets (`[::1]:7000`) and returned without them. A
    /// missing port or host, or a port that is not a number from 0 to 65535, is an
    /// [`ErrorKind::InvalidEndpoint`] error that says how to write it.
    pub fn host_port(&self) -> Result<(&str, u16)> {
        let scheme = &self.scheme;
        let bad = |why: String| Err(Error::new(ErrorKind::InvalidEndpoint, self, why));
        let a = self.address.as_str();
        let (host, port) = if let Some(rest) = a.strip_prefix('[') {
            match rest.split_once(']') {
                Some((h, "")) => (h, ""),
                Some((h, tail)) if tail.starts_with(':') => (h, &tail[1..]),
                _ => return bad(format!("write an IPv6 address as {scheme}://[::1]:7000")),
            }
        } else {
            match a.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return bad(format!(
                        "an IPv6 address goes in brackets: {scheme}://[{h}]:PORT"
                    ))
                }
                Some((h, p)) => (h, p),
                None => (a, ""),
            }
        };
        if port.is_empty() {
            return bad(format!(
                "missing port: write {scheme}://HOST:PORT, e.g. {scheme}://127.0.0.1:7000 \
                 (port 0 lets the system pick a free port when binding)"
            ));
        }
        if host.is_empty() {
            return bad(format!(
                "missing host: write {scheme}://HOST:PORT, e.g. {scheme}://127.0.0.1:{port} \
                 (this machine only) or {scheme}://0.0.0.0:{port} (every interface)"
            ));
        }
        match port.parse::<u16>() {
            Ok(p) => Ok((host, p)),
            Err(_) => bad(format!("the port `{port}` is not a number from 0 to 65535")),
        }
    }

    /// All options in the order given.
    pub fn options(&self) -> impl Iterator<Item = (&str, &str)> {
        self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The raw value of option `key`, if given.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Option `key` parsed with [`FromStr`]; an unparsable value is an
    /// [`ErrorKind::InvalidEndpoint`] error naming the option.
    pub fn parse_option<T: FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: fmt::Display,
    {
        match self.option(key) {
            None => Ok(None),
            Some(v) => v.parse::<T>().map(Some).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidEndpoint,
                    self,
                    format!("option `{key}={v}`: {e}"),
                )
            }),
        }
    }

    /// Option `key` as a byte size (`4096`, `64KiB`, `1MiB`, `2GiB`).
    pub fn size_option(&self, key: &str) -> Result<Option<usize>> {
        match self.option(key) {
            None => Ok(None),
            Some(v) => parse_size(v).map(Some).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidEndpoint,
                    self,
                    format!("option `{key}={v}`: {e}"),
                )
            }),
        }
    }

    /// The maximum message payload for this endpoint: the `max_frame` option, or
    /// [`DEFAULT_MAX_FRAME`] (16 MiB).
    pub fn max_frame(&self) -> Result<usize> {
        let max = self
            .size_option(OPT_MAX_FRAME)?
            .unwrap_or(DEFAULT_MAX_FRAME);
        if max > MAX_CONFIGURABLE_FRAME {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                self,
                format!("max_frame {max} is over the limit of {MAX_CONFIGURABLE_FRAME} bytes"),
            ));
        }
        Ok(max)
    }

    /// The deadline of `connect` on this endpoint: the `connect_timeout` option (`500ms`,
    /// `10s`, or bare milliseconds), else `connect_timeout_ms` (milliseconds, on the
    /// transports that accept it), else [`DEFAULT_CONNECT_TIMEOUT`]. Zero, more than
    /// [`MAX_CONNECT_TIMEOUT`], an unparsable value or both options at once are
    /// [`ErrorKind::InvalidEndpoint`].
    pub fn connect_timeout(&self) -> Result<Duration> {
        let bad = |why: String| Error::new(ErrorKind::InvalidEndpoint, self, why);
        let (key, value) = match (
            self.option(OPT_CONNECT_TIMEOUT),
            self.option(OPT_CONNECT_TIMEOUT_MS),
        ) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "give `{OPT_CONNECT_TIMEOUT}` or `{OPT_CONNECT_TIMEOUT_MS}`, not both"
                )))
            }
            (Some(v), None) => (OPT_CONNECT_TIMEOUT, parse_duration(v)),
            (None, Some(v)) => (
                OPT_CONNECT_TIMEOUT_MS,
                v.trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| format!("`{v}` is not a number of milliseconds")),
            ),
            (None, None) => return Ok(DEFAULT_CONNECT_TIMEOUT),
        };
        match value {
            Ok(d) if d.is_zero() => Err(bad(format!("option `{key}` must be more than 0"))),
            Ok(d) if d > MAX_CONNECT_TIMEOUT => Err(bad(format!("option `{key}` is over one day"))),
            Ok(d) => Ok(d),
            Err(why) => Err(bad(format!("option `{key}`: {why}"))),
        }
    }

    /// Fails with [`ErrorKind::InvalidEndpoint`] if an option is not one every transport
    /// accepts (`max_frame`, `connect_timeout`) or one of `allowed`. Transports call this so
    /// that typos are caught.
    pub fn check_options(&self, allowed: &[&str]) -> Result<()> {
        for (k, _) in &self.options {
            if !UNIVERSAL.contains(&k.as_str()) && !allowed.contains(&k.as_str()) {
                let mut known = UNIVERSAL.to_vec();
                known.extend_from_slice(allowed);
                return Err(Error::new(
                    ErrorKind::InvalidEndpoint,
                    self,
                    format!(
                        "unknown option `{k}` for {}:// (known: {})",
                        self.scheme,
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The same endpoint with another address (options kept), e.g. after binding port 0.
    pub fn with_address(&self, address: impl Into<String>) -> Endpoint {
        Endpoint {
            scheme: self.scheme.clone(),
            address: address.into(),
            options: self.options.clone(),
        }
    }

    /// The same endpoint with option `key` set to `value` (replacing any earlier value).
    pub fn with_option(&self, key: &str, value: impl Into<String>) -> Endpoint {
        let mut ep = self.clone();
        let value = value.into();
        match ep.options.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => ep.options.push((key.to_string(), value)),
        }
        ep
    }
}

/// Parses a byte size: a number with an optional `B`, `KiB`, `MiB`, `GiB` (or `K`, `M`, `G`,
/// `KB`, `MB`, `GB`, all powers of 1024) suffix.
pub fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64KiB, 1MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("unknown size unit `{u}` (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a duration for `connect_timeout`: a number with a unit `ms`, `s` or `m`, or a
/// bare number of milliseconds (`500ms`, `10s`, `2m`, `2500`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 10s, 2500)"))?;
    let ms: u64 = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        u => return Err(format!("unknown duration unit `{u}` (use ms, s or m)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too large"))
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.address)?;
        for (i, (k, v)) in self.options.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Endpoint> {
        Endpoint::parse(s)
    }
}

impl TryFrom<&str> for Endpoint {
    type Error = Error;
    fn try_from(s: &str) -> Result<Endpoint> {
        Endpoint::parse(s)
    }
}

impl TryFrom<String> for Endpoint {
    type Error = Error;
    fn try_from(s: String) -> Result<Endpoint> {
        Endpoint::parse(&s)
    }
}

impl TryFrom<&String> for Endpoint {
    type Error = Error;
    fn try_from(s: &String) -> Result<Endpoint> {
        Endpoint::parse(s)
    }
}

impl TryFrom<&Endpoint> for Endpoint {
    type Error = Error;
    fn try_from(e: &Endpoint) -> Result<Endpoint> {
        Ok(e.clone())
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Endpoint, D::Error> {
        let s = String::deserialize(d)?;
        Endpoint::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_schemes() {
        let cases = [
            ("tcp://10.0.0.5:7000", "tcp", "10.0.0.5:7000"),
            ("udp://[::1]:9", "udp", "[::1]:9"),
            ("unix:///run/a.sock", "unix", "/run/a.sock"),
            ("shm://orders", "shm", "orders"),
            ("pipe://server/orders", "pipe", "server/orders"),
            ("mailslot://*/events", "mailslot", "*/events"),
            ("COPYDATA://ui", "copydata", "ui"),
        ];
        for (s, scheme, addr) in cases {
            let e = Endpoint::parse(s).unwrap();
            assert_eq!((e.scheme(), e.address()), (scheme, addr), "{s}");
        }
    }

    #[test]
    fn options_and_display_round_trip() {
        let e = Endpoint::parse("shm://orders?capacity=1MiB&spin=200").unwrap();
        assert_eq!(e.option("spin"), Some("200"));
        assert_eq!(e.size_option("capacity").unwrap(), Some(1 << 20));
        assert_eq!(e.parse_option::<u32>("spin").unwrap(), Some(200));
        assert_eq!(e.to_string(), "shm://orders?capacity=1MiB&spin=200");
        assert_eq!(Endpoint::parse(&e.to_string()).unwrap(), e);
        assert!(e.check_options(&["capacity", "spin"]).is_ok());
        let err = e.check_options(&["capacity"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidEndpoint);
        assert!(err.to_string().contains("unknown option `spin`"), "{err}");
    }

    #[test]
    fn max_frame_default_and_override() {
        assert_eq!(
            Endpoint::parse("tcp://a:1").unwrap().max_frame().unwrap(),
            DEFAULT_MAX_FRAME
        );
        assert_eq!(
            Endpoint::parse("tcp://a:1?max_frame=64KiB")
                .unwrap()
                .max_frame()
                .unwrap(),
            65536
        );
        assert!(Endpoint::parse("tcp://a:1?max_frame=4GiB").is_err());
        assert!(Endpoint::parse("tcp://a:1?max_frame=lots").is_err());
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "tcp:/x",
            "://x",
            "1tcp://x",
            "t p://x",
            "tcp://",
            "tcp://a?x",
            "tcp://a?=1",
            "tcp://a?k=1&k=2",
            "shm://a\nb",
        ] {
            let e = Endpoint::parse(s).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{s}");
        }
        let e = Endpoint::parse("t_p://x").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t_p://x: invalid endpoint: `t_p` is not a scheme"),
            "{e}"
        );
        // Which schemes exist is not the endpoint's business (the transports' table says).
        assert_eq!(Endpoint::parse("FTP://x").unwrap().scheme(), "ftp");
        // A bad option value is named with the endpoint as written, whitespace and all (the
        // fuzzer's find: the parsed endpoint, whitespace and empty pairs dropped, read
        // differently).
        for s in [
            "tcp://a? max_frame = x",
            "tcp://a?&&max_frame=1MiB&&connect_timeout=x",
        ] {
            let e = Endpoint::parse(s).unwrap_err();
            assert!(e.to_string().starts_with(s), "{s:?}: {e}");
        }
    }

    /// Item: a newcomer's `tcp://127.0.0.1` says "missing port" (the transports used to pass
    /// it to the OS, which answered "invalid socket address").
    #[test]
    fn host_and_port() {
        let hp = |s: &str| {
            Endpoint::parse(s)
                .unwrap()
                .host_port()
                .map(|(h, p)| (h.to_string(), p))
        };
        assert_eq!(
            hp("tcp://10.0.0.5:7000").unwrap(),
            ("10.0.0.5".into(), 7000)
        );
        assert_eq!(hp("udp://[::1]:9").unwrap(), ("::1".into(), 9));
        assert_eq!(hp("tcp://localhost:0").unwrap(), ("localhost".into(), 0));
        for (s, says) in [
            ("tcp://127.0.0.1", "missing port: write tcp://HOST:PORT"),
            ("udp://127.0.0.1:", "missing port: write udp://HOST:PORT"),
            ("tcp://[::1]", "missing port"),
            ("tcp://:7000", "missing host"),
            ("tcp://::1", "brackets"),
            ("tcp://[::1", "IPv6"),
            ("tcp://h:70000", "not a number from 0 to 65535"),
            ("tcp://h:x", "not a number"),
        ] {
            let e = hp(s).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{s}");
            assert!(
                e.to_string()
                    .starts_with(&format!("{s}: invalid endpoint: ")),
                "{e}"
            );
            assert!(e.to_string().contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn connect_timeout_is_parsed_once_for_every_transport() {
        let t = |s: &str| Endpoint::parse(s).and_then(|e| e.connect_timeout());
        assert_eq!(t("tcp://a:1").unwrap(), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            t("tcp://a:1?connect_timeout=500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            t("shm://a?connect_timeout=10s").unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            t("pipe://a?connect_timeout=2500").unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            t("udp://a:1?connect_timeout_ms=300").unwrap(),
            Duration::from_millis(300)
        );
        for bad in [
            "tcp://a:1?connect_timeout=0",
            "tcp://a:1?connect_timeout=soon",
            "tcp://a:1?connect_timeout=5h",
            "tcp://a:1?connect_timeout=2000m",
            "udp://a:1?connect_timeout=1s&connect_timeout_ms=5",
        ] {
            let e = t(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{bad}");
            assert!(e.to_string().contains("connect_timeout"), "{bad}: {e}");
        }
        // Every transport accepts it; the legacy spelling only where a transport lists it.
        let e = Endpoint::parse("tcp://a:1?connect_timeout=1s").unwrap();
        assert!(e.check_options(&[]).is_ok());
        let e = Endpoint::parse("tcp://a:1?connect_timeout_ms=1").unwrap();
        assert!(e.check_options(&[]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
