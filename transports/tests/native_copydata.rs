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
//! The child is this test binary started again with `--ignored --exact child_entry` and the
//! environment variables `DW_COPYDATA_CHILD` (the mode) and `DW_COPYDATA_EP` (the endpoint).
#![cfg(windows)]

use bytes::Bytes;
use ductwork_core::{Channel, Endpoint, ErrorKind};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::{future::Future, process::Command, time::Duration};

/// The tag and results documented in `copydata/mod.rs`, repeated here as a foreign client would.
const MAGIC: usize = 0x4457_4344;
const DEADLINE: Duration = Duration::from_secs(90);

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
    let mut v = seq;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    assert!(TEXT.len() < 128);
    out.push(TEXT.len() as u8);
    out.extend_from_slice(TEXT.as_bytes());
    out.push(1);
    out
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {DEADLINE:?}"))
}

fn spawn_child(mode: &str, ep: &Endpoint) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_entry", "--nocapture"])
        .env("DW_COPYDATA_CHILD", mode)
        .env("DW_COPYDATA_EP", ep.to_string())
        .spawn()
        .expect("spawn child")
}

async fn child_succeeds(mut child: std::process::Child) {
    let status = within(
        "child exit",
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "child failed: {status}");
}

fn unique(what: &str) -> String {
    format!("copydata://native-{what}-{}", std::process::id())
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

/// The child's side: does nothing unless started by a test above.
#[test]
#[ignore = "helper: run as a child process by the other tests"]
fn child_entry() {
    let Ok(mode) = std::env::var("DW_COPYDATA_CHILD") else {
        return;
    };
    let ep = Endpoint::parse(&std::env::var("DW_COPYDATA_EP").unwrap()).unwrap();
    match mode.as_str() {
        "raw" => raw_child(&ep),
        "big" => tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(big_child(&ep)),
        other => panic!("unknown child mode {other}"),
    }
}

/// Only raw Win32: find the window, send WM_COPYDATA blocks, check each documented result.
fn raw_child(ep: &Endpoint) {
    use windows_sys::Win32::{
        System::DataExchange::COPYDATASTRUCT,
        UI::WindowsAndMessaging::{FindWindowExW, SendMessageW, HWND_MESSAGE, WM_COPYDATA},
    };
    let wide = |s: &str| s.encode_utf16().chain(Some(0)).collect::<Vec<u16>>();
    let class = wide(&format!("ductwork.copydata.{}", ep.address()));
    let title = wide(ep.address());
    let mut hwnd = std::ptr::null_mut();
    for _ in 0..300 {
        // SAFETY: both strings are NUL-terminated and outlive the call.
        hwnd = unsafe {
            FindWindowExW(
                HWND_MESSAGE,
                std::ptr::null_mut(),
                class.as_ptr(),
                title.as_ptr(),
            )
        };
        if !hwnd.is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!hwnd.is_null(), "receiver window not found");
    let send = |tag: usize, data: &[u8]| -> isize {
        let cds = COPYDATASTRUCT {
            dwData: tag,
            cbData: data.len() as u32,
            lpData: data.as_ptr() as *mut _,
        };
        // SAFETY: `cds` and `data` outlive the call; the receiver only reads them.
        unsafe { SendMessageW(hwnd, WM_COPYDATA, 0, &cds as *const _ as isize) }
    };
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
            let wide = |s: &str| s.encode_utf16().chain(Some(0)).collect::<Vec<u16>>();
            let class = wide(&format!("ductwork.copydata.{name}"));
            let title = wide(&name);
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
    let name = format!("native-hung-{}", std::process::id());
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
