//! A `nats://` endpoint read into a [`Config`] (options checked, secrets refused inline), and
//! the `async-nats` client it describes: servers, TLS, credentials, reconnect events.

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use std::{path::PathBuf, time::Duration};

/// Every option `nats://` knows (see the module docs).
const OPTIONS: &[&str] = &[
    "servers",
    "randomize",
    "prefix",
    "heartbeat",
    "peer_timeout",
    "buffer",
    "backlog",
    "tls",
    "ca",
    "cert",
    "key",
    "user",
    "password_file",
    "password_env",
    "token_file",
    "token_env",
    "creds",
    "nkey",
];

/// Options that would put a secret into the endpoint string, which errors and logs print;
/// each with where the secret goes instead.
const INLINE_SECRETS: &[(&str, &str)] = &[
    ("password", "password_file= or password_env="),
    ("pass", "password_file= or password_env="),
    ("token", "token_file= or token_env="),
    ("seed", "nkey= (a file holding the seed)"),
    ("nkey_seed", "nkey= (a file holding the seed)"),
    ("jwt", "creds= (a .creds file)"),
];

/// Where a secret comes from.
#[derive(Debug, Clone)]
pub(crate) enum Secret {
    /// The contents of a file (trailing whitespace removed).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// How the client authenticates to the server.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    None,
    Token(Secret),
    UserPassword(String, Secret),
    Creds(PathBuf),
    Nkey(PathBuf),
}

/// One `nats://` endpoint, read.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The endpoint as errors and logs show it (it holds no secret: those are refused).
    pub shown: String,
    /// Server URLs, the address's first.
    pub servers: Vec<String>,
    /// Whether the client tries them in a random order (NATS's default) or as listed.
    pub randomize: bool,
    /// The service name (subject tokens).
    pub name: String,
    /// The subject prefix.
    pub prefix: String,
    /// `max_frame` when given; else the server's `max_payload` applies.
    pub max_frame: Option<usize>,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    /// Messages per subscription before slow-consumer drops.
    pub buffer: usize,
    /// Connections set up but not accepted yet.
    pub backlog: usize,
    pub connect_timeout: Duration,
    pub tls: bool,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub auth: Auth,
}

