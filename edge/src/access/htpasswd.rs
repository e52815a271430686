//! Users from an htpasswd file (bcrypt entries only: `htpasswd -B`; MD5, SHA1 and crypt
//! entries are refused when the file is loaded, so a weak hash never guards an image).

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("{path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{path} line {line}: {message}")]
    BadLine { path: String, line: usize, message: String },
}

/// The users of one htpasswd file.
#[derive(Debug, Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Self, HtpasswdError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| HtpasswdError::Unreadable { path: path.display().to_string(), message: e.to_string() })?;
        Self::parse(&text).map_err(|(line, message)| HtpasswdError::BadLine {
            path: path.display().to_string(),
            line,
            message,
        })
    }

    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line.split_once(':').ok_or((i + 1, "expected user:hash".to_owned()))?;
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                return Err((i + 1, format!("user {user:?}: only bcrypt hashes are accepted (htpasswd -B)")));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd { users })
    }

    /// Whether `password` is `user`'s (bcrypt: deliberately slow; callers cache the answer).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.users.get(user).is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_verify_bcrypt_users() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let file = Htpasswd::parse(&format!("# users\nalice:{hash}\n\n")).unwrap();
        assert!(file.verify("alice", "s3cret"));
        assert!(!file.verify("alice", "wrong"));
        assert!(!file.verify("bob", "s3cret"));
    }

    #[test]
    fn should_refuse_weak_hashes_and_bad_lines() {
        assert_eq!(Htpasswd::parse("bob:$apr1$xyz$abc").unwrap_err().0, 1);
        assert_eq!(Htpasswd::parse("# c\nbob").unwrap_err().0, 2);
    }
}
