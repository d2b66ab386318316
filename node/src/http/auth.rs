//! The API token: only its holder may change a node's state.
//!
//! At its first start a node writes 32 random bytes (from the OS, hex-encoded) to
//! `DATA/api.token`, mode 0600, and never overwrites the file afterwards; an operator may also
//! put a token of their own there (16 to 1024 visible ASCII characters). A node refuses to start
//! when the file is readable or writable by its group or by others ([`TokenError::Exposed`]):
//! the token is as good as the file's permissions, so a file that leaked is a reason to stop
//! rather than to fix the mode silently (delete the file, or `chmod 600` it, to go on).
//!
//! [`require_token`] is one axum middleware over the node's whole router: every request whose
//! method is not `GET` or `HEAD` needs `Authorization: Bearer <token>`, so a route added later is
//! guarded by default. The binary cache (`/nix-cache-info`, `/<hash>.narinfo`, `/nar/...`) and
//! the read-only JSON API (`GET /api/v1/...`) stay public. A request without the token, or with
//! another one, is answered `401` with `{"error": "..."}` and `WWW-Authenticate: Bearer ...`
//! before its handler runs, so it changes nothing. Tokens are compared as BLAKE3 digests, whose
//! equality is constant-time.
//!
//! **Submitter tokens**: each file `DATA/submitters/NAME.token` (read at start, same rules as
//! `api.token`: mode 0600, 16 to 1024 visible ASCII characters; `NAME` is 1 to 64 of
//! `A-Z a-z 0-9 . _ -`) holds the token of submitter `NAME`. Its holder may upload
//! (`POST /api/v1/submit`) and check its token, nothing else (403); its uploads count under
//! `NAME` for the fair share and the per-submitter limits
//! ([`crate::scheduler::submitters`]). The holder of `api.token` is the submitter `operator`.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use libp2p::futures::StreamExt as _;

use crate::scheduler::Submitter;

/// `POST` here answers 204 when the request carries the token (and 401 like any other route when
/// it does not): a client checks its token this way before a large upload, whose 401 could
/// otherwise arrive as a reset connection once the node stops reading the body.
pub const CHECK_PATH: &str = "/api/v1/auth/check";
/// The token file's name inside the data dir.
pub const TOKEN_FILE: &str = "api.token";
/// Random bytes in a token the node creates (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;
/// Shortest token accepted from a file or the environment.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;
/// The directory of submitter tokens inside the data dir (see the module docs).
pub const SUBMITTERS_DIR: &str = "submitters";
/// Most submitter token files read.
const MAX_SUBMITTERS: usize = 4096;
/// A refused request's body is read and discarded up to this many bytes (so that the client gets
/// to read the 401 instead of a reset connection), then the connection is closed.
pub const DRAIN_LIMIT: u64 = 8 << 20;
/// ... and for at most this long.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Reading or writing the file failed.
    #[error("cannot {op} API token file {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file may be read or written by the group or others.
    #[error(
        "API token file {} has mode {mode:04o}: it must not be readable or writable by group or others \
         (run `chmod 600 {}`, or delete it to have a new token created, after checking who could read it)",
        path.display(), path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a usable token.
    #[error("API token file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No randomness from the operating system.
    #[error("cannot get randomness from the OS for a new API token: {0}")]
    Random(String),
}

/// A node's API token, kept as its BLAKE3 digest (compared in constant time), with the tokens
/// of its submitters (see the module docs).
#[derive(Clone)]
pub struct ApiToken {
    digest: blake3::Hash,
    submitters: std::sync::Arc<Vec<(Submitter, blake3::Hash)>>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// A token from its text (checked with [`check_token`]).
    pub fn new(token: &str) -> Result<ApiToken, String> {
        check_token(token)?;
        Ok(ApiToken { digest: blake3::hash(token.as_bytes()), submitters: Default::default() })
    }

    /// Also accept, for uploads only, the token of each named submitter.
    pub fn with_submitters(mut self, submitters: Vec<(Submitter, String)>) -> ApiToken {
        self.submitters =
            std::sync::Arc::new(submitters.into_iter().map(|(s, t)| (s, blake3::hash(t.as_bytes()))).collect());
        self
    }

    /// The submitters with a token, by name.
    pub fn submitter_names(&self) -> Vec<&str> {
        self.submitters.iter().map(|(s, _)| s.0.as_ref()).collect()
    }

