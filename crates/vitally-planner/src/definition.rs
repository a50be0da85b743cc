//! What a sync declares: its object, behavior and options, and which key it needs.

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    User,
    Account,
    Organization,
    Event,
    NpsResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Update or Create, through the Analytics API.
    Upsert,
    /// Update records that exist, through the REST API; skip the rest.
    UpdateOnly,
    /// Send each event once.
    Append,
}

/// Which of a destination's keys a sync needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyNeeded {
    Analytics,
    Rest,
}

/// Where a valid pair of object and behavior sends its records: the one table the
/// definition checks, the key check and the worker all read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Analytics API, create or update (users, accounts, organizations).
    AnalyticsUpsert,
    /// Analytics API, each event once.
    AnalyticsAppend,
    /// REST API: update what exists, skip the rest.
    RestUpdate,
    /// REST API: NPS responses.
    RestNps,
}

impl Route {
    pub fn key(self) -> KeyNeeded {
        match self {
            Route::AnalyticsUpsert | Route::AnalyticsAppend => KeyNeeded::Analytics,
            Route::RestUpdate | Route::RestNps => KeyNeeded::Rest,
        }
    }
}

pub const VALID_PAIRS: &str = "user, account, organization with 'upsert' or 'update_only'; event with 'append'; nps_response with 'upsert'";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("unknown object \"{0}\": use 'user', 'account', 'organization', 'event' or 'nps_response'")]
    UnknownObject(String),
    #[error("unknown behavior \"{0}\": use 'upsert', 'update_only' or 'append'")]
    UnknownBehavior(String),
    #[error("object '{object}' cannot use behavior '{behavior}': valid pairs are {VALID_PAIRS}")]
    InvalidPair { object: String, behavior: String },
    #[error("unknown option \"{0}\": options are skip_nulls and unlink_removed_accounts")]
    UnknownOption(String),
    #[error("option \"{0}\" must be true or false")]
    OptionNotBoolean(String),
    #[error("options must be a JSON object, e.g. '{{\"skip_nulls\": true}}'")]
    OptionsNotObject,
    #[error("the sync key column \"{key}\" is not in the query's result; its columns are: {available}")]
    MissingKeyColumn { key: String, available: String },
    #[error("mappings must be a JSON object from a Vitally field to a column, e.g. '{{\"traits.company_name\": \"name\"}}'")]
    MappingsNotObject,
    #[error("the mapping of \"{0}\" must name a column as a JSON string")]
    MappingNotColumn(String),
    #[error("\"{field}\" is not a field of a {object}: use {allowed}")]
    UnknownField { field: String, object: &'static str, allowed: String },
    #[error("the mapping of \"{field}\" names column \"{column}\", which is not in the query's result; its columns are: {available}")]
    AbsentColumn { field: String, column: String, available: String },
    #[error("{0}")]
    MissingRequired(String),
    #[error("the query's result has two columns named \"{0}\": give each column its own name (AS ...)")]
    DuplicateColumn(String),
}

impl Object {
    pub fn parse(s: &str) -> Result<Object, PlanError> {
        Ok(match s.trim() {
            "user" => Object::User,
            "account" => Object::Account,
            "organization" => Object::Organization,
            "event" => Object::Event,
            "nps_response" => Object::NpsResponse,
            other => return Err(PlanError::UnknownObject(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Object::User => "user",
            Object::Account => "account",
            Object::Organization => "organization",
            Object::Event => "event",
            Object::NpsResponse => "nps_response",
        }
    }
}

impl Behavior {
    pub fn parse(s: &str) -> Result<Behavior, PlanError> {
        Ok(match s.trim() {
            "upsert" => Behavior::Upsert,
            "update_only" => Behavior::UpdateOnly,
            "append" => Behavior::Append,
            other => return Err(PlanError::UnknownBehavior(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Upsert => "upsert",
            Behavior::UpdateOnly => "update_only",
            Behavior::Append => "append",
        }
    }

    /// The behavior a sync gets when none is given: append for events, else upsert.
    pub fn default_for(object: Object) -> Behavior {
        if object == Object::Event {
            Behavior::Append
        } else {
            Behavior::Upsert
        }
    }

    /// The action `preview` shows for a record this behavior would send.
    pub fn action(self) -> &'static str {
        match self {
            Behavior::Upsert => "create_or_update",
            Behavior::UpdateOnly => "update",
            Behavior::Append => "append",
        }
    }
}

/// Checks the pair and says where its records go (and so which key it needs).
pub fn check_pair(object: Object, behavior: Behavior) -> Result<Route, PlanError> {
    use Behavior::*;
    use Object::*;
    match (object, behavior) {
        (User | Account | Organization, Upsert) => Ok(Route::AnalyticsUpsert),
        (User | Account | Organization, UpdateOnly) => Ok(Route::RestUpdate),
        (Event, Append) => Ok(Route::AnalyticsAppend),
        (NpsResponse, Upsert) => Ok(Route::RestNps),
        _ => Err(PlanError::InvalidPair { object: object.as_str().into(), behavior: behavior.as_str().into() }),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Leave out traits whose value is SQL NULL instead of sending `null`.
    pub skip_nulls: bool,
    /// Users: send `unlink` for an account that left the user's list.
    pub unlink_removed_accounts: bool,
}

impl Options {
    pub fn parse(value: Option<&Value>) -> Result<Options, PlanError> {
        let mut options = Options::default();
        let Some(value) = value else { return Ok(options) };
        let map = match value {
            Value::Null => return Ok(options),
            Value::Object(m) => m,
            _ => return Err(PlanError::OptionsNotObject),
        };
        for (name, v) in map {
            let slot = match name.as_str() {
                "skip_nulls" => &mut options.skip_nulls,
                "unlink_removed_accounts" => &mut options.unlink_removed_accounts,
                _ => return Err(PlanError::UnknownOption(name.clone())),
            };
            *slot = v.as_bool().ok_or_else(|| PlanError::OptionNotBoolean(name.clone()))?;
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invalid_pairs_list_the_valid_ones() {
        let err = check_pair(Object::Event, Behavior::Upsert).unwrap_err();
        assert!(err.to_string().contains("event with 'append'"), "{err}");
        assert_eq!(check_pair(Object::Account, Behavior::UpdateOnly).map(Route::key), Ok(KeyNeeded::Rest));
        assert_eq!(check_pair(Object::NpsResponse, Behavior::Upsert), Ok(Route::RestNps));
        assert_eq!(Behavior::default_for(Object::Event), Behavior::Append);
        assert_eq!(Behavior::default_for(Object::User), Behavior::Upsert);
    }

    #[test]
    fn options_are_checked() {
        assert!(Options::parse(Some(&json!({"skip_nulls": true}))).unwrap().skip_nulls);
        assert_eq!(Options::parse(Some(&json!({"skipnulls": true}))), Err(PlanError::UnknownOption("skipnulls".into())));
        assert_eq!(Options::parse(Some(&json!({"skip_nulls": "yes"}))), Err(PlanError::OptionNotBoolean("skip_nulls".into())));
        assert_eq!(Options::parse(Some(&json!([1]))), Err(PlanError::OptionsNotObject));
    }
}
