//! The portable half of an `shm://` connection's set-up, shared by the Linux and Windows
//! layers: the handshake words, reading the client's hello, parsing the listener's reply, the
//! per-listener limits, and the listener whose set-ups run on their own tasks.
//!
//! Both layers speak the same handshake over their naming channel (a Unix socket, a named
//! pipe): the client sends [`HELLO`] followed by its own `max_frame` (u64 LE); the listener
//! answers [`REPLY_OK`] followed by the capacity, the segment length and its own `max_frame`
//! (u64 LE each) and then the OS objects (descriptors or handle values; the reply's length is
//! the OS layer's), or refuses with [`REPLY_NO`], a reason code and a detail word (u64 LE
//! each, then zeros up to the reply's length), so that the client can say what went wrong
//! instead of "closed". Each side then caps the messages it sends at the smaller of both
//! `max_frame`s: a message the peer would refuse fails locally with `FrameTooLarge` and the
//! connection stays usable, as on the stream transports. A client of another handshake
//! version (its hello is `DWSHMhi` and another digit) is refused with [`NO_VERSION`], so both
//! sides say that the versions differ; any other hello is dropped as garbage.

use super::conn::ShmConnection;
use ductwork_core::{async_trait, BoxConnection, Endpoint, Error, ErrorKind, Listener, Result};
use std::{
    future::Future,
    io,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
    task::JoinHandle,
};

/// What a client sends first, followed by its `max_frame` (u64 LE): [`HELLO_LEN`] bytes.
pub(super) const HELLO: &[u8; 8] = b"DWSHMhi2";
/// The length of a client's hello: the word and its `max_frame`.
pub(super) const HELLO_LEN: usize = 16;
/// The start of the hellos of every handshake version (v1 was the word alone, no limit).
const HELLO_ANY: &[u8; 7] = b"DWSHMhi";
/// This handshake's version, the detail of a [`NO_VERSION`] refusal.
const VERSION: u64 = 2;
/// How the listener's set-up reply starts when it accepts the client.
pub(super) const REPLY_OK: &[u8; 8] = b"DWSHMok2";
/// How the listener's set-up reply starts when it refuses the client.
pub(super) const REPLY_NO: &[u8; 8] = b"DWSHMno2";
/// The start of the replies of every handshake version (v1 had no `max_frame` word).
const REPLY_V1: &[u8; 7] = b"DWSHMok";
/// The common head of an accepting reply: the word, capacity, segment length, `max_frame`.
pub(super) const REPLY_HEAD: usize = 32;
/// Refusal reason: the client runs as another user.
pub(super) const NO_OTHER_USER: u64 = 1;
/// Refusal reason: the listener could not make the connection's objects (out of
/// descriptors, memory, handles); the OS error number follows.
pub(super) const NO_RESOURCES: u64 = 2;
/// Refusal reason: the listener holds its `max_conns` connections; the limit follows.
pub(super) const NO_MAX_CONNS: u64 = 3;
/// Refusal reason: another connection would take the listener over its `max_memory`; the
/// limit in bytes follows.
pub(super) const NO_MAX_MEMORY: u64 = 4;
/// Refusal reason: the client speaks another handshake version; the listener's follows.
pub(super) const NO_VERSION: u64 = 5;
/// How long a connecting client may take to say hello.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How many finished set-ups may wait for `accept`.
const ACCEPT_QUEUE: usize = 16;

/// A client's hello: [`HELLO`] and `max_frame`, the [`HELLO_LEN`] bytes it sends first.
pub(super) fn hello(max_frame: usize) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..8].copy_from_slice(HELLO);
    h[8..].copy_from_slice(&(max_frame as u64).to_le_bytes());
    h
}

/// How many bytes of hello to read, given its first 8: the whole of ours, else just those
/// (another version's, or garbage, is judged on them).
fn hello_len(head: &[u8]) -> usize {
    if head.starts_with(HELLO) {
        HELLO_LEN
    } else {
        8
    }
}

