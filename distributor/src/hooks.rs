//! Registry webhooks: a push to the origin becomes a prefetch job, so a new tag is warm in the
//! regions that pull it before a deploy asks for it. `POST /api/v1/hooks/registry` takes the
//! notification envelope of the CNCF distribution registry (`{"events": [...]}`) and Harbor's
//! push webhook (`{"type": "PUSH_ARTIFACT", "event_data": ...}`); `[[hooks.rule]]` entries in the
//! distributor config map repository globs to regions and platforms.

use serde::{Deserialize, Serialize};

/// `[hooks]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// What a pushed repository turns into, first matching rule wins. Default: none.
    pub rule: Vec<HookRule>,
}

/// One rule: pushes to repositories matching `repositories` are prefetched in `regions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRule {
    /// Repository patterns as the registry names them: `*` within a path segment, `**` across.
    pub repositories: Vec<String>,
    /// The registry as the edges name it (an `[[upstream]] name`), e.g. `"registry.example.com"`.
    pub registry: String,
    /// Target regions (empty: every region).
    #[serde(default)]
    pub regions: Vec<String>,
    /// Platforms of an index to warm (empty: every platform).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Follow the pulls: only those of `regions` (every region when empty) whose edges
    /// reported pulls of this repository within this span get the job; a push nobody pulled
    /// makes none. Default: none (every region of `regions`).
    #[serde(default)]
    pub pulled_within: Option<berth_shared::HumanDuration>,
}

/// A pushed tag: (repository, tag).
pub type Pushed = (String, String);

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The tags a webhook body reports pushed (blob pushes and deletions are not).
pub fn pushed_tags(body: &[u8]) -> Result<Vec<Pushed>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = Vec::new();
    if let Some(events) = value["events"].as_array() {
        for event in events {
            let target = &event["target"];
            let manifest = target["mediaType"].as_str().is_some_and(|t| MANIFEST_TYPES.contains(&t));
            if let (Some("push"), true, Some(repo), Some(tag)) =
                (event["action"].as_str(), manifest, target["repository"].as_str(), target["tag"].as_str())
            {
                out.push((repo.to_owned(), tag.to_owned()));
            }
        }
    } else if value["type"].as_str() == Some("PUSH_ARTIFACT") {
        let data = &value["event_data"];
        let repo =
            data["repository"]["repo_full_name"].as_str().ok_or("event_data.repository.repo_full_name missing")?;
        for resource in data["resources"].as_array().into_iter().flatten() {
            if let Some(tag) = resource["tag"].as_str().filter(|t| !t.is_empty()) {
                out.push((repo.to_owned(), tag.to_owned()));
            }
        }
    } else {
        return Err("neither a distribution notification envelope nor a Harbor push webhook".into());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The first rule whose patterns match the repository.
pub fn rule_for<'a>(rules: &'a [HookRule], repository: &str) -> Option<&'a HookRule> {
    rules.iter().find(|r| r.repositories.iter().any(|p| glob(p, repository)))
}

/// `*` matches within one path segment, `**` across segments.
fn glob(pattern: &str, name: &str) -> bool {
    if let Some(rest) = pattern.strip_prefix("**") {
        return (0..=name.len()).any(|i| name.is_char_boundary(i) && glob(rest, &name[i..]));
    }
    if let Some(rest) = pattern.strip_prefix('*') {
        let stop = name.find('/').unwrap_or(name.len());
        return (0..=stop).any(|i| name.is_char_boundary(i) && glob(rest, &name[i..]));
    }
    match (pattern.chars().next(), name.chars().next()) {
        (None, None) => true,
        (Some(p), Some(n)) if p == n => glob(&pattern[p.len_utf8()..], &name[n.len_utf8()..]),
        _ => false,
    }
}

/// Problems in `[hooks]`, each naming its key.
pub fn validate(hooks: &HooksConfig) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, r) in hooks.rule.iter().enumerate() {
        if r.repositories.is_empty() {
            problems.push(format!("hooks.rule[{i}].repositories: at least one pattern"));
        }
        if r.pulled_within.is_some_and(|d| d.get().is_zero()) {
            problems.push(format!("hooks.rule[{i}].pulled_within: must be greater than zero"));
        }
        if r.registry.is_empty() || r.registry.contains('/') {
            problems.push(format!("hooks.rule[{i}].registry: {:?} is not a registry name", r.registry));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_manifest_pushes_from_a_distribution_envelope() {
        let body = r#"{"events":[
            {"action":"push","target":{"mediaType":"application/octet-stream","repository":"team/app","digest":"sha256:aa"}},
            {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app","tag":"v2"}},
            {"action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app","tag":"v1"}},
            {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app"}}
        ]}"#;
        assert_eq!(pushed_tags(body.as_bytes()).unwrap(), vec![("team/app".to_owned(), "v2".to_owned())]);
    }

    #[test]
    fn should_read_a_harbor_push_and_refuse_other_documents() {
        let body = r#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"1.0"}],"repository":{"repo_full_name":"library/app"}}}"#;
        assert_eq!(pushed_tags(body.as_bytes()).unwrap(), vec![("library/app".to_owned(), "1.0".to_owned())]);
        assert!(pushed_tags(b"{}").is_err());
        assert!(pushed_tags(b"nope").is_err());
    }

    #[test]
    fn should_match_the_first_rule_by_glob() {
        let rule = |p: &str, region: &str| HookRule {
            repositories: vec![p.into()],
            registry: "r".into(),
            regions: vec![region.into()],
            platforms: vec![],
            pulled_within: None,
        };
        let rules = vec![rule("team/*", "a"), rule("**", "b")];
        assert_eq!(rule_for(&rules, "team/app").unwrap().regions, vec!["a"]);
        assert_eq!(rule_for(&rules, "team/x/app").unwrap().regions, vec!["b"]);
        assert!(rule_for(&rules[..1], "other/app").is_none());
        assert!(rule_for(&rules[..1], "team/äpp").is_some(), "non-ASCII names match without panicking");
        assert!(rule_for(&[rule("t*/x", "a")], "tëam/x").is_some());
    }
}
