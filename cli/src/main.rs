//! The `ductwork` command line tool: benchmark every transport against raw OS baselines
//! (`ductwork bench`), and send or receive JSON messages over any endpoint (`ductwork send`,
//! `ductwork listen`). Run `ductwork --help` for details.
//!
//! - `bench`: measures latency and throughput of every transport against raw baselines
//!   ([`bench`](mod@bench)).
//! - `send` / `listen`: JSON lines on stdin/stdout carried as postcard frames ([`sendlisten`],
//!   with the envelope type in [`json`]), or with `--raw hex|base64` each line one frame's
//!   bytes ([`encoding`]), to talk to a typed service.
//! - `__peer`: hidden; the bench re-executes this binary as its peer process.
//!
//! Every failure prints one clear line to stderr and exits non-zero; nothing panics on bad
//! input.

mod bench;
mod encoding;
mod json;
mod render;
mod sendlisten;

use clap::{Parser, Subcommand};

/// Exit code for usage errors (bad arguments), as clap uses.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "ductwork",
    version,
    about = "Async multi-transport typed messaging: benchmark transports, send and listen.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure round-trip latency and one-way throughput of every transport, next to raw OS
    /// baselines; print a table and write a JSON file and an SVG plot.
    Bench(bench::BenchArgs),
    /// Read JSON values, one per line, from stdin and send each to ENDPOINT.
    #[command(long_about = sendlisten::SEND_HELP)]
    Send(sendlisten::SendArgs),
    /// Bind ENDPOINT and print every message received as one JSON line on stdout.
    #[command(long_about = sendlisten::LISTEN_HELP)]
    Listen(sendlisten::ListenArgs),
    /// Internal: the bench's peer process.
    #[command(name = "__peer", hide = true)]
    Peer {
        /// The peer's job, as JSON (written by the parent bench process).
        spec: String,
    },
}

/// Parses the command line, runs the command and returns the process exit code.
fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Send(args) => sendlisten::send(args),
        Command::Listen(args) => sendlisten::listen(args),
        Command::Peer { spec } => bench::peer::run(&spec),
    }
}

/// Binds a parsed endpoint through the library's `bind`, as applications do (so the bench
/// measures what they get, tracing and counters included).
pub async fn bind_ep(ep: &ductwork::Endpoint) -> ductwork::Result<ductwork::BoxListener> {
    ductwork::bind(ep).await
}

/// Connects to a parsed endpoint; see [`bind_ep`].
pub async fn connect_ep(ep: &ductwork::Endpoint) -> ductwork::Result<ductwork::BoxConnection> {
    ductwork::connect(ep).await
}

fn main() {
    std::process::exit(run());
}
