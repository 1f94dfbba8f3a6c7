//! `copydata://name`: one-way messages as Windows `WM_COPYDATA` window messages.
//!
//! The binding side (the receiver) creates a hidden *message-only* window named after the
//! endpoint and pumps it on a dedicated thread; connecting sides (senders) find that window and
//! send each frame with `SendMessageTimeoutW(WM_COPYDATA)`. Windows only: on every other
//! platform `bind` and `connect` fail with [`ErrorKind::Unsupported`].
//!
//! # What it offers
//! - **One-way.** The connecting side sends, the binding side receives. The receiver's only
//!   reply is the message's `LRESULT` acknowledgement; receiving on a sender or sending on the
//!   receiver is [`ErrorKind::Unsupported`].
//! - **Reliable and ordered per sender, synchronous.** `SendMessageTimeoutW` returns only once
//!   the receiver's window procedure copied the frame, so a completed send means *the receiver
//!   has the frame* (stronger than most transports). Frames of one sender arrive in order;
//!   frames of several senders interleave.
//! - **Messages.** One frame per message, no header (the datagram framing of the wire format).
//!   The largest frame is `max_frame` (default 16 MiB).
//! - **One shared receiving connection.** The first `accept` returns the single connection that
//!   merges all senders; later calls fail with [`ErrorKind::Unsupported`].
//! - **No peer-loss detection.** The receiver cannot see senders come or go. A sender sees a
//!   receiver that vanished: its next send fails with [`ErrorKind::ConnectionLost`].
//! - **Backpressure.** The receiver queues at most `max(max_frame, 4 MiB)` bytes that the
//!   application has not read yet. When that is full the pump thread waits, so the sender's
//!   `SendMessageTimeoutW` waits too. A receiver slower than `timeout_ms` per message makes the
//!   send fail with [`ErrorKind::Timeout`]; that frame may still arrive later, and the sending
//!   connection is broken afterwards (later sends fail), so order is never violated silently.
//!   (Within one process Windows passes the sender's buffer by pointer, so a timed-out frame
//!   to a receiver in the same process is deliberately leaked rather than freed under it.)
//!
//! - **Under Wine** (Wine 8) the receiving thread gets a copy of each message on its stack, so
//!   the pump thread's stack is reserved at `max_frame` + 4 MiB (address space, not memory).
//!   Found the hard way: with a default 2 MiB stack a cross-process message of about 2 MB
//!   killed the receiving thread or crashed the process. A raw sender that ignores the
//!   receiver's limit can still overflow it under Wine; Windows itself has no such problem.
//!
//! # Options
//! - `max_frame`: the largest frame (both sides check it; the receiver refuses a larger one
//!   and the sender reports [`ErrorKind::FrameTooLarge`], the connection stays usable). This
//!   is the contract's rule for shared receivers (`ductwork_core::transport`, *After an
//!   error*): an error that concerns one message (`Decode`, `FrameTooLarge`) is that
//!   message's alone and never ends the receiver. Here the refusal goes to the sender, in the
//!   message's result ([`REFUSED_TOO_LARGE`]); the receiving connection never sees the frame
//!   and goes on receiving every other sender's messages.
//! - `timeout_ms` (default 5000, sender side): how long one send waits for the receiver. A hung
//!   receiver (one that stopped pumping) is reported as [`ErrorKind::Timeout`], never a hang.
//!
//! # Limits and security
//! - **Senders are not authenticated.** Any process in the same desktop session can find the
//!   window and send to it; treat received frames as untrusted input (the typed layer decodes
//!   strictly and fails one message, not the connection).
//! - **UIPI** (User Interface Privilege Isolation) drops messages from a lower-integrity process
//!   to a higher-integrity one: a non-elevated sender cannot reach an elevated receiver.
//! - **One desktop session.** Window messages do not cross sessions (a service in session 0
//!   cannot reach a user's session), nor hosts.
//! - **Copies.** The OS copies the data once into the receiver's address space and ductwork copies
//!   it once more (the OS buffer is valid only during the message).
//! - **Names.** The receiver holds the named mutex `Local\ductwork.copydata.<name>` for its
//!   lifetime, which makes the first-instance check atomic: a second `bind` of a live name is
//!   [`ErrorKind::AddrInUse`]; the mutex of a crashed receiver is abandoned and the next `bind`
//!   takes it over. A name is at most 200 characters and contains no backslash.
//!
//! # On the wire (for non-Rust senders)
//! - The receiver's window is a message-only window (parent `HWND_MESSAGE`) of window class
//!   `ductwork.copydata.<name>` with window title `<name>`: find it with
//!   `FindWindowExW(HWND_MESSAGE, NULL, class, name)`.
//! - Send `WM_COPYDATA` with `wParam` 0 and a `COPYDATASTRUCT` whose `dwData` is [`MAGIC`],
//!   `cbData` the frame's length and `lpData` the frame (a postcard-encoded value; may be NULL
//!   when `cbData` is 0).
//! - The result is [`ACCEPTED`] (1), [`REFUSED_TOO_LARGE`] (2), [`RECEIVER_CLOSED`] (3), or 0
//!   when the message was not a ductwork frame (wrong `dwData`, NULL data with a length).

