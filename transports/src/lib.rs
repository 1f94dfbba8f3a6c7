//! ductwork's transport backends, one folder each, and the dispatch by endpoint scheme.
//!
//! | scheme | module | cargo feature |
//! |---|---|---|
//! | `tcp`, `udp`, `unix` | [`socket`] | `socket` |
//! | `shm` | [`shm`] | `shm` |
//! | `copydata` (Windows only) | [`copydata`] | `copydata` |
//! | `pipe` | [`pipe`] | `pipe` (needs `socket`: on Unix a pipe is a Unix socket) |
//! | `mailslot` | [`mailslot`] | `mailslot` |
//! | `tls` | [`tls`] | `tls` (needs `socket`: tcp inside rustls) |
//! | `nats` | [`nats`] | `nats` (a NATS server's subjects, through async-nats) |
//!
//! [`bind`] and [`connect`] pick the backend from the endpoint's scheme. A scheme no backend
//! serves is [`ErrorKind::InvalidEndpoint`] listing the [`KNOWN_SCHEMES`]; a scheme whose
//! backend this build lacks fails with [`ErrorKind::Unsupported`] naming the cargo feature; a
//! backend that exists but not on this platform says which platform it needs.
//!
//! Every backend passes the conformance suite in `tests/conformance/`, which runs the contract
//! of [`ductwork_core::transport`] across two OS processes. What backends share (framed
//! streams, the datagram sink, Unix paths and socket files, Windows handles and security)
//! lives in `common/`, once.
//!
//! # How to add a transport
//!
//! Say the new scheme is `newt://`, in a cargo feature `newt`.
//!
//! 1. **Its folder** `src/newt/`: `mod.rs` is the portable face: `pub struct Newt`
//!    implementing [`Transport`] (`scheme`, `local_endpoint`, `capabilities`, `bind`,
//!    `connect`), a `Config` read from the endpoint (options checked, capabilities included),
//!    and the module docs stating what it offers. Platform code goes in `unix.rs` /
//!    `windows.rs`, an unsupported platform in `unsupported.rs`, each selected once in
//!    `mod.rs` as `imp` and entered through the same two functions as every backend:
//!    `imp::bind(ep: &Endpoint, cfg: Config) -> Result<BoxListener>` and
//!    `imp::connect(ep: &Endpoint, cfg: Config) -> Result<BoxConnection>`.
//!    Take shared plumbing from `common/` rather than copying it.
//! 2. **Two lines in this file**: the module, `#[cfg(feature = "newt")] pub mod newt;` (two
//!    physical lines, as rustfmt writes it), and its row in the `backends!` table,
//!    `"newt" => ["newt"] => [newt::Newt];` (feature, schemes, one transport per scheme).
//!    [`transports`], [`transport_for`], the cargo-feature hint and [`KNOWN_SCHEMES`] all
//!    derive from that row.
//! 3. **One line in `transports/Cargo.toml`** `[features]`: `newt = []` (and `"newt"` in its
//!    `default` list, which the library and the command inherit), and **one forwarding line**
//!    in the root `Cargo.toml`, `newt = ["ductwork-transports/newt"]`, so an application can
//!    pick it alone.
//! 4. **Nothing else is required**: the conformance suite (`tests/conformance/subjects.rs`)
//!    and the patterns suite build their subjects from [`transports`] and
//!    [`Transport::local_endpoint`] and run every contract case across two processes against
//!    it; benches and the `ductwork` command find it the same way. To let the suite's garbage
//!    case in, add one match arm for its raw writer in `garbage_writer` there.

use ductwork_core::{
    BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Result, Transport,
};
use std::sync::Arc;

pub(crate) mod common;
mod observed;

// The backends, one folder and one cargo feature each. (Declared here rather than by the table
// below so that rustfmt, which does not expand macros, reaches their files.)
#[cfg(feature = "copydata")]
pub mod copydata;
#[cfg(feature = "mailslot")]
pub mod mailslot;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "pipe")]
pub mod pipe;
#[cfg(feature = "shm")]
pub mod shm;
#[cfg(feature = "socket")]
pub mod socket;
#[cfg(feature = "tls")]
pub mod tls;

