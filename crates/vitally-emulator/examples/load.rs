//! How fast the emulator starts and how many requests per second it serves here.
//!
//! `cargo run --release -p vitally-emulator --example load [seconds]`

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vitally_emulator::{Config, Emulator};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let started = Instant::now();
    let e = Emulator::start("127.0.0.1:0", Config { record_received: false, ..Config::default() }).await.unwrap();
    let http = reqwest::Client::new();
    let probe =
        http.post(format!("{}/batch", e.analytics_url())).header("authorization", "Basic test-analytics-key").json(&json!([])).send().await.unwrap();
    assert!(probe.status().is_success());
    println!("start to first answer: {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);

    let batch: Value = Value::Array(
        (0..100)
            .map(|i| json!({"type": "account", "accountId": format!("a{i}"), "traits": {"plan": "pro", "seats": i}, "messageId": format!("m{i}")}))
            .collect(),
    );
    for (name, body) in [("POST /batch of 1 message", Value::Array(vec![batch[0].clone()])), ("POST /batch of 100 messages", batch)] {
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(seconds);
        let workers: Vec<_> = (0..32)
            .map(|w| {
                let (http, done, url) = (http.clone(), done.clone(), format!("{}/batch", e.analytics_url()));
                let mut body = body.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        // fresh messageIds, so every message is applied, not dropped as a duplicate
                        for m in body.as_array_mut().unwrap() {
                            m["messageId"] = json!(format!("{w}-{n}-{}", m["accountId"]));
                        }
                        let r = http.post(&url).header("authorization", "Basic test-analytics-key").json(&body).send().await.unwrap();
                        assert!(r.status().is_success());
                        n += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let t = Instant::now();
        for w in workers {
            w.await.unwrap();
        }
        let n = done.load(Ordering::Relaxed) as f64;
        let per_request = body.as_array().unwrap().len() as f64;
        println!(
            "{name:<30} {:>9.0} requests/s {:>10.0} messages/s (32 connections, {seconds} s, client and server on the same 2 cores)",
            n / t.elapsed().as_secs_f64(),
            n * per_request / t.elapsed().as_secs_f64()
        );
    }
}
