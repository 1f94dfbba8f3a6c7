//! The transports under test: one entry per backend, with how to make a fresh endpoint and,
//! where the mechanism allows it, how to write raw garbage to a listener.

use ductwork_core::Endpoint;
use std::io;

/// One transport under test.
#[derive(Clone)]
pub struct Subject {
    /// The name in test names (the scheme, or scheme plus variant).
    pub name: &'static str,
    /// A fresh endpoint for a test; `unique` is different for every case and process.
    pub endpoint: fn(unique: &str) -> String,
    /// Writes garbage to a listener at the endpoint with raw OS calls (no ductwork code), if
    /// the mechanism lets a raw client in.
    pub garbage: Option<fn(&Endpoint) -> io::Result<()>>,
}

pub fn all() -> Vec<Subject> {
    vec![
        Subject {
            name: "tcp",
            endpoint: |_| "tcp://127.0.0.1:0".into(),
            garbage: Some(tcp_garbage),
        },
        Subject {
            name: "udp",
            endpoint: |_| "udp://127.0.0.1:0".into(),
            garbage: Some(udp_garbage),
        },
        Subject {
            name: "unix",
            endpoint: |u| {
                let dir = std::env::temp_dir();
                format!("unix://{}/dw-conf-{u}.sock", dir.display())
            },
            garbage: Some(unix_garbage),
        },
        Subject {
            name: "copydata",
            endpoint: |u| format!("copydata://conf-{u}"),
            garbage: Some(copydata_garbage),
        },
    ]
}

/// The garbage every raw client writes: a length far over any limit, then noise.
pub const GARBAGE: &[u8] = b"\xde\xad\xbe\xefnot a ductwork frame at all";

fn tcp_garbage(ep: &Endpoint) -> io::Result<()> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(ep.address())?;
    s.write_all(GARBAGE)?;
    s.flush()
}

fn udp_garbage(ep: &Endpoint) -> io::Result<()> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.connect(ep.address())?;
    for g in [GARBAGE, &[0u8][..], &[1, 2, 3][..], &[0xff; 300][..]] {
        s.send(g)?;
    }
    Ok(())
}

#[cfg(unix)]
fn unix_garbage(ep: &Endpoint) -> io::Result<()> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(ep.address())?;
    s.write_all(GARBAGE)?;
    s.flush()
}

#[cfg(not(unix))]
fn unix_garbage(_ep: &Endpoint) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no unix sockets here",
    ))
}

/// WM_COPYDATA with raw Win32 calls: a foreign `dwData` tag, garbage bytes and empty blocks
/// with the ductwork tag, and a WM_COPYDATA with no COPYDATASTRUCT at all. The ductwork tag and results are the ones `copydata/mod.rs` documents.
#[cfg(windows)]
fn copydata_garbage(ep: &Endpoint) -> io::Result<()> {
    use windows_sys::Win32::{
        System::DataExchange::COPYDATASTRUCT,
        UI::WindowsAndMessaging::{
            FindWindowExW, SendMessageTimeoutW, HWND_MESSAGE, SMTO_ABORTIFHUNG, WM_COPYDATA,
        },
    };
    const MAGIC: usize = 0x4457_4344;
    let wide = |s: &str| s.encode_utf16().chain(Some(0)).collect::<Vec<u16>>();
    let class = wide(&format!("ductwork.copydata.{}", ep.address()));
    let title = wide(ep.address());
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let hwnd = unsafe {
        FindWindowExW(
            HWND_MESSAGE,
            std::ptr::null_mut(),
            class.as_ptr(),
            title.as_ptr(),
        )
    };
    if hwnd.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no receiver window",
        ));
    }
    let mut noise = GARBAGE.to_vec();
    let send = |tag: usize, data: &mut [u8], len: u32, null_data: bool, expect: usize| {
        let cds = COPYDATASTRUCT {
            dwData: tag,
            cbData: len,
            lpData: if null_data {
                std::ptr::null_mut()
            } else {
                data.as_mut_ptr().cast()
            },
        };
        let mut result = usize::MAX;
        // SAFETY: `cds` and `data` outlive the call, and `len` never exceeds `data.len()` when
        // the pointer is not null.
        let ok = unsafe {
            SendMessageTimeoutW(
                hwnd,
                WM_COPYDATA,
                0,
                &cds as *const _ as isize,
                SMTO_ABORTIFHUNG,
                10_000,
                &mut result,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        if result != expect {
            return Err(io::Error::other(format!(
                "tag {tag:#x}, {len} bytes: result {result}, expected {expect}"
            )));
        }
        Ok(())
    };
    let n = noise.len() as u32;
    send(0xbad, &mut noise, n, false, 0)?;
    send(MAGIC, &mut noise, n, false, 1)?;
    send(MAGIC, &mut noise, 0, true, 1)?;
    send(MAGIC, &mut noise, 0, false, 1)?;
    // SAFETY: a null lParam carries no pointer for the receiver to follow.
    let ok =
        unsafe { SendMessageTimeoutW(hwnd, WM_COPYDATA, 0, 0, SMTO_ABORTIFHUNG, 10_000, &mut 0) };
    let _ = ok; // refused or not delivered at all: either way the receiver must go on
    Ok(())
}

#[cfg(not(windows))]
fn copydata_garbage(_ep: &Endpoint) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "copydata is Windows only",
    ))
}
