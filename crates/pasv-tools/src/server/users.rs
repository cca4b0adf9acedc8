//! Accounts: anonymous, and a TOML users file with argon2 password hashes.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."   # from `pasvd passwd`
//! root = "/srv/ftp/alice"                            # optional: the server root
//! write = true                                       # optional: false
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;

use super::ServerError;

/// One account of the users file. `Debug` does not print the hash.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct User {
    name: String,
    password: String,
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(default)]
    write: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("root", &self.root)
            .field("write", &self.write)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<User>,
}

/// What a successful login grants.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) name: String,
    pub(crate) anonymous: bool,
    pub(crate) root: Option<PathBuf>,
    pub(crate) write: bool,
}

/// The accounts the server knows.
#[derive(Debug, Default)]
pub(crate) struct Users {
    by_name: HashMap<Vec<u8>, User>,
    anonymous: bool,
    anonymous_write: bool,
}

/// The names that mean "anonymous" (RFC 1635).
pub(crate) fn is_anonymous_name(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"anonymous") || name.eq_ignore_ascii_case(b"ftp")
}

impl Users {
    /// Loads the users file (if any); every hash must parse, so a typo fails at start.
    pub(crate) fn load(
        path: Option<&Path>,
        anonymous: bool,
        anonymous_write: bool,
    ) -> Result<Users, ServerError> {
        let mut users = Users {
            by_name: HashMap::new(),
            anonymous,
            anonymous_write,
        };
        let Some(path) = path else {
            return Ok(users);
        };
        let bad = |reason: String| ServerError::Users {
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: UsersFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for user in file.user {
            PasswordHash::new(&user.password)
                .map_err(|e| bad(format!("user {:?}: bad password hash: {e}", user.name)))?;
            if is_anonymous_name(user.name.as_bytes()) {
                return Err(bad(format!(
                    "user {:?} is reserved for anonymous",
                    user.name
                )));
            }
            users.by_name.insert(user.name.as_bytes().to_vec(), user);
        }
        Ok(users)
    }

    /// Whether `USER name` can lead anywhere (the reply does not tell the client).
    pub(crate) fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Checks a login. Slow on purpose for real accounts (argon2): call off the runtime.
    pub(crate) fn verify(&self, name: &[u8], password: &[u8]) -> Option<Grant> {
        if is_anonymous_name(name) {
            return self.anonymous.then(|| Grant {
                name: "anonymous".to_owned(),
                anonymous: true,
                root: None,
                write: self.anonymous_write,
            });
        }
        let user = self.by_name.get(name)?;
        let hash = PasswordHash::new(&user.password).ok()?;
        Argon2::default()
            .verify_password(password, &hash)
            .ok()
            .map(|()| Grant {
                name: user.name.clone(),
                anonymous: false,
                root: user.root.clone(),
                write: user.write,
            })
    }
}

/// Hashes a password for the users file (argon2id, default parameters, random salt).
pub fn hash_password(password: &[u8]) -> Result<String, ServerError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| ServerError::Users {
        reason: format!("salt: {e}"),
    })?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServerError::Users {
            reason: format!("hash: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_passwords_fail() {
        let hash = hash_password(b"s3cret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            format!("[[user]]\nname = \"alice\"\npassword = \"{hash}\"\nwrite = true\n"),
        )
        .unwrap();
        let users = Users::load(Some(&path), false, false).unwrap();
        let grant = users.verify(b"alice", b"s3cret").unwrap();
        assert!(grant.write && !grant.anonymous);
        assert!(users.verify(b"alice", b"wrong").is_none());
        assert!(users.verify(b"bob", b"s3cret").is_none());
        assert!(users.verify(b"anonymous", b"x").is_none());
        assert!(!format!("{:?}", users).contains(&hash));
    }

    #[test]
    fn a_bad_hash_fails_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "[[user]]\nname = \"a\"\npassword = \"plain\"\n").unwrap();
        assert!(Users::load(Some(&path), true, false).is_err());
    }
}
