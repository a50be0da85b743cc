//! The client and the emulator alone, without Postgres: the same messages sent as the
//! worker sends them (jobs of batch x concurrency x 8 sharing the request slots), so the delivery
//! rows can be read against what HTTP on this machine allows.

use std::sync::Arc;
use std::time::Instant;
use vitally_client::{ClientConfig, Endpoint, VitallyClient};
use vitally_emulator::{Config, Emulator, Faults};

/// Records per second sending `n` account messages at 20 ms a request, batch 100, concurrency 4.
pub fn client_alone(n: usize) -> f64 {
    let vitally = Emulator::spawn(
        "127.0.0.1:0",
        Config { record_received: false, faults: Faults { latency_ms: 20, ..Faults::default() }, ..Config::default() },
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = Arc::new(VitallyClient::new(ClientConfig { batch_size: 100, max_concurrency: 4, ..ClientConfig::default() }));
    let endpoint = Endpoint::analytics(&vitally.analytics_url(), "test-analytics-key");
    let messages: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"type": "account", "accountId": format!("t{i}"), "messageId": format!("00000000-0000-4000-8000-{i:012}"), "traits": {"name": format!("Account {i}"), "seats": i % 50}}))
        .collect();
    let job = 100 * 4 * 8;
    let t = Instant::now();
    runtime.block_on(async {
        let mut handles = Vec::new();
        for chunk in messages.chunks(job) {
            let (client, endpoint, chunk) = (client.clone(), endpoint.clone(), chunk.to_vec());
            handles.push(tokio::spawn(async move { client.send_analytics(&endpoint, &chunk).await }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}
