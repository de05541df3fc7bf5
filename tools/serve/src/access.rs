//! Who may ask the server for what: the API key, the Host and Origin checks that keep web pages
//! the user happens to open (and DNS rebinding) away from a local server, CORS for the origins the
//! user allows, the request's content type, and per-client rate limits. Pure checks over header
//! values, each answering with the OpenAI error object the client gets.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use subtle::ConstantTimeEq;

use crate::api::ApiError;

/// The access rules of a server.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// When set, /v1 routes and /metrics need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Cross origins allowed to call the API (`*`: any), e.g. `http://localhost:3000`.
    pub allowed_origins: Vec<String>,
}

impl Access {
    /// Refuses a Host that names a domain other than `localhost` and the allowed origins' hosts:
    /// a page served from such a name that resolves to this machine (DNS rebinding) is not this
    /// server's own. IP literals pass: a name cannot be made to look like one.
    pub fn check_host(&self, host: Option<&str>) -> Result<(), ApiError> {
        let Some(host) = host else { return Ok(()) };
        let name = host_name(host);
        let allowed = name.eq_ignore_ascii_case("localhost")
            || name.trim_matches(['[', ']']).parse::<IpAddr>().is_ok()
            || self.any_origin()
            || self
                .allowed_origins
                .iter()
                .any(|origin| host_name(origin_authority(origin)).eq_ignore_ascii_case(name));
        if allowed {
            Ok(())
        } else {
            Err(forbidden(
                "forbidden_host",
                format!(
                    "Host {:?} is not this server's (use its IP address or localhost, or allow \
                     the name with --allow-origin)",
                    host
                ),
            ))
        }
    }

    /// Checks a request's Origin: none (not a browser), this server's own (`http://<Host>`), or
    /// an allowed one. Returns the origin to echo in `Access-Control-Allow-Origin` for an allowed
    /// cross origin.
    pub fn check_origin(
        &self,
        origin: Option<&str>,
        host: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let Some(origin) = origin else {
            return Ok(None);
        };
        let same_origin = host.is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
        });
        if same_origin {
            return Ok(None);
        }
        if self.any_origin() || self.allowed_origins.iter().any(|o| o == origin) {
            return Ok(Some(origin.to_string()));
        }
        Err(forbidden(
            "forbidden_origin",
            format!("Origin {origin:?} is not allowed (allow it with --allow-origin)"),
        ))
    }

    /// Checks the bearer key in constant time (when a key is set).
    pub fn check_key(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(given) if bool::from(given.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
            Some(_) => Err(unauthorized("the API key is wrong")),
            None => Err(unauthorized(
                "this server needs an API key: send it as 'Authorization: Bearer <key>'",
            )),
        }
    }

    fn any_origin(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }
}

/// `example.com` of `example.com:8000` or `[::1]` of `[::1]:8000`.
fn host_name(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => &authority[..colon],
        _ => authority,
    }
}

/// `example.com:3000` of `http://example.com:3000`.
fn origin_authority(origin: &str) -> &str {
    origin.split_once("://").map_or(origin, |(_, rest)| rest)
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::request(403, code, message)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::request(401, "invalid_api_key", message)
}

/// POST bodies must be declared JSON: a browser sends a cross-site `text/plain` form or fetch
/// without a preflight, and this check is what turns that into a refusal.
pub fn check_json_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let media_type = content_type
        .and_then(|value| value.split(';').next())
        .map(str::trim);
    if media_type.is_some_and(|t| t.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(ApiError::request(
        415,
        "unsupported_media_type",
        format!(
            "the request body must be sent as 'Content-Type: application/json' (got {})",
            content_type.map_or("none".to_string(), |t| format!("{t:?}"))
        ),
    ))
}

/// A per-client request budget: `per_minute` requests, refilled evenly over the minute.
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

/// How often (in checks) the limiter forgets clients whose budget is full again.
const FORGET_EVERY: u64 = 4096;

