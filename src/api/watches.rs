//! `vitally.watch`, `unwatch`: live syncs, planned seconds after each commit that
//! changes a table their query reads (`watching.rs`, `live_planner.rs`).

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::owned_sync;
    use crate::elevation::{as_extension_owner, caller};
    use crate::errors::Row;
    use crate::watching::{check, create_triggers, drop_triggers, forget_watches_of, resolve, WatchError};
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;

    /// Watches `table` for sync `name`: after each committed change to it, the sync keys
    /// `key` gives for the rows changed (old and new) are planned again, within about a
    /// second, as `vitally.sync()` would plan them. Watching again changes the key.
    /// Returns the watch's id.
    #[pg_extern(volatile)]
    fn watch(name: &str, table: &str, key: default!(&str, "'id'")) -> Result<i64, ErrorReport> {
        let me = caller();
        let sync = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, true)))?;
        // As the caller: the table named as the caller names it, the key read with the
        // caller's search_path, now and whenever the key is read.
        let table = resolve(table)?;
        let search_path =
            Spi::get_one::<String>("SELECT pg_catalog.current_setting('search_path')").map_err(crate::errors::Error::from)?.unwrap_or_default();
        let search_path = std::ffi::CString::new(search_path).unwrap_or_default();
        // Quoted by Postgres, which knows its keywords (a role named "user").
        let owner_name = unsafe {
            std::ffi::CStr::from_ptr(pg_sys::quote_identifier(pg_sys::GetUserNameFromId(sync.owner, false))).to_string_lossy().into_owned()
        };
        check(sync.owner, &owner_name, &table, key, &search_path)?;
        let id = as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let row = client
                    .update(
                        "INSERT INTO vitally.watch (sync_id, relid, key_expr, search_path) VALUES ($1, $2::pg_catalog.oid::pg_catalog.regclass, $3, $4)
                         ON CONFLICT (sync_id, relid) DO UPDATE SET key_expr = excluded.key_expr, search_path = excluded.search_path
                         RETURNING id, xmax = 0 AS created",
                        None,
                        &[sync.id.into(), table.oid.into(), key.into(), search_path.to_string_lossy().as_ref().into()],
                    )?
                    .first();
                let id: i64 = row.required("id")?;
                if row.required::<bool>("created")? {
                    create_triggers(client, id, &table)?;
                } else {
                    // A new key: backends that cached the old one read it again.
                    forget_watches_of(table.oid);
                }
                Ok(id)
            })
        })?;
        crate::doorbell::warn_if_not_delivering();
        Ok(id)
    }

    /// How the live planner reads the sync's query for some changed keys (`keys`, or up to
    /// 100 keys it delivered last): a verdict line, then the plan (EXPLAIN, as the sync's
    /// owner). A sequential scan of a large table means every change reads all of it:
    /// index the source column the sync key comes from.
    #[pg_extern(volatile)]
    fn explain_live(name: &str, keys: default!(Option<Vec<String>>, "NULL")) -> Result<SetOfIterator<'static, String>, ErrorReport> {
        let me = caller();
        let sync = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, false)))?;
        let prepared = crate::planning::prepare_stored(&sync)?;
        let keys = match keys {
            Some(keys) => keys,
            None => as_extension_owner(|| {
                Spi::connect(|client| {
                    let row = client
                        .select(
                            "SELECT pg_catalog.array_agg(x.sync_key) AS keys
                               FROM (SELECT r.sync_key FROM vitally.record r WHERE r.sync_id = $1 ORDER BY r.id DESC LIMIT 100) x",
                            Some(1),
                            &[sync.id.into()],
                        )?
                        .first();
                    Ok(row.optional::<Vec<String>>("keys")?.unwrap_or_default())
                })
            })?,
        };
        if keys.is_empty() {
            return Err(WatchError::NoKeysToExplain(name.to_string()).into());
        }
        let sql = format!("EXPLAIN {}", prepared.plan.restricted_sql(&sync.query, &prepared.key_type));
        let n = keys.len();
        let lines: Vec<String> = crate::elevation::sandboxed(sync.owner, || {
            crate::planning::with_query_errors(&sync.name, || {
                Spi::connect(|client| -> crate::errors::Result<Vec<String>> {
                    let mut lines = Vec::new();
                    for row in client.select(&sql, None, &[keys.into()])? {
                        lines.push(row.get::<String>(1)?.unwrap_or_default());
                    }
                    Ok(lines)
                })
            })
        })?;
        let whole: Vec<String> = lines
            .iter()
            .filter_map(|l| l.split("Seq Scan on ").nth(1))
            .map(|t| t.split_whitespace().next().unwrap_or_default().to_string())
            .collect();
        let verdict = if whole.is_empty() {
            format!("for {n} changed keys the query reads by key: a change costs about the rows it changed")
        } else {
            format!(
                "for {n} changed keys the query still reads whole: {}; index the source column the sync key comes from (then ANALYZE), or a change reads the table",
                whole.join(", ")
            )
        };
        Ok(SetOfIterator::new(std::iter::once(verdict).chain(lines)))
    }

    /// Stops watching `table` for sync `name`; changes already marked are still planned.
    #[pg_extern(volatile)]
    fn unwatch(name: &str, table: &str) -> Result<bool, ErrorReport> {
        let me = caller();
        let sync = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, true)))?;
        let table = match resolve(table) {
            Ok(t) => t,
            // A watched table dropped since (its triggers went with it): its watch goes now.
            Err(e) => {
                let gone = as_extension_owner(|| {
                    Spi::connect_mut(|client| {
                        Ok(client
                            .update(
                                "DELETE FROM vitally.watch w WHERE w.sync_id = $1
                                    AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = w.relid::pg_catalog.oid) RETURNING w.id",
                                None,
                                &[sync.id.into()],
                            )?
                            .len())
                    })
                })?;
                return if gone > 0 { Ok(true) } else { Err(e.into()) };
            }
        };
        Ok(as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let gone = client.update(
                    "DELETE FROM vitally.watch WHERE sync_id = $1 AND relid = $2::pg_catalog.oid::pg_catalog.regclass RETURNING id",
                    None,
                    &[sync.id.into(), table.oid.into()],
                )?;
                let ids = gone.into_iter().map(|r| r.get::<i64>(1).map(|v| v.unwrap_or_default())).collect::<Result<Vec<_>, _>>()?;
                if ids.is_empty() {
                    return Err(WatchError::NotWatched { sync: name.to_string(), table: table.name.clone() }.into());
                }
                drop_triggers(client, &ids)?;
                Ok(true)
            })
        })?)
    }
}