/// The scheme table: one line per backend, `"cargo feature" => [schemes] => [transports, one
/// per scheme]`. Generates [`KNOWN_SCHEMES`], [`transports`] and the feature lookup, so they
/// cannot disagree.
macro_rules! backends {
    ($($feature:literal => [$($scheme:literal),+] => [$($transport:expr),+];)+) => {
        /// Every scheme ductwork knows, whether or not this build includes its transport.
        pub const KNOWN_SCHEMES: &[&str] = &[$($($scheme),+),+];

        /// The cargo feature that carries each scheme.
        const FEATURES: &[(&str, &str)] = &[$($(($scheme, $feature)),+),+];

        /// Every transport compiled into this build, in table order.
        pub fn transports() -> Vec<Arc<dyn Transport>> {
            #[allow(unused_mut)]
            let mut v: Vec<Arc<dyn Transport>> = Vec::new();
            $(
                #[cfg(feature = $feature)]
                v.extend([$(Arc::new($transport) as Arc<dyn Transport>),+]);
            )+
            v
        }
    };
}

backends! {
    "socket" => ["tcp", "udp", "unix"] => [socket::Tcp, socket::Udp, socket::Unix];
    "shm" => ["shm"] => [shm::Shm];
    "copydata" => ["copydata"] => [copydata::CopyData];
    "pipe" => ["pipe"] => [pipe::Pipe];
    "mailslot" => ["mailslot"] => [mailslot::Mailslot];
    "tls" => ["tls"] => [tls::Tls];
    "nats" => ["nats"] => [nats::Nats];
}

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[cfg(feature = "shm")]
#[doc(hidden)]
pub mod __fuzz {
    /// Runs the shared-memory ring reader and writer over a segment filled from `input`.
    pub fn shm_ring(input: &[u8]) {
        crate::shm::ring::fuzz_one(input)
    }

    /// Runs the shm set-up parsers (hello, listener reply, segment header) over `input`.
    #[cfg(any(target_os = "linux", windows))]
    pub fn shm_setup(input: &[u8]) {
        crate::shm::fuzz_setup(input)
    }
}

/// In-process access to the shared-memory ring for the criterion benches in `benches/`; not
/// part of the API.
#[cfg(feature = "shm")]
#[doc(hidden)]
pub mod __bench {
    use crate::shm::ring::{
        self, Consumer, HeapRegion, Pop, Producer, RingError, SharedRegion, Which,
    };
    use std::sync::Arc;

    /// One ring, both ends in this process, over ordinary heap memory.
    pub struct Ring {
        tx: Producer,
        rx: Consumer,
    }

    impl Ring {
        /// A ring of `capacity` bytes (rounded as the transport rounds `?capacity=`).
        pub fn new(capacity: usize) -> Result<Ring, String> {
            let cap = ring::valid_capacity(capacity)?;
            let region: Arc<dyn SharedRegion> = Arc::new(HeapRegion::new(ring::segment_len(cap)));
            ring::init_segment(&*region, cap);
            Ok(Ring {
                tx: Producer::new(region.clone(), cap, Which::A),
                rx: Consumer::new(region, cap, Which::A, ring::max_message(cap)),
            })
        }

        /// The largest message the ring takes.
        pub fn max_message(&self) -> usize {
            self.tx.max_message()
        }

        /// Copies `msg` in; `Ok(false)` when the ring has no room for it now.
        pub fn push(&mut self, msg: &[u8]) -> Result<bool, String> {
            self.tx.try_push(msg).map_err(describe)
        }

        /// Copies the next message out; its length, or `None` when the ring is empty.
        pub fn pop(&mut self) -> Result<Option<usize>, String> {
            match self.rx.try_pop().map_err(describe)? {
                Pop::Message(m) => Ok(Some(m.len())),
                _ => Ok(None),
            }
        }
    }

    fn describe(e: RingError) -> String {
        format!("{e:?}")
    }
}

