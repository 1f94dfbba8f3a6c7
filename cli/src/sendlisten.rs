//! `ductwork send ENDPOINT` and `ductwork listen ENDPOINT`: JSON lines, or raw frames, over any
//! transport.
//!
//! Each JSON value travels as one postcard frame holding the [`Json`] envelope, so any
//! ductwork program (or another language with a postcard implementation) can talk to these
//! commands. `listen` prints `listening on ENDPOINT` (with the real port for `:0`) on stderr
//! once bound, then one compact JSON line per message on stdout. `send` reads one JSON value
//! per line (blank lines are skipped), sends each, and closes cleanly at end of input.
//!
//! With `--raw hex` or `--raw base64` ([`Encoding`]) there is no envelope: each line is one
//! frame's bytes, exactly as the application's own `Channel<T>` puts them on the wire, so
//! these commands can talk to a typed service (send it the postcard bytes of its request
//! type, print the bytes it sends back).

use super::{encoding::Encoding, json::Json, EXIT_FAILURE, EXIT_USAGE};
use clap::Args;
use ductwork::{BoxListener, Channel, Endpoint};
use futures::{SinkExt, StreamExt};
use std::io::{BufRead, Write};

/// `--help` text of `send`.
pub const SEND_HELP: &str = "\
Read JSON values from stdin, one per line, and send each to ENDPOINT as one message.

Messages are postcard frames holding the `Json` envelope enum (variant = postcard tag):
  0 Null | 1 Bool(bool) | 2 I64(i64, negative integers) | 3 U64(u64) | 4 F64(f64)
  | 5 String(String) | 6 Array(Vec<Json>) | 7 Object(Vec<(String, Json)>)
Blank lines are skipped; a line that is not JSON stops with an error naming the line.
A message over the limit (ours, or the one the receiver announced when we connected) is
not sent: it is reported on stderr with its line number, the others are still sent, and
the exit status is 1. At end of input the connection is closed cleanly. Example:
  echo '{\"item\":\"bolt\",\"qty\":3}' | ductwork send tcp://127.0.0.1:7000

With --raw hex or --raw base64 there is no envelope: each line is the bytes of one frame,
sent as they are, so a typed service receives its own postcard encoding. ASCII whitespace
within a line is ignored; an empty line is a frame of zero bytes. A line that does not
decode stops with an error naming the line and column. Example (the postcard encoding of
`struct Order { id: u64, item: String, qty: u32 }` with id 7, \"bolt\", 3):
  echo '07 04 62 6f 6c 74 03' | ductwork send --raw hex unix:///tmp/orders.sock";

/// `--help` text of `listen`.
pub const LISTEN_HELP: &str = "\
Bind ENDPOINT and print every message received as one compact JSON line on stdout.

Once bound, prints `listening on ENDPOINT` on stderr (with the real port when the endpoint
asked for port 0). Messages are postcard frames holding the `Json` envelope enum (see
`ductwork send --help`); a frame that does not decode is reported on stderr and skipped, and
so is a message over the limit on a shared receiver (mailslot, copydata).
Serves up to --max-connections connections at once (32 by default; more wait to be
accepted), so an idle or stalled sender holds no one else back, until interrupted, or until
--count messages or --connections connections were handled. Lines of different connections
interleave, each line whole. A message is printed in at most --max-line bytes (64 KiB by
default): a longer line is cut and ends with ` ... [N bytes elided]`. Frames are converted
to text without building the whole value, so memory stays bounded by about
(--max-connections x the endpoint's max_frame) plus 64 lines, whatever a frame holds.

With --raw hex or --raw base64 every frame is printed as it arrived, one line of hex or
base64 per frame (an empty line for a frame of zero bytes), whatever type it holds.";

/// Arguments of `ductwork send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Where to send, e.g. tcp://127.0.0.1:7000, unix:///tmp/x.sock, shm://name.
    pub endpoint: String,
    /// Send each line's bytes as one frame, without the JSON envelope, the line written in
    /// this encoding.
    #[arg(long, value_enum, value_name = "ENCODING")]
    pub raw: Option<Encoding>,
}

/// Arguments of `ductwork listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// What to bind, e.g. tcp://127.0.0.1:7000 (port 0 picks a free one).
    pub endpoint: String,
    /// Exit after printing this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many connections have closed.
    #[arg(long)]
    pub connections: Option<u64>,
    /// Print each frame's bytes as they arrived, one line in this encoding, instead of
    /// decoding the JSON envelope.
    #[arg(long, value_enum, value_name = "ENCODING")]
    pub raw: Option<Encoding>,
    /// Serve at most this many connections at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_connections: usize,
    /// Print at most this many bytes of one message; the rest is replaced by
    /// ` ... [N bytes elided]`.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_line: usize,
}