    /// Whose token `presented` is: `Some(None)` the operator's, `Some(Some(name))` a
    /// submitter's, `None` nobody's. Every digest is compared (constant time in which matched).
    fn holder(&self, presented: &str) -> Option<Option<Submitter>> {
        let digest = blake3::hash(presented.as_bytes());
        let mut found = (digest == self.digest).then_some(None);
        for (s, d) in self.submitters.iter() {
            if *d == digest && found.is_none() {
                found = Some(Some(s.clone()));
            }
        }
        found
    }

    /// Whether `presented` is this token. Constant-time in the token's contents: both sides are
    /// hashed and `blake3::Hash` compares in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        blake3::hash(presented.as_bytes()) == self.digest
    }
}

/// Whether `token` is usable: [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] visible ASCII characters
/// (what fits in an `Authorization` header unchanged).
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!("the token is {} characters, fewer than {MIN_TOKEN_LEN}", token.len()));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("the token is {} characters, more than {MAX_TOKEN_LEN}", token.len()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be visible ASCII characters without spaces".to_string());
    }
    Ok(())
}

/// `DATA/api.token`.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Read a token file (the node's, or one given to the CLI): at most 4 KiB, surrounding
/// whitespace removed, checked with [`check_token`]. Permissions are not checked here.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let io = |op| move |source| TokenError::Io { op, path: path.to_path_buf(), source };
    let meta = fs::metadata(path).map_err(io("read"))?;
    if meta.len() > MAX_TOKEN_FILE {
        return Err(TokenError::Invalid {
            path: path.into(),
            reason: format!("it is {} bytes, more than a token file can be ({MAX_TOKEN_FILE})", meta.len()),
        });
    }
    let text = fs::read_to_string(path).map_err(io("read"))?;
    let token = text.trim().to_string();
    check_token(&token).map_err(|reason| TokenError::Invalid { path: path.into(), reason })?;
    Ok(token)
}

/// The node's token: read `DATA/api.token` (refusing one that group or others may read or
/// write), or create it with a new random token when it does not exist. Returns the token and
/// whether it was created now.
pub fn load_or_create(data_dir: &Path) -> Result<(ApiToken, bool), TokenError> {
    let path = token_path(data_dir);
    let created = match fs::symlink_metadata(&path) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path)?,
        Err(source) => return Err(TokenError::Io { op: "inspect", path, source }),
    };
    let meta =
        fs::symlink_metadata(&path).map_err(|source| TokenError::Io { op: "inspect", path: path.clone(), source })?;
    if !meta.file_type().is_file() {
        return Err(TokenError::Invalid { path, reason: "it is not a regular file".to_string() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed { path, mode });
    }
    let token = read_token_file(&path)?;
    let token = ApiToken::new(&token).map_err(|reason| TokenError::Invalid { path: path.clone(), reason })?;
    Ok((token.with_submitters(load_submitters(data_dir)?), created))
}

/// The submitter tokens in `DATA/submitters/` (none when the directory does not exist); a file
/// that group or others may read or write, a bad name or a bad token stops the node.
pub fn load_submitters(data_dir: &Path) -> Result<Vec<(Submitter, String)>, TokenError> {
    let dir = data_dir.join(SUBMITTERS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(TokenError::Io { op: "list", path: dir, source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TokenError::Io { op: "list", path: dir.clone(), source })?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".token")) else {
            continue;
        };
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            || name == crate::scheduler::submitters::OPERATOR
        {
            return Err(TokenError::Invalid {
                path,
                reason: "a submitter's name is 1 to 64 of A-Z a-z 0-9 . _ - (and not `operator`)".to_string(),
            });
        }
        let meta =
            fs::metadata(&path).map_err(|source| TokenError::Io { op: "inspect", path: path.clone(), source })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed { path, mode });
        }
        out.push((Submitter(name.into()), read_token_file(&path)?));
        if out.len() > MAX_SUBMITTERS {
            return Err(TokenError::Invalid {
                path: dir,
                reason: format!("more than {MAX_SUBMITTERS} submitter tokens"),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Write a new random token to `path` without ever replacing a file: the token goes to a temp
/// file (mode 0600, synced), which is then hard-linked to `path` (fails if `path` exists: another
/// process won the race, and its token is used; where hard links are not supported, `path` is
/// created directly with `O_EXCL`). Returns whether this call created the file.
fn create(path: &Path) -> Result<bool, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    let token = hex::encode(bytes);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{TOKEN_FILE}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let io = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| TokenError::Io { op, path: p, source }
    };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io("create", &tmp))?;
    let written = f.write_all(format!("{token}\n").as_bytes()).and_then(|()| f.sync_all());
    drop(f);
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(TokenError::Io { op: "write", path: tmp, source });
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // A filesystem without hard links: create the file itself, still never replacing one.
        Err(_) => {
            let opened = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
            let mut f = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(source) => return Err(TokenError::Io { op: "create", path: path.to_path_buf(), source }),
            };
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|source| TokenError::Io { op: "write", path: path.to_path_buf(), source })?;
            Ok(true)
        }
    }
}

