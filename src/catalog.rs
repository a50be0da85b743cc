//! Reading destinations and syncs from the extension's tables, as their owner, for
//! a caller who may act only on their own; and what goes wrong with them.

use crate::elevation::acts_as;
use crate::errors::{report, Internal, Result, Row};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use vitally_model::{parse_pair, Behavior, Object};

/// What a user can get wrong about destinations and syncs.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("destination \"{0}\" does not exist")]
    NoSuchDestination(String),
    #[error("sync \"{0}\" does not exist")]
    NoSuchSync(String),
    #[error("destination \"{0}\" already exists")]
    DestinationExists(String),
    #[error("sync \"{0}\" already exists")]
    SyncExists(String),
    #[error("invalid sync name \"{0}\": give 1 to 63 characters")]
    InvalidSyncName(String),
    #[error("destination \"{name}\" is used by syncs: {syncs}")]
    DestinationInUse { name: String, syncs: String },
    #[error("destination \"{0}\" would be left without an API key")]
    NoKeyLeft(String),
    #[error("changing {arg} of destination \"{name}\" needs {key_arg} again in the same call")]
    KeyWithNewUrl { name: String, arg: &'static str, key_arg: &'static str },
    #[error("vitally.{function}() takes API keys only where they stay out of the server log, and here {why}")]
    KeysWouldBeLogged { function: &'static str, why: String },
    #[error("sync \"{0}\" is disabled")]
    SyncDisabled(String),
}

impl From<CatalogError> for ErrorReport {
    fn from(e: CatalogError) -> Self {
        use CatalogError::*;
        use PgSqlErrorCode as C;
        let (code, hint) = match &e {
            NoSuchDestination(_) => (C::ERRCODE_UNDEFINED_OBJECT, Some("SELECT name FROM vitally.destinations lists the destinations you own.".into())),
            NoSuchSync(_) => (C::ERRCODE_UNDEFINED_OBJECT, Some("SELECT name FROM vitally.syncs lists the syncs you own.".into())),
            DestinationExists(_) => {
                (C::ERRCODE_DUPLICATE_OBJECT, Some("Choose another name, or change the existing one with vitally.alter_destination().".into()))
            }
            SyncExists(_) => (C::ERRCODE_DUPLICATE_OBJECT, Some("Choose another name, or change it with vitally.alter_sync().".into())),
            InvalidSyncName(_) => (C::ERRCODE_INVALID_NAME, None),
            DestinationInUse { .. } => (
                C::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                Some("Drop those syncs first, or call vitally.drop_destination(name, cascade => true) to drop them with it.".into()),
            ),
            NoKeyLeft(_) => (C::ERRCODE_INVALID_PARAMETER_VALUE, Some("Keep one key, or drop the destination with vitally.drop_destination().".into())),
            KeyWithNewUrl { arg, key_arg, .. } => (
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                Some(format!(
                    "A key is never sent to a host it was not given for: call vitally.alter_destination(name, {arg} => ..., {key_arg} => ...), or {key_arg} => '' to remove the key."
                )),
            ),
            KeysWouldBeLogged { .. } => (
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                Some(
                    "Without the preload Postgres may have logged this call before vitally_sync could hide it: rotate this key in Vitally. \
                     Then add vitally_sync to shared_preload_libraries in postgresql.conf and restart the server, or call any \
                     vitally function first in the session (SELECT vitally.worker_pid();) and give the new key in a later statement."
                        .into(),
                ),
            ),
            SyncDisabled(name) => {
                (C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, Some(format!("SELECT vitally.alter_sync('{}', enabled => true);", name.replace('\'', "''"))))
            }
        };
        report(code, e.to_string(), hint)
    }
}

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
pub fn owned_destination(client: &SpiClient<'_>, name: &str, me: pg_sys::Oid, lock: bool) -> Result<DestinationRow> {
    let sql = format!(
        "SELECT d.id, d.owner::oid AS owner, s.analytics_api_key IS NOT NULL AS has_analytics_key,
                s.rest_api_key IS NOT NULL AS has_rest_key, d.analytics_url, d.rest_url
           FROM vitally.destination d LEFT JOIN vitally.destination_secret s ON s.destination_id = d.id
          WHERE d.name = $1 {}",
        if lock { "FOR UPDATE OF d" } else { "" }
    );
    let row = client.select(&sql, Some(1), &[name.into()])?.first();
    if row.is_empty() || !acts_as(me, row.required::<pg_sys::Oid>("owner")?) {
        return Err(CatalogError::NoSuchDestination(name.to_string()).into());
    }
    Ok(DestinationRow {
        id: row.required("id")?,
        name: name.to_string(),
        has_analytics_key: row.required("has_analytics_key")?,
        has_rest_key: row.required("has_rest_key")?,
        analytics_url: row.optional("analytics_url")?,
        rest_url: row.optional("rest_url")?,
    })
}

/// A sync as stored, with what the caller needs of its destination.
pub struct SyncRow {
    pub id: i64,
    pub name: String,
    pub owner: pg_sys::Oid,
    pub destination: DestinationRow,
    pub object: Object,
    pub behavior: Behavior,
    pub query: String,
    pub sync_key: String,
    pub mappings: Option<serde_json::Value>,
    pub options: serde_json::Value,
    pub enabled: bool,
}