/// Parses `endpoint` and runs `work` on it on a fresh runtime; returns the exit code. A bad
/// endpoint is a usage error, any other failure is reported as `ductwork COMMAND: ...`.
fn run_on<F, Fut>(command: &str, endpoint: &str, work: F) -> i32
where
    F: FnOnce(Endpoint) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // An endpoint that does not parse, or names no transport, is a usage error.
    let ep = match Endpoint::parse(endpoint).and_then(|ep| ductwork::transport_for(&ep).map(|_| ep))
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ductwork: {e}");
            return EXIT_USAGE;
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|rt| rt.block_on(work(ep)));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ductwork {command}: {e}");
            EXIT_FAILURE
        }
    }
}

/// Runs `ductwork send`; returns the exit code.
pub fn send(args: SendArgs) -> i32 {
    run_on("send", &args.endpoint, |ep| async move {
        let input = std::io::stdin().lock();
        match args.raw {
            None => send_lines(ep, input).await,
            Some(encoding) => send_raw(ep, input, encoding).await,
        }
    })
}

/// `send --raw`: each line decoded and sent as one frame as it is.
async fn send_raw(ep: Endpoint, input: impl BufRead, encoding: Encoding) -> Result<(), String> {
    let mut conn = super::connect_ep(&ep).await.map_err(|e| e.to_string())?;
    let mut refused = Refused::default();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("{ep}: reading stdin: {e}"))?;
        let frame = encoding
            .decode(&line)
            .map_err(|e| format!("{ep}: stdin line {}: not {}: {e}", n + 1, encoding.name()))?;
        let sent = conn.send(bytes::Bytes::from(frame)).await;
        refused.note(sent, n + 1)?;
    }
    conn.close().await.map_err(|e| e.to_string())?;
    refused.result(&ep)
}

/// The stdin lines whose message was refused as too large (over our limit or the peer's):
/// each is reported when it happens and `send` goes on with the next, since the connection
/// stays usable; the exit status then says that not everything was sent.
#[derive(Default)]
struct Refused(Vec<usize>);

impl Refused {
    /// Takes the outcome of sending stdin line `line`: a refusal is noted, other errors end.
    fn note(&mut self, sent: ductwork::Result<()>, line: usize) -> Result<(), String> {
        match sent {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ductwork::ErrorKind::FrameTooLarge => {
                eprintln!("ductwork send: stdin line {line} not sent: {e}");
                self.0.push(line);
                Ok(())
            }
            Err(e) => Err(format!("{e} (stdin line {line})")),
        }
    }

    /// `Err` naming the refused lines, if there were any.
    fn result(self, ep: &Endpoint) -> Result<(), String> {
        match self.0.as_slice() {
            [] => Ok(()),
            lines => Err(format!(
                "{ep}: {} message(s) refused as too large, not sent (stdin lines {lines:?}); \
                 every other line was sent",
                lines.len()
            )),
        }
    }
}

async fn send_lines(ep: Endpoint, input: impl BufRead) -> Result<(), String> {
    let mut ch: Channel<Json, Json> =
        Channel::new(super::connect_ep(&ep).await.map_err(|e| e.to_string())?);
    let mut refused = Refused::default();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("{ep}: reading stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("{ep}: stdin line {}: not JSON: {e}", n + 1))?;
        let sent = ch.send(&Json::from(&value)).await;
        refused.note(sent, n + 1)?;
    }
    ch.close().await.map_err(|e| e.to_string())?;
    refused.result(&ep)
}

