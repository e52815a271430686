//! Checks that span keys: the things serde cannot see field by field.

use std::collections::HashSet;

use super::{EdgeConfig, UpstreamConfig};

/// Every semantic problem in a parsed config, each naming its key.
pub(super) fn validate(config: &EdgeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if config.region.trim().is_empty() {
        problems.push("region: must not be empty".to_owned());
    }
    if config.cache.disk_max.bytes() == 0 {
        problems.push("cache.disk_max: must be greater than zero".to_owned());
    }
    problems.extend(validate_listen(config));
    problems.extend(validate_bounds(config));
    if !(0.0..=1.0).contains(&config.log.sample_hits) {
        problems.push("log.sample_hits: must be between 0.0 and 1.0".to_owned());
    }
    problems.extend(validate_auth(config));
    problems.extend(validate_cluster(&config.cluster, config.distributor.is_some()));
    if let Some(link) = &config.distributor {
        let urls = std::iter::once(("distributor.url".to_owned(), &link.url))
            .chain(link.replicas.iter().enumerate().map(|(i, u)| (format!("distributor.replicas[{i}]"), u)));
        for (key, url) in urls {
            match url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                _ => problems.push(format!("{key}: {url:?} is not an http:// or https:// URL")),
            }
        }
        if let Err(e) = link.token() {
            let key = if link.token_file.is_some() { "token_file" } else { "token_env" };
            problems.push(format!("distributor.{key}: {e}"));
        }
        if let Err(e) = berth_shared::tls::client_config(link.ca_file.as_deref()) {
            problems.push(format!("distributor.ca_file: {e}"));
        }
        if link.max_staleness.is_some_and(|s| s.get().is_zero()) {
            problems.push("distributor.max_staleness: must be greater than zero (or left out)".into());
        }
        if link.report_interval.get().is_zero() {
            problems.push("distributor.report_interval: must be greater than zero".into());
        }
    }
    if config.node_id.as_deref().is_some_and(|n| n.trim().is_empty()) {
        problems.push("node_id: must not be empty".to_owned());
    }
    if config.upstream.is_empty() {
        problems.push("upstream: at least one [[upstream]] is required".to_owned());
    }
    let defaults: Vec<_> = config.upstream.iter().enumerate().filter(|(_, u)| u.default).collect();
    if defaults.len() > 1 {
        let keys: Vec<_> = defaults.iter().map(|(i, _)| format!("upstream[{i}].default")).collect();
        problems.push(format!("{}: only one upstream may be the default", keys.join(", ")));
    }
    let mut names = HashSet::new();
    for (i, upstream) in config.upstream.iter().enumerate() {
        if !names.insert(upstream.name.as_str()) {
            problems.push(format!("upstream[{i}].name: {:?} is configured twice", upstream.name));
        }
        problems.extend(validate_upstream(i, upstream));
        problems.extend(validate_access(i, upstream));
    }
    problems
}

fn validate_listen(config: &EdgeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let listen = &config.listen;
    if listen.http.is_none() && listen.https.is_none() {
        problems.push("listen: set http or https (or both); both are off".to_owned());
    }
    let addrs = [("http", listen.http), ("https", listen.https), ("admin", Some(listen.admin))];
    for (i, (name, addr)) in addrs.iter().enumerate() {
        for (other, other_addr) in &addrs[..i] {
            if let (Some(a), Some(b)) = (addr, other_addr) {
                if a == b && a.port() != 0 {
                    problems.push(format!("listen.{name}: must differ from listen.{other}"));
                }
            }
        }
    }
    match (&listen.https, &config.tls) {
        (Some(_), None) => problems.push("tls: listen.https needs [tls] cert and key".to_owned()),
        (None, Some(_)) => problems.push("tls: set, but listen.https is off".to_owned()),
        (Some(_), Some(files)) => {
            if let Err(e) = berth_shared::tls::load_pair(files) {
                problems.push(format!("tls: {e}"));
            }
        }
        (None, None) => {}
    }
    problems
}