/// Finds a sync the caller owns, locked when `lock`: two runs of one sync then
/// plan one after the other, so the second sees what the first queued.
pub fn owned_sync(client: &SpiClient<'_>, name: &str, me: pg_sys::Oid, lock: bool) -> Result<SyncRow> {
    let sql = format!(
        "SELECT s.id, s.owner::oid AS owner, d.name AS destination, s.object, s.behavior, s.query, s.sync_key, s.mappings, s.options, s.enabled
           FROM vitally.sync s JOIN vitally.destination d ON d.id = s.destination_id
          WHERE s.name = $1 {}",
        if lock { "FOR UPDATE OF s" } else { "" }
    );
    let row = client.select(&sql, Some(1), &[name.into()])?.first();
    if row.is_empty() {
        return Err(CatalogError::NoSuchSync(name.to_string()).into());
    }
    let owner: pg_sys::Oid = row.required("owner")?;
    if !acts_as(me, owner) {
        return Err(CatalogError::NoSuchSync(name.to_string()).into());
    }
    let destination_name: String = row.required("destination")?;
    let destination = owned_destination(client, &destination_name, owner, false)?;
    let (object, behavior, _) = parse_pair(&row.required::<String>("object")?, &row.required::<String>("behavior")?)
        .map_err(|e| Internal::Broken(format!("sync \"{name}\" as stored: {e}")))?;
    Ok(SyncRow {
        id: row.required("id")?,
        name: name.to_string(),
        owner,
        destination,
        object,
        behavior,
        query: row.required("query")?,
        sync_key: row.required("sync_key")?,
        mappings: row.optional::<JsonB>("mappings")?.map(|j| j.0),
        options: row.required::<JsonB>("options")?.0,
        enabled: row.required("enabled")?,
    })
}

/// Deletes syncs with everything that is theirs (records and delivery state have no
/// foreign keys, see bootstrap.sql). `filter` selects them from `vitally.sync s`.
/// Their pg_cron jobs go too.
pub fn delete_syncs(client: &mut SpiClient<'_>, filter: &str, id: i64) -> Result<()> {
    let watches = client.select(
        &format!("SELECT pg_catalog.array_agg(w.id) AS ids FROM vitally.watch w JOIN vitally.sync s ON s.id = w.sync_id WHERE {filter}"),
        None,
        &[id.into()],
    )?;
    let watches: Vec<i64> = watches.first().optional("ids")?.unwrap_or_default();
    crate::watching::drop_triggers(client, &watches)?;
    let mut gone = Vec::new();
    let mut names = Vec::new();
    for row in client.update(&format!("DELETE FROM vitally.sync s WHERE {filter} RETURNING s.id, s.name"), None, &[id.into()])? {
        gone.push(row.required::<i64>("id")?);
        names.push(row.required::<String>("name")?);
    }
    crate::queue::forget_syncs(client, &gone)?;
    crate::scheduling::unschedule(client, &names)?;
    Ok(())
}

/// A destination's endpoints, each with its key (None where no key is set). Keys
/// are read here only, as the extension's owner or in the worker, and never shown.
pub struct Endpoints {
    pub name: String,
    /// Each API with a key: its endpoint, or why it may not be used (a URL override
    /// whose host `vitally.allowed_hosts` no longer names).
    pub analytics: Option<std::result::Result<vitally_client::Endpoint, String>>,
    pub rest: Option<std::result::Result<vitally_client::Endpoint, String>>,
}

/// None when the destination is gone (dropped since its records were claimed).
pub fn endpoints(client: &SpiClient<'_>, destination_id: i64) -> Result<Option<Endpoints>> {
    use vitally_client::destination::{base_url, check_allowed, Api, DestinationError, Region};
    use vitally_client::Endpoint;
    let row = client
        .select(
            "SELECT d.region, d.subdomain, d.analytics_url, d.rest_url, d.name, s.analytics_api_key, s.rest_api_key
               FROM vitally.destination d LEFT JOIN vitally.destination_secret s ON s.destination_id = d.id
              WHERE d.id = $1",
            Some(1),
            &[destination_id.into()],
        )?
        .first();
    if row.is_empty() {
        return Ok(None);
    }
    let region: String = row.required("region")?;
    let region = Region::parse(&region).map_err(|e| Internal::Broken(format!("a stored destination: {e}")))?;
    let sub: Option<String> = row.optional("subdomain")?;
    let allowed = crate::guc::allowed_hosts();
    // The URL is checked again at each use: the setting may have changed since it was stored.
    let url = |api: Api, over: Option<String>| {
        let url = base_url(api, region, sub.as_deref(), over.as_deref()).ok_or_else(|| DestinationError::EuAnalyticsUrlNeeded.to_string())?;
        match over {
            Some(_) => check_allowed(api, &url, &allowed).map(|_| url).map_err(|e| e.to_string()),
            None => Ok(url),
        }
    };
    let (analytics_url, rest_url) = (row.optional::<String>("analytics_url")?, row.optional::<String>("rest_url")?);
    Ok(Some(Endpoints {
        name: row.required("name")?,
        analytics: row.optional::<String>("analytics_api_key")?.map(|key| url(Api::Analytics, analytics_url).map(|u| Endpoint::analytics(&u, &key))),
        rest: row.optional::<String>("rest_api_key")?.map(|token| url(Api::Rest, rest_url).map(|u| Endpoint::rest(&u, &token))),
    }))
}
