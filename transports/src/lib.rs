//! ductwork's transport backends, one folder each, and the dispatch by endpoint scheme.
//!
//! | scheme | module | cargo feature |
//! |---|---|---|
//! | `tcp`, `udp`, `unix` | [`socket`] | `socket` |
//! | `copydata` (Windows only) | [`copydata`] | `copydata` |
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

pub(crate) mod framed;

#[cfg(feature = "copydata")]
pub mod copydata;
#[cfg(feature = "socket")]
pub mod socket;

/// Every transport compiled into this build, in a stable order.
pub fn transports() -> Vec<Arc<dyn Transport>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn Transport>> = Vec::new();
    #[cfg(feature = "socket")]
    {
        v.push(Arc::new(socket::Tcp));
        v.push(Arc::new(socket::Udp));
        v.push(Arc::new(socket::Unix));
    }
    #[cfg(feature = "copydata")]
    v.push(Arc::new(copydata::CopyData));
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

/// Binds `endpoint` with the transport its scheme names.
pub async fn bind<E>(endpoint: E) -> Result<BoxListener>
where
    E: TryInto<Endpoint, Error = Error>,
{
    let ep = endpoint.try_into()?;
    transport_for(&ep)?.bind(&ep).await
}

/// Connects to `endpoint` with the transport its scheme names.
pub async fn connect<E>(endpoint: E) -> Result<BoxConnection>
where
    E: TryInto<Endpoint, Error = Error>,
{
    let ep = endpoint.try_into()?;
    transport_for(&ep)?.connect(&ep).await
}

/// What the transport named by `endpoint` offers there.
pub fn capabilities(endpoint: &Endpoint) -> Result<Capabilities> {
    transport_for(endpoint)?.capabilities(endpoint)
}
