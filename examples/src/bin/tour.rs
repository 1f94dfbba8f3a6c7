//! The six things a service needs, each in a few lines of ductwork's patterns: request/reply,
//! reconnect, broadcast, a request with a deadline, graceful shutdown, and tracing.
//!
//! ```text
//! RUST_LOG=ductwork=debug cargo run -p ductwork-examples --bin tour -- unix:///tmp/tour.sock
//! ```
//! The endpoint (default `tcp://127.0.0.1:0`) is the only transport-specific line.

use ductwork::patterns::{Backoff, Client, ClientOptions, Publisher, Server, Subscriber};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
enum Op {
    Add(i64, i64),
    Sleep(u64),
}

async fn handle(op: Op) -> i64 {
    match op {
        Op::Add(a, b) => a + b,
        Op::Sleep(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            -1
        }
    }
}

#[tokio::main]
async fn main() -> ductwork::Result<()> {
    // 6. See what the library does: it emits `tracing` events; the application picks the output.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let ep = std::env::args()
        .nth(1)
        .unwrap_or("tcp://127.0.0.1:0".into());

    // 1. Request/reply: handlers run concurrently; one client is shared by any number of tasks.
    let server = Server::bind(ep.as_str(), handle).await?.spawn();
    let at = server.endpoint().clone();
    let opts = ClientOptions {
        reconnect: Some(Backoff::default()),
        ..Default::default()
    };
    let client = Client::<Op, i64>::connect_with(&at, opts).await?;
    println!("1 + 2 = {}", client.call(Op::Add(1, 2)).await?);

    // 4. A deadline fails one call; its late answer never reaches the next call.
    let slow = client
        .call_timeout(Op::Sleep(200), Duration::from_millis(20))
        .await;
    println!("slow call: {}", slow.unwrap_err());
    println!("2 + 2 = {}", client.call(Op::Add(2, 2)).await?);

    // 2. Reconnect: the server restarts and the client finds it again. A call the restart
    //    catches fails (nothing is retried behind the caller's back); the next one waits for
    //    the new connection.
    server.shutdown(Duration::from_secs(5)).await?;
    let server = Server::bind(&at, handle).await?.spawn();
    let sum = match client.call(Op::Add(3, 4)).await {
        Ok(sum) => sum,
        Err(_) => client.call(Op::Add(3, 4)).await?,
    };
    println!("after the restart: 3 + 4 = {sum}");

    // 3. Broadcast: every subscriber gets what is published on its topics.
    let feed = Publisher::<f64>::bind(
        std::env::args()
            .nth(2)
            .unwrap_or("tcp://127.0.0.1:0".into()),
    )
    .await?;
    let mut prices = Subscriber::<f64>::connect(feed.endpoint(), &["price."]).await?;
    feed.publish("price.bolt", &0.25).await?;
    let m = prices.recv().await?.expect("a price");
    println!("{} = {}", m.topic, m.body);

    // 5. Graceful shutdown: stop accepting, finish what is in flight, close every connection.
    let last = tokio::spawn({
        let c = client.clone();
        async move { c.call(Op::Sleep(100)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.shutdown(Duration::from_secs(5)).await?;
    println!(
        "in flight during shutdown: {:?}",
        last.await.expect("joined")
    );
    feed.shutdown(Duration::from_secs(5)).await
}
