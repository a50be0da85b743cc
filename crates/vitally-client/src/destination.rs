//! What a destination is made of, and the checks on it that run before anything is stored.
//!
//! Every error here names what was wrong and how to fix it, and never contains a key.

use std::net::IpAddr;
use thiserror::Error;
use url::{Host, Url};

/// Vitally hosts its workspaces in one of two regions; the REST host differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Us,
    Eu,
}

impl Region {
    pub fn parse(s: &str) -> Result<Region, DestinationError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "us" => Ok(Region::Us),
            "eu" => Ok(Region::Eu),
            _ => Err(DestinationError::UnknownRegion(s.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Us => "us",
            Region::Eu => "eu",
        }
    }
}

/// The two APIs a destination may speak, each with its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Analytics,
    Rest,
}

impl Api {
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "analytics" => Some(Api::Analytics),
            "rest" => Some(Api::Rest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Analytics => "analytics",
            Api::Rest => "rest",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("destination name must not be empty")]
    EmptyName,
    #[error("destination name \"{0}\" is too long (at most 63 characters)")]
    NameTooLong(String),
    #[error("unknown region \"{0}\": use 'us' or 'eu'")]
    UnknownRegion(String),
    #[error("invalid subdomain \"{0}\": give only the part before .vitally.io, e.g. 'acme' for acme.vitally.io")]
    BadSubdomain(String),
    #[error("a destination needs at least one API key: give analytics_api_key (upserts and events) or rest_api_key (update only, NPS)")]
    NoKey,
    #[error("the {0} API key is malformed: it must be one line of printable characters (paste it again from Vitally)")]
    MalformedKey(&'static str),
    #[error("{api}_url \"{url}\" is not a valid URL: {reason}")]
    BadUrl { api: &'static str, url: String, reason: String },
    #[error("{api}_url \"{url}\" must use https: plain http is accepted only for loopback hosts (127.0.0.1, ::1, localhost)")]
    InsecureUrl { api: &'static str, url: String },
    #[error(
        "{api}_url \"{url}\" names host \"{host}\", which is not in vitally.allowed_hosts ({allowed}): a superuser adds it there in postgresql.conf"
    )]
    HostNotAllowed { api: &'static str, url: String, host: String, allowed: String },
    #[error(
        "an EU destination with an Analytics key needs analytics_url: Vitally documents no EU Analytics host, and vitally_sync does not guess one"
    )]
    EuAnalyticsUrlNeeded,
}

/// Vitally's own hosts: the default of `vitally.allowed_hosts`, and the hosts whose
/// error bodies are shown to users as they are.
pub const VITALLY_HOSTS: &str = "*.vitally.io, *.vitally-eu.io";

/// The hosts a URL override may name (`vitally.allowed_hosts`, set by a superuser):
/// a comma-separated list of host names or addresses, `*.example.com` for any host under
/// it. Names compare case-insensitively; ports are not part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<String>,
}

impl AllowedHosts {
    pub fn parse(list: &str) -> AllowedHosts {
        let patterns =
            list.split(',').map(|p| p.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()).filter(|p| !p.is_empty()).collect();
        AllowedHosts { patterns }
    }

    pub fn vitally() -> AllowedHosts {
        AllowedHosts::parse(VITALLY_HOSTS)
    }

    /// Whether `host` (as `Url::host_str` gives it) matches a pattern.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.patterns.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
            None => *p == host,
        })
    }

    pub fn describe(&self) -> String {
        if self.patterns.is_empty() {
            "empty".into()
        } else {
            self.patterns.join(", ")
        }
    }
}

/// Whether a base URL points at one of Vitally's own hosts.
pub fn is_vitally_url(base_url: &str) -> bool {
    Url::parse(base_url).ok().and_then(|u| u.host_str().map(|h| AllowedHosts::vitally().allows(h))).unwrap_or(false)
}

/// Checks that a stored or given URL's host is allowed (the worker checks again before
/// each use: the setting may have changed since the URL was stored).
pub fn check_allowed(api: Api, url: &str, allowed: &AllowedHosts) -> Result<(), DestinationError> {
    let host = Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    if allowed.allows(&host) {
        Ok(())
    } else {
        Err(DestinationError::HostNotAllowed { api: api.as_str(), url: url.to_string(), host, allowed: allowed.describe() })
    }
}

/// Checks a destination name: it is how users and scripts refer to it.
pub fn validate_name(name: &str) -> Result<(), DestinationError> {
    if name.trim().is_empty() {
        return Err(DestinationError::EmptyName);
    }
    if name.chars().count() > 63 {
        return Err(DestinationError::NameTooLong(name.to_string()));
    }
    Ok(())
}

