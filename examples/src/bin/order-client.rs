//! A client of the order service; the transports come from configuration.
//!
//! ```text
//! cargo run -p ductwork-examples --bin order-client -- --config examples/config/tcp.toml bolt 4
//! cargo run -p ductwork-examples --bin order-client -- --config examples/config/tcp.toml --prices 3
//! ```
//!
//! `ITEM QTY`: asks for a quote for `QTY` units of `ITEM`, places the order, and prints both
//! replies. `--prices N`: subscribes to the price feed and prints `N` updates. The client
//! reconnects by itself if the service restarts.

use ductwork::patterns::{Backoff, Client, ClientOptions, Subscriber};
use ductwork_examples::{Args, Price, Reply, Request};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("order-client: {e}");
        std::process::exit(1);
    }
}

const USAGE: &str =
    "usage: order-client [--config FILE] [--endpoint NAME=EP] (ITEM QTY | --prices N)";

async fn run() -> Result<(), String> {
    let args = Args::parse()?;
    let cfg = args.config()?;
    match args.free.as_slice() {
        [flag, n] if flag == "--prices" => {
            let n: usize = n.parse().map_err(|_| USAGE)?;
            let prices = cfg.endpoint("prices").map_err(|e| e.to_string())?;
            watch(prices, n).await
        }
        [item, qty] => {
            let qty = qty.parse::<u32>().map_err(|_| "QTY must be a number")?;
            let orders = cfg.endpoint("orders").map_err(|e| e.to_string())?;
            order(orders, item.clone(), qty).await
        }
        _ => Err(USAGE.into()),
    }
}

async fn order(orders: ductwork::Endpoint, item: String, qty: u32) -> Result<(), String> {
    let opts = ClientOptions {
        reconnect: Some(Backoff::default()),
        ..ClientOptions::default()
    };
    let client = Client::<Request, Reply>::connect_with(&orders, opts)
        .await
        .map_err(|e| e.to_string())?;
    let quote = Request::Quote {
        item: item.clone(),
        qty,
    };
    for req in [quote, Request::Place { item, qty }] {
        let reply = client.call(req.clone()).await.map_err(|e| e.to_string())?;
        println!("{req:?} -> {reply:?}");
    }
    client.close().await.map_err(|e| e.to_string())
}

async fn watch(prices: ductwork::Endpoint, n: usize) -> Result<(), String> {
    let mut sub = Subscriber::<Price>::connect(&prices, &["price."])
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..n {
        let m = sub.recv().await.map_err(|e| e.to_string())?;
        let m = m.ok_or("the service closed the price feed")?;
        println!("{} {} cents", m.body.item, m.body.cents);
    }
    sub.close().await.map_err(|e| e.to_string())
}