fn validate_bounds(config: &EdgeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let server = &config.server;
    let positive = [
        ("server.max_connections", server.max_connections as u64),
        ("server.header_timeout", server.header_timeout.get().as_millis() as u64),
        ("server.idle_timeout", server.idle_timeout.get().as_millis() as u64),
        ("server.max_header_bytes", server.max_header_bytes.bytes()),
        ("server.max_url_bytes", server.max_url_bytes.bytes()),
        ("server.max_prefetch_orders", server.max_prefetch_orders as u64),
    ];
    for (key, value) in positive {
        if value == 0 {
            problems.push(format!("{key}: must be greater than zero"));
        }
    }
    for (i, u) in config.upstream.iter().enumerate() {
        for (key, value) in [("max_fills", u.max_fills), ("max_connections", u.max_connections)] {
            if value == 0 {
                problems.push(format!("upstream[{i}].{key}: must be greater than zero"));
            }
        }
    }
    problems
}

fn validate_auth(config: &EdgeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let auth = &config.auth;
    if auth.signing_key_file.is_some() && auth.signing_key_env.is_some() {
        problems.push("auth.signing_key_file: set signing_key_file or signing_key_env, not both".to_owned());
    }
    if let Err(e) = crate::access::SigningKey::from_config(auth) {
        let key = if auth.signing_key_file.is_some() { "signing_key_file" } else { "signing_key_env" };
        problems.push(format!("auth.{key}: {e}"));
    }
    if auth.token_ttl.get().is_zero() {
        problems.push("auth.token_ttl: must be greater than zero".to_owned());
    }
    if auth.authz_ttl.get().is_zero() {
        problems.push("auth.authz_ttl: must be greater than zero".to_owned());
    }
    if let Some(base) = &auth.realm_base {
        if !berth_shared::url::is_base_url(base) {
            problems.push(format!(
                "auth.realm_base: {base:?} is not a base URL like \"https://pull.example.com\" (no path: /token is served at the root)"
            ));
        }
    }
    if !config.listen.admin.ip().is_loopback() && config.admin.tokens().is_none() {
        problems.push(format!(
            "admin.tokens_env: the admin listener {} is reachable from other hosts: set [admin] tokens_env or tokens_file so prefetch and purge need a token",
            config.listen.admin
        ));
    }
    if let Some(Err(e)) = config.admin.tokens() {
        let key = if config.admin.tokens_file.is_some() { "tokens_file" } else { "tokens_env" };
        problems.push(format!("admin.{key}: {e}"));
    }
    problems
}

fn validate_access(i: usize, u: &UpstreamConfig) -> Vec<String> {
    use super::AccessMode;
    let mut problems = Vec::new();
    let key = |k: &str| format!("upstream[{i}].{k}");
    match u.access_mode() {
        AccessMode::Anonymous if u.username.is_some() && !u.allow_anonymous_with_credentials => problems.push(format!(
            "{}: \"anonymous\" with credentials would let anyone read what they can; set \
             allow_anonymous_with_credentials = true if that is meant",
            key("access")
        )),
        AccessMode::Htpasswd => match &u.htpasswd_file {
            None => problems.push(format!("{}: access = \"htpasswd\" needs htpasswd_file", key("htpasswd_file"))),
            Some(path) => {
                if let Err(e) = crate::access::htpasswd::Htpasswd::load(path) {
                    problems.push(format!("{}: {e}", key("htpasswd_file")));
                }
            }
        },
        _ => {}
    }
    if u.access_mode() != AccessMode::Htpasswd && (u.htpasswd_file.is_some() || !u.grants.is_empty()) {
        problems.push(format!("{}: htpasswd_file and grants apply only with access = \"htpasswd\"", key("access")));
    }
    for (user, patterns) in &u.grants {
        for pattern in patterns {
            if let Err(e) = crate::access::glob::Pattern::parse(pattern) {
                problems.push(format!("{}: {e}", key(&format!("grants.{user}"))));
            }
        }
    }
    problems
}

