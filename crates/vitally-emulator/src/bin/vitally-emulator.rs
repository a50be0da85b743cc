//! `vitally-emulator --listen 127.0.0.1:8787`: a local Vitally for the demo and for
//! manual testing. Faults can be set here and changed later with
//! `curl -X PUT http://127.0.0.1:8787/_emulator/faults -d '{"error_rate":0.3}' -H 'content-type: application/json'`.

use clap::Parser;
use std::time::Duration;
use vitally_emulator::{Config, Emulator, Faults};

#[derive(Parser)]
#[command(about = "A local stand-in for Vitally's Analytics and REST APIs")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,
    /// The Analytics key it accepts.
    #[arg(long, default_value = "test-analytics-key")]
    analytics_key: String,
    /// The REST secret token it accepts.
    #[arg(long, default_value = "test-rest-token")]
    rest_token: String,
    /// REST requests per key per window.
    #[arg(long, default_value_t = 1000)]
    rest_limit: u32,
    /// The REST rate-limit window in seconds.
    #[arg(long, default_value_t = 60)]
    rest_window_secs: u64,
    /// Response time of every API request in milliseconds, the emulator's own work
    /// included (the request is applied on arrival, answered this long after).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of API requests answered 503 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of API requests whose connection is dropped (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Analytics message types to refuse with 400, comma-separated.
    #[arg(long, value_delimiter = ',')]
    blocked_types: Vec<String>,
    /// Do not keep received messages (counters only), for long benchmarks.
    #[arg(long)]
    no_record: bool,
}

fn main() {
    let args = Args::parse();
    let config = Config {
        analytics_key: args.analytics_key,
        rest_token: args.rest_token,
        rest_limit: args.rest_limit,
        rest_window: Duration::from_secs(args.rest_window_secs),
        record_received: !args.no_record,
        faults: Faults {
            latency_ms: args.latency_ms,
            error_rate: args.error_rate,
            drop_rate: args.drop_rate,
            blocked_types: args.blocked_types,
            ..Faults::default()
        },
    };
    let emulator = Emulator::spawn(&args.listen, config).unwrap_or_else(|e| {
        eprintln!("vitally-emulator: cannot listen on {}: {e}", args.listen);
        std::process::exit(1);
    });
    println!("vitally-emulator listening on http://{}", emulator.addr());
    println!("  analytics_url => '{}'", emulator.analytics_url());
    println!("  rest_url      => '{}'", emulator.rest_url());
    loop {
        std::thread::park();
    }
}
