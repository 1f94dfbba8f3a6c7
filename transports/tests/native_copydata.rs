//! `copydata://` beyond the shared conformance suite (Windows only; under Wine in CI).
//!
//! - A child process that uses only raw Win32 calls (`FindWindowExW` + `SendMessageW`) and a
//!   hand-written postcard encoding, as `copydata/mod.rs` documents the wire, is understood by
//!   the ductwork receiver; foreign and oversized messages get the documented results.
//! - A frame of the default limit (16 MiB) crosses processes intact; one byte more is refused.
//! - A receiver that stopped pumping makes a send fail with `Timeout`, never hang.
//! - A receiver with a smaller limit refuses a frame: `FrameTooLarge`, connection usable.
//! - A receiver that went away makes the next send fail with `ConnectionLost`.
//! - A receiver that does not read fills its bounded queue: senders wait, then time out.
//!
//! The child is this test binary started again through `support::child` (see `roles`).
#![cfg(windows)]

mod support;

use bytes::Bytes;
use ductwork_core::{Channel, Endpoint, ErrorKind};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use support::{child::Child, must as within, postcard_varint, win32};

/// The tag and results documented in `copydata/mod.rs`, repeated here as a foreign client would.
const MAGIC: usize = 0x4457_4344;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Greeting {
    seq: u32,
    text: String,
    flag: bool,
}

const TEXT: &str = "hello from raw Win32 ✓";

/// postcard by hand: u32 as LEB128 varint, string as varint length + UTF-8, bool as one byte.
fn postcard_greeting(seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    postcard_varint(u64::from(seq), &mut out);
    assert!(TEXT.len() < 128);
    out.push(TEXT.len() as u8);
    out.extend_from_slice(TEXT.as_bytes());
    out.push(1);
    out
}

fn spawn_child(mode: &str, ep: &Endpoint) -> Child {
    Child::spawn(mode, &[ep.to_string()]).expect("spawn child")
}

async fn child_succeeds(child: Child) {
    child.finish().await.unwrap();
}

