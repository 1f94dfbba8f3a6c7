//! `unix:///path`: framed Unix domain stream sockets (Unix only).
//!
//! The path is absolute (`unix:///run/orders.sock`), or relative to the working directory
//! only when spelled so (`unix://./orders.sock`, `unix://../run/orders.sock`): a relative
//! path keeps a deep directory under the 107-byte socket path limit. `unix://tmp/a.sock` is
//! refused with [`ErrorKind::InvalidEndpoint`](ductwork_core::ErrorKind), since it reads like
//! `/tmp/a.sock`.
//!
//! The listener's socket file is made owner-only (`0600`) right after `bind`, or the mode given
//! by the `mode` option (octal, e.g. `mode=0660`). A socket file left by a listener that died is
//! detected (connecting to it is refused) and replaced; one with a live listener behind it is
//! `AddrInUse`. The listener removes its socket file when dropped, if the file is still its own.
//! The connection-level pieces here are shared with `pipe://` on Unix.

use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Delivery, Direction,
    Endpoint, Reach, Result, Transport,
};

const OPTIONS: &[&str] = &["mode"];

/// The Unix domain stream socket transport (`unix:///path`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unix;

/// Capabilities of a framed stream on one host (unix, and pipe on Unix).
pub(crate) fn local_stream_caps(ep: &Endpoint) -> Result<Capabilities> {
    Ok(Capabilities {
        direction: Direction::Duplex,
        delivery: Delivery::Reliable,
        ordered: true,
        boundaries: Boundaries::FramedBytes,
        max_message: ep.max_frame()?,
        reach: Reach::Host,
        peer_loss: true,
        accept: Accept::PerPeer,
    })
}

#[async_trait]
impl Transport for Unix {
    fn scheme(&self) -> &'static str {
        "unix"
    }

    fn local_endpoint(&self, unique: &str) -> String {
        format!("unix://{}/{unique}.sock", std::env::temp_dir().display())
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        ep.check_options(OPTIONS)?;
        local_stream_caps(ep)
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let caps = self.capabilities(ep)?;
        imp::bind(ep, caps).await
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        let caps = self.capabilities(ep)?;
        imp::connect(ep, caps).await
    }
}

/// Used by `pipe://` on Unix, which is a Unix socket at a private path.
#[cfg(all(unix, feature = "pipe"))]
pub(crate) use imp::{bind_path, connect_path};

#[cfg(unix)]
mod imp {
    use crate::framed::{ByteStream, FramedConnection};
    use crate::socket_file::{clear_stale, Probe};
    use ductwork_core::{
        async_trait, BoxConnection, BoxListener, Capabilities, ConnectionInfo, Endpoint, Error,
        ErrorKind, Listener, Result,
    };
    use std::{
        io,
        os::unix::fs::{MetadataExt, PermissionsExt},
        path::{Path, PathBuf},
    };
    use tokio::net::{UnixListener, UnixStream};

    impl ByteStream for UnixStream {
        fn try_write_now(&self, buf: &[u8]) -> io::Result<usize> {
            self.try_write(buf)
        }
    }

    fn mode(ep: &Endpoint) -> Result<u32> {
        match ep.option("mode") {
            None => Ok(0o600),
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidEndpoint,
                        ep,
                        format!("option `mode={m}` is not an octal file mode such as 0600"),
                    )
                }),
        }
    }

    /// The socket path: absolute (`unix:///run/a.sock`), or relative to the working
    /// directory when written so (`unix://./a.sock`). `unix://tmp/a.sock` is refused: it
    /// reads like `/tmp/a.sock` but would silently mean `./tmp/a.sock`.
    fn socket_path(ep: &Endpoint) -> Result<&Path> {
        let a = ep.address();
        if a.starts_with('/') || a.starts_with("./") || a.starts_with("../") {
            return Ok(Path::new(a));
        }
        Err(Error::new(
            ErrorKind::InvalidEndpoint,
            ep,
            format!(
                "`{a}` is not an absolute path: write unix:///{a} for /{a}, or unix://./{a} \
                 for a path relative to the working directory"
            ),
        ))
    }

    pub(super) async fn bind(ep: &Endpoint, caps: Capabilities) -> Result<BoxListener> {
        let mode = mode(ep)?;
        bind_path(ep, socket_path(ep)?, mode, caps).await
    }

    pub(super) async fn connect(ep: &Endpoint, caps: Capabilities) -> Result<BoxConnection> {
        connect_path(ep, socket_path(ep)?, caps).await
    }

    /// Binds a framed stream listener at `path`, replacing a stale socket file.
    pub(crate) async fn bind_path(
        ep: &Endpoint,
        path: &Path,
        mode: u32,
        caps: Capabilities,
    ) -> Result<BoxListener> {
        clear_stale(
            ep,
            path,
            Probe::Stream,
            "another process is listening on this socket",
        )
        .await?;
        let listener = UnixListener::bind(path).map_err(|e| Error::bind(ep, "", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(ep, "set socket file permissions", e))?;
        let ino = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
        Ok(Box::new(UnixListen {
            listener,
            endpoint: ep.clone(),
            caps,
            path: path.to_path_buf(),
            ino,
        }))
    }

    /// Connects a framed stream to the listener at `path`.
    pub(crate) async fn connect_path(
        ep: &Endpoint,
        path: &Path,
        caps: Capabilities,
    ) -> Result<BoxConnection> {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                Error::new(
                    ErrorKind::NotFound,
                    ep,
                    "the socket file exists but nothing listens on it",
                )
                .with_source(e)
            } else {
                Error::io(ep, "connect", e)
            }
        })?;
        Ok(wrap(stream, ep.clone(), caps))
    }

    fn wrap(stream: UnixStream, endpoint: Endpoint, caps: Capabilities) -> BoxConnection {
        let peer = stream.peer_cred().ok().map(|c| match c.pid() {
            Some(pid) => format!("pid {pid}, uid {}", c.uid()),
            None => format!("uid {}", c.uid()),
        });
        Box::new(FramedConnection::new(
            stream,
            ConnectionInfo {
                endpoint,
                peer,
                capabilities: caps,
            },
        ))
    }

    struct UnixListen {
        listener: UnixListener,
        endpoint: Endpoint,
        caps: Capabilities,
        path: PathBuf,
        ino: Option<(u64, u64)>,
    }

    #[async_trait]
    impl Listener for UnixListen {
        fn endpoint(&self) -> &Endpoint {
            &self.endpoint
        }

        async fn accept(&mut self) -> Result<BoxConnection> {
            loop {
                match self.listener.accept().await {
                    Ok((stream, _)) => {
                        return Ok(wrap(stream, self.endpoint.clone(), self.caps.clone()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                    Err(e) => return Err(Error::io(&self.endpoint, "accept", e)),
                }
            }
        }
    }

    impl Drop for UnixListen {
        fn drop(&mut self) {
            let still_ours = std::fs::metadata(&self.path)
                .map(|m| Some((m.dev(), m.ino())) == self.ino)
                .unwrap_or(false);
            if still_ours {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use ductwork_core::{
        BoxConnection, BoxListener, Capabilities, Endpoint, Error, ErrorKind, Result,
    };

    fn unsupported(ep: &Endpoint) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            ep,
            "unix:// sockets need a Unix platform; on Windows use pipe:// (named pipes)",
        )
    }

    pub(super) async fn bind(ep: &Endpoint, _caps: Capabilities) -> Result<BoxListener> {
        Err(unsupported(ep))
    }

    pub(super) async fn connect(ep: &Endpoint, _caps: Capabilities) -> Result<BoxConnection> {
        Err(unsupported(ep))
    }
}
