//! Accounts: anonymous, and a TOML users file with argon2 password hashes.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."   # from `pasvd passwd`
//! root = "/srv/ftp/alice"                            # optional: the server root
//! write = true                                       # optional: false
//! admin = true                                       # optional: false (SITE POOL)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::error::ServerError;

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
    #[serde(default)]
    admin: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("root", &self.root)
            .field("write", &self.write)
            .field("admin", &self.admin)
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
    /// May run the administrator's SITE commands (`SITE POOL`); never anonymous.
    pub(crate) admin: bool,
}

/// The accounts the server knows, and the bound on password verifications.
pub(crate) struct Users {
    by_name: HashMap<Vec<u8>, User>,
    anonymous: bool,
    anonymous_write: bool,
    /// The hash of a random password, with the parameters of the file's first account: a
    /// name that is not an account is verified against it, so it takes as long as a wrong
    /// password for one that is. `None` without accounts (no name to discover).
    dummy: Option<String>,
    /// One permit per concurrent verification. Each argon2 run holds 19 MiB (the default
    /// `m`) for tens of milliseconds: unbounded, 100 parallel wrong passwords raised the
    /// server's memory from 5 MB to 1.35 GB. tokio's semaphore queues waiters first come,
    /// first served.
    permits: Arc<Semaphore>,
    limit: usize,
    /// Work memory of finished verifications, reused by the next ones (so at most one
    /// buffer per permit). Allocated per run instead, each 19 MiB went back to the arena of
    /// whichever blocking thread ran it, and glibc kept them: 100 parallel wrong passwords
    /// left the server 600 MB larger even with the permits.
    memory: Mutex<Vec<Vec<Block>>>,
    gauge: VerifyGauge,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("by_name", &self.by_name)
            .field("anonymous", &self.anonymous)
            .field("anonymous_write", &self.anonymous_write)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Password verifications counted as they run.
#[derive(Debug, Default)]
struct VerifyGauge {
    runs: AtomicU64,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

/// One verification running; leaves the gauge on drop.
struct Running<'a>(&'a VerifyGauge);

impl<'a> Running<'a> {
    fn start(gauge: &'a VerifyGauge) -> Running<'a> {
        gauge.runs.fetch_add(1, Ordering::Relaxed);
        let now = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.max_running.fetch_max(now, Ordering::SeqCst);
        Running(gauge)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Users`] counted: verifications run, the most at once, and the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VerifyCounts {
    pub(crate) runs: u64,
    pub(crate) max_running: usize,
    pub(crate) limit: usize,
}

/// The bound on concurrent verifications: about one per core.
fn verification_limit() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Whether `password` matches `hash`, computed in `memory` (grown to the hash's `m` if
/// smaller). As argon2's own `verify_password`, with the output compared in constant time.
fn verify_in(hash: &PasswordHash<'_>, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(hash.algorithm),
        hash.version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(hash),
    ) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let argon2 = Argon2::new(algorithm, version, params);
    Output::init_with(expected.len(), |out| {
        argon2
            .hash_password_into_with_memory(password, salt, out, &mut memory[..])
            .map_err(|_| argon2::password_hash::Error::Password)
    })
    .is_ok_and(|computed| computed == expected)
}

/// A hash of a random password with the parameters of `like` (algorithm, version, m, t, p).
fn dummy_hash(like: &str) -> Result<String, String> {
    let like = PasswordHash::new(like).map_err(|e| e.to_string())?;
    let params = Params::try_from(&like).map_err(|e| e.to_string())?;
    let password: [u8; 32] = rand::random();
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password_customized(&password, Some(like.algorithm), like.version, params, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The names that mean "anonymous" (RFC 1635).
pub(crate) fn is_anonymous_name(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"anonymous") || name.eq_ignore_ascii_case(b"ftp")
}

impl Users {
    /// Loads the users file (if any); every hash must parse, so a typo fails at start.
    /// Accounts in the users file.
    pub(crate) fn count(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn load(
        path: Option<&Path>,
        anonymous: bool,
        anonymous_write: bool,
    ) -> Result<Users, ServerError> {
        let limit = verification_limit();
        let mut users = Users {
            by_name: HashMap::new(),
            anonymous,
            anonymous_write,
            dummy: None,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            memory: Mutex::new(Vec::new()),
            gauge: VerifyGauge::default(),
        };
        let Some(path) = path else {
            return Ok(users);
        };
        let bad = |reason: String| ServerError::Users {
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: UsersFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(first) = file.user.first() {
            // One argon2 run at start; made on first use instead, the first unknown name
            // would take twice as long as any later one, and be told apart.
            users.dummy = Some(
                dummy_hash(&first.password)
                    .map_err(|e| bad(format!("user {:?}: bad password hash: {e}", first.name)))?,
            );
        }
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

    /// Checks a login: anonymous at once, any other name with one argon2 verification,
    /// bounded by the permits (FIFO) and run off the runtime threads.
    pub(crate) async fn verify_bounded(
        self: &Arc<Self>,
        name: &[u8],
        password: &[u8],
    ) -> Option<Grant> {
        if is_anonymous_name(name) {
            return self.verify(name, password);
        }
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        let users = Arc::clone(self);
        let name = name.to_vec();
        let password = password.to_vec();
        // The permit moves into the blocking task: a session cancelled meanwhile does not
        // let another verification start while this one still runs.
        tokio::task::spawn_blocking(move || {
            let grant = users.verify(&name, &password);
            drop(permit);
            grant
        })
        .await
        .ok()
        .flatten()
    }

    /// Checks a login. Slow on purpose (argon2) for every name but anonymous, known or
    /// not: call off the runtime.
    pub(crate) fn verify(&self, name: &[u8], password: &[u8]) -> Option<Grant> {
        if is_anonymous_name(name) {
            return self.anonymous.then(|| Grant {
                name: "anonymous".to_owned(),
                anonymous: true,
                root: None,
                write: self.anonymous_write,
                admin: false,
            });
        }
        let user = self.by_name.get(name);
        let stored = match user {
            Some(user) => &user.password,
            None => self.dummy.as_ref()?,
        };
        let hash = PasswordHash::new(stored).ok()?;
        let pool = || self.memory.lock().unwrap_or_else(|e| e.into_inner());
        // Counted as running while it holds work memory, so the buffers kept never
        // outnumber the most verifications that ran at once.
        let verified = {
            let _running = Running::start(&self.gauge);
            let mut memory = pool().pop().unwrap_or_default();
            let verified = verify_in(&hash, password, &mut memory);
            pool().push(memory);
            verified
        };
        let user = user.filter(|_| verified)?;
        Some(Grant {
            name: user.name.clone(),
            anonymous: false,
            root: user.root.clone(),
            write: user.write,
            admin: user.admin,
        })
    }

    /// Verifications run since start, the most at once, and the bound.
    pub(crate) fn verify_counts(&self) -> VerifyCounts {
        VerifyCounts {
            runs: self.gauge.runs.load(Ordering::Relaxed),
            max_running: self.gauge.max_running.load(Ordering::SeqCst),
            limit: self.limit,
        }
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

    /// An argon2id hash with small parameters (m = 64 KiB, t = 1), quick in debug builds.
    fn cheap_hash(password: &[u8]) -> String {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        Argon2::default()
            .hash_password_customized(
                password,
                None,
                None,
                Params::new(64, 1, 1, None).unwrap(),
                &salt,
            )
            .unwrap()
            .to_string()
    }

    fn users_file(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("users.toml");
        let text: String = entries
            .iter()
            .map(|(name, hash)| format!("[[user]]\nname = \"{name}\"\npassword = \"{hash}\"\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn an_unknown_name_costs_one_verification_like_a_known_one() {
        let dir = tempfile::tempdir().unwrap();
        let hash = cheap_hash(b"right");
        let users = Users::load(
            Some(&users_file(dir.path(), &[("alice", &hash)])),
            true,
            false,
        )
        .unwrap();
        // The dummy has the account's parameters, not the defaults.
        let dummy = PasswordHash::new(users.dummy.as_deref().unwrap()).unwrap();
        let like = PasswordHash::new(&hash).unwrap();
        assert_eq!(
            (dummy.algorithm, dummy.version, &dummy.params),
            (like.algorithm, like.version, &like.params)
        );
        assert_ne!(dummy.hash, like.hash);
        let runs = |u: &Users| u.verify_counts().runs;
        assert!(users.verify(b"alice", b"wrong").is_none());
        assert_eq!(runs(&users), 1);
        assert!(users.verify(b"bob", b"wrong").is_none());
        assert_eq!(runs(&users), 2);
        // Whatever the password, an unknown name never logs in.
        assert!(users.verify(b"bob", b"right").is_none());
        assert_eq!(runs(&users), 3);
        assert!(users.verify(b"alice", b"right").is_some());
        assert_eq!(runs(&users), 4);
        // Anonymous needs no hash.
        assert!(users.verify(b"anonymous", b"x").is_some());
        assert_eq!(runs(&users), 4);
        let counts = users.verify_counts();
        assert_eq!(counts.max_running, 1);
        assert!(counts.limit >= 1);
    }

    #[test]
    fn verification_in_reused_memory_agrees_with_argon2_for_every_variant() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        // Shared across the cases: it only grows, and a larger one than `m` is fine.
        let mut memory = Vec::new();
        for m in [256, 64] {
            for algorithm in [Algorithm::Argon2d, Algorithm::Argon2i, Algorithm::Argon2id] {
                for version in [Version::V0x10, Version::V0x13] {
                    for len in [16, 32, 64] {
                        let params = Params::new(m, 2, 2, Some(len)).unwrap();
                        let argon2 = Argon2::new(algorithm, version, params);
                        let text = argon2.hash_password(b"right", &salt).unwrap().to_string();
                        let hash = PasswordHash::new(&text).unwrap();
                        assert!(verify_in(&hash, b"right", &mut memory), "{text}");
                        assert!(!verify_in(&hash, b"wrong", &mut memory), "{text}");
                        assert!(!verify_in(&hash, b"", &mut memory), "{text}");
                    }
                }
            }
        }
        assert_eq!(memory.len(), 256);
    }

    #[test]
    fn without_accounts_nothing_is_hashed() {
        let users = Users::load(None, true, false).unwrap();
        assert!(users.verify(b"bob", b"x").is_none());
        assert_eq!(users.verify_counts().runs, 0);
    }

    #[tokio::test]
    async fn bounded_verifications_never_run_more_than_the_limit_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let hash = cheap_hash(b"right");
        let users = Arc::new(
            Users::load(
                Some(&users_file(dir.path(), &[("alice", &hash)])),
                true,
                false,
            )
            .unwrap(),
        );
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let users = Arc::clone(&users);
                tokio::spawn(async move {
                    let name: &[u8] = if i % 2 == 0 { b"alice" } else { b"bob" };
                    users.verify_bounded(name, b"wrong").await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_none());
        }
        let counts = users.verify_counts();
        assert_eq!(counts.runs, 40);
        assert!(counts.max_running <= counts.limit, "{counts:?}");
        // The work memory is kept for reuse, one buffer per verification that ran at once.
        let buffers = users.memory.lock().unwrap().len();
        assert!((1..=counts.max_running).contains(&buffers), "{buffers}");
        assert!(users.verify_bounded(b"alice", b"right").await.is_some());
    }

    #[test]
    fn a_bad_hash_fails_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "[[user]]\nname = \"a\"\npassword = \"plain\"\n").unwrap();
        assert!(Users::load(Some(&path), true, false).is_err());
    }
}
