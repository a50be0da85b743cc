//! The inspection API under `/_emulator`, for tests and the demo in other processes:
//! what was received, the state of objects, counters, faults, reset.

use crate::faults::Faults;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/counters", get(counters))
        .route("/received", get(received))
        .route("/objects/{kind}", get(objects))
        .route("/objects/{kind}/{id}", get(object).post(seed))
        .route("/faults", get(get_faults).put(put_faults))
        .route("/reset", post(reset))
}

async fn counters(State(shared): State<AppState>) -> Response {
    Json(shared.state.lock().unwrap().counters.clone()).into_response()
}

async fn received(State(shared): State<AppState>) -> Response {
    Json(shared.state.lock().unwrap().received.clone()).into_response()
}

async fn objects(State(shared): State<AppState>, Path(kind): Path<String>) -> Response {
    let state = shared.state.lock().unwrap();
    let list: Vec<Value> = match kind.as_str() {
        "accounts" => state.accounts.values().map(|o| serde_json::to_value(o).unwrap()).collect(),
        "users" => state.users.values().map(|o| serde_json::to_value(o).unwrap()).collect(),
        "organizations" => state.organizations.values().map(|o| serde_json::to_value(o).unwrap()).collect(),
        "events" => state.events.clone(),
        "npsResponses" => state.nps.values().cloned().collect(),
        _ => return (StatusCode::NOT_FOUND, "unknown kind").into_response(),
    };
    Json(json!({ "results": list })).into_response()
}

async fn object(State(shared): State<AppState>, Path((kind, id)): Path<(String, String)>) -> Response {
    match shared.state.lock().unwrap().object(&kind, &id) {
        Some(o) => Json(o.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such object").into_response(),
    }
}

async fn seed(State(shared): State<AppState>, Path((kind, id)): Path<(String, String)>, Json(traits): Json<Value>) -> Response {
    let mut state = shared.state.lock().unwrap();
    if state.store(&kind).is_none() {
        return (StatusCode::NOT_FOUND, "unknown kind").into_response();
    }
    Json(state.seed(&kind, &id, traits)).into_response()
}

async fn get_faults(State(shared): State<AppState>) -> Response {
    Json(shared.config.lock().unwrap().faults.clone()).into_response()
}

async fn put_faults(State(shared): State<AppState>, Json(faults): Json<Faults>) -> Response {
    shared.config.lock().unwrap().faults = faults.clone();
    Json(faults).into_response()
}

async fn reset(State(shared): State<AppState>) -> Response {
    *shared.state.lock().unwrap() = crate::state::State::default();
    Json(json!({"reset": true})).into_response()
}
