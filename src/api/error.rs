//! The API client's one error type: transport failures and the API server's `Status` answers.
//!
//! Every non-2xx answer becomes [`Error::Status`] with a [`Reason`] taken from the `Status`
//! body when there is one (kube-apiserver always sends one) and from the HTTP code otherwise
//! (a proxy in between may not). Predicates (`is_not_found`, `is_conflict`, ...) are what callers
//! branch on; messages are lowercase and name the request.

use std::fmt;
use std::time::Duration;

use super::types::Status;

/// Why the API server refused a request: `Status.reason`, or the HTTP code's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 400 `BadRequest`.
    BadRequest,
    /// 401 `Unauthorized`: the credentials were not accepted.
    Unauthorized,
    /// 403 `Forbidden`: the credentials are known but not allowed to do this.
    Forbidden,
    /// 404 `NotFound`.
    NotFound,
    /// 409 `AlreadyExists` (a create of an existing name).
    AlreadyExists,
    /// 409 `Conflict` (a stale resourceVersion or a failed precondition).
    Conflict,
    /// 410 `Expired` / `Gone`: the resourceVersion was compacted; relist.
    Expired,
    /// 422 `Invalid`.
    Invalid,
    /// 429 `TooManyRequests`.
    TooManyRequests,
    /// 5xx (`InternalError`, `ServiceUnavailable`, `Timeout`, ...).
    ServerError,
    /// Anything else.
    Other,
}

impl Reason {
    /// The reason for an answer: the body's `reason` where it is one we know, else the code's.
    pub fn of(code: u16, reason: &str) -> Reason {
        match reason {
            "BadRequest" => Reason::BadRequest,
            "Unauthorized" => Reason::Unauthorized,
            "Forbidden" => Reason::Forbidden,
            "NotFound" => Reason::NotFound,
            "AlreadyExists" => Reason::AlreadyExists,
            "Conflict" => Reason::Conflict,
            "Expired" | "Gone" => Reason::Expired,
            "Invalid" => Reason::Invalid,
            "TooManyRequests" => Reason::TooManyRequests,
            _ => match code {
                400 => Reason::BadRequest,
                401 => Reason::Unauthorized,
                403 => Reason::Forbidden,
                404 => Reason::NotFound,
                409 => Reason::Conflict,
                410 => Reason::Expired,
                422 => Reason::Invalid,
                429 => Reason::TooManyRequests,
                500..=599 => Reason::ServerError,
                _ => Reason::Other,
            },
        }
    }
}

/// An API request that did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The API server answered with an error `Status` (or a bare error code).
    Status {
        /// `GET /api/v1/nodes/edge-1` and the like.
        request: String,
        /// The HTTP status code (or the `Status.code` of an ERROR watch event).
        code: u16,
        /// What kind of refusal.
        reason: Reason,
        /// The server's message (`nodes "edge-1" already exists`).
        message: String,
        /// `Retry-After` (or `details.retryAfterSeconds`), when the server gave one.
        retry_after: Option<Duration>,
    },
    /// The connection could not be made or broke (refused, reset, TLS, DNS).
    Transport {
        /// The request, or the server address for a connect.
        request: String,
        /// What went wrong.
        detail: String,
    },
    /// No answer within the time allowed.
    Timeout {
        /// The request.
        request: String,
        /// The time allowed.
        after: Duration,
    },
    /// The answer was not what the API promises (bad HTTP, bad JSON, too large).
    Decode {
        /// The request.
        request: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The kubeconfig (or a file it names) is unusable.
    Config(String),
}

impl Error {
    /// An error from an error answer: `status` is the parsed `Status` body if there was one.
    pub fn from_status(
        request: &str,
        code: u16,
        status: Option<Status>,
        retry_after: Option<Duration>,
    ) -> Error {
        let (reason, message, details_retry) = match status {
            Some(s) => (
                Reason::of(code, &s.reason),
                s.message,
                s.details
                    .and_then(|d| d.retry_after_seconds)
                    .map(|s| Duration::from_secs(u64::from(s))),
            ),
            None => (Reason::of(code, ""), String::new(), None),
        };
        Error::Status {
            request: request.to_string(),
            code,
            reason,
            message,
            retry_after: retry_after.or(details_retry),
        }
    }

