//! ductwork's transport backends, one folder each, and the dispatch by endpoint scheme.
//!
//! | scheme | module | cargo feature |
//! |---|---|---|
//! | `tcp`, `udp`, `unix` | [`socket`] | `socket` |
//! | `shm` | [`shm`] | `shm` |
//! | `copydata` (Windows only) | [`copydata`] | `copydata` |
//! | `pipe` | [`pipe`] | `pipe` (needs `socket`: on Unix a pipe is a Unix socket) |
//! | `mailslot` | [`mailslot`] | `mailslot` |
//!
//! [`bind`] and [`connect`] pick the backend from the endpoint's scheme. A scheme whose backend
//! this build lacks fails with [`ErrorKind::Unsupported`] naming the cargo feature; a backend
//! that exists but not on this platform says which platform it needs.
//!
//! Every backend passes the conformance suite in `tests/conformance/`, which runs the contract
//! of [`ductwork_core::transport`] across two OS processes.

use ductwork_core::{
    BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Result, Transport,
};
use std::sync::Arc;

#[cfg(all(unix, any(feature = "socket", feature = "mailslot", feature = "shm")))]
pub(crate) mod socket_file;
// Byte-stream transports (tcp, unix, and pipe, which needs `socket`) share this.
#[cfg(feature = "socket")]
pub(crate) mod framed;

#[cfg(feature = "copydata")]
pub mod copydata;
#[cfg(any(feature = "pipe", feature = "mailslot", feature = "shm"))]
pub(crate) mod local;
#[cfg(feature = "mailslot")]
pub mod mailslot;
#[cfg(feature = "pipe")]
pub mod pipe;
#[cfg(feature = "socket")]
pub mod socket;

#[cfg(feature = "shm")]
pub mod shm;

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[cfg(feature = "shm")]
#[doc(hidden)]
pub mod __fuzz {
    /// Runs the shared-memory ring reader and writer over a segment filled from `input`.
    pub fn shm_ring(input: &[u8]) {
        crate::shm::ring::fuzz_one(input)
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

/// Every transport compiled into this build, in a stable order.
// One push per cargo feature, so a build with any subset of backends lists exactly those.
#[allow(clippy::vec_init_then_push)]
pub fn transports() -> Vec<Arc<dyn Transport>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn Transport>> = Vec::new();
    #[cfg(feature = "socket")]
    {
        v.push(Arc::new(socket::Tcp));
        v.push(Arc::new(socket::Udp));
        v.push(Arc::new(socket::Unix));
    }
    #[cfg(feature = "shm")]
    v.push(Arc::new(shm::Shm));
    #[cfg(feature = "copydata")]
    v.push(Arc::new(copydata::CopyData));
    #[cfg(feature = "pipe")]
    v.push(Arc::new(pipe::Pipe));
    #[cfg(feature = "mailslot")]
    v.push(Arc::new(mailslot::Mailslot));
    v
}

/// The cargo feature that carries `scheme`.
fn feature_of(scheme: &str) -> &'static str {
    match scheme {
        "tcp" | "udp" | "unix" => "socket",
        "shm" => "shm",
        "pipe" => "pipe",
        "mailslot" => "mailslot",
        "copydata" => "copydata",
        _ => "?",
    }
}

/// The transport serving `endpoint`'s scheme.
pub fn transport_for(endpoint: &Endpoint) -> Result<Arc<dyn Transport>> {
    transports()
        .into_iter()
        .find(|t| t.scheme() == endpoint.scheme())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                endpoint,
                format!(
                    "the {}:// transport is not built into this binary (enable the cargo feature `{}`)",
                    endpoint.scheme(),
                    feature_of(endpoint.scheme())
                ),
            )
        })
}

/// Binds `endpoint` with the transport its scheme names. `endpoint` is a string (`&str`,
/// `String`) or an [`Endpoint`] (by value or by reference).
pub async fn bind<E>(endpoint: E) -> Result<BoxListener>
where
    E: TryInto<Endpoint, Error: Into<Error>>,
{
    let ep = endpoint.try_into().map_err(Into::into)?;
    transport_for(&ep)?.bind(&ep).await
}

/// Connects to `endpoint` with the transport its scheme names; `endpoint` as for [`bind`].
pub async fn connect<E>(endpoint: E) -> Result<BoxConnection>
where
    E: TryInto<Endpoint, Error: Into<Error>>,
{
    let ep = endpoint.try_into().map_err(Into::into)?;
    transport_for(&ep)?.connect(&ep).await
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
    fn every_known_scheme_maps_to_a_feature() {
        for scheme in ductwork_core::KNOWN_SCHEMES {
            assert_ne!(feature_of(scheme), "?", "{scheme}");
        }
    }
}
