//! The transports under test: every transport built into `ductwork_transports` (its
//! [`Transport::local_endpoint`] makes a fresh endpoint), with, where the mechanism lets a raw
//! client in, how to write garbage to a listener and how to put a frame over any limit on the
//! wire past a sender's own check. A new transport needs nothing here but its raw writers,
//! if any, and one line each in [`garbage_writer`] and [`oversized_writer`].

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
    /// Writes, with raw OS calls, one frame claiming far more than any limit into a
    /// connection it opens to the listener: what a ductwork sender, which knows the peer's
    /// limit, never sends (see `cases::oversized_sender`).
    pub oversized: Option<GarbageWriter>,
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
            oversized: oversized_writer(transport.scheme()),
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

/// The raw oversized-frame writer of each scheme that has one. On a byte stream the garbage
/// is such a frame (its first bytes claim a length far over any limit); shm's garbage goes
/// to the set-up socket and never becomes a connection, so its writer does the set-up and
/// writes the record straight into the ring.
fn oversized_writer(scheme: &str) -> Option<GarbageWriter> {
    match scheme {
        #[cfg(any(target_os = "linux", windows))]
        "shm" => Some(shm_oversized),
        "tcp" | "tls" | "unix" | "pipe" => garbage_writer(scheme),
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

/// shm's client hello as `docs/wire-format.md` documents it: the word, then our `max_frame`
/// (u64 LE), here 16 MiB.
#[cfg(any(target_os = "linux", windows))]
fn shm_hello() -> Vec<u8> {
    let mut h = b"DWSHMhi2".to_vec();
    h.extend_from_slice(&(16u64 << 20).to_le_bytes());
    h
}

/// The set-up reply's head, checked: the ring capacity and the segment length it announces.
#[cfg(any(target_os = "linux", windows))]
fn shm_reply(reply: &[u8]) -> io::Result<(usize, usize)> {
    if reply.len() < 32 || &reply[..8] != b"DWSHMok2" {
        return Err(io::Error::other(format!("set-up reply {reply:?}")));
    }
    let word = |i: usize| u64::from_le_bytes(reply[i..i + 8].try_into().unwrap()) as usize;
    let (cap, len) = (word(8), word(16));
    if len < 128 + 2 * (512 + cap) {
        return Err(io::Error::other(format!(
            "segment of {len} bytes for rings of {cap}"
        )));
    }
    Ok((cap, len))
}

/// Publishes, in the segment mapped at `base` with rings of `cap` bytes, a record in ring B
/// (client to listener) at position 0 that claims 2 GiB - 16 bytes: its header word (as
/// `transports/src/shm/ring.rs` documents it: `len | stamp << 32`, the stamp for position 0)
/// at the start of ring B's data area, after its 512-byte header.
///
/// # Safety
/// `base` must be a live, writable mapping of at least `128 + 2 * (512 + cap)` bytes.
#[cfg(any(target_os = "linux", windows))]
unsafe fn shm_publish_oversized(base: *mut u8, cap: usize) {
    let at = 128 + (512 + cap) + 512;
    let word = 0x7fff_fff0u64 | u64::from(0x5354_4d50u32) << 32;
    // SAFETY: `at + 8` is within the mapping (the caller's contract); the offset is 8-aligned
    // in a page-aligned mapping. Volatile: the listener reads this memory.
    unsafe { std::ptr::write_volatile(base.add(at).cast::<u64>(), word) }
}

/// The raw ring writer for shm on Linux: the set-up by hand (the hello on the Unix socket,
/// the reply with five descriptors), then the oversized record in the mapped segment and a
/// ring of the listener's data doorbell (the fourth descriptor, an eventfd).
#[cfg(target_os = "linux")]
fn shm_oversized(ep: &Endpoint) -> io::Result<()> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::{io::Write, mem::MaybeUninit, os::fd::OwnedFd};
    let path = support::unix::private_socket("shm", ep.address());
    let mut sock = std::os::unix::net::UnixStream::connect(path)?;
    sock.write_all(&shm_hello())?;
    let mut reply = [0u8; 32];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(5))];
    let mut ctl = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &sock,
        &mut [io::IoSliceMut::new(&mut reply)],
        &mut ctl,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let (cap, len) = shm_reply(&reply[..got.bytes])?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in ctl.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    if fds.len() != 5 {
        return Err(io::Error::other(format!("{} descriptors", fds.len())));
    }
    // SAFETY: a fresh shared mapping chosen by the kernel of the memfd, `len` bytes as the
    // listener announced (it sealed the memfd at least that long).
    let base = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &fds[0],
            0,
        )
    }?;
    // SAFETY: `base` maps `len` bytes, checked by `shm_reply` to hold both rings of `cap`.
    unsafe { shm_publish_oversized(base.cast(), cap) };
    rustix::io::write(&fds[3], &1u64.to_ne_bytes())?;
    // SAFETY: the mapping made above, not used after this.
    unsafe { rustix::mm::munmap(base, len) }?;
    Ok(())
}

