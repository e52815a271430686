//! Bearer tokens: the admin API wants one from the admin set, the watch and report endpoints one
//! from the edge set.

use axum::http::HeaderMap;

use super::error::ApiError;

/// Which set a request's token must belong to.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Admin,
    Edge,
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
            Role::Edge => "an edge",
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
    fn should_accept_only_listed_tokens() {
        let allowed = vec!["s3cret".to_string()];
        assert!(check(&headers("Bearer s3cret"), &allowed, Role::Admin).is_ok());
        assert!(check(&headers("Bearer wrong"), &allowed, Role::Admin).is_err());
        assert!(check(&headers("Basic s3cret"), &allowed, Role::Admin).is_err());
        assert!(check(&HeaderMap::new(), &allowed, Role::Edge).is_err());
    }
}
