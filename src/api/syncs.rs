//! `vitally.create_sync`, `alter_sync`, `drop_sync`: defining what to send where.

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::{owned_destination, owned_sync};
    use crate::elevation::{as_extension_owner, caller};
    use crate::errors::internal;
    use crate::errors::UserError;
    use crate::planning::prepare;
    use pgrx::prelude::*;
    use pgrx::JsonB;
    use vitally_client::destination::validate_name;

    /// The behavior an object takes when none is given (an unknown object is refused
    /// by `prepare`, whatever this says).
    fn default_behavior(object: &str) -> &'static str {
        use vitally_planner::definition::{Behavior, Object};
        Object::parse(object).map_or("upsert", |o| Behavior::default_for(o).as_str())
    }

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
    ) -> i64 {
        validate_name(name).map_err(|_| sync_name_error(name)).unwrap_or_else(|e| e.raise());
        let me = caller();
        let behavior = behavior.unwrap_or_else(|| default_behavior(object));
        let mappings = mappings.map(|m| m.0).filter(|m| !m.is_null());
        let dest = as_extension_owner(|| Spi::connect(|client| owned_destination(client, destination, me, false)));
        let prepared = prepare(name, &dest, object, behavior, query, sync_key, mappings.as_ref(), &options.0, me);
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let inserted = client
                    .update(
                        "INSERT INTO vitally.sync (name, owner, destination_id, object, behavior, query, sync_key, mappings, options)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (name) DO NOTHING RETURNING id",
                        None,
                        &[
                            name.into(),
                            me.into(),
                            dest.id.into(),
                            prepared.object.as_str().into(),
                            prepared.behavior.as_str().into(),
                            query.into(),
                            sync_key.into(),
                            mappings.map(JsonB).into(),
                            options.into(),
                        ],
                    )
                    .unwrap_or_else(|e| internal(e));
                inserted.first().get_one::<i64>().ok().flatten().unwrap_or_else(|| {
                    UserError::new(PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT, format!("sync \"{name}\" already exists"))
                        .hint("Choose another name, or change it with vitally.alter_sync().")
                        .raise()
                })
            })
        })
    }

    fn sync_name_error(name: &str) -> UserError {
        UserError::new(PgSqlErrorCode::ERRCODE_INVALID_NAME, format!("invalid sync name \"{name}\": give 1 to 63 characters"))
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
    ) {
        let me = caller();
        let current = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, true)));
        let dest = match destination {
            Some(d) => as_extension_owner(|| Spi::connect(|client| owned_destination(client, d, current.owner, false))),
            None => current.destination.clone(),
        };
        let object_given = object.is_some();
        let object = object.unwrap_or(&current.object);
        let behavior = behavior.unwrap_or(if object_given && object != current.object { default_behavior(object) } else { &current.behavior });
        let query = query.unwrap_or(&current.query);
        let sync_key = sync_key.unwrap_or(&current.sync_key);
        let mappings = match mappings {
            Some(m) => Some(m.0).filter(|m| !m.is_null()),
            None => current.mappings.clone(),
        };
        let options = options.map(|o| o.0).unwrap_or(current.options.clone());
        let prepared = prepare(name, &dest, object, behavior, query, sync_key, mappings.as_ref(), &options, current.owner);
        let identity_changed = dest.id != current.destination.id || prepared.object.as_str() != current.object || sync_key != current.sync_key;
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                client
                    .update(
                        "UPDATE vitally.sync SET destination_id = $2, object = $3, behavior = $4, query = $5, sync_key = $6,
                                mappings = $7, options = $8, enabled = coalesce($9, enabled), updated_at = pg_catalog.now()
                          WHERE id = $1",
                        None,
                        &[
                            current.id.into(),
                            dest.id.into(),
                            prepared.object.as_str().into(),
                            prepared.behavior.as_str().into(),
                            query.into(),
                            sync_key.into(),
                            mappings.map(JsonB).into(),
                            JsonB(options).into(),
                            enabled.into(),
                        ],
                    )
                    .unwrap_or_else(|e| internal(e));
                if identity_changed {
                    client
                        .update("DELETE FROM vitally.delivery_state WHERE sync_id = $1", None, &[current.id.into()])
                        .unwrap_or_else(|e| internal(e));
                }
            })
        });
        if identity_changed {
            notice!("sync \"{name}\" now writes other records: what was delivered is forgotten, and its next run sends every row");
        }
    }

    /// Removes a sync with its runs, records and delivery state.
    #[pg_extern(volatile)]
    fn drop_sync(name: &str) {
        let me = caller();
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let sync = owned_sync(client, name, me, true);
                crate::catalog::delete_syncs(client, "s.id = $1", sync.id);
            })
        })
    }
}
