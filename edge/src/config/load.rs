//! Reading the edge's config file (see `berth_shared::config_file` for how errors are gathered).

use std::path::Path;

pub use berth_shared::config_file::ConfigError;

use super::validate::validate;
use super::EdgeConfig;

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<EdgeConfig, ConfigError> {
    berth_shared::config_file::read(path, validate)
}

/// Parses and validates config text, reporting every unknown key and bad value together.
pub fn parse(text: &str) -> Result<EdgeConfig, ConfigError> {
    berth_shared::config_file::parse(text, validate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[upstream]]
        name = "docker.io"
        url = "https://registry-1.docker.io"
        default = true
    "#;

    #[test]
    fn should_load_the_embedded_default() {
        let c = EdgeConfig::embedded_default().unwrap();
        assert_eq!(c.listen.http.map(|a| a.to_string()).as_deref(), Some("0.0.0.0:5000"));
        assert_eq!(c.listen.admin.to_string(), "127.0.0.1:9400");
        assert_eq!(c.cache.dir, std::path::PathBuf::from("./berth-data"));
        assert_eq!(c.default_upstream().unwrap().name, "docker.io");
        let names: Vec<_> = c.upstream.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]);
    }

    #[test]
    fn should_apply_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.region, "default");
        assert_eq!(c.cache.disk_max.to_string(), "10GiB");
        let u = &c.upstream[0];
        assert_eq!(u.tag_ttl.to_string(), "1m");
        assert_eq!(u.stale_if_error.to_string(), "1d");
        assert!(u.uses_library_prefix());
        assert_eq!(c.cache.eviction, crate::cache::index::Eviction::S3Fifo);
    }

    #[test]
    fn should_name_a_bad_eviction_policy() {
        let text = format!("[cache]\neviction = \"lfu\"\n{MINIMAL}");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("cache.eviction") && err.contains("s3-fifo") && err.contains("lru"), "{err}");
        let lru = parse(&format!("[cache]\neviction = \"lru\"\n{MINIMAL}")).unwrap();
        assert_eq!(lru.cache.eviction, crate::cache::index::Eviction::Lru);
    }

    #[test]
    fn should_name_every_unknown_key_and_bad_value_at_once() {
        let text = r#"
            regoin = "eu-west"
            [cache]
            disk_max = "100 parsecs"
            memory_max = "1GiB"
            colour = "blue"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            tag_ttl = "soon"
            stale_if_error = "24h"
        "#;
        let err = parse(text).unwrap_err();
        let all = err.to_string();
        for key in ["regoin", "cache.disk_max", "cache.colour", "upstream[0].tag_ttl"] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
        assert_eq!(err.problems.len(), 4, "{all}");
    }

    #[test]
    fn should_report_a_bad_required_key_once() {
        let text = r#"
            [[upstream]]
            name = "docker.io"
            url = 5
            default = true
        "#;
        let err = parse(text).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].starts_with("upstream[0].url"), "{err}");
    }

    #[test]
    fn should_report_toml_syntax_errors() {
        let err = parse("region = ").unwrap_err();
        assert!(err.to_string().contains("TOML syntax"), "{err}");
    }
}
