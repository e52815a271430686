//! Secrets named by config: a file (what a Kubernetes or systemd credential mount gives) or an
//! environment variable. The value never appears in an error message.

use std::path::Path;

/// Reads a secret from `file` when one is named, else from the environment variable `env`.
/// Surrounding whitespace (a trailing newline) is trimmed. The error names where it looked.
pub fn read(file: Option<&Path>, env: &str) -> Result<String, String> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))?,
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(match file {
            Some(path) => format!("{} is empty", path.display()),
            None => format!("environment variable {env} is empty"),
        });
    }
    Ok(value.to_owned())
}

/// A list of secrets (comma- or newline-separated), from a file or the environment.
pub fn read_list(file: Option<&Path>, env: &str) -> Result<Vec<String>, String> {
    Ok(read(file, env)?.split([',', '\n']).map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_a_file_before_the_environment_and_trim_it() {
        let dir = std::env::temp_dir().join(format!("berth-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read(Some(&f), "BERTH_TEST_SURELY_UNSET_SECRET"), Ok("s3cret".into()));
        std::fs::write(&f, "a, b\nc\n").unwrap();
        assert_eq!(read_list(Some(&f), "X"), Ok(vec!["a".into(), "b".into(), "c".into()]));
        std::fs::write(&f, "\n").unwrap();
        assert!(read(Some(&f), "X").unwrap_err().ends_with("is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn should_name_what_is_missing_without_a_value() {
        assert_eq!(
            read(None, "BERTH_TEST_SURELY_UNSET_SECRET"),
            Err("environment variable BERTH_TEST_SURELY_UNSET_SECRET is not set".into())
        );
        let missing = Path::new("/nonexistent/berth/token");
        assert!(read(Some(missing), "X").unwrap_err().starts_with("cannot read /nonexistent/berth/token"));
    }
}
