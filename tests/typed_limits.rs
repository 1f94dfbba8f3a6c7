//! The typed channel's size limit: a value that encodes larger than the endpoint's
//! `max_frame` is refused on send with `FrameTooLarge` naming the endpoint, nothing is
//! written, and the channel stays usable.

use ductwork::{Channel, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    id: u32,
    body: String,
}

#[tokio::test]
async fn oversized_typed_send_is_refused_and_the_channel_stays_usable() {
    let mut listener = ductwork::bind("tcp://127.0.0.1:0?max_frame=100")
        .await
        .unwrap();
    // An Endpoint by value works as well as a string.
    let ep = listener.endpoint().clone();
    let mut client: Channel<Note, Note> = ductwork::connect_channel(ep).await.unwrap();
    let mut server: Channel<Note, Note> = ductwork::accept_channel(&mut listener).await.unwrap();

    let big = Note {
        id: 1,
        body: "x".repeat(200),
    };
    let e = client.send(&big).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
    let addr = listener.endpoint().address().to_string();
    assert!(e.to_string().contains(&addr), "names the endpoint: {e}");

    let small = Note {
        id: 2,
        body: "fits".into(),
    };
    client.send(&small).await.unwrap();
    // The refused value left nothing on the wire: the next frame is the small one.
    assert_eq!(server.recv().await.unwrap(), Some(small));
}