fn validate_upstream(i: usize, u: &UpstreamConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let key = |k: &str| format!("upstream[{i}].{k}");
    if !is_registry_host(&u.name) {
        problems.push(format!(
            "{}: {:?} is not a registry host name (letters, digits, '.', '-', optional :port)",
            key("name"),
            u.name
        ));
    }
    match u.url.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
                problems.push(format!("{}: {:?} must be a base URL without path or query", key("url"), u.url));
            }
        }
        _ => problems.push(format!("{}: {:?} is not an http:// or https:// URL", key("url"), u.url)),
    }
    let password_key = if u.password_file.is_some() { key("password_file") } else { key("password_env") };
    if u.password_file.is_some() && u.password_env.is_some() {
        problems.push(format!("{}: set password_env or password_file, not both", key("password_file")));
    }
    if u.password().is_some() && u.username.is_none() {
        problems.push(format!("{password_key}: set together with username"));
    }
    if let Some(Err(e)) = u.password() {
        problems.push(format!("{password_key}: {e}"));
    }
    if let Some(ca) = &u.ca_file {
        if !ca.is_file() {
            problems.push(format!("{}: {} is not a readable file", key("ca_file"), ca.display()));
        }
    }
    for (name, d) in [
        ("connect_timeout", u.connect_timeout),
        ("first_byte_timeout", u.first_byte_timeout),
        ("body_stall_timeout", u.body_stall_timeout),
    ] {
        if d.get().is_zero() {
            problems.push(format!("{}: must be greater than zero", key(name)));
        }
    }
    problems
}

