//! The vocabulary of a sync, shared by the planner (what to send), the client (how to
//! send it) and the worker (which key and API): one object enum, one behavior enum, and
//! the one table of valid pairs, `check_pair`, which says where each pair's records go.
//! Adding a behavior is an edit here; the compiler then names every match to extend.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Object {
    User,
    Account,
    Organization,
    Event,
    NpsResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Where a valid pair of object and behavior sends its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// Whether the records go through the REST API (paced per minute, one call each).
    pub fn is_rest(self) -> bool {
        self.key() == KeyNeeded::Rest
    }
}

pub const VALID_PAIRS: &str = "user, account, organization with 'upsert' or 'update_only'; event with 'append'; nps_response with 'upsert'";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KindError {
    #[error("unknown object \"{0}\": use 'user', 'account', 'organization', 'event' or 'nps_response'")]
    UnknownObject(String),
    #[error("unknown behavior \"{0}\": use 'upsert', 'update_only' or 'append'")]
    UnknownBehavior(String),
    #[error("object '{object}' cannot use behavior '{behavior}': valid pairs are {VALID_PAIRS}")]
    InvalidPair { object: &'static str, behavior: &'static str },
}

impl Object {
    pub fn parse(s: &str) -> Result<Object, KindError> {
        Ok(match s.trim() {
            "user" => Object::User,
            "account" => Object::Account,
            "organization" => Object::Organization,
            "event" => Object::Event,
            "nps_response" => Object::NpsResponse,
            other => return Err(KindError::UnknownObject(other.to_string())),
        })
    }

    /// The name stored in `vitally.sync.object` and given to `create_sync`.
    pub fn as_str(self) -> &'static str {
        match self {
            Object::User => "user",
            Object::Account => "account",
            Object::Organization => "organization",
            Object::Event => "event",
            Object::NpsResponse => "nps_response",
        }
    }

    /// The name in messages for people.
    pub fn display_name(self) -> &'static str {
        match self {
            Object::NpsResponse => "NPS response",
            other => other.as_str(),
        }
    }
}

impl Behavior {
    pub fn parse(s: &str) -> Result<Behavior, KindError> {
        Ok(match s.trim() {
            "upsert" => Behavior::Upsert,
            "update_only" => Behavior::UpdateOnly,
            "append" => Behavior::Append,
            other => return Err(KindError::UnknownBehavior(other.to_string())),
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
pub fn check_pair(object: Object, behavior: Behavior) -> Result<Route, KindError> {
    use Behavior::*;
    use Object::*;
    match (object, behavior) {
        (User | Account | Organization, Upsert) => Ok(Route::AnalyticsUpsert),
        (User | Account | Organization, UpdateOnly) => Ok(Route::RestUpdate),
        (Event, Append) => Ok(Route::AnalyticsAppend),
        (NpsResponse, Upsert) => Ok(Route::RestNps),
        _ => Err(KindError::InvalidPair { object: object.as_str(), behavior: behavior.as_str() }),
    }
}

/// A pair as stored by name (`vitally.sync.object`, `.behavior`), read back as one value.
pub fn parse_pair(object: &str, behavior: &str) -> Result<(Object, Behavior, Route), KindError> {
    let (object, behavior) = (Object::parse(object)?, Behavior::parse(behavior)?);
    Ok((object, behavior, check_pair(object, behavior)?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn names_round_trip() {
        for o in [Object::User, Object::Account, Object::Organization, Object::Event, Object::NpsResponse] {
            assert_eq!(Object::parse(o.as_str()), Ok(o));
        }
        for b in [Behavior::Upsert, Behavior::UpdateOnly, Behavior::Append] {
            assert_eq!(Behavior::parse(b.as_str()), Ok(b));
        }
        assert_eq!(Object::parse("acount"), Err(KindError::UnknownObject("acount".into())));
    }
}
