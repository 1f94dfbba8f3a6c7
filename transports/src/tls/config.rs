//! Reading a `tls://` endpoint's options: PEM files, the rustls configurations of both sides,
//! and what a failed handshake means in words.

use ductwork_core::{Endpoint, Error, ErrorKind, Result};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    AlertDescription, ClientConfig, RootCertStore, ServerConfig,
};
use std::{io, sync::Arc, time::Duration};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Settings both sides read.
pub(super) struct Config {
    /// `nodelay` (default `true`, as tcp).
    pub nodelay: bool,
    /// `handshake_timeout_ms` (default 10 s).
    pub handshake: Duration,
}

impl Config {
    pub(super) fn new(ep: &Endpoint) -> Result<Config> {
        Ok(Config {
            nodelay: ep.parse_option::<bool>("nodelay")?.unwrap_or(true),
            handshake: Duration::from_millis(
                ep.parse_option::<u64>("handshake_timeout_ms")?
                    .unwrap_or(10_000),
            ),
        })
    }
}

/// ring's provider, AES-128-GCM preferred: as safe as AES-256 here and a third fewer rounds.
/// (ChaCha20 stays last: without AES instructions a client may still pick it.)
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as C;
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// A configuration problem: the endpoint is unusable as written.
fn invalid(ep: &Endpoint, why: String) -> Error {
    Error::new(ErrorKind::InvalidEndpoint, ep, why)
}

/// The path in option `opt`, if given.
fn path<'a>(ep: &'a Endpoint, opt: &str) -> Result<Option<&'a str>> {
    match ep.option(opt) {
        Some("") => Err(invalid(ep, format!("option `{opt}` names no file"))),
        p => Ok(p),
    }
}

/// The certificates in the PEM file named by option `opt`: at least one.
fn certs(ep: &Endpoint, opt: &str, path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| invalid(ep, format!("{opt}={path}: {why}"));
    let all: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem_error(e)))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(pem_error(e)))?;
    if all.is_empty() {
        return Err(bad(
            "no PEM certificate (BEGIN CERTIFICATE) in the file".into()
        ));
    }
    Ok(all)
}

/// The private key in the PEM file named by option `key`. The messages never quote the file.
fn key(ep: &Endpoint, path: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (BEGIN PRIVATE KEY) in the file".into()
            }
            e => pem_error(e),
        };
        invalid(ep, format!("key={path}: {why}"))
    })
}

/// A PEM reading error in words, without any of the file's contents.
fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(e) => format!("cannot read the file: {e}"),
        E::NoItemsFound => "no PEM item in the file".into(),
        _ => "the file is not valid PEM".into(),
    }
}

/// A trust store of every certificate in the file named by `opt`.
fn roots(ep: &Endpoint, opt: &str, path: &str) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in certs(ep, opt, path)? {
        store.add(c).map_err(|e| {
            invalid(
                ep,
                format!("{opt}={path}: not a usable CA certificate: {e}"),
            )
        })?;
    }
    Ok(Arc::new(store))
}

/// Both `cert` and `key`, or neither.
fn identity(
    ep: &Endpoint,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    match (path(ep, "cert")?, path(ep, "key")?) {
        (Some(c), Some(k)) => Ok(Some((certs(ep, "cert", c)?, key(ep, k)?))),
        (None, None) => Ok(None),
        _ => Err(invalid(
            ep,
            "`cert` and `key` go together: give both PEM files or neither".into(),
        )),
    }
}