/// `POST /api/v1/auth/check`: reached only with the token ([`require_token`] runs first).
pub async fn auth_check() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    Missing,
    Malformed,
    Wrong,
}

/// Check the `Authorization` header(s) of a request against `token`: `Ok(None)` for the
/// operator's token, `Ok(Some(submitter))` for a submitter's.
fn check(headers: &HeaderMap, token: &ApiToken) -> Result<Option<Submitter>, Denied> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(Denied::Missing) };
    if values.next().is_some() {
        return Err(Denied::Malformed);
    }
    let value = value.to_str().map_err(|_| Denied::Malformed)?;
    let (scheme, presented) = value.split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denied::Malformed);
    }
    token.holder(presented.trim()).ok_or(Denied::Wrong)
}

/// Whether a request with this method leaves the node's state alone (and needs no token).
pub fn is_read_only(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The middleware (see the module docs): `GET` and `HEAD` pass, anything else needs the token
/// (a submitter's token: only for an upload or a token check, which then carries the
/// [`Submitter`] in its extensions).
pub async fn require_token(State(token): State<ApiToken>, mut request: Request, next: Next) -> Response {
    if is_read_only(request.method()) {
        return next.run(request).await;
    }
    let denied = match check(request.headers(), &token) {
        Ok(None) => return next.run(request).await,
        Ok(Some(submitter)) => {
            let path = request.uri().path();
            if path == crate::submit::server::SUBMIT_PATH || path == CHECK_PATH {
                request.extensions_mut().insert(submitter);
                return next.run(request).await;
            }
            let message = format!(
                "the token of submitter `{submitter}` may only upload (POST {}); {} {} needs the node's own \
                 token (DATA/{TOKEN_FILE})",
                crate::submit::server::SUBMIT_PATH,
                request.method(),
                crate::http::echo(path)
            );
            drain(request.into_body()).await;
            let mut resp = (StatusCode::FORBIDDEN, Json(serde_json::json!({ "error": message }))).into_response();
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Err(d) => d,
    };
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    tracing::warn!(%method, path = %truncate(&path, 200), reason = ?denied, "refused a request without a valid API token");
    drain(request.into_body()).await;
    unauthorized(denied, &method)
}

/// Where a node's control routes are, for the public listener's refusals (see
/// [`control_elsewhere`]).
#[derive(Debug, Clone)]
pub struct AdminAddress(pub std::sync::Arc<str>);

/// The middleware of the public listener when the node has a separate admin listener
/// (`admin_http`): `GET` and `HEAD` pass; any other method is answered **403** with
/// `{"error": "…", "admin_http": "<addr>"}` naming the admin listener, before the token is looked
/// at and before any handler runs, so the public port changes nothing whoever asks.
pub async fn control_elsewhere(State(admin): State<AdminAddress>, request: Request, next: Next) -> Response {
    if is_read_only(request.method()) {
        return next.run(request).await;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    tracing::info!(%method, path = %truncate(&path, 200), "refused a control request on the public listener");
    drain(request.into_body()).await;
    let message = format!(
        "{method} {} is a control route: this node serves control routes only on its admin listener \
         (`admin_http`, {}), not on this public port; run the command on the node's machine \
         (the CLI finds the admin listener through GET /api/v1/node) or pass --api http://{}",
        crate::http::echo(&path),
        admin.0,
        admin.0
    );
    let mut resp =
        (StatusCode::FORBIDDEN, Json(serde_json::json!({ "error": message, "admin_http": admin.0.as_ref() })))
            .into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn unauthorized(denied: Denied, method: &Method) -> Response {
    let message = match denied {
        Denied::Missing => format!(
            "{method} changes this node's state and needs `Authorization: Bearer <token>`; the token is in \
             the node's DATA/{TOKEN_FILE} (the CLI reads BUILDMESH_TOKEN, --token-file FILE, or the data dir)"
        ),
        Denied::Malformed => {
            "the Authorization header must be exactly one `Bearer <token>` (the node's DATA/api.token)".to_string()
        }
        Denied::Wrong => format!("wrong API token (the node's token is in its DATA/{TOKEN_FILE})"),
    };
    let challenge = match denied {
        Denied::Missing => r#"Bearer realm="buildmesh""#,
        Denied::Malformed => r#"Bearer realm="buildmesh", error="invalid_request""#,
        Denied::Wrong => r#"Bearer realm="buildmesh", error="invalid_token""#,
    };
    let mut resp = (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": message }))).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Read and discard a refused request's body, at most [`DRAIN_LIMIT`] bytes for at most
/// [`DRAIN_TIME`].
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let path = token_path(dir.path());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 2 * TOKEN_BYTES);
        assert!(a.matches(text.trim()));
        let (b, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert!(b.matches(text.trim()));
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "never overwritten");
        let other = tempfile::tempdir().unwrap();
        let (c, _) = load_or_create(other.path()).unwrap();
        assert!(!c.matches(text.trim()), "tokens are random");
    }

    #[test]
    fn exposed_or_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        load_or_create(dir.path()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, TokenError::Exposed { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::remove_file(&path).unwrap();
        fs::write(&path, "short\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, TokenError::Invalid { .. }), "{e}");
        fs::write(&path, "an operator's own token, with spaces").unwrap();
        assert!(load_or_create(dir.path()).is_err());
        fs::write(&path, "  operator-chosen-token-0123456789\n").unwrap();
        let (t, created) = load_or_create(dir.path()).unwrap();
        assert!(!created && t.matches("operator-chosen-token-0123456789"));
    }

    #[test]
    fn submitter_tokens_are_read_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let subs = dir.path().join(SUBMITTERS_DIR);
        assert!(load_submitters(dir.path()).unwrap().is_empty(), "no directory: no submitters");
        fs::create_dir(&subs).unwrap();
        let write = |name: &str, token: &str, mode: u32| {
            let p = subs.join(name);
            fs::write(&p, token).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        write("alice.token", "alice-token-0123456789\n", 0o600);
        write("bob.token", "bob-token-0123456789", 0o600);
        write("README", "not a token", 0o644);
        let (token, _) = load_or_create(dir.path()).unwrap();
        assert_eq!(token.submitter_names(), ["alice", "bob"]);
        let operator = fs::read_to_string(token_path(dir.path())).unwrap();
        assert_eq!(token.holder(operator.trim()), Some(None));
        assert_eq!(token.holder("alice-token-0123456789"), Some(Some(Submitter("alice".into()))));
        assert_eq!(token.holder("carol-token-0123456789"), None);
        write("carol.token", "carol-token-0123456789", 0o640);
        assert!(matches!(load_or_create(dir.path()), Err(TokenError::Exposed { mode: 0o640, .. })));
        fs::remove_file(subs.join("carol.token")).unwrap();
        for bad in ["operator.token", "a b.token", ".token"] {
            write(bad, "some-token-0123456789", 0o600);
            let e = load_submitters(dir.path()).unwrap_err();
            assert!(e.to_string().contains("submitter's name"), "{bad}: {e}");
            fs::remove_file(subs.join(bad)).unwrap();
        }
    }

    #[test]
    fn the_header_is_checked() {
        let token = ApiToken::new("0123456789abcdef0123").unwrap();
        let with = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for v in v {
                h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            check(&h, &token)
        };
        assert_eq!(with(&[]), Err(Denied::Missing));
        assert_eq!(with(&["Bearer 0123456789abcdef0123"]), Ok(None));
        assert_eq!(with(&["bearer 0123456789abcdef0123"]), Ok(None));
        assert_eq!(with(&["Bearer 0123456789abcdef0124"]), Err(Denied::Wrong));
        assert_eq!(with(&["Bearer "]), Err(Denied::Wrong));
        assert_eq!(with(&["Basic 0123456789abcdef0123"]), Err(Denied::Malformed));
        assert_eq!(with(&["0123456789abcdef0123"]), Err(Denied::Malformed));
        assert_eq!(with(&["Bearer 0123456789abcdef0123", "Bearer 0123456789abcdef0123"]), Err(Denied::Malformed));
        assert!(is_read_only(&Method::GET) && is_read_only(&Method::HEAD));
        assert!(!is_read_only(&Method::POST) && !is_read_only(&Method::DELETE) && !is_read_only(&Method::OPTIONS));
    }
}
