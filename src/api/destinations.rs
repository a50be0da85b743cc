//! `vitally.create_destination`, `alter_destination`, `drop_destination`.
//!
//! They run as the caller, who becomes the destination's owner; only the
//! statements on the extension's tables run as its owner (see `elevation`).

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::{owned_destination, CatalogError};
    use crate::elevation::{as_extension_owner, caller};
    use crate::errors::{Error, Result, Row};
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::spi::SpiClient;
    use vitally_client::destination::{
        base_url, check_hosts, normalize_key, validate_base_url, validate_name, validate_subdomain, Api, DestinationError, Region,
    };

    /// Registers a Vitally destination owned by the calling role; returns its id.
    #[pg_extern(volatile)]
    fn create_destination(
        name: &str,
        analytics_api_key: default!(Option<&str>, "NULL"),
        rest_api_key: default!(Option<&str>, "NULL"),
        subdomain: default!(Option<&str>, "NULL"),
        region: default!(&str, "'us'"),
        analytics_url: default!(Option<&str>, "NULL"),
        rest_url: default!(Option<&str>, "NULL"),
    ) -> std::result::Result<i64, ErrorReport> {
        crate::log_scrub::key_call();
        require_keys_stay_out_of_log("create_destination")?;
        validate_name(name).map_err(Error::from)?;
        let region = Region::parse(region).map_err(Error::from)?;
        let subdomain = subdomain.filter(|s| !s.trim().is_empty()).map(validate_subdomain).transpose().map_err(Error::from)?;
        let analytics_url = url_override(Api::Analytics, analytics_url)?;
        let rest_url = url_override(Api::Rest, rest_url)?;
        let analytics_key = analytics_api_key.map(|k| normalize_key(Api::Analytics, k)).transpose().map_err(Error::from)?.flatten();
        let rest_key = rest_api_key.map(|k| normalize_key(Api::Rest, k)).transpose().map_err(Error::from)?.flatten();
        if analytics_key.is_none() && rest_key.is_none() {
            return Err(Error::from(DestinationError::NoKey).into());
        }
        check_hosts(region, analytics_key.is_some(), analytics_url.as_deref()).map_err(Error::from)?;
        let owner = caller();

        let id = as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let inserted = client.update(
                    "INSERT INTO vitally.destination (name, owner, region, subdomain, analytics_url, rest_url)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (name) DO NOTHING
                         RETURNING id",
                    None,
                    &[
                        name.into(),
                        owner.into(),
                        region.as_str().into(),
                        subdomain.as_deref().into(),
                        analytics_url.as_deref().into(),
                        rest_url.as_deref().into(),
                    ],
                )?;
                if inserted.is_empty() {
                    return Err(CatalogError::DestinationExists(name.to_string()).into());
                }
                let id: i64 = inserted.first().required("id")?;
                client.update(
                    "INSERT INTO vitally.destination_secret (destination_id, analytics_api_key, rest_api_key)
                     VALUES ($1, $2, $3)",
                    None,
                    &[id.into(), analytics_key.as_deref().into(), rest_key.as_deref().into()],
                )?;
                Ok(id)
            })
        })?;
        crate::log_scrub::key_call_done();
        Ok(id)
    }

    /// Changes a destination: only the arguments given change. An empty string
    /// removes a key, the subdomain or a URL override.
    #[pg_extern(volatile)]
    fn alter_destination(
        name: &str,
        analytics_api_key: default!(Option<&str>, "NULL"),
        rest_api_key: default!(Option<&str>, "NULL"),
        subdomain: default!(Option<&str>, "NULL"),
        region: default!(Option<&str>, "NULL"),
        analytics_url: default!(Option<&str>, "NULL"),
        rest_url: default!(Option<&str>, "NULL"),
    ) -> std::result::Result<(), ErrorReport> {
        crate::log_scrub::key_call();
        if analytics_api_key.is_some() || rest_api_key.is_some() {
            require_keys_stay_out_of_log("alter_destination")?;
        }
        let region = region.map(Region::parse).transpose().map_err(Error::from)?;
        let subdomain = subdomain.map(|s| (!s.trim().is_empty()).then(|| validate_subdomain(s)).transpose()).transpose().map_err(Error::from)?;
        let analytics_url = analytics_url.map(|u| url_override(Api::Analytics, Some(u))).transpose()?;
        let rest_url = rest_url.map(|u| url_override(Api::Rest, Some(u))).transpose()?;
        let analytics_key = analytics_api_key.map(|k| normalize_key(Api::Analytics, k)).transpose().map_err(Error::from)?;
        let rest_key = rest_api_key.map(|k| normalize_key(Api::Rest, k)).transpose().map_err(Error::from)?;
        let me = caller();

        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let stored = owned_destination(client, name, me, true)?;
                let id = stored.id;
                require_key_with_new_url(
                    name,
                    "analytics_url",
                    "analytics_api_key",
                    stored.analytics_url.as_deref(),
                    analytics_url.as_ref(),
                    analytics_key.is_some(),
                )?;
                require_key_with_new_url(name, "rest_url", "rest_api_key", stored.rest_url.as_deref(), rest_url.as_ref(), rest_key.is_some())?;
                // Each column keeps its value unless its argument was given ($n IS NOT NULL flags).
                client.update(
                    "UPDATE vitally.destination SET
                             region        = CASE WHEN $2 THEN $3 ELSE region END,
                             subdomain     = CASE WHEN $4 THEN $5 ELSE subdomain END,
                             analytics_url = CASE WHEN $6 THEN $7 ELSE analytics_url END,
                             rest_url      = CASE WHEN $8 THEN $9 ELSE rest_url END,
                             updated_at    = pg_catalog.now()
                         WHERE id = $1",
                    None,
                    &[
                        id.into(),
                        region.is_some().into(),
                        region.map(|r| r.as_str()).into(),
                        subdomain.is_some().into(),
                        subdomain.clone().flatten().into(),
                        analytics_url.is_some().into(),
                        analytics_url.clone().flatten().into(),
                        rest_url.is_some().into(),
                        rest_url.clone().flatten().into(),
                    ],
                )?;
                let keys_left = client.update(
                    "UPDATE vitally.destination_secret SET
                             analytics_api_key = CASE WHEN $2 THEN $3 ELSE analytics_api_key END,
                             rest_api_key      = CASE WHEN $4 THEN $5 ELSE rest_api_key END
                         WHERE destination_id = $1
                           AND (CASE WHEN $2 THEN $3 ELSE analytics_api_key END IS NOT NULL
                                OR CASE WHEN $4 THEN $5 ELSE rest_api_key END IS NOT NULL)
                         RETURNING 1",
                    None,
                    &[
                        id.into(),
                        analytics_key.is_some().into(),
                        analytics_key.clone().flatten().into(),
                        rest_key.is_some().into(),
                        rest_key.clone().flatten().into(),
                    ],
                )?;
                if keys_left.is_empty() {
                    return Err(CatalogError::NoKeyLeft(name.to_string()).into());
                }
                require_hosts(client, id)
            })
        })?;
        crate::log_scrub::key_call_done();
        Ok(())
    }

    /// Removes a destination and its keys; refused while syncs use it, unless `cascade`
    /// (which drops those syncs too).
    #[pg_extern(volatile)]
    fn drop_destination(name: &str, cascade: default!(bool, false)) -> std::result::Result<(), ErrorReport> {
        let me = caller();
        Ok(as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let id = owned_destination(client, name, me, true)?.id;
                let users: Option<String> = client
                    .select("SELECT string_agg(name, ', ' ORDER BY name) AS syncs FROM vitally.sync WHERE destination_id = $1", None, &[id.into()])?
                    .first()
                    .optional("syncs")?;
                if let Some(syncs) = users {
                    if !cascade {
                        return Err(CatalogError::DestinationInUse { name: name.to_string(), syncs }.into());
                    }
                    crate::catalog::delete_syncs(client, "s.destination_id = $1", id)?;
                }
                client.update("DELETE FROM vitally.destination WHERE id = $1", None, &[id.into()])?;
                Ok(())
            })
        })?)
    }

    /// The base URL a destination uses for `api` ('analytics' or 'rest'): the
    /// override if set, else Vitally's host for the region and subdomain.
    #[pg_extern(immutable, parallel_safe)]
    fn destination_url(api: &str, region: &str, subdomain: Option<&str>, url_override: Option<&str>) -> Option<String> {
        let api = Api::parse(api)?;
        let region = Region::parse(region).ok()?;
        base_url(api, region, subdomain, url_override)
    }

    fn url_override(api: Api, raw: Option<&str>) -> Result<Option<String>> {
        let allowed = crate::guc::allowed_hosts();
        Ok(raw.filter(|u| !u.trim().is_empty()).map(|u| validate_base_url(api, u, &allowed)).transpose()?)
    }

    /// Each key of a destination, as an alter left it, has a host to go to.
    fn require_hosts(client: &SpiClient<'_>, id: i64) -> Result<()> {
        let row = client
            .select(
                "SELECT d.region, d.analytics_url, s.analytics_api_key IS NOT NULL AS has_key
                   FROM vitally.destination d JOIN vitally.destination_secret s ON s.destination_id = d.id WHERE d.id = $1",
                None,
                &[id.into()],
            )?
            .first();
        let region = Region::parse(&row.required::<String>("region")?)?;
        let url: Option<String> = row.optional("analytics_url")?;
        Ok(check_hosts(region, row.required("has_key")?, url.as_deref())?)
    }

    /// Keys are taken only where the log hook can keep them out of the server log.
    fn require_keys_stay_out_of_log(function: &'static str) -> Result<()> {
        crate::log_scrub::keys_stay_out_of_log().map_err(|why| CatalogError::KeysWouldBeLogged { function, why }.into())
    }

    /// A URL override that changes must come with its key in the same call (a key
    /// given for one host is never sent to another), or with the key cleared.
    fn require_key_with_new_url(
        name: &str,
        arg: &'static str,
        key_arg: &'static str,
        old: Option<&str>,
        new: Option<&Option<String>>,
        key_given: bool,
    ) -> Result<()> {
        match new {
            Some(new) if new.as_deref() != old && !key_given => Err(CatalogError::KeyWithNewUrl { name: name.to_string(), arg, key_arg }.into()),
            _ => Ok(()),
        }
    }
}