/// The cargo feature that carries `scheme`, if ductwork knows the scheme.
fn feature_of(scheme: &str) -> Option<&'static str> {
    FEATURES
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, feature)| *feature)
}

/// The transport serving `endpoint`'s scheme: an unknown scheme is
/// [`ErrorKind::InvalidEndpoint`] listing the known ones; a known one this build lacks is
/// [`ErrorKind::Unsupported`] naming its cargo feature.
pub fn transport_for(endpoint: &Endpoint) -> Result<Arc<dyn Transport>> {
    let scheme = endpoint.scheme();
    if let Some(t) = transports().into_iter().find(|t| t.scheme() == scheme) {
        return Ok(t);
    }
    Err(match feature_of(scheme) {
        Some(feature) => Error::new(
            ErrorKind::Unsupported,
            endpoint,
            format!(
                "the {scheme}:// transport is not built into this binary (enable the cargo feature `{feature}`)"
            ),
        ),
        None => Error::new(
            ErrorKind::InvalidEndpoint,
            endpoint,
            format!(
                "unknown scheme `{scheme}` (known: {})",
                KNOWN_SCHEMES.join(", ")
            ),
        ),
    })
}

/// Binds `endpoint` with the transport its scheme names. The listener and its connections
/// emit `tracing` events and count what they carry ([`Connection::stats`](ductwork_core::Connection::stats)). `endpoint` is a string (`&str`,
/// `String`) or an [`Endpoint`] (by value or by reference).
pub async fn bind<E>(endpoint: E) -> Result<BoxListener>
where
    E: TryInto<Endpoint, Error: Into<Error>>,
{
    let ep = endpoint.try_into().map_err(Into::into)?;
    let t = transport_for(&ep)?;
    match t.bind(&ep).await {
        Ok(l) => Ok(observed::listener(l, t.scheme())),
        Err(e) => Err(observed::failed("bind", e)),
    }
}

/// Connects to `endpoint` with the transport its scheme names; `endpoint` as for [`bind`].
pub async fn connect<E>(endpoint: E) -> Result<BoxConnection>
where
    E: TryInto<Endpoint, Error: Into<Error>>,
{
    let ep = endpoint.try_into().map_err(Into::into)?;
    let t = transport_for(&ep)?;
    match t.connect(&ep).await {
        Ok(c) => Ok(observed::connected(c, t.scheme())),
        Err(e) => Err(observed::failed("connect", e)),
    }
}

/// What the transport named by `endpoint` offers there.
pub fn capabilities(endpoint: &Endpoint) -> Result<Capabilities> {
    transport_for(endpoint)?.capabilities(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run with a single backend (`--no-default-features --features socket`, as CI does): the
    /// missing ones must say which cargo feature would bring them.
    #[cfg(not(feature = "shm"))]
    #[test]
    fn missing_backend_names_its_feature() {
        let ep = Endpoint::parse("shm://orders").unwrap();
        let e = capabilities(&ep).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(
            e.to_string()
                .contains("not built into this binary (enable the cargo feature `shm`)"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_scheme_lists_the_known_ones() {
        let ep = Endpoint::parse("ftp://x").unwrap();
        let e = capabilities(&ep).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint);
        // Every scheme of the table, whatever this build has (adding one edits nothing here).
        assert!(KNOWN_SCHEMES.contains(&"tcp") && KNOWN_SCHEMES.contains(&"mailslot"));
        assert_eq!(
            e.to_string(),
            format!(
                "ftp://x: invalid endpoint: unknown scheme `ftp` (known: {})",
                KNOWN_SCHEMES.join(", ")
            )
        );
    }

    #[test]
    fn the_table_is_consistent() {
        // Every scheme has a feature, and every built transport is in the table under it.
        for scheme in KNOWN_SCHEMES {
            assert!(feature_of(scheme).is_some(), "{scheme}");
        }
        for t in transports() {
            assert!(KNOWN_SCHEMES.contains(&t.scheme()), "{}", t.scheme());
        }
        let mut sorted = KNOWN_SCHEMES.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            KNOWN_SCHEMES.len(),
            "a scheme is listed twice"
        );
    }
}
