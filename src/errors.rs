//! One error type for what users do wrong, each with a SQLSTATE and a hint that says how to fix it.
//!
//! Messages are built from names and settings only: a key never reaches one.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use vitally_client::destination::DestinationError;

pub struct UserError {
    code: PgSqlErrorCode,
    message: String,
    hint: Option<String>,
}

impl UserError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        UserError { code, message: message.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Raises the error: the statement is aborted and the caller sees message and hint.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "vitally_sync");
        if let Some(h) = self.hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }

    pub fn no_such_destination(name: &str) -> Self {
        UserError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("destination \"{name}\" does not exist"))
            .hint("SELECT name FROM vitally.destinations lists the destinations you own.")
    }
}

impl UserError {
    pub fn no_such_sync(name: &str) -> Self {
        UserError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("sync \"{name}\" does not exist"))
            .hint("SELECT name FROM vitally.syncs lists the syncs you own.")
    }
}

impl From<vitally_planner::PlanError> for UserError {
    fn from(e: vitally_planner::PlanError) -> Self {
        use vitally_planner::PlanError::*;
        let hint = match &e {
            MissingKeyColumn { .. } => Some("sync_key names the column holding each record's unique id; rename a column with AS in the query."),
            MappingsNotObject | MappingNotColumn(_) | UnknownField { .. } => {
                Some("Constants and expressions belong in the query (SELECT 'Login' AS event, ...); mappings only name its columns.")
            }
            _ => None,
        };
        let err = UserError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string());
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

impl From<DestinationError> for UserError {
    fn from(e: DestinationError) -> Self {
        use DestinationError::*;
        let hint = match &e {
            UnknownRegion(_) => Some("Your workspace's region is in Vitally's settings; most workspaces are 'us'."),
            NoKey => Some("Keys are under Settings > Integrations in Vitally: \"Integrate via HTTPS API\" for the Analytics key, the REST API for the secret token."),
            InsecureUrl { .. } => Some("Leave the URL NULL to use Vitally's own https hosts."),
            EuAnalyticsUrlNeeded => Some(
                "Copy the base URL shown with your Analytics (HTTPS API) key in Vitally's integration settings, or ask Vitally support, \
                 and give it as analytics_url => 'https://.../analytics/v1'.",
            ),
            HostNotAllowed { .. } => Some("Leave the URL NULL to use Vitally's own hosts, or ask a superuser to add the host to vitally.allowed_hosts (postgresql.conf, then SELECT pg_reload_conf())."),
            _ => None,
        };
        let code = match &e {
            NameTooLong(_) => PgSqlErrorCode::ERRCODE_NAME_TOO_LONG,
            _ => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        };
        let err = UserError::new(code, e.to_string());
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

/// Raises a user error from a `Result`, for code that validates with the client crate.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Into<UserError>> OrRaise<T> for Result<T, E> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.into().raise(),
        }
    }
}

/// Raises an unexpected SPI failure as an internal error.
pub fn internal(e: pgrx::spi::SpiError) -> ! {
    UserError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("vitally_sync: {e}")).raise()
}