/// Whether a hello's first 8 bytes are those of another handshake version.
fn other_version(head: &[u8]) -> bool {
    head.len() >= 8 && head.starts_with(HELLO_ANY) && !head.starts_with(HELLO)
}

/// Checks a client's hello (the [`HELLO_LEN`] bytes it sent, or the 8 of another version's
/// word) and returns the client's `max_frame`: a hello of another version is a `Protocol`
/// error saying so, anything else that is not a hello with a non-zero limit a `Protocol`
/// error too.
pub(super) fn parse_hello(ep: &Endpoint, hello: &[u8]) -> Result<usize> {
    let bad = |why: String| Error::new(ErrorKind::Protocol, ep, why);
    if other_version(hello) {
        let v = hello[7].escape_ascii();
        return Err(bad(format!(
            "a client speaks set-up version {v} (hello `DWSHMhi{v}`), this listener version \
             {VERSION}: both sides need the same ductwork version"
        )));
    }
    if hello.len() != HELLO_LEN || !hello.starts_with(HELLO) {
        return Err(bad("bad hello from a client".into()));
    }
    match word(hello, 8) {
        0 => Err(bad("a client announces a max_frame of 0 bytes".into())),
        max => Ok(usize::try_from(max).unwrap_or(usize::MAX)),
    }
}

/// Reads the client's hello (within [`HELLO_TIMEOUT`]), checks it and returns the client's
/// `max_frame`. A client of another version is told so with a [`NO_VERSION`] refusal of
/// `reply_len` bytes (the OS layer's reply length), so that it can say why too.
pub(super) async fn read_hello(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    ep: &Endpoint,
    reply_len: usize,
) -> Result<usize> {
    let mut hello = [0u8; HELLO_LEN];
    // The word first: a client of another version may send nothing after it.
    let read = async {
        stream.read_exact(&mut hello[..8]).await?;
        let n = hello_len(&hello[..8]);
        stream.read_exact(&mut hello[8..n]).await?;
        Ok::<_, io::Error>(n)
    };
    let n = match tokio::time::timeout(HELLO_TIMEOUT, read).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(Error::io(ep, "read the client's hello", e)),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                ep,
                "the client said no hello",
            ))
        }
    };
    if other_version(&hello[..n]) {
        let _ = stream
            .write_all(&refusal(reply_len, NO_VERSION, VERSION))
            .await;
    }
    parse_hello(ep, &hello[..n])
}

/// The head of an accepting reply of `len` bytes (at least [`REPLY_HEAD`]); the OS layer
/// writes its objects after it.
pub(super) fn accept_reply(
    len: usize,
    capacity: usize,
    seg_len: usize,
    max_frame: usize,
) -> Vec<u8> {
    let mut r = vec![0u8; len.max(REPLY_HEAD)];
    r[..8].copy_from_slice(REPLY_OK);
    r[8..16].copy_from_slice(&(capacity as u64).to_le_bytes());
    r[16..24].copy_from_slice(&(seg_len as u64).to_le_bytes());
    r[24..32].copy_from_slice(&(max_frame as u64).to_le_bytes());
    r
}

/// A refusal reply of `len` bytes (at least 24): [`REPLY_NO`], `code`, `detail`, zeros.
pub(super) fn refusal(len: usize, code: u64, detail: u64) -> Vec<u8> {
    let mut no = vec![0u8; len.max(24)];
    no[..8].copy_from_slice(REPLY_NO);
    no[8..16].copy_from_slice(&code.to_le_bytes());
    no[16..24].copy_from_slice(&detail.to_le_bytes());
    no
}

/// The detail word of a [`NO_RESOURCES`] refusal: the OS error number of `cause`, or 0.
pub(super) fn os_detail(cause: &io::Error) -> u64 {
    i64::from(cause.raw_os_error().unwrap_or(0)) as u64
}

/// What an accepting reply says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reply {
    /// The segment's length in bytes (at most that of the largest capacity).
    pub(super) seg_len: usize,
    /// The listener's `max_frame`.
    pub(super) max_frame: usize,
}

