//! Token scopes (`repository:<name>:pull`) as clients send them to `/token`, and the
//! repository each names: `<upstream name>/<repository>` (what the edge's challenges name), or a
//! repository of the default upstream.

use berth_shared::RepositoryName;

use crate::registry::Router;

/// The repository names of every `repository:<name>:<actions>` scope that includes `pull`.
/// Each item may hold several scopes separated by spaces (the OAuth2 form).
pub fn parse_scopes(items: &[String]) -> impl Iterator<Item = String> + '_ {
    items.iter().flat_map(|item| item.split(' ')).filter_map(|scope| {
        let rest = scope.strip_prefix("repository:")?;
        // The name may contain ':' (a registry with a port): the actions follow the last one.
        let (name, actions) = rest.rsplit_once(':')?;
        actions.split(',').any(|a| a == "pull" || a == "*").then(|| name.to_owned())
    })
}

/// The upstream and repository a scope's name stands for.
pub fn resolve(router: &Router, name: &str) -> Option<(usize, RepositoryName)> {
    router.resolve_name(name).ok()
}

/// The scope a challenge names for a repository of an upstream.
pub fn challenge_scope(upstream: &str, repository: &str) -> String {
    format!("repository:{upstream}/{repository}:pull")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_pull_scopes_in_both_forms() {
        let items = vec![
            "repository:docker.io/library/alpine:pull".to_owned(),
            "repository:127.0.0.1:5001/team/app:pull,push repository:x/y:push registry:catalog:*".to_owned(),
        ];
        let names: Vec<_> = parse_scopes(&items).collect();
        assert_eq!(names, vec!["docker.io/library/alpine", "127.0.0.1:5001/team/app"]);
    }

    #[test]
    fn should_resolve_prefixed_and_default_names() {
        let router = Router::new([("docker.io", true, true), ("127.0.0.1:5001", false, false)]);
        let (u, r) = resolve(&router, "127.0.0.1:5001/team/app").unwrap();
        assert_eq!((u, r.as_str()), (1, "team/app"));
        let (u, r) = resolve(&router, "alpine").unwrap();
        assert_eq!((u, r.as_str()), (0, "library/alpine"));
        let (u, r) = resolve(&router, "docker.io/library/alpine").unwrap();
        assert_eq!((u, r.as_str()), (0, "library/alpine"));
        assert!(resolve(&router, "Bad Name").is_none());
    }
}