impl Config {
    /// Reads and checks `ep`'s address and options.
    pub(crate) fn new(ep: &Endpoint) -> Result<Config> {
        refuse_inline_secrets(ep)?;
        ep.check_options(OPTIONS)?;
        let bad = |why: String| Error::new(ErrorKind::InvalidEndpoint, ep, why);
        let (server, name) = ep.address().split_once('/').ok_or_else(|| {
            bad("write nats://HOST:PORT/NAME, e.g. nats://127.0.0.1:4222/orders".into())
        })?;
        check_name(name).map_err(|why| bad(format!("the name `{name}` {why}")))?;
        let prefix = ep.option("prefix").unwrap_or("ductwork").to_string();
        check_name(&prefix).map_err(|why| bad(format!("option `prefix={prefix}` {why}")))?;
        let mut hosts = vec![server.to_string()];
        if let Some(list) = ep.option("servers") {
            hosts.extend(list.split(',').map(|s| s.trim().to_string()));
        }
        let (heartbeat, peer_timeout) = heartbeats(ep)?;
        let cert = ep.option("cert").map(PathBuf::from);
        let key = ep.option("key").map(PathBuf::from);
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(bad("give `cert` and `key` together".into())),
        };
        let ca = ep.option("ca").map(PathBuf::from);
        let tls = ep.parse_option::<bool>("tls")?.unwrap_or(false)
            || ca.is_some()
            || client_cert.is_some();
        let scheme = if tls { "tls" } else { "nats" };
        let servers = hosts
            .iter()
            .map(|h| server_url(ep, scheme, h))
            .collect::<Result<Vec<_>>>()?;
        let max_frame = match ep.option(ductwork_core::OPT_MAX_FRAME) {
            Some(_) => Some(ep.max_frame()?),
            None => None,
        };
        Ok(Config {
            shown: ep.to_string(),
            servers,
            randomize: ep.parse_option::<bool>("randomize")?.unwrap_or(true),
            name: name.to_string(),
            prefix,
            max_frame,
            heartbeat,
            peer_timeout,
            buffer: count(ep, "buffer", 65536, 1 << 20)?,
            backlog: count(ep, "backlog", 128, 1 << 16)?,
            connect_timeout: ep.connect_timeout()?,
            tls,
            ca,
            client_cert,
            auth: auth(ep)?,
        })
    }

    /// The subject listeners of this name subscribe to for connect requests.
    pub(crate) fn connect_subject(&self) -> String {
        format!("{}.{}.connect", self.prefix, self.name)
    }

    /// The `async-nats` client options: TLS, credentials, buffers, and events as `tracing`.
    pub(crate) async fn client_options(&self) -> Result<async_nats::ConnectOptions> {
        let shown = self.shown.clone();
        let mut o = async_nats::ConnectOptions::new()
            .name(format!("ductwork {}", self.name))
            .connection_timeout(self.connect_timeout)
            .subscription_capacity(self.buffer)
            // Commands queued for the connection's writer: bounds what publishers buffer.
            .client_capacity(256)
            .event_callback(move |event| {
                let shown = shown.clone();
                async move { report(&shown, event) }
            });
        if !self.randomize {
            o = o.retain_servers_order();
        }
        if self.tls {
            o = o.require_tls(true);
        }
        if let Some(ca) = &self.ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        let read = |what: &str, s: &Secret| read_secret(&self.shown, what, s);
        Ok(match &self.auth {
            Auth::None => o,
            Auth::Token(s) => o.token(read("token", s)?),
            Auth::UserPassword(user, s) => o.user_and_password(user.clone(), read("password", s)?),
            Auth::Nkey(path) => o.nkey(read("nkey", &Secret::File(path.clone()))?),
            Auth::Creds(path) => o.credentials_file(path).await.map_err(|e| {
                Error::new(
                    ErrorKind::InvalidEndpoint,
                    &self.shown,
                    format!("option `creds`: cannot use {}: {e}", path.display()),
                )
            })?,
        })
    }

    /// Connects a client to the servers; failures as ductwork errors naming the endpoint.
    /// `no_server` is the kind for "no server reachable" (`NotFound` for a connect, `Bind`
    /// for a bind).
    pub(crate) async fn client(&self, no_server: ErrorKind) -> Result<async_nats::Client> {
        let opts = self.client_options().await?;
        let servers: Vec<async_nats::ServerAddr> = self
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidEndpoint,
                    &self.shown,
                    format!("server address: {e}"),
                )
            })?;
        opts.connect(servers).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let kind = match e.kind() {
                K::ServerParse => ErrorKind::InvalidEndpoint,
                K::Authentication | K::AuthorizationViolation => ErrorKind::PermissionDenied,
                K::TimedOut => ErrorKind::Timeout,
                K::Tls => ErrorKind::Io,
                K::Dns | K::Io | K::MaxReconnects => no_server,
            };
            Error::new(
                kind,
                &self.shown,
                format!(
                    "cannot connect to the NATS server ({}): {e}",
                    self.servers.join(", ")
                ),
            )
        })
    }
}

/// Refuses options that would hold a secret, and a user or password in the address, without
/// printing them: the error names the endpoint with every option value hidden.
fn refuse_inline_secrets(ep: &Endpoint) -> Result<()> {
    let hidden = || {
        let mut s = format!("nats://{}", ep.address().rsplit('@').next().unwrap_or(""));
        for (i, (k, _)) in ep.options().enumerate() {
            s.push_str(&format!("{}{k}=…", if i == 0 { '?' } else { '&' }));
        }
        s
    };
    for (key, instead) in INLINE_SECRETS {
        if ep.option(key).is_some() {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                hidden(),
                format!(
                    "option `{key}` would put a secret into the endpoint, which errors and logs \
                     print; use {instead}"
                ),
            ));
        }
    }
    let server = ep.address().split('/').next().unwrap_or("");
    if server.contains('@') || ep.option("servers").is_some_and(|s| s.contains('@')) {
        return Err(Error::new(
            ErrorKind::InvalidEndpoint,
            hidden(),
            "credentials in the address would be printed in errors and logs; use user= with \
             password_file= or password_env=, token_file=, token_env=, creds= or nkey=",
        ));
    }
    Ok(())
}

