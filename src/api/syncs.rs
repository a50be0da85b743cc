//! `vitally.create_sync`, `alter_sync`, `drop_sync`: defining what to send where.

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::{owned_destination, owned_sync, CatalogError};
    use crate::elevation::{as_extension_owner, caller};
    use crate::errors::Row;
    use crate::planning::{prepare, Prepared};
    use pgrx::datum::DatumWithOid;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use vitally_client::destination::validate_name;
    use vitally_model::{Behavior, Object};

    /// Defines a sync owned by the calling role; returns its id. Everything is
    /// checked now: the pair, the destination and its key, the query (run with
    /// LIMIT 0 as the caller), the mapping, the options.
    #[pg_extern(volatile)]
    #[allow(clippy::too_many_arguments)]
    fn create_sync(
        name: &str,
        destination: &str,
        object: &str,
        behavior: default!(Option<&str>, "NULL"),
        query: default!(&str, "''"),
        sync_key: default!(&str, "'id'"),
        mappings: default!(Option<JsonB>, "NULL"),
        options: default!(JsonB, "'{}'"),
    ) -> Result<i64, ErrorReport> {
        if validate_name(name).is_err() {
            return Err(CatalogError::InvalidSyncName(name.to_string()).into());
        }
        let me = caller();
        let dest = as_extension_owner(|| Spi::connect(|client| owned_destination(client, destination, me, false)))?;
        let object = Object::parse(object).map_err(crate::errors::Error::from)?;
        let behavior = match behavior {
            Some(b) => Behavior::parse(b).map_err(crate::errors::Error::from)?,
            None => Behavior::default_for(object),
        };
        let mappings = mappings.map(|m| m.0).filter(|m| !m.is_null());
        let prepared = prepare(name, &dest, object, behavior, query, sync_key, mappings.as_ref(), &options.0, me)?;
        Ok(as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let inserted = client.update(
                    "INSERT INTO vitally.sync (name, owner, destination_id, object, behavior, query, sync_key, mappings, options)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                    None,
                    &[name.into(), me.into()]
                        .into_iter()
                        .chain(definition(dest.id, &prepared, query, sync_key, mappings, options.0))
                        .collect::<Vec<_>>(),
                )?;
                if inserted.is_empty() {
                    return Err(CatalogError::SyncExists(name.to_string()).into());
                }
                Ok(inserted.first().required::<i64>("id")?)
            })
        })?)
    }

    /// A sync's definition as statement arguments, in the order of the columns
    /// `destination_id, object, behavior, query, sync_key, mappings, options`.
    fn definition<'a>(
        destination_id: i64,
        prepared: &Prepared,
        query: &'a str,
        sync_key: &'a str,
        mappings: Option<serde_json::Value>,
        options: serde_json::Value,
    ) -> [DatumWithOid<'a>; 7] {
        [
            destination_id.into(),
            prepared.object.as_str().into(),
            prepared.behavior.as_str().into(),
            query.into(),
            sync_key.into(),
            mappings.map(JsonB).into(),
            JsonB(options).into(),
        ]
    }

    /// Changes a sync: only the arguments given change, and the result is checked as
    /// `create_sync` checks. `mappings => 'null'` goes back to the conventions. A new
    /// destination, object or sync key forgets what was delivered (the next run sends all).
    #[pg_extern(volatile)]
    #[allow(clippy::too_many_arguments)]
    fn alter_sync(
        name: &str,
        destination: default!(Option<&str>, "NULL"),
        object: default!(Option<&str>, "NULL"),
        behavior: default!(Option<&str>, "NULL"),
        query: default!(Option<&str>, "NULL"),
        sync_key: default!(Option<&str>, "NULL"),
        mappings: default!(Option<JsonB>, "NULL"),
        options: default!(Option<JsonB>, "NULL"),
        enabled: default!(Option<bool>, "NULL"),
    ) -> Result<(), ErrorReport> {
        let me = caller();
        let current = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, true)))?;
        let dest = match destination {
            Some(d) => as_extension_owner(|| Spi::connect(|client| owned_destination(client, d, current.owner, false)))?,
            None => current.destination.clone(),
        };
        let object = match object {
            Some(o) => Object::parse(o).map_err(crate::errors::Error::from)?,
            None => current.object,
        };
        // A new object takes its own default behavior unless one is given.
        let behavior = match behavior {
            Some(b) => Behavior::parse(b).map_err(crate::errors::Error::from)?,
            None if object != current.object => Behavior::default_for(object),
            None => current.behavior,
        };
        let query = query.unwrap_or(&current.query);
        let sync_key = sync_key.unwrap_or(&current.sync_key);
        let mappings = match mappings {
            Some(m) => Some(m.0).filter(|m| !m.is_null()),
            None => current.mappings.clone(),
        };
        let options = options.map(|o| o.0).unwrap_or(current.options.clone());
        let prepared = prepare(name, &dest, object, behavior, query, sync_key, mappings.as_ref(), &options, current.owner)?;
        let identity_changed = dest.id != current.destination.id || prepared.object != current.object || sync_key != current.sync_key;
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                client.update(
                    "UPDATE vitally.sync SET destination_id = $2, object = $3, behavior = $4, query = $5, sync_key = $6,
                            mappings = $7, options = $8, enabled = coalesce($9, enabled), updated_at = pg_catalog.now()
                      WHERE id = $1",
                    None,
                    &std::iter::once(current.id.into())
                        .chain(definition(dest.id, &prepared, query, sync_key, mappings, options))
                        .chain([enabled.into()])
                        .collect::<Vec<_>>(),
                )?;
                if identity_changed {
                    crate::queue::forget_delivered(client, current.id)?;
                }
                Ok(())
            })
        })?;
        if identity_changed {
            notice!("sync \"{name}\" now writes other records: what was delivered is forgotten, and its next run sends every row");
        }
        Ok(())
    }

    /// Removes a sync with its runs, records and delivery state.
    #[pg_extern(volatile)]
    fn drop_sync(name: &str) -> Result<(), ErrorReport> {
        let me = caller();
        Ok(as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let sync = owned_sync(client, name, me, true)?;
                crate::catalog::delete_syncs(client, "s.id = $1", sync.id)
            })
        })?)
    }
}