/// A host name, or `host:port`, as used in image references (`docker.io`, `10.0.0.5:5000`).
pub fn is_registry_host(name: &str) -> bool {
    let (host, port) = match name.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (name, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// `[cluster]`: with peers, this edge's own URL, valid peer URLs and a region key.
fn validate_cluster(cluster: &super::ClusterConfig, with_distributor: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if cluster.peers.is_empty() && cluster.advertise.is_none() && cluster.advertise_env.is_none() {
        return problems;
    }
    let bare_url = berth_shared::url::is_base_url;
    let key = if cluster.advertise.is_some() { "advertise" } else { "advertise_env" };
    match cluster.advertised() {
        Ok(None) => problems
            .push("cluster.advertise: required with cluster.peers (this edge's URL as its peers reach it)".into()),
        Ok(Some(a)) if !bare_url(&a) => {
            problems.push(format!("cluster.{key}: {a:?} is not an http:// or https:// URL without a path"))
        }
        Ok(Some(_)) => {}
        Err(e) => problems.push(format!("cluster.{key}: {e}")),
    }
    if cluster.peers.is_empty() && !with_distributor {
        problems
            .push("cluster.peers: required without a [distributor] (whose fleet would name the region's edges)".into());
    }
    let mut seen = HashSet::new();
    for (i, peer) in cluster.peers.iter().enumerate() {
        if !bare_url(peer) {
            problems.push(format!("cluster.peers[{i}]: {peer:?} is not an http:// or https:// URL without a path"));
        } else if !seen.insert(peer.as_str()) {
            problems.push(format!("cluster.peers[{i}]: {peer:?} is listed twice"));
        }
    }
    match cluster.key().and_then(|k| crate::cluster::hop::RegionKey::new(&k)) {
        Ok(_) => {}
        Err(e) => {
            let key = if cluster.key_file.is_some() { "key_file" } else { "key_env" };
            problems.push(format!("cluster.{key}: {e}"));
        }
    }
    if cluster.keep_after == 0 {
        problems.push("cluster.keep_after: must be at least 1".into());
    }
    if let Err(e) = berth_shared::tls::client_config(cluster.ca_file.as_deref()) {
        problems.push(format!("cluster.ca_file: {e}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn should_refuse_two_default_upstreams_naming_both() {
        let text = r#"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            [[upstream]]
            name = "ghcr.io"
            url = "https://ghcr.io"
            default = true
        "#;
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("upstream[0].default, upstream[1].default"), "{err}");
    }

    #[test]
    fn should_collect_semantic_problems_together() {
        let text = r#"
            region = ""
            [[upstream]]
            name = "not a host"
            url = "ftp://x"
            password_env = "BERTH_TEST_SURELY_UNSET_VAR"
            [[upstream]]
            name = "not a host"
            url = "https://ghcr.io/some/path"
        "#;
        let err = parse(text).unwrap_err();
        let all = err.to_string();
        for key in [
            "region",
            "upstream[0].name",
            "upstream[0].url",
            "upstream[0].password_env: set together",
            "BERTH_TEST_SURELY_UNSET_VAR is not set",
            "upstream[1].name: \"not a host\" is configured twice",
            "upstream[1].url",
        ] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
    }

    #[test]
    fn should_name_every_cluster_problem_at_once() {
        let text = r#"
            [cluster]
            peers = ["http://edge-2:5000", "ftp://edge-3", "http://edge-2:5000", "http://edge-4:5000/path"]
            key_env = "BERTH_TEST_SURELY_UNSET_REGION_KEY"
            keep_after = 0
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
        "#;
        let all = parse(text).unwrap_err().to_string();
        for key in [
            "cluster.advertise: required with cluster.peers",
            "cluster.peers[1]: \"ftp://edge-3\" is not an http:// or https:// URL",
            "cluster.peers[2]: \"http://edge-2:5000\" is listed twice",
            "cluster.peers[3]",
            "cluster.key_env: environment variable BERTH_TEST_SURELY_UNSET_REGION_KEY is not set",
            "cluster.keep_after: must be at least 1",
        ] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
    }

    #[test]
    fn should_refuse_a_short_region_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "short\n").unwrap();
        let text = format!(
            "[cluster]\nadvertise = \"http://edge-1:5000\"\npeers = [\"http://edge-2:5000\"]\nkey_file = {:?}\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n",
            key.display().to_string()
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("cluster.key_file: the region key must be at least 16 bytes"), "{err}");
        std::fs::write(&key, "a-region-key-long-enough-0000\n").unwrap();
        assert!(parse(&text).is_ok());
        // Without peers the members come from the distributor: one is needed.
        let fleet = text.replace("peers = [\"http://edge-2:5000\"]\n", "");
        let err = parse(&fleet).unwrap_err().to_string();
        assert!(err.contains("cluster.peers: required without a [distributor]"), "{err}");
        let link = format!(
            "[distributor]\nurl = \"https://distributor:7000\"\ntoken_file = {:?}\n[cluster]",
            key.display().to_string()
        );
        let linked = fleet.replace("[cluster]", &link);
        assert!(parse(&linked).is_ok(), "{:?}", parse(&linked).err());
        // The address from the environment (a DaemonSet's pods share one config): unset, the
        // variable is named; set, the config loads.
        let from_env = linked
            .replace("advertise = \"http://edge-1:5000\"", "advertise_env = \"BERTH_TEST_ADVERTISE_OF_THIS_TEST\"");
        let err = parse(&from_env).unwrap_err().to_string();
        let unset = "cluster.advertise_env: environment variable BERTH_TEST_ADVERTISE_OF_THIS_TEST is not set";
        assert!(err.contains(unset), "{err}");
        std::env::set_var("BERTH_TEST_ADVERTISE_OF_THIS_TEST", "http://10.0.0.7:5000");
        assert!(parse(&from_env).is_ok(), "{:?}", parse(&from_env).err());
    }

    #[test]
    fn should_require_an_upstream() {
        let err = parse("region = \"x\"").unwrap_err().to_string();
        assert!(err.contains("at least one [[upstream]]"), "{err}");
    }

    #[test]
    fn should_accept_registry_hosts_with_ports() {
        for ok in ["docker.io", "10.0.0.5:5000", "localhost", "registry.k8s.io"] {
            assert!(super::is_registry_host(ok), "{ok}");
        }
        for bad in ["", "a b", "x:port", "-a.com", "a..b", "http://x"] {
            assert!(!super::is_registry_host(bad), "{bad}");
        }
    }
}