pub fn validate_subdomain(subdomain: &str) -> Result<String, DestinationError> {
    let s = subdomain.trim().to_ascii_lowercase();
    let ok = !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !s.starts_with('-') && !s.ends_with('-');
    if ok {
        Ok(s)
    } else {
        Err(DestinationError::BadSubdomain(subdomain.to_string()))
    }
}

/// Normalizes a key as pasted: surrounding blanks go, and a pasted header value
/// `Basic <value>` keeps only the value (for REST, `auth` recognizes it as ready-made).
/// Returns `None` for an empty key, which means "no key".
pub fn normalize_key(api: Api, raw: &str) -> Result<Option<String>, DestinationError> {
    let mut key = raw.trim();
    if let Some(rest) = key.strip_prefix("Basic ").or_else(|| key.strip_prefix("basic ")) {
        key = rest.trim();
    }
    if key.is_empty() {
        return Ok(None);
    }
    // A key goes into an HTTP header: control characters or spaces would corrupt it.
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(DestinationError::MalformedKey(api.as_str()));
    }
    Ok(Some(key.to_string()))
}

/// Checks a base URL override and returns it without a trailing slash.
pub fn validate_base_url(api: Api, raw: &str, allowed: &AllowedHosts) -> Result<String, DestinationError> {
    let name = api.as_str();
    let bad = |reason: &str| DestinationError::BadUrl { api: name, url: raw.to_string(), reason: reason.to_string() };
    let url = Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in a URL would leak into logs; give keys as analytics_api_key / rest_api_key"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base URL takes no query string or fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err(DestinationError::InsecureUrl { api: name, url: raw.to_string() }),
        other => return Err(bad(&format!("scheme \"{other}\" is not http or https"))),
    }
    if url.host().is_none() {
        return Err(bad("it has no host"));
    }
    let normalized = url.as_str().trim_end_matches('/').to_string();
    check_allowed(api, &normalized, allowed)?;
    Ok(normalized)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The base URL a destination uses for an API: the override if given, else Vitally's
/// documented host for the region and subdomain. The Analytics host is per workspace
/// (`{subdomain}.api.vitally.io`) in Vitally's current docs; the global host of older
/// docs stays for destinations without a subdomain. No EU Analytics host is documented
/// anywhere: None, and such a destination must give `analytics_url`.
pub fn base_url(api: Api, region: Region, subdomain: Option<&str>, url_override: Option<&str>) -> Option<String> {
    if let Some(u) = url_override.filter(|u| !u.is_empty()) {
        return Some(u.trim_end_matches('/').to_string());
    }
    Some(match (api, region, subdomain) {
        (Api::Analytics, Region::Us, Some(sub)) => format!("https://{sub}.api.vitally.io/analytics/v1"),
        (Api::Analytics, Region::Us, None) => "https://api.vitally.io/analytics/v1".into(),
        (Api::Analytics, Region::Eu, _) => return None,
        (Api::Rest, Region::Us, Some(sub)) => format!("https://{sub}.rest.vitally.io/resources"),
        (Api::Rest, Region::Us, None) => "https://rest.vitally.io/resources".into(),
        (Api::Rest, Region::Eu, _) => "https://rest.vitally-eu.io/resources".into(),
    })
}

