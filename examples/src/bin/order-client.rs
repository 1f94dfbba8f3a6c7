//! A request/response client for the order service; the transport comes from configuration.
//!
//! ```text
//! cargo run -p ductwork-examples --bin order-client -- --config examples/config/tcp.toml bolt 4
//! ```
//!
//! Asks for a quote for `QTY` units of `ITEM`, places the order, and prints both replies.

use ductwork::Channel;
use ductwork_examples::{Args, Reply, Request};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("order-client: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args = Args::parse()?;
    let (item, qty) = match args.free.as_slice() {
        [item, qty] => (
            item.clone(),
            qty.parse::<u32>().map_err(|_| "QTY must be a number")?,
        ),
        _ => {
            return Err(
                "usage: order-client [--config FILE] [--endpoint orders=EP] ITEM QTY".into(),
            )
        }
    };
    let endpoint = args
        .config()?
        .endpoint("orders")
        .map_err(|e| e.to_string())?;
    let mut ch: Channel<Request, Reply> = ductwork::connect_channel(&endpoint)
        .await
        .map_err(|e| e.to_string())?;
    for req in [
        Request::Quote {
            item: item.clone(),
            qty,
        },
        Request::Place { item, qty },
    ] {
        ch.send(&req).await.map_err(|e| e.to_string())?;
        let reply = ch
            .recv()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the service closed the connection")?;
        println!("{req:?} -> {reply:?}");
    }
    ch.close().await.map_err(|e| e.to_string())
}