/// Runs `ductwork listen`; returns the exit code.
pub fn listen(args: ListenArgs) -> i32 {
    run_on("listen", &args.endpoint.clone(), |ep| listen_loop(ep, args))
}

/// What a connection's task tells the printer.
enum Event {
    /// A line to print.
    Line(String),
    /// The connection ended.
    Closed,
}

/// Lines waiting for stdout: a connection whose lines are not printed yet waits (and its
/// sender with it), so memory stays bounded however fast the senders are.
const LINE_QUEUE: usize = 64;

/// How one connection's frames become lines.
#[derive(Clone, Copy)]
struct Render {
    raw: Option<Encoding>,
    max_line: usize,
}

async fn listen_loop(ep: Endpoint, args: ListenArgs) -> Result<(), String> {
    let listener: BoxListener = super::bind_ep(&ep).await.map_err(|e| e.to_string())?;
    let bound = listener.endpoint().clone();
    eprintln!("listening on {bound}");
    let (count, conns) = (args.count, args.connections);
    let done = move |printed: u64, served: u64| {
        count.is_some_and(|c| printed >= c) || conns.is_some_and(|c| served >= c)
    };
    if done(0, 0) {
        return Ok(());
    }
    let render = Render {
        raw: args.raw,
        max_line: args.max_line,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(LINE_QUEUE);
    let accepting = accept_loop(listener, tx, args.max_connections.max(1), render);
    let printing = async {
        let (mut printed, mut served) = (0u64, 0u64);
        while let Some(event) = rx.recv().await {
            match event {
                Event::Line(line) => {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}")
                        .and_then(|_| out.flush())
                        .map_err(|e| format!("{bound}: writing stdout: {e}"))?;
                    printed += 1;
                }
                Event::Closed => served += 1,
            }
            if done(printed, served) {
                return Ok(());
            }
        }
        Ok(())
    };
    tokio::select! {
        r = accepting => r,
        r = printing => r,
    }
}

/// Accepts connections and serves each on its own task, at most `slots` at once: with every
/// slot taken it accepts no more (clients wait in the backlog, or time out connecting) until
/// one ends. Returns only if the listener fails.
async fn accept_loop(
    mut listener: BoxListener,
    tx: tokio::sync::mpsc::Sender<Event>,
    slots: usize,
    render: Render,
) -> Result<(), String> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(slots));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let conn = listener.accept().await.map_err(|e| e.to_string())?;
        let shared = conn.info().capabilities.accept == ductwork::Accept::Shared;
        tokio::spawn(serve(conn, tx.clone(), slot, render));
        if shared {
            // One receiving connection for every sender: there is no other to accept.
            std::future::pending::<()>().await;
        }
    }
}

/// Prints every frame of `conn` as one line (through the printer), until it ends.
async fn serve(
    mut conn: ductwork::BoxConnection,
    tx: tokio::sync::mpsc::Sender<Event>,
    _slot: tokio::sync::OwnedSemaphorePermit,
    render: Render,
) {
    let shared = conn.info().capabilities.accept == ductwork::Accept::Shared;
    let endpoint = conn.info().endpoint.clone();
    loop {
        let line = match conn.next().await {
            Some(Ok(frame)) => match render.raw {
                Some(encoding) => Ok(crate::render::raw_line(&frame, encoding, render.max_line)),
                None => crate::render::json_line(&frame, render.max_line),
            },
            None => break,
            // On a shared receiver (mailslot, copydata) one sender's over-long message
            // concerns that message only: the receiver goes on (see the contract).
            Some(Err(e)) if shared && e.kind() == ductwork::ErrorKind::FrameTooLarge => {
                eprintln!("ductwork listen: skipped a message: {e}");
                continue;
            }
            Some(Err(e)) => {
                // One broken connection does not stop the listener.
                eprintln!("ductwork listen: connection ended: {e}");
                break;
            }
        };
        match line {
            Ok(line) => {
                if tx.send(Event::Line(line)).await.is_err() {
                    return;
                }
            }
            Err(why) => {
                eprintln!(
                    "ductwork listen: skipped a message: {endpoint}: cannot decode message: {why}"
                )
            }
        }
    }
    let _ = tx.send(Event::Closed).await;
}