fn unique(what: &str) -> String {
    format!("copydata://{}", support::unique(&format!("native-{what}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_win32_sender_is_understood() {
    // The hand encoding the raw child uses is exactly what postcard writes.
    let g = Greeting {
        seq: 300,
        text: TEXT.into(),
        flag: true,
    };
    assert_eq!(
        &ductwork_codec::encode(&g, 1024).unwrap()[..],
        &postcard_greeting(300)[..]
    );
    let ep = Endpoint::parse(&format!("{}?max_frame=1024", unique("raw"))).unwrap();
    let mut l = ductwork_transports::bind(&ep).await.unwrap();
    let mut ch: Channel<Greeting> = Channel::new(l.accept().await.unwrap());
    let child = spawn_child("raw", l.endpoint());
    for seq in [300, 301] {
        let g = within("recv", ch.recv()).await.unwrap();
        assert_eq!(
            g,
            Some(Greeting {
                seq,
                text: TEXT.into(),
                flag: true
            })
        );
    }
    child_succeeds(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limit_frame_crosses_processes() {
    let ep = Endpoint::parse(&unique("big")).unwrap();
    let mut l = ductwork_transports::bind(&ep).await.unwrap();
    let mut c = l.accept().await.unwrap();
    let max = c.info().capabilities.max_message;
    assert_eq!(max, 16 << 20);
    let child = spawn_child("big", l.endpoint());
    let f = within("recv", c.next()).await.unwrap().unwrap();
    assert_eq!(f.len(), max);
    assert!(f.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    let f = within("recv", c.next()).await.unwrap().unwrap();
    assert_eq!(&f[..], b"end");
    child_succeeds(child).await;
}

crate::child_entry!(roles);

/// The child's roles: `raw` (only raw Win32) and `big` (a ductwork sender of the largest frame).
fn roles(mode: &str, args: &[String]) -> Result<(), String> {
    let ep = Endpoint::parse(args.first().ok_or("missing endpoint")?).map_err(|e| e.to_string())?;
    match mode {
        "raw" => raw_child(&ep),
        "big" => support::runtime().block_on(big_child(&ep)),
        other => return Err(format!("unknown child mode {other}")),
    }
    Ok(())
}

/// Only raw Win32: find the window, send WM_COPYDATA blocks, check each documented result.
fn raw_child(ep: &Endpoint) {
    // Bounded: 300 tries 100 ms apart.
    let hwnd = (0..300)
        .find_map(|_| {
            let w = win32::copydata_window(ep.address());
            if w.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            w
        })
        .expect("receiver window not found");
    let send = |tag: usize, data: &[u8]| win32::send_copydata(hwnd, tag, Some(data)).unwrap();
    assert_eq!(send(MAGIC, &postcard_greeting(300)), 1, "accepted");
    assert_eq!(
        send(0x1234, &postcard_greeting(999)),
        0,
        "foreign tag refused"
    );
    assert_eq!(send(MAGIC, &[0u8; 2000]), 2, "over max_frame refused");
    assert_eq!(send(MAGIC, &postcard_greeting(301)), 1, "accepted");
}

async fn big_child(ep: &Endpoint) {
    let mut c = ductwork_transports::connect(ep).await.unwrap();
    let max = c.info().capabilities.max_message;
    let frame: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    c.send(Bytes::from(frame)).await.unwrap();
    let e = c.send(Bytes::from(vec![0u8; max + 1])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
    c.send(Bytes::from_static(b"end")).await.unwrap();
    c.close().await.unwrap();
}

/// A window of the receiver's class and name on a thread that never pumps messages.
struct HungWindow {
    done: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HungWindow {
    fn new(name: &str) -> HungWindow {
        use windows_sys::Win32::{
            System::LibraryLoader::GetModuleHandleW,
            UI::WindowsAndMessaging::{
                CreateWindowExW, DefWindowProcW, DestroyWindow, RegisterClassExW, UnregisterClassW,
                HWND_MESSAGE, WNDCLASSEXW,
            },
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done, done_rx) = std::sync::mpsc::channel::<()>();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            let class = win32::wide(&format!("ductwork.copydata.{name}"));
            let title = win32::wide(&name);
            // SAFETY: a null module name is this executable.
            let hinst = unsafe { GetModuleHandleW(std::ptr::null()) };
            // SAFETY: all-zero is a valid WNDCLASSEXW; the fields that matter are set below.
            let mut wc: WNDCLASSEXW = unsafe { std::mem::zeroed() };
            wc.cbSize = std::mem::size_of::<WNDCLASSEXW>() as u32;
            wc.lpfnWndProc = Some(DefWindowProcW);
            wc.hInstance = hinst;
            wc.lpszClassName = class.as_ptr();
            // SAFETY: `wc` is initialised and the class name outlives the registration.
            assert_ne!(unsafe { RegisterClassExW(&wc) }, 0);
            // SAFETY: registered class, NUL-terminated strings, message-only parent.
            let hwnd = unsafe {
                CreateWindowExW(
                    0,
                    class.as_ptr(),
                    title.as_ptr(),
                    0,
                    0,
                    0,
                    0,
                    0,
                    HWND_MESSAGE,
                    std::ptr::null_mut(),
                    hinst,
                    std::ptr::null(),
                )
            };
            assert!(!hwnd.is_null());
            ready_tx.send(()).unwrap();
            // Never pump: every message sent to the window waits.
            let _ = done_rx.recv();
            // SAFETY: this thread created the window and the class.
            unsafe {
                DestroyWindow(hwnd);
                UnregisterClassW(class.as_ptr(), hinst);
            }
        });
        ready_rx.recv().expect("hung window created");
        HungWindow {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for HungWindow {
    fn drop(&mut self) {
        let _ = self.done.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_receiver_times_out() {
    let name = support::unique("native-hung");
    let _hung = HungWindow::new(&name);
    let ep = Endpoint::parse(&format!("copydata://{name}?timeout_ms=300")).unwrap();
    let mut c = ductwork_transports::connect(&ep).await.unwrap();
    let e = within("send to a hung receiver", c.send(Bytes::from_static(b"hi")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains(&name), "{e}");
    // The connection is broken after a timeout: order can no longer be promised.
    let e = c.send(Bytes::from_static(b"again")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_limit_refusal_is_frame_too_large() {
    let ep = Endpoint::parse(&format!("{}?max_frame=1024", unique("limit"))).unwrap();
    let mut l = ductwork_transports::bind(&ep).await.unwrap();
    let mut rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&ep.with_option("max_frame", "4096"))
        .await
        .unwrap();
    let e = tx.send(Bytes::from(vec![5u8; 2000])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
    tx.send(Bytes::from_static(b"still usable")).await.unwrap();
    let f = within("recv", rx.next()).await.unwrap().unwrap();
    assert_eq!(&f[..], b"still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_receiver_is_connection_lost() {
    let ep = Endpoint::parse(&unique("gone")).unwrap();
    let mut l = ductwork_transports::bind(&ep).await.unwrap();
    let rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&ep).await.unwrap();
    tx.send(Bytes::from_static(b"one")).await.unwrap();
    drop(rx);
    drop(l);
    let e = tx.send(Bytes::from_static(b"two")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_receiver_bounds_memory_then_times_out() {
    let ep = Endpoint::parse(&format!("{}?max_frame=1MiB", unique("slow"))).unwrap();
    let mut l = ductwork_transports::bind(&ep).await.unwrap();
    let _rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&ep.with_option("timeout_ms", "500"))
        .await
        .unwrap();
    // The receiver queues at most 4 MiB (plus a little per frame) that nobody reads: within a
    // few 1 MiB frames a send must wait, and then fail with Timeout instead of queueing more.
    let mut sent = 0;
    let err = loop {
        match within("send", tx.send(Bytes::from(vec![1u8; 1 << 20]))).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= 8, "the receiver queued {sent} MiB without bound");
    };
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(sent >= 3, "only {sent} frames fit the budget");
}