    /// The refusal's reason, if the server refused.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Status { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// 404.
    pub fn is_not_found(&self) -> bool {
        self.reason() == Some(Reason::NotFound)
    }

    /// 409 `AlreadyExists`.
    pub fn is_already_exists(&self) -> bool {
        self.reason() == Some(Reason::AlreadyExists)
    }

    /// 409 `Conflict` (stale resourceVersion, failed precondition).
    pub fn is_conflict(&self) -> bool {
        self.reason() == Some(Reason::Conflict)
    }

    /// 410: the resourceVersion is too old; the caller must relist.
    pub fn is_gone(&self) -> bool {
        self.reason() == Some(Reason::Expired)
    }

    /// 401 or 403: retrying soon will not help; an operator must fix the credentials or RBAC.
    pub fn is_auth(&self) -> bool {
        matches!(
            self.reason(),
            Some(Reason::Unauthorized | Reason::Forbidden)
        )
    }

    /// The delay the server asked for (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the same request may succeed later unchanged: transport failures, timeouts,
    /// 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Status { reason, .. } => {
                matches!(reason, Reason::TooManyRequests | Reason::ServerError)
            }
            Error::Decode { .. } | Error::Config(_) => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Status {
                request,
                code,
                reason,
                message,
                retry_after,
            } => {
                write!(f, "{request}: {code}")?;
                if !message.is_empty() {
                    write!(f, " {message}")?;
                }
                match reason {
                    Reason::Unauthorized => write!(
                        f,
                        ": the API server did not accept nanolet's credentials; check the \
                         kubeconfig's token, tokenFile or client certificate (expired?)"
                    )?,
                    Reason::Forbidden => write!(
                        f,
                        ": the credentials are valid but not allowed to do this; grant the node \
                         the system:node role (or the Node authorizer's group system:nodes)"
                    )?,
                    _ => {}
                }
                if let Some(d) = retry_after {
                    write!(f, " (retry after {}s)", d.as_secs())?;
                }
                Ok(())
            }
            Error::Transport { request, detail } => write!(f, "{request}: {detail}"),
            Error::Timeout { request, after } => {
                write!(f, "{request}: no answer within {}s", after.as_secs_f32())
            }
            Error::Decode { request, detail } => write!(f, "{request}: bad answer: {detail}"),
            Error::Config(m) => write!(f, "kubeconfig: {m}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::Status;

    fn status(json: &str) -> Option<Status> {
        Some(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn reasons_come_from_the_body_then_the_code() {
        let e = Error::from_status(
            "POST /api/v1/nodes",
            409,
            status(
                r#"{"kind":"Status","reason":"AlreadyExists","message":"nodes \"edge-1\" already exists","code":409}"#,
            ),
            None,
        );
        assert!(e.is_already_exists() && !e.is_conflict());
        assert_eq!(
            e.to_string(),
            "POST /api/v1/nodes: 409 nodes \"edge-1\" already exists"
        );
        let e = Error::from_status("GET /x", 409, None, None);
        assert!(e.is_conflict());
        assert!(Error::from_status("GET /x", 410, None, None).is_gone());
        assert!(Error::from_status("GET /x", 503, None, None).is_retryable());
        assert!(!Error::from_status("GET /x", 422, None, None).is_retryable());
    }

    #[test]
    fn unauthorized_says_what_to_check() {
        let e = Error::from_status(
            "GET /api/v1/nodes",
            401,
            status(
                r#"{"kind":"Status","reason":"Unauthorized","message":"Unauthorized","code":401}"#,
            ),
            None,
        );
        assert!(e.is_auth() && !e.is_retryable());
        assert!(e.to_string().contains("check the kubeconfig's token"));
    }

    #[test]
    fn retry_after_from_header_or_details() {
        let e = Error::from_status(
            "GET /x",
            429,
            status(r#"{"reason":"TooManyRequests","code":429,"details":{"retryAfterSeconds":3}}"#),
            None,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let e = Error::from_status("GET /x", 503, None, Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.to_string().ends_with("(retry after 7s)"));
    }
}