/// The word at byte `i` of `reply` (0 past its end).
pub(super) fn word(reply: &[u8], i: usize) -> u64 {
    reply
        .get(i..i + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Parses the listener's set-up reply (`reply`, all the bytes received; `expected` is the OS
/// layer's reply length): a refusal becomes the error that says why, anything but a
/// well-formed acceptance a `Protocol` error. Every word is checked before use.
pub(super) fn parse_reply(ep: &Endpoint, reply: &[u8], expected: usize) -> Result<Reply> {
    let bad = |why: String| Error::new(ErrorKind::Protocol, ep, why);
    if reply.len() >= 24 && reply.starts_with(REPLY_NO) {
        return Err(refused(ep, reply));
    }
    if reply.starts_with(REPLY_V1) && !reply.starts_with(REPLY_OK) {
        return Err(bad(
            "the listener runs another ductwork version (its set-up reply is not ours); \
             both sides need the same"
                .into(),
        ));
    }
    if reply.len() != expected || expected < REPLY_HEAD || !reply.starts_with(REPLY_OK) {
        return Err(bad("the listener's set-up reply is not ductwork's".into()));
    }
    let seg_len = word(reply, 16);
    let seg_len = usize::try_from(seg_len)
        .ok()
        .filter(|l| *l <= super::ring::segment_len(super::ring::MAX_CAPACITY))
        .ok_or_else(|| {
            bad(format!(
                "the listener announces a segment of {seg_len} bytes"
            ))
        })?;
    let max_frame = usize::try_from(word(reply, 24)).unwrap_or(usize::MAX);
    if max_frame == 0 {
        return Err(bad("the listener announces a max_frame of 0 bytes".into()));
    }
    Ok(Reply { seg_len, max_frame })
}

/// The client's error for a refusal reply (one that starts with [`REPLY_NO`]).
pub(super) fn refused(ep: &Endpoint, reply: &[u8]) -> Error {
    let detail = word(reply, 16);
    match word(reply, 8) {
        NO_OTHER_USER => Error::new(
            ErrorKind::PermissionDenied,
            ep,
            "the listener refused our uid (it admits only its own user, or its `allow_uids`)",
        ),
        NO_RESOURCES => {
            let os = i32::try_from(detail as i64).unwrap_or(0);
            let e = Error::new(
                ErrorKind::Refused,
                ep,
                "the listener could not set up the connection: it ran out of resources \
                 (descriptors, memory or handles); try again later",
            );
            if os != 0 {
                e.with_source(io::Error::from_raw_os_error(os))
            } else {
                e
            }
        }
        NO_MAX_CONNS => Error::new(
            ErrorKind::Refused,
            ep,
            format!(
                "the listener holds its limit of {detail} connections (max_conns={detail}); \
                 try again when one has closed"
            ),
        ),
        NO_MAX_MEMORY => Error::new(
            ErrorKind::Refused,
            ep,
            format!(
                "the listener's shared memory limit (max_memory={detail} bytes) is taken by \
                 its other connections; try again when one has closed"
            ),
        ),
        NO_VERSION => Error::new(
            ErrorKind::Protocol,
            ep,
            format!(
                "the listener speaks set-up version {detail}, this client version {VERSION} \
                 (its set-up handshake is not ours); both sides need the same ductwork version"
            ),
        ),
        code => Error::new(
            ErrorKind::Refused,
            ep,
            format!("the listener refused the connection (reason code {code})"),
        ),
    }
}

/// A listener's limits and what its live connections take of them. Every connection from
/// set-up to drop holds a [`Slot`]; a client beyond a limit is refused before the listener
/// makes anything for it.
pub(super) struct Limits {
    endpoint: Endpoint,
    max_conns: usize,
    max_memory: usize,
    /// Segment bytes per connection.
    seg_len: usize,
    live: AtomicUsize,
    /// A refusal was logged at `warn` since the last slot was given back.
    warned: AtomicBool,
}

/// One connection's share of its listener's [`Limits`], given back on drop.
pub(super) struct Slot(Arc<Limits>);

impl Limits {
    /// Limits of `max_conns` connections and `max_memory` bytes of segments of `seg_len`.
    pub(super) fn new(
        ep: &Endpoint,
        max_conns: usize,
        max_memory: usize,
        seg_len: usize,
    ) -> Arc<Limits> {
        Arc::new(Limits {
            endpoint: ep.clone(),
            max_conns,
            max_memory,
            seg_len: seg_len.max(1),
            live: AtomicUsize::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// Takes a slot, or says which limit is reached: the refusal's reason code and detail.
    pub(super) fn take(self: &Arc<Self>) -> std::result::Result<Slot, (u64, u64)> {
        let by_memory = self.max_memory / self.seg_len;
        let r = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_conns && n < by_memory).then_some(n + 1)
            });
        let refusal = match r {
            Ok(_) => return Ok(Slot(self.clone())),
            Err(n) if n >= self.max_conns => (NO_MAX_CONNS, self.max_conns as u64),
            Err(_) => (NO_MAX_MEMORY, self.max_memory as u64),
        };
        if !self.warned.swap(true, Ordering::AcqRel) {
            let (what, limit) = match refusal.0 {
                NO_MAX_CONNS => ("max_conns", refusal.1),
                _ => ("max_memory", refusal.1),
            };
            tracing::warn!(
                endpoint = %self.endpoint,
                "shm listener at its limit {what}={limit}: refusing new clients until a \
                 connection closes"
            );
        }
        Err(refusal)
    }

    /// Connections holding a slot now.
    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.warned.store(false, Ordering::Release);
    }
}

/// The fuzz target `shm_setup`'s body: `input` as the bytes a peer can send during set-up
/// (a client's hello as the listener reads it, the listener's reply in both OS layers'
/// lengths, a segment header). Any outcome but a panic is fine; a hello taken must carry a
/// usable limit.
pub(crate) fn fuzz_one(input: &[u8]) {
    use super::ring::SharedRegion;
    let ep = Endpoint::parse("shm://fuzz").expect("a valid endpoint");
    let head = &input[..input.len().min(8)];
    let hello = &input[..input.len().min(hello_len(head))];
    match parse_hello(&ep, hello) {
        Ok(max) => assert!(max > 0 && hello.starts_with(HELLO) && hello.len() == HELLO_LEN),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    for expected in [REPLY_HEAD, 72] {
        let reply = &input[..input.len().min(expected)];
        if let Err(e) = parse_reply(&ep, reply, expected) {
            let _ = e.to_string();
        }
    }
    // The segment header a listener wrote, in a region as long as the rest of the input.
    let rest = input.get(REPLY_HEAD..).unwrap_or(&[]);
    let region = super::ring::HeapRegion::new(rest.len().min(1 << 16));
    for (i, b) in rest.iter().take(region.len()).enumerate() {
        // SAFETY: `i` is below the region's length; the region is ours alone.
        unsafe { region.base().add(i).write(*b) };
    }
    if let Ok(cap) = super::ring::check_segment(&region) {
        assert!(super::ring::segment_len(cap) <= region.len());
    }
}

/// Where an OS accept loop hands its results: finished connections, or the one error that
/// ended the loop (the listener cannot accept any more).
pub(super) type Accepted = mpsc::Sender<Result<ShmConnection>>;

/// Runs one client's set-up on its own task, so that a slow or hostile client cannot hold up
/// others; a finished connection queues (boundedly) for `accept`, a failed one is logged at
/// `warn` (the client got a refusal saying why, when the listener could still send one) and
/// never reaches `accept`: one client's failed set-up does not end the listener. A refusal
/// over a limit is logged at `debug` ([`Limits::take`] warns once per time the limit is
/// reached), so that a flood of clients does not flood the log.
pub(super) fn spawn_setup(
    tx: &Accepted,
    ep: &Endpoint,
    setup: impl Future<Output = Result<ShmConnection>> + Send + 'static,
) {
    let tx = tx.clone();
    let ep = ep.clone();
    tokio::spawn(async move {
        match setup.await {
            Ok(c) => {
                let _ = tx.send(Ok(c)).await;
            }
            Err(e) if e.kind() == ErrorKind::Refused => tracing::debug!(
                endpoint = %ep,
                error = %e,
                "shm listener refused a client over its limits"
            ),
            Err(e) => tracing::warn!(
                endpoint = %ep,
                error = %e,
                "shm set-up with a client failed; the listener keeps accepting"
            ),
        }
    });
}

/// The `shm://` listener on every OS: `accept` takes what the OS accept loop queued.
pub(super) struct QueuedListener {
    endpoint: Endpoint,
    rx: mpsc::Receiver<Result<ShmConnection>>,
    task: JoinHandle<()>,
    /// Whatever must live as long as the listener (the socket file's guard on Unix).
    _keep: Box<dyn Send + Sync>,
}

impl QueuedListener {
    /// Starts `accept_loop` with the sending end of the accept queue; `keep` lives as long as
    /// the listener.
    pub(super) fn start<F>(
        ep: &Endpoint,
        keep: Box<dyn Send + Sync>,
        accept_loop: impl FnOnce(Accepted) -> F,
    ) -> QueuedListener
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        QueuedListener {
            endpoint: ep.clone(),
            rx,
            task: tokio::spawn(accept_loop(tx)),
            _keep: keep,
        }
    }
}

#[async_trait]
impl Listener for QueuedListener {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Only the error that ended the accept loop comes out here (then "stopped"): transient
    /// ones are logged and retried by the loop itself.
    async fn accept(&mut self) -> Result<BoxConnection> {
        Ok(Box::new(self.accept_shm().await?))
    }
}

impl QueuedListener {
    /// [`Listener::accept`], returning the shm connection itself.
    pub(super) async fn accept_shm(&mut self) -> Result<ShmConnection> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(Error::new(
                ErrorKind::Io,
                &self.endpoint,
                "the listener's accepting task stopped",
            )),
        }
    }
}

