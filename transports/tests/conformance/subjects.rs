//! The transports under test: one entry per backend, with how to make a fresh endpoint and,
//! where the mechanism allows it, how to write raw garbage to a listener.

use ductwork_core::Endpoint;
use std::io;

/// One transport under test.
#[derive(Clone)]
pub struct Subject {
    /// The name in test names (the scheme, or scheme plus variant).
    pub name: &'static str,
    /// A fresh endpoint for a test; `unique` is different for every case and process.
    pub endpoint: fn(unique: &str) -> String,
    /// Writes garbage to a listener at the endpoint with raw OS calls (no ductwork code), if
    /// the mechanism lets a raw client in.
    pub garbage: Option<fn(&Endpoint) -> io::Result<()>>,
}

pub fn all() -> Vec<Subject> {
    vec![
        Subject {
            name: "tcp",
            endpoint: |_| "tcp://127.0.0.1:0".into(),
            garbage: Some(tcp_garbage),
        },
        Subject {
            name: "udp",
            endpoint: |_| "udp://127.0.0.1:0".into(),
            garbage: Some(udp_garbage),
        },
        Subject {
            name: "unix",
            endpoint: |u| {
                let dir = std::env::temp_dir();
                format!("unix://{}/dw-conf-{u}.sock", dir.display())
            },
            garbage: Some(unix_garbage),
        },
    ]
}

/// The garbage every raw client writes: a length far over any limit, then noise.
pub const GARBAGE: &[u8] = b"\xde\xad\xbe\xefnot a ductwork frame at all";

fn tcp_garbage(ep: &Endpoint) -> io::Result<()> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(ep.address())?;
    s.write_all(GARBAGE)?;
    s.flush()
}

fn udp_garbage(ep: &Endpoint) -> io::Result<()> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.connect(ep.address())?;
    for g in [GARBAGE, &[0u8][..], &[1, 2, 3][..], &[0xff; 300][..]] {
        s.send(g)?;
    }
    Ok(())
}

#[cfg(unix)]
fn unix_garbage(ep: &Endpoint) -> io::Result<()> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(ep.address())?;
    s.write_all(GARBAGE)?;
    s.flush()
}

#[cfg(not(unix))]
fn unix_garbage(_ep: &Endpoint) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no unix sockets here",
    ))
}
