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
//! The writer is a child process: this test binary run again with `DW_NATIVE_CHILD` set,
//! executing only the ignored `native_child` test. The payload is postcard encoded by hand
//! (varint integers, length-prefixed strings), as a client in another language would.

use ductwork_core::{Channel, Endpoint};
use serde::{Deserialize, Serialize};
use std::{io, time::Duration};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    id: u32,
    text: String,
}

const ENV: &str = "DW_NATIVE_CHILD";
const COUNT: u32 = 3;

/// Postcard by hand: a u32 is a LEB128 varint, a String a varint length then UTF-8 bytes.
fn postcard_note(id: u32, text: &str) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut out = Vec::new();
    varint(id as u64, &mut out);
    varint(text.len() as u64, &mut out);
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
    use windows_sys::Win32::{
        Foundation::{CloseHandle, GENERIC_READ, GENERIC_WRITE, INVALID_HANDLE_VALUE},
        Storage::FileSystem::{
            CreateFileW, WriteFile, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE,
            OPEN_EXISTING,
        },
    };
    let (path, access, bufs) = match kind {
        "pipe" => (
            format!(r"\\.\pipe\ductwork-{name}"),
            GENERIC_READ | GENERIC_WRITE,
            vec![pipe_stream()],
        ),
        _ => (
            format!(r"\\.\mailslot\ductwork\{name}"),
            GENERIC_WRITE,
            mailslot_messages(),
        ),
    };
    let wide: Vec<u16> = path.encode_utf16().chain(Some(0)).collect();
    // SAFETY: `wide` is NUL-terminated and outlives the call; other arguments are flags and
    // null pointers the API accepts.
    let h = unsafe {
        CreateFileW(
            wide.as_ptr(),
            access,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_ATTRIBUTE_NORMAL,
            std::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    let mut result = Ok(());
    for b in &bufs {
        let mut written = 0u32;
        // SAFETY: `h` is open; `b` is valid for `b.len()` bytes, `written` for a write; the
        // handle is synchronous (no OVERLAPPED).
        let ok = unsafe {
            WriteFile(
                h,
                b.as_ptr(),
                b.len() as u32,
                &mut written,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 || written as usize != b.len() {
            result = Err(io::Error::last_os_error());
            break;
        }
    }
    // SAFETY: `h` is open, owned here and not used afterwards.
    unsafe { CloseHandle(h) };
    result
}

#[cfg(unix)]
fn raw_write(kind: &str, name: &str) -> io::Result<()> {
    use std::io::Write;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("ductwork"),
        _ => std::env::temp_dir().join(format!("ductwork-{uid}")),
    };
    match kind {
        "pipe" => {
            let mut s =
                std::os::unix::net::UnixStream::connect(dir.join(format!("pipe-{name}.sock")))?;
            s.write_all(&pipe_stream())?;
            s.flush()
        }
        _ => {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            s.connect(dir.join(format!("mailslot-{name}.sock")))?;
            for m in mailslot_messages() {
                s.send(&m)?;
            }
            Ok(())
        }
    }
}

/// The child's entry point: runs only when started by a test below with `DW_NATIVE_CHILD`.
#[test]
#[ignore = "the foreign writer, run as a child process by the other tests"]
fn native_child() {
    let spec = std::env::var(ENV).expect("run by the native client tests");
    let (kind, name) = spec.split_once(':').expect("KIND:NAME");
    raw_write(kind, name).unwrap_or_else(|e| panic!("raw {kind} writer: {e}"));
}

async fn run_child(kind: &str, name: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let status = tokio::process::Command::new(exe)
        .args(["native_child", "--exact", "--ignored", "--quiet"])
        .env(ENV, format!("{kind}:{name}"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(120), status)
        .await
        .map_err(|_| "the child writer hung".to_string())?
        .map_err(|e| e.to_string())?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("child writer failed: {status}"))
}

fn unique(kind: &str) -> String {
    format!("native-{kind}-{}", std::process::id())
}

async fn recv_notes(ch: &mut Channel<Note>) -> Result<(), String> {
    for id in 0..COUNT {
        let got = tokio::time::timeout(Duration::from_secs(120), ch.recv())
            .await
            .map_err(|_| format!("note {id}: hang"))?
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
    let conn = tokio::time::timeout(Duration::from_secs(120), l.accept())
        .await
        .expect("accept hang")
        .unwrap();
    let mut ch: Channel<Note> = Channel::new(conn);
    recv_notes(&mut ch).await.unwrap();
    // The close marker the foreign writer sent is a clean end.
    let end = tokio::time::timeout(Duration::from_secs(120), ch.recv())
        .await
        .expect("hang after the close marker");
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
