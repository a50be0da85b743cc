//! What a sync declares: its object, behavior and options, and which key it needs.

use serde_json::Value;
use thiserror::Error;

pub use vitally_model::{check_pair, Behavior, KeyNeeded, KindError, Object, Route, VALID_PAIRS};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Kind(#[from] KindError),
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
    fn options_are_checked() {
        assert!(Options::parse(Some(&json!({"skip_nulls": true}))).unwrap().skip_nulls);
        assert_eq!(Options::parse(Some(&json!({"skipnulls": true}))), Err(PlanError::UnknownOption("skipnulls".into())));
        assert_eq!(Options::parse(Some(&json!({"skip_nulls": "yes"}))), Err(PlanError::OptionNotBoolean("skip_nulls".into())));
        assert_eq!(Options::parse(Some(&json!([1]))), Err(PlanError::OptionsNotObject));
    }
}
