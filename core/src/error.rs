//! The one error type of ductwork: what went wrong, on which endpoint, and why.
//!
//! Every error names the endpoint it happened on, so a log line such as
//! `tcp://10.0.0.5:7000: connection lost: peer closed without a close marker` is enough to act on.
//! Match on [`Error::kind`] to react programmatically.

use ductwork_codec::CodecError;
use std::{error::Error as StdError, fmt, io};

/// A `Result` with ductwork's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The category of an [`Error`], for matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The endpoint string is malformed or names an unknown option or value.
    InvalidEndpoint,
    /// The transport, or this operation on it, is not available in this build or on this
    /// platform (for example `copydata://` on Linux, or receiving on a mailslot's sending side).
    Unsupported,
    /// The name or address is already taken by another listener.
    AddrInUse,
    /// Nothing is listening at the endpoint (a connect found no listener there).
    NotFound,
    /// The endpoint cannot be bound on this machine for a reason other than another listener
    /// holding it: the address is not one of this host's, or a directory on the path does not
    /// exist. (A name in use is [`AddrInUse`](Self::AddrInUse); a refusal by the operating
    /// system is [`PermissionDenied`](Self::PermissionDenied).)
    Bind,
    /// The operating system refused access.
    PermissionDenied,
    /// The peer went away without closing cleanly (killed, reset, or cut in the middle of a
    /// frame). Frames sent before this may or may not have arrived.
    ConnectionLost,
    /// The connection was closed (by this side, or the peer closed and cannot receive).
    Closed,
    /// A message is larger than the endpoint's maximum frame size.
    FrameTooLarge,
    /// The peer broke the wire format (garbage bytes, bad header, data after close).
    Protocol,
    /// A frame arrived intact but does not hold a valid value of the expected type.
    Decode,
    /// A value could not be encoded.
    Encode,
    /// An operation did not complete in time (a deadline passed, or the operating system
    /// reported a time-out). An operation that merely *would block* is not one: that is
    /// [`Io`](Self::Io).
    Timeout,
    /// The peer refused this connection or request because one of its limits is reached (the
    /// detail names the limit).
    Refused,
    /// The peer received the request but reports that it could not answer it (for example a
    /// request/reply handler that panicked).
    Remote,
    /// Any other operating-system error, including arguments the operating system rejected
    /// (`io::ErrorKind::InvalidInput`) and operations that would block.
    Io,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::InvalidEndpoint => "invalid endpoint",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::AddrInUse => "address already in use",
            ErrorKind::NotFound => "nothing listening",
            ErrorKind::Bind => "cannot bind",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::ConnectionLost => "connection lost",
            ErrorKind::Closed => "connection closed",
            ErrorKind::FrameTooLarge => "message too large",
            ErrorKind::Protocol => "protocol violation",
            ErrorKind::Decode => "cannot decode message",
            ErrorKind::Encode => "cannot encode message",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Refused => "refused",
            ErrorKind::Remote => "the peer failed the request",
            ErrorKind::Io => "I/O error",
        }
    }
}