/// The raw ring writer for shm on Windows: the set-up by hand (the hello on the named pipe,
/// the 72-byte reply whose five handle values the listener duplicated into this process),
/// then the oversized record in a view of the section and the listener's data event set.
#[cfg(windows)]
fn shm_oversized(ep: &Endpoint) -> io::Result<()> {
    use support::win32::{open, Handle};
    use windows_sys::Win32::{
        Foundation::{GENERIC_READ, GENERIC_WRITE, HANDLE},
        Storage::FileSystem::{ReadFile, WriteFile},
        System::{
            Memory::{
                MapViewOfFile, UnmapViewOfFile, FILE_MAP_ALL_ACCESS, MEMORY_MAPPED_VIEW_ADDRESS,
            },
            Threading::SetEvent,
        },
    };
    let pipe = open(
        &format!(r"\\.\pipe\ductwork-shm-{}", ep.address()),
        GENERIC_READ | GENERIC_WRITE,
    )?;
    let hello = shm_hello();
    let mut n = 0u32;
    // SAFETY: `pipe` is open; `hello` is valid for its length and `n` for a write; the
    // handle is synchronous (no OVERLAPPED).
    let ok = unsafe {
        WriteFile(
            pipe.0,
            hello.as_ptr(),
            hello.len() as u32,
            &mut n,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 || n as usize != hello.len() {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 72];
    let mut got = 0;
    while got < reply.len() {
        // SAFETY: as for WriteFile; the buffer is valid for the bytes not read yet.
        let ok = unsafe {
            ReadFile(
                pipe.0,
                reply[got..].as_mut_ptr(),
                (reply.len() - got) as u32,
                &mut n,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 || n == 0 {
            return Err(io::Error::other(format!("set-up reply cut at {got} bytes")));
        }
        got += n as usize;
    }
    let (cap, len) = shm_reply(&reply)?;
    // Ours now: the listener duplicated them into this process (closed on drop).
    let handles: Vec<Handle> = (0..5)
        .map(|i| {
            let at = 32 + 8 * i;
            let v = u64::from_le_bytes(reply[at..at + 8].try_into().unwrap());
            Handle(v as usize as HANDLE)
        })
        .collect();
    // SAFETY: a section handle; the system chooses the address; fails if it is smaller.
    let view = unsafe { MapViewOfFile(handles[0].0, FILE_MAP_ALL_ACCESS, 0, 0, len) };
    if view.Value.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `view` maps `len` bytes, checked by `shm_reply` to hold both rings of `cap`.
    unsafe { shm_publish_oversized(view.Value.cast(), cap) };
    // SAFETY: an event handle of ours; then the view mapped above, not used after this.
    unsafe {
        SetEvent(handles[3].0);
        UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS { Value: view.Value });
    }
    Ok(())
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
