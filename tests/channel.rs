//! The typed channel over a real TCP connection: the size limit (a value that encodes larger
//! than the endpoint's `max_frame` is refused on send with `FrameTooLarge` naming the
//! endpoint, nothing is written, and the channel stays usable) and borrowed decoding (fields
//! read in place from the received frame).

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

#[derive(Serialize)]
struct Blob {
    id: u32,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    name: String,
}

#[derive(Deserialize)]
struct BlobRef<'a> {
    id: u32,
    data: &'a [u8],
    name: &'a str,
}

#[tokio::test]
async fn borrowed_decode_reads_fields_in_place() {
    let mut listener = ductwork::bind("tcp://127.0.0.1:0").await.unwrap();
    let ep = listener.endpoint().clone();
    let mut client: Channel<Blob, ()> = ductwork::connect_channel(ep).await.unwrap();
    let mut server: Channel<(), ()> = ductwork::accept_channel(&mut listener).await.unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    client
        .send(&Blob {
            id: 7,
            data: data.clone(),
            name: "chunk".into(),
        })
        .await
        .unwrap();

    let frame = server.recv_frame().await.unwrap().expect("a frame");
    let blob: BlobRef<'_> = server.decode_frame(&frame).unwrap();
    assert_eq!((blob.id, blob.name), (7, "chunk"));
    assert_eq!(blob.data, &data[..]);
    let inside = |p: *const u8| frame.as_ptr_range().contains(&p);
    assert!(inside(blob.data.as_ptr()), "bytes borrowed, not copied");
    assert!(inside(blob.name.as_ptr()), "str borrowed, not copied");

    // A frame that is not a BlobRef fails with Decode, naming the endpoint.
    let e = server
        .decode_frame::<BlobRef<'_>>(&frame[..10])
        .err()
        .expect("truncated value");
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert!(e.to_string().contains(listener.endpoint().address()), "{e}");

    client.close().await.unwrap();
    assert!(server.recv_frame().await.unwrap().is_none(), "clean end");
}