/// A ductwork error: a kind, the endpoint it concerns, a human detail and an optional cause.
///
/// Displayed as `ENDPOINT: KIND: DETAIL` (the cause follows as `: CAUSE`).
///
/// One pointer wide: the fields live behind a box, so that every `Result` the send and
/// receive paths pass up through the wrapper layers stays small (errors are the rare case;
/// their allocation is paid only when one happens).
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    endpoint: String,
    detail: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` on `endpoint`, with a human-readable `detail`.
    pub fn new(kind: ErrorKind, endpoint: impl fmt::Display, detail: impl Into<String>) -> Self {
        Error(Box::new(Inner {
            kind,
            endpoint: endpoint.to_string(),
            detail: detail.into(),
            source: None,
        }))
    }

    /// Attaches an underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(source));
        self
    }

    /// An operating-system error while doing `context` on `endpoint`; the kind is derived
    /// from the `io::ErrorKind` (see [`ErrorKind`]). For errors of binding, use
    /// [`bind`](Self::bind): there "not found" does not mean "nothing listening".
    pub fn io(endpoint: impl fmt::Display, context: impl Into<String>, err: io::Error) -> Self {
        Error::new(kind_of(err.kind()), endpoint, context).with_source(err)
    }

    /// An operating-system error while binding `endpoint` (doing `context`): a missing
    /// directory or an address this host does not have is [`ErrorKind::Bind`], a name in use
    /// [`ErrorKind::AddrInUse`], a refusal [`ErrorKind::PermissionDenied`]; anything else is
    /// mapped as by [`io`](Self::io). An empty `context` adds nothing to the message.
    pub fn bind(endpoint: impl fmt::Display, context: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::AddrNotAvailable => ErrorKind::Bind,
            k => kind_of(k),
        };
        Error::new(kind, endpoint, context).with_source(err)
    }

    /// A codec failure on `endpoint`, mapped to the matching kind.
    pub fn codec(endpoint: impl fmt::Display, err: CodecError) -> Self {
        match err {
            CodecError::Io(e) => Error::io(endpoint, "stream failed", e),
            CodecError::FrameTooLarge { .. } => {
                Error::new(ErrorKind::FrameTooLarge, endpoint, err.to_string())
            }
            CodecError::Truncated { .. } => {
                Error::new(ErrorKind::ConnectionLost, endpoint, err.to_string())
            }
            // The kind already says "protocol violation" / "cannot decode message" / "cannot
            // encode message": the detail is the codec's reason alone, not its whole Display,
            // which repeats that prefix.
            CodecError::Protocol(why) => Error::new(ErrorKind::Protocol, endpoint, why),
            CodecError::Decode(why) => Error::new(ErrorKind::Decode, endpoint, why),
            CodecError::Encode(e) => Error::new(ErrorKind::Encode, endpoint, e.to_string()),
            _ => Error::new(ErrorKind::Io, endpoint, err.to_string()),
        }
    }

    /// The category, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The endpoint this error concerns, as the user wrote it (or as it was bound).
    pub fn endpoint(&self) -> &str {
        &self.0.endpoint
    }

    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        write!(f, "{}: {}", e.endpoint, e.kind.describe())?;
        if !e.detail.is_empty() {
            write!(f, ": {}", e.detail)?;
        }
        if let Some(s) = &e.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

/// The same one line as `Display`, so that `fn main() -> Result<(), ductwork::Error>` and
/// `unwrap` print what a person can read; `{:#?}` shows the fields.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        let e = &self.0;
        f.debug_struct("Error")
            .field("kind", &e.kind)
            .field("endpoint", &e.endpoint)
            .field("detail", &e.detail)
            .field("source", &e.source)
            .finish()
    }
}

/// The kind an `io::ErrorKind` maps to: only where the two mean the same thing, else `Io`.
fn kind_of(kind: io::ErrorKind) -> ErrorKind {
    match kind {
        io::ErrorKind::AddrInUse => ErrorKind::AddrInUse,
        // Connecting where nothing listens: refused (TCP, Unix sockets), no such file or pipe
        // (Unix sockets, named pipes), or, on Windows, an address that cannot be a peer
        // (connecting to port 0).
        io::ErrorKind::NotFound
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::AddrNotAvailable => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::NotConnected => ErrorKind::ConnectionLost,
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        io::ErrorKind::Unsupported => ErrorKind::Unsupported,
        _ => ErrorKind::Io,
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn StdError + 'static))
    }
}

