//! What `ductwork::bind`/`connect` add to every transport: per-connection counters and
//! `tracing` events (bind, accept, connect, close, peer lost), without a subscriber of the
//! library's own.

use ductwork::{Channel, ErrorKind, Stats};
use std::sync::{Arc, Mutex};

/// Collects everything the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn connections_count_and_report_what_they_do() {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(out.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client_stats, server_stats) = rt.block_on(async {
        let mut listener = ductwork::bind("tcp://127.0.0.1:0").await.unwrap();
        let at = listener.endpoint().clone();
        let mut client: Channel<String> = ductwork::connect_channel(&at).await.unwrap();
        let mut server: Channel<String> = ductwork::accept_channel(&mut listener).await.unwrap();
        for m in ["a", "bb", "ccc"] {
            client.send(&m.to_string()).await.unwrap();
        }
        for _ in 0..3 {
            server.recv().await.unwrap().unwrap();
        }
        server.send(&"reply".to_string()).await.unwrap();
        client.recv().await.unwrap().unwrap();
        let client_stats = client.stats().unwrap();
        // The client goes away without closing: the server sees the peer lost or a clean
        // end, depending on what the socket reports first.
        drop(client);
        let end = server.recv().await;
        if let Err(e) = &end {
            assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
        }
        (client_stats, server.stats().unwrap())
    });
    // postcard: a String is its length byte and its bytes.
    let sent = Stats {
        frames_out: 3,
        bytes_out: 2 + 3 + 4,
        frames_in: 1,
        bytes_in: 6,
        errors: 0,
    };
    assert_eq!(client_stats, sent);
    assert_eq!(server_stats.frames_in, 3);
    assert_eq!(server_stats.bytes_in, 9);
    assert_eq!(server_stats.frames_out, 1);
    let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    for event in ["bound", "connected", "accepted"] {
        assert!(log.contains(event), "no `{event}` event in:\n{log}");
    }
    assert!(
        log.contains("peer closed") || log.contains("peer lost"),
        "no end-of-peer event in:\n{log}"
    );
    assert!(
        log.contains("transport=\"tcp\"") || log.contains("transport=tcp"),
        "{log}"
    );
}
