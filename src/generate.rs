//! Synthetic producers: the chat events of the tutorial setup hydrant
//! replaces, sent over the Firehose API like a well-behaved producer
//! (batches, a steady rate, retries of what the server could not take).

use std::io::Write;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::client::{batch_body, Firehose};

pub const EVENT_NAMES: [&str; 5] = ["JOIN", "LEAVE", "OPEN_CHAT", "SUBSCRIBE", "SEND_MESSAGE"];

/// One event as the tutorial's producer makes it:
/// `{"event_time": now().isoformat(), "event_name": ..., "user": 0..100}`.
pub fn chat_event(rng: &mut impl Rng) -> Vec<u8> {
    let now = chrono::Utc::now().naive_utc();
    serde_json::json!({
        "event_time": now.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        "event_name": EVENT_NAMES[rng.random_range(0..EVENT_NAMES.len())],
        "user": (rng.random::<f64>() * 100.0).round() as u32,
    })
    .to_string()
    .into_bytes()
}

pub const SOURCES: [&str; 5] = ["web", "ios", "android", "partner", "email"];

/// A purchase: where the revenue came from and how much.
/// `{"event_time", "order_id", "source", "amount", "currency", "user"}`.
pub fn purchase_event(rng: &mut impl Rng) -> Vec<u8> {
    let now = chrono::Utc::now().naive_utc();
    // Sources differ in volume and basket size, so the chart has a shape.
    let source = SOURCES[[0, 0, 0, 1, 1, 2, 2, 3, 4][rng.random_range(0..9)]];
    let scale = match source {
        "partner" => 180.0,
        "web" => 60.0,
        _ => 35.0,
    };
    let amount = ((5.0 + rng.random::<f64>() * scale) * 100.0).round() / 100.0;
    serde_json::json!({
        "event_time": now.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        "order_id": format!("o-{:016x}", rng.random::<u64>()),
        "source": source,
        "amount": amount,
        "currency": "EUR",
        "user": rng.random_range(0..=100),
    })
    .to_string()
    .into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The tutorial's chat events: JOIN, LEAVE, OPEN_CHAT, SUBSCRIBE, SEND_MESSAGE.
    Chat,
    /// Purchases with a source (web, ios, android, partner, email) and an amount.
    Revenue,
}

pub struct GenerateOptions {
    pub scenario: Scenario,
    pub endpoint: String,
    pub stream: String,
    /// Records per second; 0 = as fast as the server takes them.
    pub rate: u64,
    /// Records to send; 0 = until stopped.
    pub count: u64,
    /// Records per request: 1 uses PutRecord, more uses PutRecordBatch.
    pub batch: usize,
    /// Print a live progress line on stderr.
    pub progress: bool,
}

/// Sends events until `count` are acknowledged (or forever). Returns how
/// many were acknowledged.
pub async fn run(opts: GenerateOptions) -> anyhow::Result<u64> {
    anyhow::ensure!(
        (1..=500).contains(&opts.batch),
        "--batch must be 1 to 500 (PutRecordBatch's limit)"
    );
    let client = Firehose::new(&opts.endpoint);
    let mut rng = rand::rng();
    let started = Instant::now();
    let (mut sent, mut retries) = (0u64, 0u64);
    let mut last_print = Instant::now();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    while opts.count == 0 || sent < opts.count {
        let want = if opts.count == 0 {
            opts.batch as u64
        } else {
            (opts.count - sent).min(opts.batch as u64)
        };
        while (pending.len() as u64) < want {
            pending.push(match opts.scenario {
                Scenario::Chat => chat_event(&mut rng),
                Scenario::Revenue => purchase_event(&mut rng),
            });
        }
        let result = if opts.batch == 1 {
            client
                .put_record(&opts.stream, &pending[0])
                .await
                .map(|_| vec![])
        } else {
            client
                .put_batch_body(batch_body(&opts.stream, &pending))
                .await
        };
        match result {
            Ok(failed) => {
                sent += (pending.len() - failed.len()) as u64;
                retries += failed.len() as u64;
                // Keep only the failed records, in order, for the next call.
                let mut keep = failed.into_iter().peekable();
                let mut i = 0;
                pending.retain(|_| {
                    let k = keep.peek() == Some(&i);
                    if k {
                        keep.next();
                    }
                    i += 1;
                    k
                });
            }
            Err(e) if e.retryable() => {
                retries += pending.len() as u64;
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("{e}"),
        }
        if opts.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / opts.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if opts.progress && last_print.elapsed() >= Duration::from_millis(250) {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprint!(
                "\r{} records sent to {} ({:.0}/s, {} retried)   ",
                sent,
                opts.stream,
                sent as f64 / secs.max(1e-9),
                retries
            );
            let _ = std::io::stderr().flush();
        }
    }
    if opts.progress {
        eprintln!(
            "\r{} records sent to {} in {:.1}s ({} retried)   ",
            sent,
            opts.stream,
            started.elapsed().as_secs_f64(),
            retries
        );
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_tutorial_shape() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let v: serde_json::Value = serde_json::from_slice(&chat_event(&mut rng)).unwrap();
            let t = v["event_time"].as_str().unwrap();
            assert!(
                chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.6f").is_ok(),
                "{t}"
            );
            assert!(EVENT_NAMES.contains(&v["event_name"].as_str().unwrap()));
            assert!(v["user"].as_u64().unwrap() <= 100);
            assert_eq!(v.as_object().unwrap().len(), 3);
        }
    }

    #[test]
    fn purchases_have_a_source_and_an_amount() {
        let mut rng = rand::rng();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let v: serde_json::Value = serde_json::from_slice(&purchase_event(&mut rng)).unwrap();
            let source = v["source"].as_str().unwrap();
            assert!(SOURCES.contains(&source));
            seen.insert(source.to_string());
            let amount = v["amount"].as_f64().unwrap();
            assert!((5.0..=185.0).contains(&amount), "{amount}");
            assert_eq!((amount * 100.0).round() / 100.0, amount);
        }
        assert_eq!(seen.len(), SOURCES.len(), "every source shows up");
    }
}
