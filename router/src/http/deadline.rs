//! A request's time budget: `--request-timeout-s`, or less when the client asks for less with
//! the `x-request-timeout-s` header (it cannot ask for more than the server allows). The
//! scheduler fails a request past its deadline and frees what it holds.

use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::validation::ValidationError;

use super::state::AppState;

pub const TIMEOUT_HEADER: &str = "x-request-timeout-s";

/// How long the request may take from arrival to its last token; None: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestBudget(pub Option<Duration>);

impl RequestBudget {
    /// The server's limit narrowed by what the client asked for (the header's value).
    pub fn narrowed(
        server: Option<Duration>,
        asked: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let asked = match asked {
            None => None,
            Some(text) => Some(parse_seconds(text)?),
        };
        let budget = match (server, asked) {
            (Some(server), Some(asked)) => Some(server.min(asked)),
            (server, asked) => server.or(asked),
        };
        Ok(Self(budget))
    }

    pub fn deadline(self, received_at: Instant) -> Option<Instant> {
        self.0.map(|budget| received_at + budget)
    }
}

fn parse_seconds(text: &str) -> Result<Duration, ValidationError> {
    let invalid = || ValidationError::RequestTimeoutHeader(text.to_string());
    let seconds: f64 = text.trim().parse().map_err(|_| invalid())?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(invalid());
    }
    // Past a year the budget is no limit at all (and Duration cannot hold every f64).
    Ok(Duration::from_secs_f64(seconds.min(365.0 * 24.0 * 3600.0)))
}

impl FromRequestParts<AppState> for RequestBudget {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let asked = match parts.headers.get(TIMEOUT_HEADER) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ValidationError::RequestTimeoutHeader(
                    String::from_utf8_lossy(value.as_bytes()).into(),
                )
            })?),
        };
        Ok(Self::narrowed(state.server.request_timeout, asked)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_can_only_narrow_the_servers_budget() {
        let server = Some(Duration::from_secs(10));
        let narrowed = |server, asked| {
            RequestBudget::narrowed(server, asked)
                .expect("valid header")
                .0
        };
        assert_eq!(narrowed(server, None), server);
        assert_eq!(
            narrowed(server, Some("2.5")),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(narrowed(server, Some("60")), server);
        assert_eq!(narrowed(None, Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(narrowed(None, None), None);
        for bad in ["0", "-1", "soon", "NaN", "inf", ""] {
            assert!(
                RequestBudget::narrowed(server, Some(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn the_deadline_is_counted_from_arrival() {
        let received_at = Instant::now();
        let budget = RequestBudget(Some(Duration::from_secs(4)));
        assert_eq!(
            budget.deadline(received_at),
            Some(received_at + Duration::from_secs(4))
        );
        assert_eq!(RequestBudget(None).deadline(received_at), None);
    }
}
