//! URLs that name a server rather than a resource.

/// Whether `url` is a base URL: `http://` or `https://`, a host, no path and no query
/// (`https://pull.example.com`, `http://edge-1:5000/`).
pub fn is_base_url(url: &str) -> bool {
    match url.parse::<http::Uri>() {
        Ok(u) => {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.query().is_none()
                && matches!(u.path(), "" | "/")
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_accept_a_server_and_refuse_a_path_a_query_or_another_scheme() {
        for ok in ["https://pull.example.com", "http://edge-1:5000/", "http://[::1]:5000", "http://10.0.0.7:5000"] {
            assert!(is_base_url(ok), "{ok}");
        }
        for bad in ["ftp://edge:21", "http://edge:5000/v2", "http://edge/?a=b", "edge:5000", "", "http://"] {
            assert!(!is_base_url(bad), "{bad}");
        }
    }
}
