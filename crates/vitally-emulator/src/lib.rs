//! A local Vitally: the Analytics and REST endpoints vitally_sync uses, behaving as
//! `shared/vitally-api.md` describes (auth, batch limits, trait merge, accounts
//! created by user messages, events de-duplicated by `messageId`, the REST rate limit
//! with its headers), with faults to inject and an API to inspect what it received.
//! Where the evidence is thin it takes the documented or observed form and nothing
//! more: error bodies `{"error": ...}`, no `Retry-After`, `RateLimit-Limit` as the
//! documented list, an empty batch refused (unverified: a client must not rely on it).
//!
//! Start it in-process with [`Emulator::start`] (or [`Emulator::spawn`] outside a
//! tokio runtime), or as the `vitally-emulator` binary.

mod analytics;
mod control;
mod faults;
mod rest;
mod state;

use axum::Router;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use faults::Faults;
pub use state::{Counters, Object, Received};

/// What the emulator accepts: its keys and its REST rate limit.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Analytics key, sent as `Authorization: Basic <key>`.
    pub analytics_key: String,
    /// The REST secret token, sent as `Authorization: Basic base64(token:)`.
    pub rest_token: String,
    /// REST requests allowed per key in a sliding window.
    pub rest_limit: u32,
    pub rest_window: Duration,
    /// Keep every received message for inspection (turn off for long benchmarks).
    pub record_received: bool,
    pub faults: Faults,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            analytics_key: "test-analytics-key".into(),
            rest_token: "test-rest-token".into(),
            rest_limit: 1000,
            rest_window: Duration::from_secs(60),
            record_received: true,
            faults: Faults::default(),
        }
    }
}

pub(crate) struct Shared {
    pub config: Mutex<Config>,
    pub state: Mutex<state::State>,
}

pub(crate) type AppState = Arc<Shared>;

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    addr: SocketAddr,
    shared: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn router(shared: AppState) -> Router {
    Router::new()
        .nest("/analytics/v1", analytics::routes())
        .nest("/resources", rest::routes())
        .nest("/_emulator", control::routes())
        .layer(axum::middleware::from_fn_with_state(shared.clone(), faults::inject))
        .with_state(shared)
}

impl Emulator {
    /// Starts serving on `listen` (e.g. `127.0.0.1:0` for a free port) inside the current tokio runtime.
    pub async fn start(listen: &str, config: Config) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { config: Mutex::new(config), state: Mutex::new(state::State::default()) });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Emulator { addr, shared, shutdown: Some(tx), thread: None })
    }

    /// Starts serving on a thread of its own with its own runtime, for callers without tokio.
    pub fn spawn(listen: &str, config: Config) -> std::io::Result<Emulator> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listen = listen.to_string();
        let thread = std::thread::Builder::new().name("vitally-emulator".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                match Emulator::start(&listen, config).await {
                    Ok(mut emulator) => {
                        let stop = emulator.shutdown.take();
                        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                        let _ = ready_tx.send(Ok((emulator.addr, emulator.shared.clone(), stop_tx)));
                        let _ = stop_rx.await;
                        if let Some(stop) = stop {
                            let _ = stop.send(());
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
        let (addr, shared, stop) = ready_rx.recv().map_err(std::io::Error::other)??;
        Ok(Emulator { addr, shared, shutdown: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the Analytics API, for a destination's `analytics_url`.
    pub fn analytics_url(&self) -> String {
        format!("http://{}/analytics/v1", self.addr)
    }

    /// The base URL of the REST API, for a destination's `rest_url`.
    pub fn rest_url(&self) -> String {
        format!("http://{}/resources", self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.config.lock().unwrap().faults = faults;
    }

    pub fn update_config(&self, change: impl FnOnce(&mut Config)) {
        change(&mut self.shared.config.lock().unwrap());
    }

    pub fn counters(&self) -> Counters {
        self.shared.state.lock().unwrap().counters.clone()
    }

    /// Every message and REST call received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.state.lock().unwrap().received.clone()
    }

    /// The current state of one object, by kind ("accounts", "users", "organizations") and external id.
    pub fn object(&self, kind: &str, external_id: &str) -> Option<Object> {
        self.shared.state.lock().unwrap().object(kind, external_id).cloned()
    }

    /// How many objects of a kind exist.
    pub fn count(&self, kind: &str) -> usize {
        self.shared.state.lock().unwrap().count(kind)
    }

    /// Adds an object as if it had been created in Vitally's UI (for update-only tests).
    pub fn seed(&self, kind: &str, external_id: &str, traits: serde_json::Value) -> Object {
        self.shared.state.lock().unwrap().seed(kind, external_id, traits)
    }

    /// Forgets every object, message and counter; faults and keys stay.
    pub fn reset(&self) {
        *self.shared.state.lock().unwrap() = state::State::default();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