impl Drop for QueuedListener {
    fn drop(&mut self) {
        // The accept loop stops first; then `_keep` (the socket file) goes.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint::parse("shm://limits-test").unwrap()
    }

    #[test]
    fn limits_refuse_past_either_limit_and_free_on_drop() {
        let l = Limits::new(&ep(), 2, usize::MAX, 1000);
        let a = l.take().unwrap();
        let _b = l.take().unwrap();
        assert_eq!(l.take().err(), Some((NO_MAX_CONNS, 2)));
        drop(a);
        assert_eq!(l.live(), 1);
        let _c = l.take().unwrap();
        // Memory for two segments and a half: the third is refused by memory.
        let m = Limits::new(&ep(), 10, 2500, 1000);
        let _s = (m.take().unwrap(), m.take().unwrap());
        assert_eq!(m.take().err(), Some((NO_MAX_MEMORY, 2500)));
    }

    #[test]
    fn refusals_name_the_limit_and_the_endpoint() {
        let e = parse_reply(&ep(), &refusal(32, NO_MAX_CONNS, 200), 32).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        let text = e.to_string();
        assert!(
            text.contains("max_conns=200") && text.contains("shm://limits-test"),
            "{text}"
        );
        let e = parse_reply(&ep(), &refusal(72, NO_MAX_MEMORY, 1 << 20), 72).unwrap_err();
        assert!(e.to_string().contains("max_memory=1048576"), "{e}");
        let os = io::Error::from_raw_os_error(24);
        let e = parse_reply(&ep(), &refusal(32, NO_RESOURCES, os_detail(&os)), 32).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
    }

