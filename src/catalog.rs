//! Reading destinations and syncs from the extension's tables, as their owner, for
//! a caller who may act only on their own.

use crate::elevation::acts_as;
use crate::errors::{internal, UserError};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;

/// A destination the caller owns: its id, which keys it has, its URL overrides.
#[derive(Clone)]
pub struct DestinationRow {
    pub id: i64,
    pub name: String,
    pub has_analytics_key: bool,
    pub has_rest_key: bool,
    pub analytics_url: Option<String>,
    pub rest_url: Option<String>,
}

/// Finds a destination the caller owns (locked, when it is to be changed). Another
/// role's destination looks exactly like a missing one.
pub fn owned_destination(client: &SpiClient<'_>, name: &str, me: pg_sys::Oid, lock: bool) -> DestinationRow {
    let sql = format!(
        "SELECT d.id, d.owner::oid, s.analytics_api_key IS NOT NULL, s.rest_api_key IS NOT NULL, d.analytics_url, d.rest_url
           FROM vitally.destination d LEFT JOIN vitally.destination_secret s ON s.destination_id = d.id
          WHERE d.name = $1 {}",
        if lock { "FOR UPDATE OF d" } else { "" }
    );
    let row = client.select(&sql, Some(1), &[name.into()]).unwrap_or_else(|e| internal(e)).first();
    let id = row.get::<i64>(1).ok().flatten();
    let owner = row.get::<pg_sys::Oid>(2).ok().flatten();
    match (id, owner) {
        (Some(id), Some(owner)) if acts_as(me, owner) => DestinationRow {
            id,
            name: name.to_string(),
            has_analytics_key: row.get::<bool>(3).ok().flatten().unwrap_or(false),
            has_rest_key: row.get::<bool>(4).ok().flatten().unwrap_or(false),
            analytics_url: row.get::<String>(5).ok().flatten(),
            rest_url: row.get::<String>(6).ok().flatten(),
        },
        _ => UserError::no_such_destination(name).raise(),
    }
}

/// A sync as stored, with what the caller needs of its destination.
pub struct SyncRow {
    pub id: i64,
    pub name: String,
    pub owner: pg_sys::Oid,
    pub destination: DestinationRow,
    pub object: String,
    pub behavior: String,
    pub query: String,
    pub sync_key: String,
    pub mappings: Option<serde_json::Value>,
    pub options: serde_json::Value,
    pub enabled: bool,
}

/// Finds a sync the caller owns, locked when `lock`: two runs of one sync then
/// plan one after the other, so the second sees what the first queued.
pub fn owned_sync(client: &SpiClient<'_>, name: &str, me: pg_sys::Oid, lock: bool) -> SyncRow {
    let sql = format!(
        "SELECT s.id, s.owner::oid, d.name, s.object, s.behavior, s.query, s.sync_key, s.mappings, s.options, s.enabled
           FROM vitally.sync s JOIN vitally.destination d ON d.id = s.destination_id
          WHERE s.name = $1 {}",
        if lock { "FOR UPDATE OF s" } else { "" }
    );
    let row = client.select(&sql, Some(1), &[name.into()]).unwrap_or_else(|e| internal(e)).first();
    let id = row.get::<i64>(1).ok().flatten();
    let owner = row.get::<pg_sys::Oid>(2).ok().flatten();
    let (Some(id), Some(owner)) = (id, owner) else { UserError::no_such_sync(name).raise() };
    if !acts_as(me, owner) {
        UserError::no_such_sync(name).raise();
    }
    let text = |i: usize| row.get::<String>(i).ok().flatten().unwrap_or_default();
    let destination_name = text(3);
    let destination = owned_destination(client, &destination_name, owner, false);
    SyncRow {
        id,
        name: name.to_string(),
        owner,
        destination,
        object: text(4),
        behavior: text(5),
        query: text(6),
        sync_key: text(7),
        mappings: row.get::<JsonB>(8).ok().flatten().map(|j| j.0),
        options: row.get::<JsonB>(9).ok().flatten().map(|j| j.0).unwrap_or(serde_json::Value::Null),
        enabled: row.get::<bool>(10).ok().flatten().unwrap_or(true),
    }
}

/// Deletes syncs with everything that is theirs (records and delivery state have no
/// foreign keys, see bootstrap.sql). `filter` selects them from `vitally.sync s`.
/// Their pg_cron jobs go too.
pub fn delete_syncs(client: &mut SpiClient<'_>, filter: &str, id: i64) {
    let gone: Vec<String> = client
        .update(
            &format!(
                "WITH gone AS (DELETE FROM vitally.sync s WHERE {filter} RETURNING s.id, s.name),
                      records AS (DELETE FROM vitally.record r USING gone WHERE r.sync_id = gone.id),
                      state AS (DELETE FROM vitally.delivery_state d USING gone WHERE d.sync_id = gone.id)
                 SELECT name FROM gone"
            ),
            None,
            &[id.into()],
        )
        .unwrap_or_else(|e| internal(e))
        .filter_map(|row| row.get::<String>(1).ok().flatten())
        .collect();
    crate::scheduling::unschedule(client, &gone);
}

/// A destination's endpoints, each with its key (None where no key is set). Keys
/// are read here only, as the extension's owner or in the worker, and never shown.
pub struct Endpoints {
    pub name: String,
    /// Each API with a key: its endpoint, or why it may not be used (a URL override
    /// whose host `vitally.allowed_hosts` no longer names).
    pub analytics: Option<Result<vitally_client::Endpoint, String>>,
    pub rest: Option<Result<vitally_client::Endpoint, String>>,
}

pub fn endpoints(client: &SpiClient<'_>, destination_id: i64) -> Endpoints {
    use vitally_client::destination::{base_url, check_allowed, Api, DestinationError, Region};
    use vitally_client::Endpoint;
    let row = client
        .select(
            "SELECT d.region, d.subdomain, d.analytics_url, d.rest_url, d.name, s.analytics_api_key, s.rest_api_key
               FROM vitally.destination d LEFT JOIN vitally.destination_secret s ON s.destination_id = d.id
              WHERE d.id = $1",
            Some(1),
            &[destination_id.into()],
        )
        .unwrap_or_else(|e| internal(e))
        .first();
    let text = |i: usize| row.get::<String>(i).ok().flatten();
    let region = Region::parse(&text(1).unwrap_or_default()).unwrap_or(Region::Us);
    let sub = text(2);
    let allowed = crate::guc::allowed_hosts();
    // The URL is checked again at each use: the setting may have changed since it was stored.
    let url = |api: Api, column: usize| {
        let over = text(column);
        let url = base_url(api, region, sub.as_deref(), over.as_deref()).ok_or_else(|| DestinationError::EuAnalyticsUrlNeeded.to_string())?;
        match over {
            Some(_) => check_allowed(api, &url, &allowed).map(|_| url).map_err(|e| e.to_string()),
            None => Ok(url),
        }
    };
    Endpoints {
        name: text(5).unwrap_or_default(),
        analytics: text(6).map(|key| url(Api::Analytics, 3).map(|u| Endpoint::analytics(&u, &key))),
        rest: text(7).map(|token| url(Api::Rest, 4).map(|u| Endpoint::rest(&u, &token))),
    }
}