impl RateLimit {
    pub fn per_minute(per_minute: NonZeroU32) -> RateLimit {
        RateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one request from `client`'s budget, or says in how many whole seconds it may ask
    /// again (the Retry-After of [`rate_limited`]).
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&client).map_err(|not_until| {
            retry_after_seconds(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }
}

/// The 429 answer of a client over its budget.
pub fn rate_limited(retry_after: u64) -> ApiError {
    ApiError::request(
        429,
        "rate_limit_exceeded",
        format!("too many requests from this client: retry in {retry_after} s"),
    )
}

/// Whole seconds, rounded up and at least 1 (Retry-After takes integers).
fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Parses `--rate-limit N/min`.
pub fn parse_rate_limit(text: &str) -> Result<NonZeroU32, String> {
    let count = text
        .strip_suffix("/min")
        .ok_or_else(|| format!("--rate-limit must look like 60/min, got {text:?}"))?;
    count
        .trim()
        .parse::<NonZeroU32>()
        .map_err(|_| format!("--rate-limit needs a whole number of requests above 0, got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(key: Option<&str>, origins: &[&str]) -> Access {
        Access {
            api_key: key.map(str::to_string),
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn hosts_ip_literals_and_localhost_pass_other_names_do_not() {
        let a = access(None, &["http://app.example:3000"]);
        for ok in [
            None,
            Some("127.0.0.1:8000"),
            Some("[::1]:8000"),
            Some("10.0.0.7"),
            Some("LOCALHOST:8000"),
            Some("app.example:8000"),
        ] {
            assert!(a.check_host(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
        ] {
            let e = a.check_host(Some(bad)).unwrap_err();
            assert_eq!((e.status, e.code), (403, Some("forbidden_host")), "{bad}");
        }
        assert!(access(None, &["*"]).check_host(Some("any.example")).is_ok());
    }

    #[test]
    fn origins_same_allowed_and_foreign() {
        let a = access(None, &["http://app.example"]);
        let host = Some("127.0.0.1:8000");
        assert_eq!(a.check_origin(None, host).unwrap(), None);
        assert_eq!(
            a.check_origin(Some("http://127.0.0.1:8000"), host).unwrap(),
            None
        );
        assert_eq!(
            a.check_origin(Some("http://app.example"), host).unwrap(),
            Some("http://app.example".to_string())
        );
        for bad in ["http://evil.example", "https://127.0.0.1:8000", "null"] {
            let e = a.check_origin(Some(bad), host).unwrap_err();
            assert_eq!((e.status, e.code), (403, Some("forbidden_origin")), "{bad}");
        }
    }

    #[test]
    fn keys_are_checked_only_when_set() {
        assert!(access(None, &[]).check_key(None).is_ok());
        let a = access(Some("s3cret"), &[]);
        assert!(a.check_key(Some("Bearer s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Bearer s3cre"),
        ] {
            let e = a.check_key(bad).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (401, Some("invalid_api_key")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_json_bodies() {
        assert!(check_json_content_type(Some("application/json")).is_ok());
        assert!(check_json_content_type(Some("Application/JSON; charset=utf-8")).is_ok());
        for bad in [None, Some("text/plain"), Some("application/jsonx")] {
            assert_eq!(check_json_content_type(bad).unwrap_err().status, 415);
        }
    }

    #[test]
    fn rate_limits_per_client_with_a_retry_time() {
        let limit = RateLimit::per_minute(NonZeroU32::new(2).unwrap());
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limit.check(a).is_ok() && limit.check(a).is_ok());
        let retry_after = limit.check(a).unwrap_err();
        assert!((1..=30).contains(&retry_after), "{retry_after}");
        assert!(limit.check(b).is_ok(), "another client has its own budget");
        assert_eq!(parse_rate_limit("60/min").unwrap().get(), 60);
        for bad in ["60", "0/min", "x/min", "60/s"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
