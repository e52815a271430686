//! Reading TOML config files the way every Berth binary does: unknown keys are errors, and
//! every unknown key, bad value and semantic problem is reported at once, each naming its key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

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
    pub fn one(problem: String) -> Self {
        ConfigError { problems: vec![problem] }
    }
}

/// Reads and validates a config file.
pub fn read<T: DeserializeOwned>(path: &Path, validate: impl FnOnce(&T) -> Vec<String>) -> Result<T, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
    parse(&text, validate)
}

/// Parses config text and runs `validate` on it, reporting every unknown key, every bad value
/// and every problem `validate` finds together, each naming its key.
pub fn parse<T: DeserializeOwned>(text: &str, validate: impl FnOnce(&T) -> Vec<String>) -> Result<T, ConfigError> {
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

fn deserialize<T: DeserializeOwned>(
    value: &toml::Value,
    unknown: &mut Vec<String>,
) -> Result<T, serde_path_to_error::Error<toml::de::Error>> {
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(default)]
    struct Sample {
        name: String,
        size: crate::ByteSize,
        nested: Nested,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    struct Nested {
        ttl: crate::HumanDuration,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample { name: "x".into(), size: crate::ByteSize(1), nested: Nested::default() }
        }
    }

    #[test]
    fn should_report_unknown_keys_bad_values_and_validation_together() {
        let err =
            parse::<Sample>(
                "nmae = 1\nsize = \"huge\"\n[nested]\nttl = \"soon\"\n",
                |_| vec!["name: too short".into()],
            )
            .unwrap_err();
        let all = err.to_string();
        for key in ["nmae: unknown key", "size:", "nested.ttl:", "name: too short"] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
    }

    #[test]
    fn should_accept_a_valid_document() {
        let s: Sample = parse("name = \"ok\"\nsize = \"2KiB\"", |_| vec![]).unwrap();
        assert_eq!((s.name.as_str(), s.size.bytes()), ("ok", 2048));
    }
}