/// A name or prefix: subject tokens of letters, digits, `-` and `_`, joined by single dots.
fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 200 {
        return Err("must have 1 to 200 characters");
    }
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.split('.').all(token_ok) {
        Ok(())
    } else {
        Err("may hold only letters, digits, `-` and `_`, in tokens joined by single dots")
    }
}

/// `scheme://host:port` for one server of the list, checked as `host:port`.
fn server_url(ep: &Endpoint, scheme: &str, hostport: &str) -> Result<String> {
    let probe = ep.with_address(hostport);
    let (host, port) = probe.host_port().map_err(|e| {
        Error::new(
            ErrorKind::InvalidEndpoint,
            ep,
            format!("server `{hostport}`: {}", e.detail()),
        )
    })?;
    if port == 0 {
        return Err(Error::new(
            ErrorKind::InvalidEndpoint,
            ep,
            format!("server `{hostport}`: port 0 names no server"),
        ));
    }
    Ok(if host.contains(':') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    })
}

/// `heartbeat` and `peer_timeout`, checked against each other.
fn heartbeats(ep: &Endpoint) -> Result<(Duration, Duration)> {
    let bad = |why: String| Error::new(ErrorKind::InvalidEndpoint, ep, why);
    let dur = |key: &str, default: Duration| -> Result<Duration> {
        match ep.option(key) {
            None => Ok(default),
            Some(v) => match ductwork_core::parse_duration(v) {
                Ok(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(3600) => Ok(d),
                Ok(_) => Err(bad(format!("option `{key}={v}`: from 10ms to 1 hour"))),
                Err(e) => Err(bad(format!("option `{key}={v}`: {e}"))),
            },
        }
    };
    let heartbeat = dur("heartbeat", Duration::from_secs(1))?;
    let peer_timeout = dur("peer_timeout", Duration::from_secs(5).max(heartbeat * 2))?;
    if peer_timeout < heartbeat * 2 {
        return Err(bad(format!(
            "peer_timeout ({peer_timeout:?}) must be at least twice heartbeat ({heartbeat:?})"
        )));
    }
    Ok((heartbeat, peer_timeout))
}

/// A count option from 1 to `max`.
fn count(ep: &Endpoint, key: &str, default: usize, max: usize) -> Result<usize> {
    match ep.parse_option::<usize>(key)? {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(Error::new(
            ErrorKind::InvalidEndpoint,
            ep,
            format!("option `{key}={n}`: from 1 to {max}"),
        )),
    }
}

/// The one authentication method the options name.
fn auth(ep: &Endpoint) -> Result<Auth> {
    let bad = |why: &str| Error::new(ErrorKind::InvalidEndpoint, ep, why.to_string());
    let secret = |file: &str, env: &str| -> Result<Option<Secret>> {
        match (ep.option(file), ep.option(env)) {
            (Some(_), Some(_)) => Err(bad(&format!("give `{file}` or `{env}`, not both"))),
            (Some(f), None) => Ok(Some(Secret::File(f.into()))),
            (None, Some(v)) => Ok(Some(Secret::Env(v.into()))),
            (None, None) => Ok(None),
        }
    };
    let token = secret("token_file", "token_env")?;
    let password = secret("password_file", "password_env")?;
    let mut methods = Vec::new();
    if let Some(t) = token {
        methods.push(Auth::Token(t));
    }
    match (ep.option("user"), password) {
        (Some(u), Some(p)) => methods.push(Auth::UserPassword(u.into(), p)),
        (None, None) => {}
        (Some(_), None) => return Err(bad("`user` needs `password_file` or `password_env`")),
        (None, Some(_)) => return Err(bad("a password needs `user`")),
    }
    if let Some(c) = ep.option("creds") {
        methods.push(Auth::Creds(c.into()));
    }
    if let Some(n) = ep.option("nkey") {
        methods.push(Auth::Nkey(n.into()));
    }
    match methods.len() {
        0 => Ok(Auth::None),
        1 => Ok(methods.remove(0)),
        _ => Err(bad(
            "give one way to authenticate: a token, user and password, creds or nkey",
        )),
    }
}

/// Reads a secret; an error names where it was looked for, never what was found.
fn read_secret(shown: &str, what: &str, s: &Secret) -> Result<String> {
    let bad = |why: String| Error::new(ErrorKind::InvalidEndpoint, shown, why);
    let value = match s {
        Secret::File(path) => std::fs::read_to_string(path).map_err(|e| {
            bad(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        })?,
        Secret::Env(var) => std::env::var(var).map_err(|_| {
            bad(format!(
                "the {what} variable `{var}` is not set (or not UTF-8)"
            ))
        })?,
    };
    let value = value.trim_end().to_string();
    if value.is_empty() {
        return Err(bad(format!("the {what} is empty")));
    }
    Ok(value)
}

/// One `async-nats` connection event as a `tracing` event naming the endpoint.
fn report(shown: &str, event: async_nats::Event) {
    use async_nats::Event as E;
    match event {
        E::Connected => tracing::info!(endpoint = shown, "nats: connected to a server"),
        E::Disconnected => {
            tracing::warn!(
                endpoint = shown,
                "nats: disconnected from the server; reconnecting"
            )
        }
        E::SlowConsumer(sid) => tracing::warn!(
            endpoint = shown,
            subscription = sid,
            "nats: slow consumer, messages dropped"
        ),
        other => tracing::warn!(endpoint = shown, "nats: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Result<Config> {
        Config::new(&Endpoint::parse(s).unwrap())
    }

    #[test]
    fn reads_address_and_options() {
        let c =
            cfg("nats://127.0.0.1:4222/orders.eu?servers=10.0.0.2:4222,[::1]:4223&heartbeat=200ms")
                .unwrap();
        assert_eq!(c.name, "orders.eu");
        assert_eq!(
            c.servers,
            [
                "nats://127.0.0.1:4222",
                "nats://10.0.0.2:4222",
                "nats://[::1]:4223"
            ]
        );
        assert_eq!(c.heartbeat, Duration::from_millis(200));
        assert_eq!(c.peer_timeout, Duration::from_secs(5));
        assert_eq!(c.connect_subject(), "ductwork.orders.eu.connect");
        assert_eq!(c.max_frame, None);
        let c = cfg("nats://h:1/x?ca=/etc/ca.pem&max_frame=64KiB").unwrap();
        assert_eq!(c.servers, ["tls://h:1"]);
        assert_eq!(c.max_frame, Some(65536));
    }

    #[test]
    fn refuses_bad_endpoints_saying_why() {
        for (ep, says) in [
            ("nats://127.0.0.1:4222", "nats://HOST:PORT/NAME"),
            ("nats://127.0.0.1:4222/a.*", "only letters"),
            ("nats://127.0.0.1:4222/a..b", "only letters"),
            ("nats://127.0.0.1/a", "missing port"),
            ("nats://127.0.0.1:0/a", "port 0"),
            ("nats://h:1/a?heartbeat=2s&peer_timeout=3s", "twice"),
            ("nats://h:1/a?user=bob", "password_file"),
            ("nats://h:1/a?token_env=T&creds=/x", "one way"),
            ("nats://h:1/a?cert=/c", "together"),
            ("nats://h:1/a?bogus=1", "unknown option"),
        ] {
            let e = cfg(ep).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{ep}");
            assert!(e.to_string().contains(says), "{ep}: {e}");
        }
    }

    #[test]
    fn secrets_in_the_endpoint_are_refused_without_printing_them() {
        for ep in [
            "nats://h:1/a?token=hunter2",
            "nats://h:1/a?user=bob&password=hunter2",
            "nats://bob:hunter2@h:1/a",
            "nats://h:1/a?servers=bob:hunter2@h:2",
        ] {
            let e = cfg(ep).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{ep}");
            let text = format!("{e} {e:?}");
            assert!(!text.contains("hunter2"), "{ep}: {text}");
            assert!(
                text.contains("_file") || text.contains("_env"),
                "{ep}: {text}"
            );
        }
    }

    #[test]
    fn secrets_are_read_from_files_and_variables_and_never_echoed() {
        let dir = std::env::temp_dir().join(format!("dw-nats-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(
            read_secret("ep", "token", &Secret::File(f.clone())).unwrap(),
            "s3cret"
        );
        let e = read_secret("ep", "token", &Secret::File(dir.join("missing"))).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = read_secret(
            "ep",
            "token",
            &Secret::Env("DW_NATS_SURELY_UNSET_VAR".into()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("DW_NATS_SURELY_UNSET_VAR"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_secret("ep", "token", &Secret::File(f)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
