//! Mappings resolved against the columns of a sync's query: which column gives which
//! Vitally field. With no mappings, the conventions of `sql-api.md` apply.

use crate::definition::{Behavior, Object, PlanError};
use serde_json::{Map, Value};

/// How a column's values become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `timestamptz`: an ISO-8601 UTC string.
    TimestampTz,
    /// `timestamp` (no zone): taken as UTC.
    Timestamp,
    /// `json` / `jsonb`: as given.
    Json,
    /// Any array: a JSON array.
    Array,
    /// Everything else: what `to_jsonb` makes of it (numbers, booleans, strings).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// Whether Postgres can hash the type's values directly (else its text is hashed).
    pub hashable: bool,
}

/// Where a column's value goes in the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A top-level field: `accountIds`, `organizationId`, `event`, `score`, ...
    Top(&'static str),
    /// `traits.<name>` (users, accounts, organizations).
    Trait(String),
    /// `properties.<name>` (events).
    Property(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub target: Target,
    pub column: Column,
}

/// A sync's mapping, resolved: the key column and every field sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub object: Object,
    pub behavior: Behavior,
    pub key: Column,
    pub fields: Vec<Field>,
}

/// The top-level fields each object takes from a column (its own id comes from the sync key).
fn top_fields(object: Object) -> &'static [&'static str] {
    match object {
        Object::User => &["accountIds", "organizationId"],
        Object::Account => &["organizationId"],
        Object::Organization => &[],
        Object::Event => &["event", "userId", "accountId", "organizationId", "timestamp"],
        Object::NpsResponse => &["userId", "score", "feedback", "respondedAt"],
    }
}

/// The conventions: column name → top-level field.
fn conventional(object: Object) -> &'static [(&'static str, &'static str)] {
    match object {
        Object::User => &[("account_ids", "accountIds"), ("organization_id", "organizationId")],
        Object::Account => &[("organization_id", "organizationId")],
        Object::Organization => &[],
        Object::Event => &[
            ("event", "event"),
            ("user_id", "userId"),
            ("account_id", "accountId"),
            ("organization_id", "organizationId"),
            ("timestamp", "timestamp"),
        ],
        Object::NpsResponse => &[("user_id", "userId"), ("score", "score"), ("responded_at", "respondedAt"), ("feedback", "feedback")],
    }
}

fn column_list(columns: &[Column]) -> String {
    columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn allowed(object: Object) -> String {
    let mut names: Vec<String> = top_fields(object).iter().map(|s| s.to_string()).collect();
    match object {
        Object::Event => names.push("properties.<name>".into()),
        Object::NpsResponse => {}
        _ => names.push("traits.<name>".into()),
    }
    names.join(", ")
}

/// Resolves `mappings` (None: the conventions) against the query's `columns`.
pub fn plan(object: Object, behavior: Behavior, sync_key: &str, columns: &[Column], mappings: Option<&Value>) -> Result<Plan, PlanError> {
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].iter().any(|d| d.name == c.name) {
            return Err(PlanError::DuplicateColumn(c.name.clone()));
        }
    }
    let find = |name: &str| columns.iter().find(|c| c.name == name).cloned();
    let key = find(sync_key).ok_or_else(|| PlanError::MissingKeyColumn { key: sync_key.into(), available: column_list(columns) })?;

    let fields = match mappings {
        None | Some(Value::Null) => conventions(object, &key, columns),
        Some(Value::Object(m)) => explicit(object, m, columns)?,
        Some(_) => return Err(PlanError::MappingsNotObject),
    };
    let plan = Plan { object, behavior, key, fields };
    plan.check_required(mappings.is_some_and(|m| !m.is_null()))?;
    Ok(plan)
}

fn conventions(object: Object, key: &Column, columns: &[Column]) -> Vec<Field> {
    let special = conventional(object);
    columns
        .iter()
        .filter(|c| c.name != key.name)
        .filter_map(|c| {
            let target = match special.iter().find(|(col, _)| *col == c.name) {
                Some((_, top)) => Target::Top(top),
                None => match object {
                    Object::Event => Target::Property(c.name.clone()),
                    // An NPS response has no traits: other columns are not sent.
                    Object::NpsResponse => return None,
                    _ => Target::Trait(c.name.clone()),
                },
            };
            Some(Field { target, column: c.clone() })
        })
        .collect()
}