use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Delivery, Direction,
    Endpoint, Error, ErrorKind, Reach, Result, Transport,
};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;
#[cfg(not(windows))]
mod unsupported;
#[cfg(not(windows))]
use unsupported as imp;

/// The sender's option: milliseconds one send waits for the receiver.
pub const OPT_TIMEOUT_MS: &str = "timeout_ms";
/// The default of [`OPT_TIMEOUT_MS`].
pub const DEFAULT_TIMEOUT_MS: u32 = 5000;
/// The `COPYDATASTRUCT::dwData` tag of a ductwork frame (`"DWCD"`); other values are refused.
pub const MAGIC: usize = 0x4457_4344;
/// The receiver's window class is this prefix followed by the endpoint's name.
pub const CLASS_PREFIX: &str = "ductwork.copydata.";
/// The longest name, in characters (window class names are limited to 256).
pub const MAX_NAME_CHARS: usize = 200;
/// `LRESULT`: the receiver copied the frame.
pub const ACCEPTED: isize = 1;
/// `LRESULT`: the frame is larger than the receiver's `max_frame`.
pub const REFUSED_TOO_LARGE: isize = 2;
/// `LRESULT`: the receiver's application dropped its receiving connection.
pub const RECEIVER_CLOSED: isize = 3;

/// The WM_COPYDATA transport (`copydata://name`), Windows only.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyData;

/// An endpoint's settings, checked.
#[derive(Debug, Clone)]
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) struct Config {
    /// What the endpoint offers.
    pub caps: Capabilities,
    /// The endpoint (the receiver's window thread reports errors against it).
    pub endpoint: Endpoint,
    pub name: String,
    pub max: usize,
    pub timeout_ms: u32,
}

impl Config {
    fn new(ep: &Endpoint) -> Result<Config> {
        ep.check_options(&[OPT_TIMEOUT_MS])?;
        let name = ep.address();
        let bad = |why: String| Error::new(ErrorKind::InvalidEndpoint, ep, why);
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(bad(format!(
                "the name is longer than {MAX_NAME_CHARS} characters"
            )));
        }
        if name.contains('\\') {
            return Err(bad("the name contains a backslash".into()));
        }
        let timeout_ms = ep
            .parse_option::<u32>(OPT_TIMEOUT_MS)?
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 {
            return Err(bad(format!("option `{OPT_TIMEOUT_MS}` must be at least 1")));
        }
        let max = ep.max_frame()?;
        Ok(Config {
            caps: Capabilities {
                direction: Direction::OneWay,
                delivery: Delivery::Reliable,
                ordered: true,
                boundaries: Boundaries::Messages,
                max_message: max,
                reach: Reach::Session,
                peer_loss: false,
                accept: Accept::Shared,
            },
            endpoint: ep.clone(),
            name: name.to_string(),
            max,
            timeout_ms,
        })
    }
}

#[async_trait]
impl Transport for CopyData {
    fn scheme(&self) -> &'static str {
        "copydata"
    }

    fn local_endpoint(&self, unique: &str) -> String {
        format!("copydata://{unique}")
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        Ok(Config::new(ep)?.caps)
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        imp::bind(ep, Config::new(ep)?).await
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        imp::connect(ep, Config::new(ep)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let t = CopyData;
        let caps = t
            .capabilities(&Endpoint::parse("copydata://ui?max_frame=1KiB&timeout_ms=10").unwrap())
            .unwrap();
        assert_eq!(caps.max_message, 1024);
        assert_eq!(caps.direction, Direction::OneWay);
        assert_eq!(caps.accept, Accept::Shared);
        for bad in [
            "copydata://ui?timeout=1",
            "copydata://ui?timeout_ms=0",
            "copydata://ui?timeout_ms=soon",
            "copydata://a\\b",
        ] {
            let e = t.capabilities(&Endpoint::parse(bad).unwrap()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{bad}");
        }
        let long = format!("copydata://{}", "n".repeat(MAX_NAME_CHARS + 1));
        let e = t
            .capabilities(&Endpoint::parse(&long).unwrap())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint);
    }

    #[cfg(not(windows))]
    #[tokio::test]
    async fn unsupported_off_windows() {
        let ep = Endpoint::parse("copydata://ui").unwrap();
        let e = CopyData.bind(&ep).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(
            e.to_string(),
            "copydata://ui: unsupported: copydata:// is Windows only (WM_COPYDATA window messages)"
        );
        let e = CopyData.connect(&ep).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
}