/// Lets APIs that take `impl TryInto<Endpoint>` accept an [`crate::Endpoint`] by value, whose
/// conversion cannot fail.
impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.0.kind {
            ErrorKind::AddrInUse => io::ErrorKind::AddrInUse,
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::Bind => io::ErrorKind::AddrNotAvailable,
            ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::ConnectionLost => io::ErrorKind::ConnectionReset,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::InvalidEndpoint => io::ErrorKind::InvalidInput,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::Decode | ErrorKind::Protocol | ErrorKind::FrameTooLarge => {
                io::ErrorKind::InvalidData
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The send and receive paths return `Result<()>` and `Result<usize>` through several
    /// layers: the error is one pointer, so those stay one and two words.
    #[test]
    fn results_stay_small() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<(), Error>>(),
            std::mem::size_of::<usize>()
        );
        assert!(std::mem::size_of::<Result<usize, Error>>() <= 2 * std::mem::size_of::<usize>());
    }

    #[test]
    fn display_names_endpoint_kind_detail_and_cause() {
        let e = Error::io(
            "tcp://127.0.0.1:1",
            "connect",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let s = e.to_string();
        assert!(
            s.starts_with("tcp://127.0.0.1:1: nothing listening: connect: "),
            "{s}"
        );
    }

    #[test]
    fn codec_errors_map_to_kinds() {
        let e = Error::codec("unix:///x", CodecError::FrameTooLarge { len: 9, max: 8 });
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge);
        assert_eq!(
            e.to_string(),
            "unix:///x: message too large: frame of 9 bytes exceeds the limit of 8 bytes"
        );
        let e = Error::codec(
            "unix:///x",
            CodecError::Truncated {
                expected: 9,
                got: 6,
            },
        );
        assert_eq!(e.kind(), ErrorKind::ConnectionLost);
    }

    /// Item: `Error::io` maps kinds faithfully (before: WouldBlock was `Timeout`, InvalidInput
    /// `InvalidEndpoint`).
    #[test]
    fn io_kinds_map_only_to_what_they_mean() {
        let kind = |k| Error::io("tcp://h:1", "op", io::Error::from(k)).kind();
        assert_eq!(kind(io::ErrorKind::TimedOut), ErrorKind::Timeout);
        assert_eq!(kind(io::ErrorKind::WouldBlock), ErrorKind::Io);
        assert_eq!(kind(io::ErrorKind::InvalidInput), ErrorKind::Io);
        assert_eq!(kind(io::ErrorKind::ConnectionRefused), ErrorKind::NotFound);
        assert_eq!(kind(io::ErrorKind::AddrInUse), ErrorKind::AddrInUse);
    }

    /// Item: a failed bind is not "nothing listening" (before: `NotFound`).
    #[test]
    fn bind_failures_have_their_own_kind_and_text() {
        let bind = |k| Error::bind("tcp://10.9.9.9:1", "", io::Error::from(k));
        for k in [io::ErrorKind::AddrNotAvailable, io::ErrorKind::NotFound] {
            let e = bind(k);
            assert_eq!(e.kind(), ErrorKind::Bind, "{k:?}");
            let s = e.to_string();
            assert!(s.starts_with("tcp://10.9.9.9:1: cannot bind: "), "{s}");
            assert!(!s.contains("nothing listening"), "{s}");
        }
        assert_eq!(bind(io::ErrorKind::AddrInUse).kind(), ErrorKind::AddrInUse);
        assert_eq!(
            bind(io::ErrorKind::PermissionDenied).kind(),
            ErrorKind::PermissionDenied
        );
    }

    /// Item: no repeated prefixes (before: "protocol violation: protocol violation: ...").
    #[test]
    fn codec_errors_do_not_repeat_the_kind() {
        let e = Error::codec("tcp://h:1", CodecError::Protocol("bad header".into()));
        assert_eq!(e.to_string(), "tcp://h:1: protocol violation: bad header");
        let e = Error::codec("tcp://h:1", CodecError::Decode("unexpected end".into()));
        assert_eq!(e.kind(), ErrorKind::Decode);
        assert_eq!(
            e.to_string(),
            "tcp://h:1: cannot decode message: unexpected end"
        );
        let e = Error::codec(
            "tcp://h:1",
            CodecError::Encode(postcard::Error::SerializeBufferFull),
        );
        assert_eq!(e.kind(), ErrorKind::Encode);
        let s = e.to_string();
        assert_eq!(s.matches("cannot encode message").count(), 1, "{s}");
    }

    /// Item: `Debug` is the readable line (before: `Error { kind: .., endpoint: .., .. }`),
    /// which is what `fn main() -> Result<(), Error>` prints.
    #[test]
    fn debug_reads_like_display() {
        let e = Error::bind(
            "tcp://127.0.0.1:7000",
            "",
            io::Error::from(io::ErrorKind::AddrInUse),
        );
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(
            format!("{e:?}").starts_with("tcp://127.0.0.1:7000: address already in use"),
            "{e:?}"
        );
        assert!(!format!("{e:?}").contains('\n'));
        assert!(format!("{e:#?}").contains("kind: AddrInUse"), "{e:#?}");
    }
}