fn explicit(object: Object, mappings: &Map<String, Value>, columns: &[Column]) -> Result<Vec<Field>, PlanError> {
    let tops = top_fields(object);
    let mut fields = Vec::new();
    for (field, column) in mappings {
        let Value::String(column_name) = column else { return Err(PlanError::MappingNotColumn(field.clone())) };
        let unknown = || PlanError::UnknownField { field: field.clone(), object: object.as_str(), allowed: allowed(object) };
        let target = if let Some(name) = field.strip_prefix("traits.") {
            if matches!(object, Object::Event | Object::NpsResponse) || name.is_empty() {
                return Err(unknown());
            }
            Target::Trait(name.to_string())
        } else if let Some(name) = field.strip_prefix("properties.") {
            if object != Object::Event || name.is_empty() {
                return Err(unknown());
            }
            Target::Property(name.to_string())
        } else {
            // One account is a list of one: accountId is taken as accountIds for users.
            let wanted = if object == Object::User && field == "accountId" { "accountIds" } else { field.as_str() };
            Target::Top(tops.iter().find(|t| **t == wanted).copied().ok_or_else(unknown)?)
        };
        let column = columns.iter().find(|c| c.name == *column_name).cloned().ok_or_else(|| PlanError::AbsentColumn {
            field: field.clone(),
            column: column_name.clone(),
            available: column_list(columns),
        })?;
        fields.push(Field { target, column });
    }
    Ok(fields)
}

impl Plan {
    /// The column giving a top-level field, if any.
    pub fn top(&self, name: &str) -> Option<&Column> {
        self.fields.iter().find(|f| matches!(&f.target, Target::Top(t) if *t == name)).map(|f| &f.column)
    }

