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
use futures::SinkExt;
use std::io::{BufRead, Write};

/// `--help` text of `send`.
pub const SEND_HELP: &str = "\
Read JSON values from stdin, one per line, and send each to ENDPOINT as one message.

Messages are postcard frames holding the `Json` envelope enum (variant = postcard tag):
  0 Null | 1 Bool(bool) | 2 I64(i64, negative integers) | 3 U64(u64) | 4 F64(f64)
  | 5 String(String) | 6 Array(Vec<Json>) | 7 Object(Vec<(String, Json)>)
Blank lines are skipped; a line that is not JSON stops with an error naming the line.
At end of input the connection is closed cleanly. Example:
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
Serves connections one after another until interrupted, or until --count messages or
--connections connections were handled.

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
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("{ep}: reading stdin: {e}"))?;
        let frame = encoding
            .decode(&line)
            .map_err(|e| format!("{ep}: stdin line {}: not {}: {e}", n + 1, encoding.name()))?;
        conn.send(bytes::Bytes::from(frame))
            .await
            .map_err(|e| format!("{e} (stdin line {})", n + 1))?;
    }
    conn.close().await.map_err(|e| e.to_string())
}

async fn send_lines(ep: Endpoint, input: impl BufRead) -> Result<(), String> {
    let mut ch: Channel<Json, Json> =
        Channel::new(super::connect_ep(&ep).await.map_err(|e| e.to_string())?);
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("{ep}: reading stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("{ep}: stdin line {}: not JSON: {e}", n + 1))?;
        ch.send(&Json::from(&value))
            .await
            .map_err(|e| format!("{e} (stdin line {})", n + 1))?;
    }
    ch.close().await.map_err(|e| e.to_string())
}

/// Runs `ductwork listen`; returns the exit code.
pub fn listen(args: ListenArgs) -> i32 {
    run_on("listen", &args.endpoint, |ep| {
        listen_loop(ep, args.count, args.connections, args.raw)
    })
}

/// The next line to print from `ch`: the JSON envelope decoded, or with `raw` the frame's
/// bytes encoded. `Ok(None)` at a clean close.
async fn next_line(
    ch: &mut Channel<Json, Json>,
    raw: Option<Encoding>,
) -> ductwork::Result<Option<String>> {
    let Some(encoding) = raw else {
        return Ok(ch
            .recv()
            .await?
            .map(|msg| serde_json::Value::from(&msg).to_string()));
    };
    Ok(ch.recv_frame().await?.map(|f| encoding.encode(&f)))
}

async fn listen_loop(
    ep: Endpoint,
    count: Option<u64>,
    conns: Option<u64>,
    raw: Option<Encoding>,
) -> Result<(), String> {
    let mut listener: BoxListener = super::bind_ep(&ep).await.map_err(|e| e.to_string())?;
    let bound = listener.endpoint().clone();
    eprintln!("listening on {bound}");
    let mut printed = 0u64;
    let mut served = 0u64;
    let done = |printed: u64, served: u64| {
        count.is_some_and(|c| printed >= c) || conns.is_some_and(|c| served >= c)
    };
    if done(printed, served) {
        return Ok(());
    }
    loop {
        let mut ch: Channel<Json, Json> = ductwork::accept_channel(&mut listener)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match next_line(&mut ch, raw).await {
                Ok(Some(line)) => {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}")
                        .and_then(|_| out.flush())
                        .map_err(|e| format!("{bound}: writing stdout: {e}"))?;
                    printed += 1;
                    if done(printed, served) {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) if e.kind() == ductwork::ErrorKind::Decode => {
                    eprintln!("ductwork listen: skipped a message: {e}");
                }
                // On a shared receiver (mailslot, copydata) one sender's over-long message
                // concerns that message only: the receiver goes on (see the contract).
                Err(e)
                    if e.kind() == ductwork::ErrorKind::FrameTooLarge
                        && ch.info().capabilities.accept == ductwork::Accept::Shared =>
                {
                    eprintln!("ductwork listen: skipped a message: {e}");
                }
                Err(e) => {
                    // One broken connection does not stop the listener.
                    eprintln!("ductwork listen: connection ended: {e}");
                    break;
                }
            }
        }
        served += 1;
        if done(printed, served) {
            return Ok(());
        }
    }
}