    #[test]
    fn replies_are_checked_word_by_word() {
        let ok = accept_reply(32, 4096, super::super::ring::segment_len(4096), 1000);
        let r = parse_reply(&ep(), &ok, 32).unwrap();
        assert_eq!(r.max_frame, 1000);
        let bad = |reply: &[u8], expected| parse_reply(&ep(), reply, expected).unwrap_err().kind();
        assert_eq!(bad(&ok[..24], 32), ErrorKind::Protocol);
        assert_eq!(bad(&ok, 72), ErrorKind::Protocol);
        let mut old = ok.clone();
        old[7] = b'1';
        assert!(parse_reply(&ep(), &old, 32)
            .unwrap_err()
            .to_string()
            .contains("version"));
        let mut huge = ok.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(bad(&huge, 32), ErrorKind::Protocol);
        let mut zero = ok;
        zero[24..32].fill(0);
        assert_eq!(bad(&zero, 32), ErrorKind::Protocol);
    }

    #[test]
    fn hellos_carry_a_nonzero_limit_of_this_version() {
        assert_eq!(parse_hello(&ep(), &hello(1000)).ok(), Some(1000));
        assert_eq!(
            parse_hello(&ep(), &hello(usize::MAX)).ok(),
            Some(usize::MAX)
        );
        let bad = |h: &[u8]| parse_hello(&ep(), h).unwrap_err();
        assert_eq!(bad(&hello(0)).kind(), ErrorKind::Protocol);
        assert!(bad(&hello(0)).to_string().contains("max_frame of 0"));
        assert_eq!(bad(HELLO).kind(), ErrorKind::Protocol, "the word alone");
        assert_eq!(bad(&hello(1000)[..15]).kind(), ErrorKind::Protocol);
        for old in [&b"DWSHMhi1"[..], b"DWSHMhi3", b"DWSHMhi\xff"] {
            let e = bad(old);
            assert!(
                e.kind() == ErrorKind::Protocol && e.to_string().contains("version"),
                "{e}"
            );
        }
        assert!(!bad(b"DWSHMok2").to_string().contains("version"));
    }

