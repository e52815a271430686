//! Bearer tokens: the admin API wants one from the admin set, the watch and report endpoints one
//! from the edge set.

use axum::http::HeaderMap;

use super::error::ApiError;

/// Which set a request's token must belong to.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Admin,
    Hook,
}

/// An edge token entry: `<token>` (any edge may present it) or `<node_id> <region> <token>`
/// (only that edge: its reports must name that id and region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeToken<'a> {
    pub token: &'a str,
    pub bound_to: Option<(&'a str, &'a str)>,
}

impl<'a> EdgeToken<'a> {
    pub fn parse(entry: &'a str) -> Result<Self, String> {
        let parts: Vec<&str> = entry.split_whitespace().collect();
        match parts.as_slice() {
            [token] => Ok(EdgeToken { token, bound_to: None }),
            [id, region, token] => Ok(EdgeToken { token, bound_to: Some((id, region)) }),
            _ => Err(format!(
                "an edge token entry is `<token>` or `<node_id> <region> <token>`, not {} words",
                parts.len()
            )),
        }
    }
}

/// Checks an edge's bearer token; returns the edge it is bound to, if it is bound.
pub fn check_edge<'a>(headers: &HeaderMap, entries: &'a [String]) -> Result<Option<(&'a str, &'a str)>, ApiError> {
    let presented = bearer(headers).ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    entries
        .iter()
        .filter_map(|e| EdgeToken::parse(e).ok())
        .find(|e| constant_time_eq(e.token.as_bytes(), presented.as_bytes()))
        .map(|e| e.bound_to)
        .ok_or_else(|| ApiError::unauthorized("the token is not an edge token"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Checks the `Authorization: Bearer <token>` header against `allowed`.
pub fn check(headers: &HeaderMap, allowed: &[String], role: Role) -> Result<(), ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::unauthorized("a bearer token is required"));
    };
    if allowed.iter().any(|t| constant_time_eq(t.as_bytes(), presented.as_bytes())) {
        Ok(())
    } else {
        let which = match role {
            Role::Admin => "an admin",
            Role::Hook => "a hook",
        };
        Err(ApiError::unauthorized(&format!("the token is not {which} token")))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", auth.parse().unwrap());
        h
    }

    #[test]
    fn should_bind_edge_tokens_to_one_edge() {
        let entries = vec!["shared".to_string(), "edge-1 eu-west bound-token".to_string()];
        assert_eq!(check_edge(&headers("Bearer shared"), &entries).unwrap(), None);
        assert_eq!(check_edge(&headers("Bearer bound-token"), &entries).unwrap(), Some(("edge-1", "eu-west")));
        assert!(check_edge(&headers("Bearer edge-1"), &entries).is_err());
        assert!(EdgeToken::parse("a b").is_err());
    }

    #[test]
    fn should_accept_only_listed_tokens() {
        let allowed = vec!["s3cret".to_string()];
        assert!(check(&headers("Bearer s3cret"), &allowed, Role::Admin).is_ok());
        assert!(check(&headers("Bearer wrong"), &allowed, Role::Admin).is_err());
        assert!(check(&headers("Basic s3cret"), &allowed, Role::Admin).is_err());
        assert!(check(&HeaderMap::new(), &allowed, Role::Admin).is_err());
    }
}