    fn check_required(&self, explicit: bool) -> Result<(), PlanError> {
        let how = |column: &str, field: &str| {
            if explicit {
                format!("map {field} to a column")
            } else {
                format!("add a column named {column} to the query (or map {field})")
            }
        };
        let missing = |what: String| Err(PlanError::MissingRequired(what));
        match self.object {
            // An update-only user exists already: Vitally's REST update takes traits alone.
            Object::User if self.top("accountIds").is_none() && self.behavior != Behavior::UpdateOnly => {
                missing(format!("a user sync needs each user's accounts: {}", how("account_ids", "accountIds")))
            }
            Object::Event if self.top("event").is_none() => missing(format!("an event sync needs the event's name: {}", how("event", "event"))),
            Object::Event if ["userId", "accountId", "organizationId"].iter().all(|f| self.top(f).is_none()) => missing(format!(
                "an event sync needs to say who did it: {}",
                if explicit {
                    "map userId, accountId or organizationId to a column".to_string()
                } else {
                    "add a column named user_id, account_id or organization_id to the query".to_string()
                }
            )),
            Object::NpsResponse if self.top("userId").is_none() => {
                missing(format!("an NPS response sync needs the user: {}", how("user_id", "userId")))
            }
            Object::NpsResponse if self.top("score").is_none() => missing(format!("an NPS response sync needs the score: {}", how("score", "score"))),
            Object::NpsResponse if self.top("respondedAt").is_none() => missing(format!(
                "an NPS response sync needs when each response was given (Vitally requires it): {}",
                how("responded_at", "respondedAt")
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols(names: &[(&str, ColumnType)]) -> Vec<Column> {
        names.iter().map(|(n, t)| Column { name: n.to_string(), ty: *t, hashable: true }).collect()
    }

    #[test]
    fn conventions_for_users_make_every_other_column_a_trait() {
        let c = cols(&[
            ("id", ColumnType::Other),
            ("account_ids", ColumnType::Array),
            ("organization_id", ColumnType::Other),
            ("email", ColumnType::Other),
        ]);
        let p = plan(Object::User, Behavior::Upsert, "id", &c, None).unwrap();
        let targets: Vec<&Target> = p.fields.iter().map(|f| &f.target).collect();
        assert_eq!(targets, vec![&Target::Top("accountIds"), &Target::Top("organizationId"), &Target::Trait("email".into())]);
    }

    #[test]
    fn a_user_sync_without_accounts_is_refused_with_how_to_fix_it() {
        let c = cols(&[("id", ColumnType::Other), ("email", ColumnType::Other)]);
        let err = plan(Object::User, Behavior::Upsert, "id", &c, None).unwrap_err();
        assert_eq!(err.to_string(), "a user sync needs each user's accounts: add a column named account_ids to the query (or map accountIds)");
        // An update-only user exists in Vitally already: its traits are enough.
        let p = plan(Object::User, Behavior::UpdateOnly, "id", &c, None).unwrap();
        assert!(!p.validation_sql().contains("at least one account"));
    }

    #[test]
    fn an_nps_sync_needs_when_each_response_was_given() {
        let c = cols(&[("id", ColumnType::Other), ("user_id", ColumnType::Other), ("score", ColumnType::Other)]);
        let err = plan(Object::NpsResponse, Behavior::Upsert, "id", &c, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an NPS response sync needs when each response was given (Vitally requires it): add a column named responded_at to the query (or map respondedAt)"
        );
        let mut c = c;
        c.push(cols(&[("responded_at", ColumnType::TimestampTz)]).remove(0));
        let sql = plan(Object::NpsResponse, Behavior::Upsert, "id", &c, None).unwrap().validation_sql();
        assert!(sql.contains("respondedAt is required: responded_at is NULL or empty"), "{sql}");
        assert!(!sql.contains("ISO-8601"), "a timestamptz column is always well formed");
    }

    #[test]
    fn a_text_timestamp_is_checked_before_sending() {
        let c = cols(&[("id", ColumnType::Other), ("event", ColumnType::Other), ("user_id", ColumnType::Other), ("timestamp", ColumnType::Other)]);
        let sql = plan(Object::Event, Behavior::Append, "id", &c, None).unwrap().validation_sql();
        assert!(sql.contains("timestamp must be an ISO-8601 date-time with a time zone"), "{sql}");
    }

    #[test]
    fn explicit_mappings_send_only_what_they_name() {
        let c = cols(&[("id", ColumnType::Other), ("name", ColumnType::Other), ("secret", ColumnType::Other), ("org", ColumnType::Other)]);
        let m = json!({"traits.company_name": "name", "organizationId": "org"});
        let p = plan(Object::Account, Behavior::Upsert, "id", &c, Some(&m)).unwrap();
        assert_eq!(p.fields.len(), 2);
        assert!(p.fields.iter().any(|f| f.target == Target::Trait("company_name".into()) && f.column.name == "name"));
    }

    #[test]
    fn mapping_errors_name_the_problem() {
        let c = cols(&[("id", ColumnType::Other), ("name", ColumnType::Other)]);
        let err = plan(Object::Account, Behavior::Upsert, "id", &c, Some(&json!({"traits.x": "nope"}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the mapping of \"traits.x\" names column \"nope\", which is not in the query's result; its columns are: id, name"
        );
        let err = plan(Object::Account, Behavior::Upsert, "id", &c, Some(&json!({"score": "name"}))).unwrap_err();
        assert_eq!(err.to_string(), "\"score\" is not a field of a account: use organizationId, traits.<name>");
        let err = plan(Object::Account, Behavior::Upsert, "uid", &c, None).unwrap_err();
        assert_eq!(err.to_string(), "the sync key column \"uid\" is not in the query's result; its columns are: id, name");
        let err = plan(Object::Event, Behavior::Upsert, "id", &c, Some(&json!({"traits.a": "name"}))).unwrap_err();
        assert!(matches!(err, PlanError::UnknownField { .. }));
    }

    #[test]
    fn events_need_a_name_and_an_actor() {
        let c = cols(&[("id", ColumnType::Other), ("event", ColumnType::Other)]);
        let err = plan(Object::Event, Behavior::Upsert, "id", &c, None).unwrap_err();
        assert!(err.to_string().contains("who did it"), "{err}");
        let c = cols(&[("id", ColumnType::Other), ("event", ColumnType::Other), ("user_id", ColumnType::Other), ("plan", ColumnType::Other)]);
        let p = plan(Object::Event, Behavior::Upsert, "id", &c, None).unwrap();
        assert!(p.fields.iter().any(|f| f.target == Target::Property("plan".into())));
    }

    #[test]
    fn nps_needs_user_and_score() {
        let c = cols(&[("id", ColumnType::Other), ("user_id", ColumnType::Other)]);
        assert!(plan(Object::NpsResponse, Behavior::Upsert, "id", &c, None).unwrap_err().to_string().contains("score"));
    }

    #[test]
    fn duplicate_column_names_are_refused() {
        let c = cols(&[("id", ColumnType::Other), ("x", ColumnType::Other), ("x", ColumnType::Other)]);
        assert_eq!(plan(Object::Account, Behavior::Upsert, "id", &c, None), Err(PlanError::DuplicateColumn("x".into())));
    }
}
