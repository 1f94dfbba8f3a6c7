//! Foreign clients: a process that knows nothing of ductwork writes frames exactly as
//! `docs/wire-format.md` describes them, with raw OS calls only, and a ductwork receiver in
//! this process decodes them.
//!
//! - `pipe://`: a byte stream of frames `u32 BE length + postcard payload`, then the close
//!   marker `0xFFFF_FFFF`. Written with `CreateFileW` + `WriteFile` on Windows and a
//!   `std::os::unix::net::UnixStream` to the private socket path on Unix.
//! - `mailslot://`: one postcard payload per message, no header. Written with `CreateFileW` +
//!   `WriteFile` on Windows and a `std::os::unix::net::UnixDatagram` on Unix.
//!
//! The writer is a child process: this test binary run again through `support::child`
//! (see `roles`). The payload is postcard encoded by hand (varint integers, length-prefixed
//! strings), as a client in another language would.

mod support;

use ductwork_core::{Channel, Endpoint};
use serde::{Deserialize, Serialize};
use std::io;
use support::{child::Child, must, postcard_varint};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    id: u32,
    text: String,
}

const COUNT: u32 = 3;

/// Postcard by hand: a u32 is a LEB128 varint, a String a varint length then UTF-8 bytes.
fn postcard_note(id: u32, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    postcard_varint(id as u64, &mut out);
    postcard_varint(text.len() as u64, &mut out);
    out.extend_from_slice(text.as_bytes());
    out
}

fn text_of(id: u32) -> String {
    format!(
        "native note #{id}: ünïcödé and {}",
        "x".repeat(id as usize * 100)
    )
}

/// The bytes the pipe writer sends: every frame with its header, then the close marker.
fn pipe_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for id in 0..COUNT {
        let p = postcard_note(id, &text_of(id));
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(&0xFFFF_FFFFu32.to_be_bytes());
    out
}

/// The messages the mailslot writer sends: one bare payload each.
fn mailslot_messages() -> Vec<Vec<u8>> {
    (0..COUNT)
        .map(|id| postcard_note(id, &text_of(id)))
        .collect()
}

#[cfg(windows)]
fn raw_write(kind: &str, name: &str) -> io::Result<()> {
    match kind {
        "pipe" => {
            support::win32::write_all(&format!(r"\\.\pipe\ductwork-{name}"), &[&pipe_stream()])
        }
        _ => {
            let msgs = mailslot_messages();
            let bufs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
            support::win32::write_all(&format!(r"\\.\mailslot\ductwork\{name}"), &bufs)
        }
    }
}

#[cfg(unix)]
fn raw_write(kind: &str, name: &str) -> io::Result<()> {
    use std::io::Write;
    let path = support::unix::private_socket(kind, name);
    match kind {
        "pipe" => {
            let mut s = std::os::unix::net::UnixStream::connect(path)?;
            s.write_all(&pipe_stream())?;
            s.flush()
        }
        _ => {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            s.connect(path)?;
            for m in mailslot_messages() {
                s.send(&m)?;
            }
            Ok(())
        }
    }
}

crate::child_entry!(roles);

/// The child's one role: the foreign writer of `kind` (`pipe` or `mailslot`) to the name.
fn roles(kind: &str, args: &[String]) -> Result<(), String> {
    let name = args.first().ok_or("missing name")?;
    raw_write(kind, name).map_err(|e| format!("raw {kind} writer: {e}"))
}

async fn run_child(kind: &str, name: &str) -> Result<(), String> {
    Child::spawn(kind, &[name])?.finish().await
}

fn unique(kind: &str) -> String {
    support::unique(&format!("native-{kind}"))
}

async fn recv_notes(ch: &mut Channel<Note>) -> Result<(), String> {
    for id in 0..COUNT {
        let got = support::within(&format!("note {id}"), support::DEADLINE, ch.recv())
            .await?
            .map_err(|e| e.to_string())?;
        let want = Note {
            id,
            text: text_of(id),
        };
        if got.as_ref() != Some(&want) {
            return Err(format!("note {id}: got {got:?}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_foreign_writer() {
    let name = unique("pipe");
    let ep = Endpoint::parse(&format!("pipe://{name}")).unwrap();
    let mut l = ductwork_transports::bind(&ep).await.unwrap();
    let child = tokio::spawn({
        let name = name.clone();
        async move { run_child("pipe", &name).await }
    });
    let conn = must("accept", l.accept()).await.unwrap();
    let mut ch: Channel<Note> = Channel::new(conn);
    recv_notes(&mut ch).await.unwrap();
    // The close marker the foreign writer sent is a clean end.
    let end = must("recv after the close marker", ch.recv()).await;
    assert!(matches!(end, Ok(None)), "expected a clean end, got {end:?}");
    child.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailslot_foreign_writer() {
    let name = unique("mailslot");
    let ep = Endpoint::parse(&format!("mailslot://{name}")).unwrap();
    let mut l = ductwork_transports::bind(&ep).await.unwrap();
    let mut ch: Channel<Note> = Channel::new(l.accept().await.unwrap());
    run_child("mailslot", &name).await.unwrap();
    recv_notes(&mut ch).await.unwrap();
}
