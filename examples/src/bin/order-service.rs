//! An order service whose transports are pure configuration.
//!
//! ```text
//! RUST_LOG=ductwork=debug cargo run -p ductwork-examples --bin order-service -- --config examples/config/tcp.toml
//! cargo run -p ductwork-examples --bin order-service -- --config examples/config/unix.toml
//! ```
//!
//! It answers quotes and orders on the endpoint named `orders` (request/reply, handlers run
//! concurrently) and publishes every item's price on `prices` (publish/subscribe, topic
//! `price.ITEM`) every `--tick MS` milliseconds (default 500). It prints `orders on ENDPOINT`
//! and `prices on ENDPOINT`, then runs until Ctrl-C, or until it has answered `--requests N`
//! requests, and then shuts down gracefully: it stops accepting, answers what is in flight and
//! closes every connection.

use ductwork::patterns::{Publisher, Server};
use ductwork_examples::{unit_price, Args, Price, Reply, Request, ITEMS};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::sync::Notify;

static NEXT_ORDER: AtomicU64 = AtomicU64::new(1);

fn answer(req: Request) -> Reply {
    match req {
        Request::Quote { item, qty } => match unit_price(&item) {
            Some(p) => Reply::Quote {
                cents: p * u64::from(qty),
            },
            None => Reply::Refused {
                reason: format!("we do not sell {item}"),
            },
        },
        Request::Place { item, qty } if unit_price(&item).is_some() && qty > 0 => Reply::Placed {
            id: NEXT_ORDER.fetch_add(1, Ordering::Relaxed),
        },
        Request::Place { item, .. } => Reply::Refused {
            reason: format!("cannot order {item}"),
        },
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run().await {
        eprintln!("order-service: {e}");
        std::process::exit(1);
    }
}

struct Opts {
    requests: Option<u64>,
    tick: Duration,
}

fn options(free: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        requests: None,
        tick: Duration::from_millis(500),
    };
    let mut it = free.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a number"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value} is not a number"))?;
        match flag.as_str() {
            "--requests" => o.requests = Some(n),
            "--tick" => o.tick = Duration::from_millis(n),
            _ => return Err(format!("unexpected argument {flag}")),
        }
    }
    Ok(o)
}

async fn run() -> Result<(), String> {
    let args = Args::parse()?;
    let opts = options(&args.free)?;
    let cfg = args.config()?;
    let orders = cfg.endpoint("orders").map_err(|e| e.to_string())?;
    let prices = cfg.endpoint("prices").map_err(|e| e.to_string())?;

    // Count answers, so `--requests N` can end the service like Ctrl-C does.
    let served = Arc::new((AtomicU64::new(0), Notify::new()));
    let counter = served.clone();
    let handler = move |req: Request| {
        let counter = counter.clone();
        async move {
            let reply = answer(req);
            counter.0.fetch_add(1, Ordering::SeqCst);
            counter.1.notify_one();
            reply
        }
    };
    let server = Server::bind(&orders, handler)
        .await
        .map_err(|e| e.to_string())?
        .spawn();
    let feed = Publisher::<Price>::bind(&prices)
        .await
        .map_err(|e| e.to_string())?;
    println!("orders on {}", server.endpoint());
    println!("prices on {}", feed.endpoint());

    let done = async {
        match opts.requests {
            Some(n) => {
                while served.0.load(Ordering::SeqCst) < n {
                    served.1.notified().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(done);
    let mut tick = tokio::time::interval(opts.tick);
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = &mut done => break,
            _ = tick.tick() => {
                round += 1;
                for item in ITEMS {
                    // A price that moves a little each tick, so subscribers see updates.
                    let cents = unit_price(item).unwrap_or(0) + round % 3;
                    let price = Price { item: item.into(), cents };
                    feed.publish(&format!("price.{item}"), &price).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
    let grace = Duration::from_secs(5);
    server.shutdown(grace).await.map_err(|e| e.to_string())?;
    feed.shutdown(grace).await.map_err(|e| e.to_string())?;
    println!("shut down");
    Ok(())
}