/// A destination must know where each of its keys goes.
pub fn check_hosts(region: Region, has_analytics_key: bool, analytics_url: Option<&str>) -> Result<(), DestinationError> {
    if has_analytics_key && base_url(Api::Analytics, region, None, analytics_url).is_none() {
        return Err(DestinationError::EuAnalyticsUrlNeeded);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_parse_case_insensitively_and_reject_others() {
        assert_eq!(Region::parse("US"), Ok(Region::Us));
        assert_eq!(Region::parse(" eu "), Ok(Region::Eu));
        let err = Region::parse("apac").unwrap_err();
        assert_eq!(err.to_string(), "unknown region \"apac\": use 'us' or 'eu'");
    }

    #[test]
    fn rest_key_accepts_the_ready_made_basic_value() {
        assert_eq!(normalize_key(Api::Rest, "Basic abc123=").unwrap(), Some("abc123=".into()));
        assert_eq!(normalize_key(Api::Rest, "  tok_1 \n").unwrap(), Some("tok_1".into()));
        assert_eq!(normalize_key(Api::Analytics, "Basic abc").unwrap(), Some("abc".into()));
        assert_eq!(normalize_key(Api::Analytics, "ab c").unwrap_err(), DestinationError::MalformedKey("analytics"));
    }

    #[test]
    fn empty_key_means_no_key() {
        assert_eq!(normalize_key(Api::Analytics, "   ").unwrap(), None);
    }

    #[test]
    fn malformed_key_error_does_not_contain_the_key() {
        let err = normalize_key(Api::Rest, "sec\r\nret").unwrap_err();
        assert!(!err.to_string().contains("sec"));
    }

    fn any() -> AllowedHosts {
        AllowedHosts::parse("127.0.0.1, localhost, ::1, example.com, 10.0.0.5, localhost.evil.com")
    }

    #[test]
    fn only_allowed_hosts_are_accepted() {
        let vitally = AllowedHosts::vitally();
        assert!(validate_base_url(Api::Rest, "https://acme.rest.vitally.io/resources", &vitally).is_ok());
        assert!(validate_base_url(Api::Analytics, "https://API.vitally-eu.io/analytics/v1", &vitally).is_ok());
        for bad in ["https://vitally.io.evil.com/x", "https://evilvitally.io/x", "https://vitally.io/x", "http://127.0.0.1:1/x", "https://[::1]:2/x"]
        {
            let err = validate_base_url(Api::Rest, bad, &vitally).unwrap_err();
            assert!(matches!(err, DestinationError::HostNotAllowed { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("vitally.allowed_hosts"), "{err}");
        }
        let loopback = AllowedHosts::parse(" 127.0.0.1 ,[::1]");
        assert!(validate_base_url(Api::Rest, "http://127.0.0.1:8787/resources", &loopback).is_ok());
        assert!(validate_base_url(Api::Rest, "http://[::1]:8787/resources", &loopback).is_ok());
        assert!(validate_base_url(Api::Rest, "http://127.0.0.2:8787/resources", &loopback).is_err());
        assert!(AllowedHosts::parse("").describe() == "empty" && !AllowedHosts::parse("").allows("127.0.0.1"));
        assert!(is_vitally_url("https://acme.rest.vitally.io/resources") && !is_vitally_url("http://127.0.0.1:1/x"));
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert_eq!(validate_base_url(Api::Rest, "http://127.0.0.1:8787/resources/", &any()).unwrap(), "http://127.0.0.1:8787/resources");
        assert!(validate_base_url(Api::Rest, "http://localhost:1/x", &any()).is_ok());
        assert!(validate_base_url(Api::Rest, "http://[::1]:1/x", &any()).is_ok());
        assert!(validate_base_url(Api::Rest, "https://example.com/x", &any()).is_ok());
        assert!(matches!(validate_base_url(Api::Analytics, "http://10.0.0.5/analytics/v1", &any()), Err(DestinationError::InsecureUrl { .. })));
        assert!(matches!(validate_base_url(Api::Analytics, "http://localhost.evil.com/", &any()), Err(DestinationError::InsecureUrl { .. })));
    }

    #[test]
    fn urls_with_credentials_or_odd_schemes_are_refused() {
        assert!(matches!(validate_base_url(Api::Rest, "https://u:p@example.com/", &any()), Err(DestinationError::BadUrl { .. })));
        assert!(matches!(validate_base_url(Api::Rest, "ftp://example.com/", &any()), Err(DestinationError::BadUrl { .. })));
        assert!(matches!(validate_base_url(Api::Rest, "not a url", &any()), Err(DestinationError::BadUrl { .. })));
    }

    #[test]
    fn default_hosts_follow_region_and_subdomain() {
        let url = |api, region, sub, over| base_url(api, region, sub, over).unwrap();
        assert_eq!(url(Api::Rest, Region::Us, Some("acme"), None), "https://acme.rest.vitally.io/resources");
        assert_eq!(url(Api::Rest, Region::Eu, Some("acme"), None), "https://rest.vitally-eu.io/resources");
        assert_eq!(url(Api::Analytics, Region::Us, None, Some("http://127.0.0.1:1/a/")), "http://127.0.0.1:1/a");
        // Documented: the workspace's own Analytics host; the global one without a subdomain.
        assert_eq!(url(Api::Analytics, Region::Us, Some("acme"), None), "https://acme.api.vitally.io/analytics/v1");
        assert_eq!(url(Api::Analytics, Region::Us, None, None), "https://api.vitally.io/analytics/v1");
    }

    #[test]
    fn the_eu_analytics_host_is_never_guessed() {
        assert_eq!(base_url(Api::Analytics, Region::Eu, Some("acme"), None), None);
        assert_eq!(check_hosts(Region::Eu, true, None), Err(DestinationError::EuAnalyticsUrlNeeded));
        assert_eq!(check_hosts(Region::Eu, false, None), Ok(()), "a REST-only EU destination needs no Analytics host");
        assert_eq!(check_hosts(Region::Eu, true, Some("https://x.vitally-eu.io/analytics/v1")), Ok(()));
    }

    #[test]
    fn subdomains_are_host_labels() {
        assert_eq!(validate_subdomain("Acme").unwrap(), "acme");
        assert!(validate_subdomain("acme.vitally.io").is_err());
        assert!(validate_subdomain("-x").is_err());
    }
}
