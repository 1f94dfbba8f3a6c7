//! The transports under test: every transport built into `ductwork_transports` (its
//! [`Transport::local_endpoint`] makes a fresh endpoint), with, where the mechanism lets a raw
//! client in, how to write garbage to a listener. A new transport needs nothing here but its
//! garbage writer, if any, and one line in [`garbage_writer`].

use crate::support;
use ductwork_core::{Endpoint, Transport};
use std::{io, sync::Arc};

/// Writes garbage to a listener at the endpoint with raw OS calls (no ductwork code).
pub type GarbageWriter = fn(&Endpoint) -> io::Result<()>;

/// One transport under test.
#[derive(Clone)]
pub struct Subject {
    /// The name in test names: the scheme.
    pub name: &'static str,
    pub transport: Arc<dyn Transport>,
    pub garbage: Option<GarbageWriter>,
}

impl Subject {
    /// A fresh endpoint for a test; `unique` is different for every case and process.
    pub fn endpoint(&self, unique: &str) -> String {
        self.transport.local_endpoint(unique)
    }
}

pub fn all() -> Vec<Subject> {
    ductwork_transports::transports()
        .into_iter()
        .map(|transport| Subject {
            name: transport.scheme(),
            garbage: garbage_writer(transport.scheme()),
            transport,
        })
        .collect()
}

/// The raw garbage writer of each scheme that has one.
fn garbage_writer(scheme: &str) -> Option<GarbageWriter> {
    match scheme {
        "tcp" => Some(tcp_garbage),
        "tls" => Some(tls_garbage),
        "udp" => Some(udp_garbage),
        #[cfg(unix)]
        "unix" => Some(unix_garbage),
        #[cfg(any(target_os = "linux", windows))]
        "shm" => Some(shm_garbage),
        #[cfg(windows)]
        "copydata" => Some(copydata_garbage),
        "pipe" => Some(pipe_garbage),
        "mailslot" => Some(mailslot_garbage),
        "nats" => Some(nats_garbage),
        _ => None,
    }
}

/// The garbage every raw client writes: a length far over any limit, then noise.
pub const GARBAGE: &[u8] = b"\xde\xad\xbe\xefnot a ductwork frame at all";

/// The datagrams the message-oriented raw clients send: the garbage, then short and odd ones.
const GARBAGE_DATAGRAMS: &[&[u8]] = &[GARBAGE, &[0u8], &[1, 2, 3], &[0xff; 300]];

fn tcp_garbage(ep: &Endpoint) -> io::Result<()> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(ep.address())?;
    s.write_all(GARBAGE)?;
    s.flush()
}

/// A raw rustls client (no ductwork code) that finishes the handshake, trusting the endpoint's
/// `ca=`, then writes the garbage inside the session. (Plaintext garbage at a TLS listener is
/// tested in `tests/tls.rs`.)
fn tls_garbage(ep: &Endpoint) -> io::Result<()> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use std::io::Write;
    let ca = ep
        .option("ca")
        .ok_or_else(|| io::Error::other("no ca= option"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(io::Error::other)? {
        roots
            .add(c.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(ep.host_port().map_err(io::Error::other)?.0.to_string())
        .map_err(io::Error::other)?;
    let conn = rustls::ClientConnection::new(config.into(), name).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(ep.address())?);
    s.write_all(GARBAGE)?;
    s.flush()?;
    s.conn.send_close_notify();
    s.flush()
}

fn udp_garbage(ep: &Endpoint) -> io::Result<()> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.connect(ep.address())?;
    for g in GARBAGE_DATAGRAMS {
        s.send(g)?;
    }
    Ok(())
}

#[cfg(unix)]
fn unix_garbage(ep: &Endpoint) -> io::Result<()> {
    stream_garbage(std::path::Path::new(ep.address()))
}

#[cfg(unix)]
fn stream_garbage(path: &std::path::Path) -> io::Result<()> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.write_all(GARBAGE)?;
    s.flush()
}

