//! The certificate [`Transport::local_endpoint`](ductwork_core::Transport::local_endpoint)
//! uses: made once per user, kept in the private directory, reused by every process (so a
//! bench's two processes, or a test and its children, trust each other).

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// The file: the leaf's private key, the leaf (`localhost`, `127.0.0.1`, `::1`), and the CA
/// that signed it. It serves as `cert`, `key` and `ca` at once: PEM readers take the items of
/// their kind and skip the rest.
const FILE: &str = "tls-localhost.pem";

/// `tls://127.0.0.1:0` with the local certificate, or, if it cannot be made, without it (and
/// `bind` then says what is missing).
pub(super) fn endpoint() -> String {
    static PATH: OnceLock<Option<String>> = OnceLock::new();
    let path = PATH.get_or_init(|| match ensure() {
        Ok(p) => Some(p.display().to_string()),
        Err(e) => {
            tracing::warn!("cannot make the local tls:// certificate: {e}");
            None
        }
    });
    match path {
        Some(p) => format!("tls://127.0.0.1:0?cert={p}&key={p}&ca={p}"),
        None => "tls://127.0.0.1:0".into(),
    }
}

/// The file's path, made if it is not there yet.
fn ensure() -> io::Result<PathBuf> {
    let path = super::imp::private_dir()?.join(FILE);
    if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        return Ok(path);
    }
    let pem = generate().map_err(io::Error::other)?;
    write_atomically(&path, pem.as_bytes())?;
    Ok(path)
}

/// A fresh CA and leaf; the CA's key is dropped here, never written.
fn generate() -> Result<String, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ductwork local CA (throw-away)");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    let leaf_key = KeyPair::generate()?;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(format!(
        "{}{}{}",
        leaf_key.serialize_pem(),
        leaf_cert.pem(),
        ca_cert.pem()
    ))
}

/// Writes a private temporary file beside `path` and renames it over `path`, so that a
/// process racing us reads either no file or a whole one.
fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let done = (|| {
        let mut f = super::imp::create_private(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done
}