/// The listener's TLS configuration: `cert`, `key`, and `client_ca` / `client_auth`.
pub(super) fn server(ep: &Endpoint) -> Result<TlsAcceptor> {
    let Some((chain, key)) = identity(ep)? else {
        return Err(invalid(
            ep,
            "a tls:// listener needs its certificate and key: cert=PATH&key=PATH (PEM files)"
                .into(),
        ));
    };
    let required = match ep.option("client_auth") {
        None | Some("required") => true,
        Some("optional") => false,
        Some(v) => {
            return Err(invalid(
                ep,
                format!("client_auth={v}: expected `required` or `optional`"),
            ))
        }
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(ep, e.to_string()))?;
    let builder = match path(ep, "client_ca")? {
        Some(p) => {
            let v =
                WebPkiClientVerifier::builder_with_provider(roots(ep, "client_ca", p)?, provider());
            let v = if required {
                v
            } else {
                v.allow_unauthenticated()
            };
            let v = v
                .build()
                .map_err(|e| invalid(ep, format!("client_ca={p}: {e}")))?;
            builder.with_client_cert_verifier(v)
        }
        None if ep.option("client_auth").is_some() => {
            return Err(invalid(
                ep,
                "client_auth needs client_ca=PATH (the CA that signs client certificates)".into(),
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(ep, format!("cert/key: {e}")))?;
    // No TLS 1.3 session tickets: a client that only sends would never read them, and a
    // socket closed with unread bytes is reset, losing the frames still on their way to us.
    config.send_tls13_tickets = 0;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client's TLS configuration (`ca`, `cert`/`key`) and the name it verifies.
pub(super) fn client(ep: &Endpoint) -> Result<(TlsConnector, ServerName<'static>)> {
    let Some(ca) = path(ep, "ca")? else {
        return Err(invalid(
            ep,
            "a tls:// client needs ca=PATH, the PEM file of the certificates it trusts (there \
             are no platform roots)"
                .into(),
        ));
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(ep, e.to_string()))?
        .with_root_certificates(roots(ep, "ca", ca)?);
    let config = match identity(ep)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid(ep, format!("cert/key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    let host = match ep.option("server_name") {
        Some(n) => n.to_string(),
        None => ep.host_port()?.0.trim_matches(['[', ']']).to_string(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|_| invalid(ep, format!("`{host}` is not a valid server name")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// What a failed handshake means, in words. `client`: this side is the client.
pub(super) fn handshake_error(ep: &Endpoint, e: io::Error, client: bool) -> Error {
    match rustls_error(&e) {
        Some(rustls::Error::InvalidCertificate(why)) if client => Error::new(
            ErrorKind::PermissionDenied,
            ep,
            format!(
                "the server's certificate is not trusted (checked against ca={} for the name \
                 `{}`): {why:?}",
                ep.option("ca").unwrap_or(""),
                ep.option("server_name")
                    .unwrap_or_else(|| ep.host_port().map(|h| h.0).unwrap_or(""))
            ),
        ),
        Some(rustls::Error::InvalidCertificate(why)) => Error::new(
            ErrorKind::PermissionDenied,
            ep,
            format!("the client's certificate is not trusted: {why:?}"),
        ),
        Some(rustls::Error::NoCertificatesPresented) => Error::new(
            ErrorKind::PermissionDenied,
            ep,
            "the client sent no certificate and this listener requires one",
        ),
        Some(rustls::Error::AlertReceived(alert)) => alert_error(ep, *alert),
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. })
        | Some(rustls::Error::InappropriateHandshakeMessage { .. }) => not_tls(ep, &e, client),
        _ if e.kind() == io::ErrorKind::UnexpectedEof => not_tls(ep, &e, client),
        _ => Error::io(ep, "TLS handshake", e),
    }
}

/// The peer broke off or answered something that is not TLS.
fn not_tls(ep: &Endpoint, e: &io::Error, client: bool) -> Error {
    let who = if client {
        "the listener does not speak TLS (is it a plaintext tcp:// listener?)"
    } else {
        "the client does not speak TLS (is it a plaintext tcp:// client?)"
    };
    Error::new(
        ErrorKind::Protocol,
        ep,
        format!("TLS handshake failed: {who}: {e}"),
    )
}

/// The peer's fatal alert, during the handshake or (TLS 1.3 client certificates) right after:
/// a refused or missing certificate is `PermissionDenied`, anything else `Protocol`.
pub(super) fn alert_error(ep: &Endpoint, alert: AlertDescription) -> Error {
    Error::new(alert_kind(alert), ep, alert_text(alert))
}

pub(super) fn alert_kind(alert: AlertDescription) -> ErrorKind {
    use AlertDescription as A;
    match alert {
        A::CertificateRequired
        | A::BadCertificate
        | A::UnknownCA
        | A::CertificateUnknown
        | A::DecryptError
        | A::AccessDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Protocol,
    }
}

pub(super) fn alert_text(alert: AlertDescription) -> String {
    use AlertDescription as A;
    let why = match alert {
        A::CertificateRequired => {
            "the listener requires a client certificate (give cert= and key=)"
        }
        A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::DecryptError => {
            "the peer refused our certificate"
        }
        _ => "the peer ended the TLS session",
    };
    format!("{why} (TLS alert {alert:?})")
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it is.
pub(super) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}
