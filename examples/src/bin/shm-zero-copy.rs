//! Zero-copy shared memory between two processes: the sender writes each message straight
//! into the ring (`loan`, write, `commit`) and the receiver reads it where it lies
//! (`recv_in_place`), with no copy in between. This is the path for large messages, where
//! copies are most of the cost. The typed `Channel` API stays the default; this one is shm's
//! own.
//!
//! ```text
//! cargo run --release -p ductwork-examples --bin shm-zero-copy          # 200 messages of 1 MiB
//! cargo run --release -p ductwork-examples --bin shm-zero-copy -- 1000  # or as many as you like
//! ```
//!
//! The process binds a zero-copy listener, starts itself again as the receiver, and sends.
//! The receiver checks every message in place and answers with one small message: how many
//! bytes it checked.

use ductwork::{shm::Shm, Endpoint};
use std::{
    error::Error,
    process::Command,
    time::{Duration, Instant},
};

/// Payload bytes per message.
const LEN: usize = 1 << 20;
/// The sequence number of the message that says "no more".
const END: u64 = u64::MAX;

/// The byte at `i` of message `seq`, so the receiver can check every one.
fn byte(seq: u64, i: usize) -> u8 {
    (seq as usize).wrapping_add(i) as u8
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, endpoint] = &args[..] {
        if role == "receive" {
            return receive(&endpoint.parse()?).await;
        }
    }
    let count: u64 = args.first().map(|n| n.parse()).transpose()?.unwrap_or(200);
    let ep: Endpoint = format!("shm://zero-copy-{}", std::process::id()).parse()?;
    let mut listener = Shm::bind_zero_copy(&ep).await?;
    let mut receiver = Command::new(std::env::current_exe()?)
        .args(["receive", &ep.to_string()])
        .spawn()?;
    let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
    let mut conn = match accepted {
        Ok(conn) => conn?,
        Err(_) => {
            let _ = receiver.kill();
            return Err("the receiver did not connect within 10 s".into());
        }
    };
    let start = Instant::now();
    for seq in 0..count {
        // Room for the message in the ring (waits while the ring is full); nothing is sent
        // until `commit`, and a loan dropped without it sends nothing.
        let mut loan = conn.loan(8 + LEN).await?;
        let mut w = loan.writer();
        w.put(&seq.to_le_bytes());
        let chunk: Vec<u8> = (0..4096).map(|i| byte(seq, i)).collect();
        for _ in 0..LEN / chunk.len() {
            w.put(&chunk);
        }
        if !w.is_complete() {
            return Err("the loan was not filled".into());
        }
        loan.commit()?;
    }
    // The end: an 8-byte message of its own.
    let mut end = conn.loan(8).await?;
    end.writer().put(&END.to_le_bytes());
    end.commit()?;
    let sent = start.elapsed();
    let answer = conn.recv_in_place().await?.ok_or("the receiver left")?;
    let mut checked = [0u8; 8];
    if !answer.copy_to(&mut checked) {
        return Err("the answer is not 8 bytes".into());
    }
    drop(answer);
    let checked = u64::from_le_bytes(checked);
    // The receiver exits once it answered; bounded, and stopped by its pid if it hangs.
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = receiver.try_wait()? {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        let _ = receiver.kill();
        return Err("the receiver did not exit within 5 s".into());
    };
    println!(
        "sent {count} messages of {} KiB in {:.1} ms; the receiver checked {checked} bytes in place ({status})",
        LEN / 1024,
        sent.as_secs_f64() * 1e3,
    );
    if checked != count * LEN as u64 || !status.success() {
        return Err("the receiver did not check every byte".into());
    }
    Ok(())
}

/// The receiving process: checks every message where it lies in the ring, then answers with
/// the number of bytes it checked.
async fn receive(ep: &Endpoint) -> Result<(), Box<dyn Error>> {
    let mut conn = Shm::connect_zero_copy(ep).await?;
    let (mut checked, mut next) = (0u64, 0u64);
    while let Some(msg) = conn.recv_in_place().await? {
        // SAFETY: the sender is this example's own process, an honest ductwork producer: it
        // never writes a message it published before we release it (drop `msg`), and `msg`
        // outlives the slices. A receiver that cannot trust its peer copies instead
        // (`msg.copy_to`, `msg.to_vec`), which is safe whatever the peer does.
        let (a, b) = unsafe { msg.as_slices() };
        let mut bytes = a.iter().chain(b);
        let mut seq = [0u8; 8];
        for (s, g) in seq.iter_mut().zip(&mut bytes) {
            *s = *g;
        }
        let seq = u64::from_le_bytes(seq);
        if seq == END && msg.len() == 8 {
            break;
        }
        if seq != next || msg.len() != 8 + LEN {
            return Err(format!("message {next}: got {seq}, {} bytes", msg.len()).into());
        }
        if let Some(i) = bytes.enumerate().position(|(i, &v)| v != byte(seq, i)) {
            return Err(format!("message {seq}: byte {i} differs").into());
        }
        checked += LEN as u64;
        next += 1;
        // Dropping `msg` (at the end of this turn) gives its room back to the sender.
    }
    let mut loan = conn.loan(8).await?;
    loan.writer().put(&checked.to_le_bytes());
    loan.commit()?;
    Ok(())
}