    /// Runs `read_hello` against a client that writes `sent` and then waits: what the
    /// listener made of it, and what the client received back.
    fn serve_hello(sent: &[u8]) -> (Result<usize>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(256);
            client.write_all(sent).await.unwrap();
            let got = read_hello(&mut server, &ep(), 72).await;
            drop(server);
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            (got, back)
        })
    }

    #[test]
    fn an_old_client_is_told_that_the_versions_differ() {
        let (got, back) = serve_hello(&hello(4096));
        assert_eq!(got.ok(), Some(4096));
        assert!(back.is_empty());
        // A v1 client sends its 8-byte word and waits for the reply: it is not left waiting
        // for the limit it never sends, and gets a refusal in the reply's length.
        let (got, back) = serve_hello(b"DWSHMhi1");
        let e = got.unwrap_err();
        assert!(e.to_string().contains("set-up version 1"), "{e}");
        assert_eq!(back.len(), 72);
        let e = parse_reply(&ep(), &back, 72).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("set-up version 2"), "{e}");
        // Garbage gets nothing back.
        let (got, back) = serve_hello(b"GET / HTTP/1.1\r\n");
        assert_eq!(got.unwrap_err().kind(), ErrorKind::Protocol);
        assert!(back.is_empty());
    }

    /// The fuzz target's body over a deterministic sweep (what `scripts/fuzz.sh` runs when
    /// cargo-fuzz is missing).
    #[test]
    fn fuzz_body_sweep() {
        let ok = accept_reply(32, 4096, super::super::ring::segment_len(4096), 1000);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let mut input = ok.clone();
            input.extend_from_slice(&[0u8; 300]);
            for _ in 0..(round % 7) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % input.len();
                input[at] = (seed >> 32) as u8;
            }
            input.truncate((seed as usize >> 3) % (input.len() + 1));
            fuzz_one(&input);
        }
        fuzz_one(&[]);
        for max in [0, 1, 4096, usize::MAX] {
            for cut in 0..=HELLO_LEN + 1 {
                let mut input = hello(max).to_vec();
                input.push(0);
                fuzz_one(&input[..cut]);
            }
        }
    }
}
