//! Errors as values, in the manner of supabase/wrappers: each concern has one `thiserror`
//! enum (`catalog::CatalogError`, `planning::PlanningError`, `queue::RunError`,
//! `scheduling::ScheduleError`, and the pure crates' `DestinationError` and `PlanError`),
//! mapped to SQLSTATE, message and hint in one `From` impl each. Functions return
//! `Result<T>`; a SQL function returns `Result<T, ErrorReport>`, which pgrx raises after
//! our code has unwound (users and settings switched back on the normal path).
//!
//! Messages are built from names and settings only: a key never reaches one.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode as Code;
use vitally_client::destination::DestinationError;
use vitally_planner::PlanError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error of the crate: one of the concerns' enums.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Internal(#[from] Internal),
    #[error(transparent)]
    NotInstalled(#[from] crate::elevation::NotInstalled),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Planning(#[from] crate::planning::PlanningError),
    #[error(transparent)]
    Run(#[from] crate::queue::RunError),
    #[error(transparent)]
    Scheduling(#[from] crate::scheduling::ScheduleError),
    #[error(transparent)]
    Watch(#[from] crate::watching::WatchError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error(transparent)]
    Definition(#[from] PlanError),
    #[error(transparent)]
    Kind(#[from] vitally_model::KindError),
}

impl From<pgrx::spi::SpiError> for Error {
    fn from(e: pgrx::spi::SpiError) -> Self {
        Error::Internal(e.into())
    }
}

impl From<Error> for ErrorReport {
    fn from(e: Error) -> Self {
        match e {
            Error::Internal(e) => e.into(),
            Error::NotInstalled(e) => e.into(),
            Error::Catalog(e) => e.into(),
            Error::Planning(e) => e.into(),
            Error::Run(e) => e.into(),
            Error::Scheduling(e) => e.into(),
            Error::Watch(e) => e.into(),
            Error::Destination(e) => e.into_report(),
            Error::Definition(e) => e.into_report(),
            Error::Kind(e) => report(Code::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string(), None),
        }
    }
}

/// The report inside an error caught by `PgTryBuilder`, whichever way it was raised.
pub fn caught(e: &pgrx::pg_sys::panic::CaughtError) -> &pgrx::pg_sys::panic::ErrorReportWithLevel {
    use pgrx::pg_sys::panic::CaughtError;
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    }
}

/// A report with an optional hint: what each concern's `From` impl builds.
pub fn report(code: Code, message: String, hint: Option<String>) -> ErrorReport {
    let report = ErrorReport::new(code, message, "vitally_sync");
    match hint {
        Some(h) => report.set_hint(h),
        None => report,
    }
}

/// The one path for what is never the user's doing: a statement of ours that failed, or
/// a row that did not hold what its column promises (never read as a default instead).
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("vitally_sync: {0}")]
    Spi(#[from] pgrx::spi::SpiError),
    #[error("vitally_sync: column \"{0}\" is NULL where a value is required")]
    Null(&'static str),
    #[error("vitally_sync: {0}")]
    Broken(String),
}

impl From<Internal> for ErrorReport {
    fn from(e: Internal) -> Self {
        report(Code::ERRCODE_INTERNAL_ERROR, e.to_string(), None)
    }
}

/// The mapping of the pure crates' errors (their types are not ours, so no `From`).
trait IntoReport {
    fn into_report(self) -> ErrorReport;
}

impl IntoReport for PlanError {
    fn into_report(self) -> ErrorReport {
        use PlanError::*;
        let hint = match &self {
            MissingKeyColumn { .. } => Some("sync_key names the column holding each record's unique id; rename a column with AS in the query."),
            MappingsNotObject | MappingNotColumn(_) | UnknownField { .. } => {
                Some("Constants and expressions belong in the query (SELECT 'Login' AS event, ...); mappings only name its columns.")
            }
            _ => None,
        };
        report(Code::ERRCODE_INVALID_PARAMETER_VALUE, self.to_string(), hint.map(String::from))
    }
}

impl IntoReport for DestinationError {
    fn into_report(self) -> ErrorReport {
        use DestinationError::*;
        let hint = match &self {
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
        let code = match &self {
            NameTooLong(_) => Code::ERRCODE_NAME_TOO_LONG,
            _ => Code::ERRCODE_INVALID_PARAMETER_VALUE,
        };
        report(code, self.to_string(), hint.map(String::from))
    }
}

/// Reading our own rows by column name: a missing or NULL value where one is required
/// is an `Internal` error that names the column, never a silent default.
pub trait Row {
    fn by_name<T: pgrx::IntoDatum + pgrx::FromDatum>(&self, column: &str) -> pgrx::spi::SpiResult<Option<T>>;

    /// A column that is NOT NULL (or must hold a value in this statement).
    fn required<T: pgrx::IntoDatum + pgrx::FromDatum>(&self, column: &'static str) -> Result<T, Internal> {
        self.by_name(column)?.ok_or(Internal::Null(column))
    }

    /// A column that may be NULL.
    fn optional<T: pgrx::IntoDatum + pgrx::FromDatum>(&self, column: &'static str) -> Result<Option<T>, Internal> {
        Ok(self.by_name(column)?)
    }
}

impl Row for pgrx::spi::SpiHeapTupleData<'_> {
    fn by_name<T: pgrx::IntoDatum + pgrx::FromDatum>(&self, column: &str) -> pgrx::spi::SpiResult<Option<T>> {
        self.get_by_name(column)
    }
}

impl Row for pgrx::spi::SpiTupleTable<'_> {
    fn by_name<T: pgrx::IntoDatum + pgrx::FromDatum>(&self, column: &str) -> pgrx::spi::SpiResult<Option<T>> {
        self.get_by_name(column)
    }
}
