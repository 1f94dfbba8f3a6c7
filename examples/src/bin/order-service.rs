//! An order service whose transport is pure configuration.
//!
//! ```text
//! cargo run -p ductwork-examples --bin order-service -- --config examples/config/tcp.toml
//! cargo run -p ductwork-examples --bin order-service -- --config examples/config/unix.toml
//! ```
//!
//! It binds the endpoint named `orders`, prints `listening on ENDPOINT`, and serves every
//! client concurrently. With `--clients N` it exits after N clients have disconnected (handy in
//! scripts and tests); otherwise it runs until interrupted.

use ductwork::{Channel, Result};
use ductwork_examples::{unit_price, Args, Reply, Request};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ORDER: AtomicU64 = AtomicU64::new(1);

async fn serve(mut ch: Channel<Reply, Request>) -> Result<()> {
    while let Some(req) = ch.recv().await? {
        let reply = match &req {
            Request::Quote { item, qty } => match unit_price(item) {
                Some(p) => Reply::Quote {
                    cents: p * u64::from(*qty),
                },
                None => Reply::Refused {
                    reason: format!("we do not sell {item}"),
                },
            },
            Request::Place { item, qty } if unit_price(item).is_some() && *qty > 0 => {
                Reply::Placed {
                    id: NEXT_ORDER.fetch_add(1, Ordering::Relaxed),
                }
            }
            Request::Place { item, .. } => Reply::Refused {
                reason: format!("cannot order {item}"),
            },
        };
        ch.send(&reply).await?;
    }
    ch.close().await
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("order-service: {e}");
        std::process::exit(1);
    }
}

async fn run() -> std::result::Result<(), String> {
    let args = Args::parse()?;
    let clients: Option<usize> = match args.free.as_slice() {
        [] => None,
        [flag, n] if flag == "--clients" => Some(n.parse().map_err(|_| "bad --clients")?),
        other => return Err(format!("unexpected arguments {other:?}")),
    };
    let endpoint = args
        .config()?
        .endpoint("orders")
        .map_err(|e| e.to_string())?;
    let mut listener = ductwork::bind(&endpoint).await.map_err(|e| e.to_string())?;
    println!("listening on {}", listener.endpoint());
    let mut tasks = Vec::new();
    loop {
        if clients.is_some_and(|n| tasks.len() >= n) {
            break;
        }
        let ch = ductwork::accept_channel(&mut listener)
            .await
            .map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = serve(ch).await {
                eprintln!("order-service: client: {e}");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
