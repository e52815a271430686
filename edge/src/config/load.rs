//! Reading a config file: TOML syntax, then every unknown key and every bad value at once.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use super::validate::validate;
use super::EdgeConfig;

/// Everything wrong with a config, one problem per line, each naming its key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(problem: String) -> Self {
        ConfigError { problems: vec![problem] }
    }
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<EdgeConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
}

/// Parses and validates config text, reporting every unknown key and bad value together.
pub fn parse(text: &str) -> Result<EdgeConfig, ConfigError> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::one(format!("TOML syntax: {e}")))?;
    let mut problems = Vec::new();
    let mut removed = BTreeSet::new();
    // A bad value stops serde at the first error. Record it, drop the key so the default takes
    // its place, and go again until the rest parses: one run reports every bad key.
    let config = loop {
        let mut unknown = Vec::new();
        let result = deserialize(&value, &mut unknown);
        match result {
            Ok(config) => {
                problems.extend(unknown.into_iter().map(|k| format!("{k}: unknown key")));
                break Some(config);
            }
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let inner = inner.lines().next().unwrap_or_default().to_owned();
                if !removed.insert(path.clone()) || !remove_path(&mut value, &path) {
                    if !is_missing_after_removal(&inner, &path, &removed) {
                        problems.push(format!("{path}: {inner}"));
                    }
                    break None;
                }
                problems.push(format!("{path}: {inner}"));
            }
        }
    };
    let config = match config {
        Some(c) => c,
        None => return Err(ConfigError { problems }),
    };
    // A key already reported as unparseable is not reported again for its default value.
    let reported: BTreeSet<String> = problems.iter().filter_map(|p| p.split(':').next()).map(str::to_owned).collect();
    problems
        .extend(validate(&config).into_iter().filter(|p| !p.split(':').next().is_some_and(|k| reported.contains(k))));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems })
    }
}

fn deserialize(
    value: &toml::Value,
    unknown: &mut Vec<String>,
) -> Result<EdgeConfig, serde_path_to_error::Error<toml::de::Error>> {
    let de = value.clone();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(de, &mut track);
    let result = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
    result.map_err(|e| serde_path_to_error::Error::new(track.path(), e))
}

/// After a bad required key was dropped, serde reports it missing: that is the same problem.
fn is_missing_after_removal(message: &str, path: &str, removed: &BTreeSet<String>) -> bool {
    message.starts_with("missing field")
        && removed.iter().any(|r| {
            let field = r.rsplit('.').next().unwrap_or_default();
            message.contains(&format!("`{field}`")) && r.starts_with(path.trim_end_matches('?'))
        })
}

/// Removes the value at a serde path such as `upstream[1].tag_ttl` or `cache.disk_max`.
fn remove_path(value: &mut toml::Value, path: &str) -> bool {
    let mut segments: Vec<Segment> = Vec::new();
    for part in path.split('.') {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segments.push(Segment::Key(key.to_owned()));
        }
        for idx in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            match idx.parse() {
                Ok(i) => segments.push(Segment::Index(i)),
                Err(_) => return false,
            }
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for seg in parents {
        current = match (seg, current) {
            (Segment::Key(k), toml::Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, current) {
        (Segment::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        _ => false,
    }
}

enum Segment {
    Key(String),
    Index(usize),
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
        assert_eq!(c.listen.http.to_string(), "0.0.0.0:5000");
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
