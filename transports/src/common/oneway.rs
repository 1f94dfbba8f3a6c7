//! One-way transports (`mailslot://`, `copydata://`): one receiving connection that merges
//! every sender, and the halves a one-way connection cannot use.
//!
//! - [`SharedReceiver`] is the listener: its first `accept` returns the one receiving
//!   connection, later ones fail with the backend's error.
//! - [`receive_only!`](crate::common::oneway::receive_only) makes a type a receiving
//!   connection whose every send fails with the backend's error.
//! - [`send_only!`](crate::common::oneway::send_only) makes a type a sending connection
//!   whose stream yields the backend's error once, then ends.

use ductwork_core::{async_trait, BoxConnection, Endpoint, Error, Listener, Result};

/// A listener with one receiving connection for every sender.
pub(crate) struct SharedReceiver {
    endpoint: Endpoint,
    receiver: Option<BoxConnection>,
    /// The error for an `accept` after the first.
    second_accept: fn(&Endpoint) -> Error,
    /// Whatever must live as long as the listener (copydata's window thread).
    _keep: Box<dyn Send>,
}

impl SharedReceiver {
    /// A listener handing out `receiver` once; `keep` lives as long as the listener.
    pub(crate) fn new(
        endpoint: Endpoint,
        receiver: BoxConnection,
        second_accept: fn(&Endpoint) -> Error,
        keep: Box<dyn Send>,
    ) -> SharedReceiver {
        SharedReceiver {
            endpoint,
            receiver: Some(receiver),
            second_accept,
            _keep: keep,
        }
    }
}

#[async_trait]
impl Listener for SharedReceiver {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        self.receiver
            .take()
            .ok_or_else(|| (self.second_accept)(&self.endpoint))
    }
}

/// Implements `Connection` for a receiving connection (a type with an `info: ConnectionInfo`
/// field and its own `Stream`), with a `Sink` whose every send fails with `$err(&endpoint)`.
macro_rules! receive_only {
    ($t:ty, $err:path) => {
        impl ductwork_core::Connection for $t {
            fn info(&self) -> &ductwork_core::ConnectionInfo {
                &self.info
            }
        }

        impl futures::Sink<bytes::Bytes> for $t {
            type Error = ductwork_core::Error;

            fn poll_ready(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<ductwork_core::Result<()>> {
                std::task::Poll::Ready(Err($err(&self.info.endpoint)))
            }

            fn start_send(
                self: std::pin::Pin<&mut Self>,
                _item: bytes::Bytes,
            ) -> ductwork_core::Result<()> {
                Err($err(&self.info.endpoint))
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<ductwork_core::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<ductwork_core::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
    };
}
pub(crate) use receive_only;

/// Implements `Connection` for a sending connection (a type with `info: ConnectionInfo` and
/// `recv_reported: bool` fields and its own `Sink`), with a `Stream` that yields one
/// `$err(&endpoint)` error, then ends.
#[cfg_attr(not(feature = "mailslot"), allow(unused_macros))]
macro_rules! send_only {
    ($t:ty, $err:path) => {
        impl ductwork_core::Connection for $t {
            fn info(&self) -> &ductwork_core::ConnectionInfo {
                &self.info
            }
        }

        impl futures::Stream for $t {
            type Item = ductwork_core::Result<bytes::Bytes>;

            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                if std::mem::replace(&mut self.recv_reported, true) {
                    return std::task::Poll::Ready(None);
                }
                std::task::Poll::Ready(Some(Err($err(&self.info.endpoint))))
            }
        }
    };
}
#[cfg(feature = "mailslot")]
pub(crate) use send_only;