/// WM_COPYDATA with raw Win32 calls: a foreign `dwData` tag, garbage bytes and empty blocks
/// with the ductwork tag, and a WM_COPYDATA with no COPYDATASTRUCT at all. The ductwork tag
/// and results are the ones `copydata/mod.rs` documents.
#[cfg(windows)]
fn copydata_garbage(ep: &Endpoint) -> io::Result<()> {
    use support::win32::{copydata_window, send_copydata};
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        SendMessageTimeoutW, SMTO_ABORTIFHUNG, WM_COPYDATA,
    };
    const MAGIC: usize = 0x4457_4344;
    let hwnd = copydata_window(ep.address())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no receiver window"))?;
    for (tag, data, expect) in [
        (0xbad, Some(GARBAGE), 0),
        (MAGIC, Some(GARBAGE), 1),
        (MAGIC, None, 1),
        (MAGIC, Some(&GARBAGE[..0]), 1),
    ] {
        let result = send_copydata(hwnd, tag, data)?;
        if result != expect {
            return Err(io::Error::other(format!(
                "tag {tag:#x}, {data:?}: result {result}, expected {expect}"
            )));
        }
    }
    // SAFETY: a null lParam carries no pointer for the receiver to follow.
    let ok =
        unsafe { SendMessageTimeoutW(hwnd, WM_COPYDATA, 0, 0, SMTO_ABORTIFHUNG, 10_000, &mut 0) };
    let _ = ok; // refused or not delivered at all: either way the receiver must go on
    Ok(())
}

#[cfg(unix)]
fn pipe_garbage(ep: &Endpoint) -> io::Result<()> {
    stream_garbage(&support::unix::private_socket("pipe", ep.address()))
}

#[cfg(unix)]
fn mailslot_garbage(ep: &Endpoint) -> io::Result<()> {
    let s = std::os::unix::net::UnixDatagram::unbound()?;
    s.connect(support::unix::private_socket("mailslot", ep.address()))?;
    for g in GARBAGE_DATAGRAMS.iter().chain([&&[][..]]) {
        s.send(g)?;
    }
    Ok(())
}

#[cfg(windows)]
fn pipe_garbage(ep: &Endpoint) -> io::Result<()> {
    support::win32::write_all(&format!(r"\\.\pipe\ductwork-{}", ep.address()), &[GARBAGE])
}

#[cfg(windows)]
fn mailslot_garbage(ep: &Endpoint) -> io::Result<()> {
    support::win32::write_all(
        &format!(r"\\.\mailslot\ductwork\{}", ep.address()),
        GARBAGE_DATAGRAMS,
    )
}

/// The raw client for shm: connects to the listener's set-up socket and sends garbage instead
/// of the hello. (Garbage written into a live ring is tested in `tests/shm.rs`.)
#[cfg(target_os = "linux")]
fn shm_garbage(ep: &Endpoint) -> io::Result<()> {
    stream_garbage(&support::unix::private_socket("shm", ep.address()))
}

/// On Windows the set-up goes over the named pipe `\\.\pipe\ductwork-shm-<name>`.
#[cfg(windows)]
fn shm_garbage(ep: &Endpoint) -> io::Result<()> {
    support::win32::write_all(
        &format!(r"\\.\pipe\ductwork-shm-{}", ep.address()),
        &[GARBAGE],
    )
}

/// A raw NATS client (the text protocol over a plain TCP socket, no ductwork or NATS library)
/// that sends the listener's connect subject what no ductwork client would: garbage with no
/// reply subject, garbage with one, a hello whose reply subject is a wildcard, and a valid
/// hello from an inbox nobody reads (a client that never finishes: its connection must time
/// out on its own). A PING's PONG proves the server took all of it.
fn nats_garbage(ep: &Endpoint) -> io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let (server, name) = ep
        .address()
        .split_once('/')
        .ok_or_else(|| io::Error::other("no name in the endpoint"))?;
    let subject = format!(
        "{}.{name}.connect",
        ep.option("prefix").unwrap_or("ductwork")
    );
    let s = std::net::TcpStream::connect(server)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut lines = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    lines.read_line(&mut line)?; // INFO {...}
    if !line.starts_with("INFO") {
        return Err(io::Error::other(format!("not a NATS server: {line:?}")));
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n");
    let g = GARBAGE.len();
    out.extend_from_slice(format!("PUB {subject} {g}\r\n").as_bytes());
    out.extend_from_slice(GARBAGE);
    out.extend_from_slice(format!("\r\nPUB {subject} _INBOX.dw-garbage {g}\r\n").as_bytes());
    out.extend_from_slice(GARBAGE);
    out.extend_from_slice(b"\r\n");
    let hello = "NATS/1.0\r\nDuctwork-Nats: hello/1\r\n\r\n";
    let h = hello.len();
    for reply in ["_INBOX.*", "_INBOX.dw-garbage-silent"] {
        out.extend_from_slice(format!("HPUB {subject} {reply} {h} {h}\r\n{hello}\r\n").as_bytes());
    }
    out.extend_from_slice(b"PING\r\n");
    (&s).write_all(&out)?;
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Err(io::Error::other("the server closed before PONG"));
        }
        match line.trim_end() {
            "PONG" => return Ok(()),
            l if l.starts_with("-ERR") => return Err(io::Error::other(l.to_string())),
            _ => {} // +OK, PING, INFO
        }
    }
}
