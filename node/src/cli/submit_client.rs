//! The HTTP side of `buildmesh submit`: stream a [`Closure`] to `POST /api/v1/submit`, then
//! (optionally) poll `GET /api/v1/builds/<drv>` until every requested derivation is done or failed.
//!
//! The client is blocking `reqwest` (rustls for `https://` APIs): the command is a short-lived,
//! sequential program, and a blocking [`reqwest::blocking::Body::sized`] body lets the upload be
//! an ordinary [`Read`] chain (header, `.drv` files, NAR files or NARs dumped from the local store
//! on a helper thread) with an exact `Content-Length`, so the node can refuse an oversized upload
//! before reading it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use buildmesh_protocol::store_path::StoreDir;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use thiserror::Error;

use crate::submit::closure::{Closure, NarOrigin};
use crate::submit::wire::{self, DrvEntry, SourceEntry, SubmitHeader};
use crate::submit::{OutputInfo, SubmitError, SubmitResponse};

/// Why talking to the node failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The HTTP request failed (connection refused, reset, timeout, ...).
    #[error("{method} {url}: {source}")]
    Http {
        /// `GET` or `POST`.
        method: &'static str,
        /// The URL.
        url: String,
        /// reqwest's error (its source chain says more).
        source: reqwest::Error,
    },
    /// The node refused the upload.
    #[error("the node rejected the submission ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The node's `error` message.
        message: String,
        /// The store path the error is about, when the node named one.
        path: Option<String>,
    },
    /// The node answered something unexpected.
    #[error("{url}: unexpected answer: {reason}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The upload could not be encoded.
    #[error(transparent)]
    Encode(#[from] SubmitError),
    /// `--timeout` passed before every build finished.
    #[error("gave up after {waited:?}: still waiting for {}", pending.join(", "))]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// The unfinished derivations.
        pending: Vec<String>,
    },
}

/// How to talk to the node.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL of the node's HTTP API, e.g. `http://127.0.0.1:7800`.
    pub api: String,
    /// Priority of the requested builds.
    pub priority: i32,
    /// Independent builders wanted.
    pub replicas: u32,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// The node's API token, sent as `Authorization: Bearer <token>` with the upload
    /// ([`super::token`] finds it).
    pub token: Option<String>,
}

impl ClientOptions {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.api.trim_end_matches('/'), path)
    }
}

/// The header describing `closure`.
pub fn header_for(closure: &Closure, priority: i32, replicas: u32) -> SubmitHeader {
    let sd = &closure.store_dir;
    SubmitHeader {
        version: wire::HEADER_VERSION,
        store_dir: sd.to_string(),
        requested: closure.requested.iter().map(|p| sd.display(p)).collect(),
        priority,
        replicas,
        drvs: closure.drvs.iter().map(|(p, b)| DrvEntry { path: sd.display(p), size: b.len() as u64 }).collect(),
        sources: closure
            .sources
            .values()
            .map(|s| SourceEntry {
                path: sd.display(&s.path),
                nar_hash: s.nar_hash.to_string(),
                nar_size: s.nar_size,
                references: s.references.iter().map(|r| sd.display(r)).collect(),
            })
            .collect(),
    }
}

/// One NAR of the body, opened when the body reaches it.
#[derive(Debug)]
struct PendingNar {
    what: String,
    origin: NarOrigin,
    size: u64,
}

/// The upload body as one [`Read`]: prefix, `.drv` bytes, then each NAR, exactly as declared.
struct UploadBody {
    parts: VecDeque<Part>,
    current: Option<ExactReader>,
    progress: ProgressBar,
}

enum Part {
    Bytes(Vec<u8>),
    Nar(PendingNar),
}

/// Reads exactly `left` bytes from `inner` and fails if it has more or fewer.
struct ExactReader {
    inner: Box<dyn Read + Send>,
    what: String,
    size: u64,
    left: u64,
    dumper: Option<JoinHandle<Result<(), crate::nar_fs::NarFsError>>>,
}

impl ExactReader {
    fn dumper_error(&mut self) -> Option<String> {
        let handle = self.dumper.take()?;
        match handle.join() {
            Ok(Err(e)) => Some(e.to_string()),
            Ok(Ok(())) => None,
            Err(_) => Some("the NAR writer thread panicked".to_string()),
        }
    }
}

impl Read for ExactReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            let extra = loop {
                match self.inner.read(&mut probe) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if extra > 0 {
                return Err(io::Error::other(format!("{} is longer than its NarSize {}", self.what, self.size)));
            }
            if let Some(e) = self.dumper_error() {
                return Err(io::Error::other(format!("{}: {e}", self.what)));
            }
            return Ok(0);
        }
        let want = out.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 && want > 0 {
            let detail = self.dumper_error().map(|e| format!(": {e}")).unwrap_or_default();
            return Err(io::Error::other(format!(
                "{} ended after {} bytes, its NarSize is {}{detail}",
                self.what,
                self.size - self.left,
                self.size
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn open_nar(n: PendingNar) -> io::Result<ExactReader> {
    let (inner, dumper): (Box<dyn Read + Send>, _) = match n.origin {
        NarOrigin::File(path) => (Box::new(File::open(&path)?), None),
        NarOrigin::Dump(path) => {
            let (reader, writer) = io::pipe()?;
            let handle = std::thread::Builder::new().name("nar-dump".into()).spawn(move || {
                crate::nar_fs::dump_path(&path, BufWriter::with_capacity(256 * 1024, writer)).map(|_| ())
            })?;
            (Box::new(reader), Some(handle))
        }
    };
    Ok(ExactReader { inner, what: n.what, size: n.size, left: n.size, dumper })
}

impl Read for UploadBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(cur) = self.current.as_mut() {
                let n = cur.read(out)?;
                if n > 0 {
                    self.progress.inc(n as u64);
                    return Ok(n);
                }
                self.current = None;
            }
            match self.parts.pop_front() {
                None => return Ok(0),
                Some(Part::Bytes(b)) => {
                    let size = b.len() as u64;
                    self.current = Some(ExactReader {
                        inner: Box::new(io::Cursor::new(b)),
                        what: "header".to_string(),
                        size,
                        left: size,
                        dumper: None,
                    });
                }
                Some(Part::Nar(n)) => {
                    let what = n.what.clone();
                    self.current = Some(open_nar(n).map_err(|e| io::Error::other(format!("opening {what}: {e}")))?);
                }
            }
        }
    }
}

fn bar(progress: bool, len: u64, template: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn http_client(timeout: Option<Duration>) -> Result<reqwest::blocking::Client, ClientError> {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| ClientError::Http { method: "build", url: String::new(), source })
}

#[derive(Deserialize)]
struct ErrorJson {
    error: String,
    #[serde(default)]
    path: Option<String>,
}

/// Before a body the node would not read to its end when refusing it: ask the node whether the
/// token is right (`POST /api/v1/auth/check`), so a 401 is reported as such.
fn check_token(client: &reqwest::blocking::Client, opts: &ClientOptions) -> Result<(), ClientError> {
    let url = opts.url(crate::http::auth::CHECK_PATH);
    let mut request = client.post(&url);
    if let Some(token) = &opts.token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().map_err(|source| ClientError::Http { method: "POST", url: url.clone(), source })?;
    let status = resp.status().as_u16();
    if status != 401 {
        return Ok(());
    }
    let bytes = resp.bytes().map_err(|source| ClientError::Http { method: "POST", url: url.clone(), source })?;
    let message = serde_json::from_slice::<ErrorJson>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
    let message = message + super::token::hint(status, opts.token.is_some());
    Err(ClientError::Rejected { status, message, path: None })
}

/// Upload `closure` (blocking). Returns the node's answer once it has accepted the whole closure.
pub fn upload(closure: &Closure, opts: &ClientOptions) -> Result<SubmitResponse, ClientError> {
    let sd = &closure.store_dir;
    let header = header_for(closure, opts.priority, opts.replicas);
    let total = header.body_len()?;
    let mut parts = VecDeque::new();
    let mut prefix = header.encode_prefix()?;
    for b in closure.drvs.values() {
        prefix.extend_from_slice(b);
    }
    parts.push_back(Part::Bytes(prefix));
    for s in closure.sources.values() {
        parts.push_back(Part::Nar(PendingNar {
            what: format!("NAR of {}", sd.display(&s.path)),
            origin: s.origin.clone(),
            size: s.nar_size,
        }));
    }
    let progress = bar(opts.progress, total, "uploading [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}");
    let body = UploadBody { parts, current: None, progress: progress.clone() };
    let url = opts.url(crate::submit::server::SUBMIT_PATH);
    let client = http_client(None)?;
    if total > crate::http::auth::DRAIN_LIMIT {
        check_token(&client, opts)?;
    }
    let mut request = client.post(&url).header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE);
    if let Some(token) = &opts.token {
        request = request.bearer_auth(token);
    }
    let resp = request.body(reqwest::blocking::Body::sized(body, total)).send().map_err(|source| ClientError::Http {
        method: "POST",
        url: url.clone(),
        source,
    });
    progress.finish_and_clear();
    let resp = resp?;
    let status = resp.status();
    let bytes = resp.bytes().map_err(|source| ClientError::Http { method: "POST", url: url.clone(), source })?;
    if !status.is_success() {
        let (message, path) = match serde_json::from_slice::<ErrorJson>(&bytes) {
            Ok(e) => (e.error, e.path),
            Err(_) => (String::from_utf8_lossy(&bytes).trim().to_string(), None),
        };
        let message = message + super::token::hint(status.as_u16(), opts.token.is_some());
        return Err(ClientError::Rejected { status: status.as_u16(), message, path });
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse { url, reason: e.to_string() })
}

/// One build object of the JSON API (the fields the client uses).
#[derive(Debug, Clone, Deserialize)]
pub struct BuildJson {
    /// The `.drv` path (absolute, or a base name).
    pub drv: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Registered outputs.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputInfo>,
}

/// What [`wait`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitResult {
    /// Requested derivations that are built: drv -> output name -> output.
    pub done: BTreeMap<String, BTreeMap<String, OutputInfo>>,
    /// Requested derivations that failed (or whose input failed): drv -> why.
    pub failed: BTreeMap<String, String>,
}

/// Percent-encode everything outside RFC 3986's unreserved set (for a path segment).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn get_json<T: for<'de> Deserialize<'de>>(
    client: &reqwest::blocking::Client,
    url: &str,
) -> Result<Option<T>, ClientError> {
    let resp = client.get(url).send().map_err(|source| ClientError::Http { method: "GET", url: url.into(), source })?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let status = resp.status();
    let bytes = resp.bytes().map_err(|source| ClientError::Http { method: "GET", url: url.into(), source })?;
    if !status.is_success() {
        return Err(ClientError::BadResponse {
            url: url.into(),
            reason: format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()),
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ClientError::BadResponse { url: url.into(), reason: e.to_string() })
}

fn absolute(sd: &StoreDir, drv: &str) -> String {
    if drv.starts_with('/') { drv.to_string() } else { format!("{sd}/{drv}") }
}

/// Poll the node until every requested derivation of `closure` is done or failed. A requested
/// derivation also counts as failed as soon as one of its input derivations failed or was
/// cancelled. Requested derivations the node reported as already built are taken from
/// `accepted`.
pub fn wait(
    closure: &Closure,
    accepted: &SubmitResponse,
    opts: &ClientOptions,
    poll_interval: Duration,
    timeout: Option<Duration>,
) -> Result<WaitResult, ClientError> {
    let sd = &closure.store_dir;
    let client = http_client(Some(Duration::from_secs(60)))?;
    let mut result = WaitResult::default();
    let mut pending: Vec<(String, BTreeSet<String>)> = Vec::new();
    for p in &closure.requested {
        let full = sd.display(p);
        if let Some(outs) = accepted.outputs.get(&full) {
            result.done.insert(full, outs.clone());
        } else {
            let inputs = closure.inputs_closure(p).iter().map(|i| sd.display(i)).collect();
            pending.push((full, inputs));
        }
    }
    let progress = bar(opts.progress, closure.requested.len() as u64, "building [{bar:40}] {pos}/{len} {msg}");
    progress.set_position(result.done.len() as u64);
    // On a mesh node a local build being done is not the end: the outputs count only once the
    // quorum accepts them (the node then serves their narinfos); when it does not (builders
    // disagree, too few trusted builders), the node records the build as failed with the reason.
    let mesh = get_json::<serde_json::Value>(&client, &opts.url("/api/v1/mesh"))?.is_some();
    let start = Instant::now();
    let mut interval = poll_interval.min(Duration::from_millis(200));
    while !pending.is_empty() {
        // Failed or cancelled builds anywhere in the closures.
        let mut broken: BTreeMap<String, String> = BTreeMap::new();
        for state in ["failed", "cancelled"] {
            let url = opts.url(&format!("/api/v1/builds?state={state}"));
            for b in get_json::<Vec<BuildJson>>(&client, &url)?.unwrap_or_default() {
                let why = b.error.clone().unwrap_or_else(|| state.to_string());
                broken.insert(absolute(sd, &b.drv), format!("{state}: {why}"));
            }
        }
        let mut still = Vec::new();
        let mut running = 0usize;
        for (drv, inputs) in pending {
            let basename = drv.rsplit('/').next().unwrap_or(&drv);
            let url = opts.url(&format!("/api/v1/builds/{}", encode_segment(basename)));
            let build: Option<BuildJson> = get_json(&client, &url)?;
            if let Some(b) = build {
                match b.state.as_str() {
                    "done" if mesh && !outputs_served(&client, opts, &b.outputs)? => {}
                    "done" => {
                        result.done.insert(drv, b.outputs);
                        progress.inc(1);
                        continue;
                    }
                    state @ ("failed" | "cancelled") => {
                        let why = b.error.clone().unwrap_or_else(|| state.to_string());
                        result.failed.insert(drv, format!("{state}: {why}"));
                        progress.inc(1);
                        continue;
                    }
                    "running" => running += 1,
                    _ => {}
                }
            }
            if let Some((input, why)) = inputs.iter().find_map(|i| broken.get(i).map(|w| (i, w))) {
                result.failed.insert(drv, format!("input derivation {input} {why}"));
                progress.inc(1);
                continue;
            }
            still.push((drv, inputs));
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        progress.set_message(format!("{running} running, {} waiting", pending.len() - running));
        if let Some(limit) = timeout
            && start.elapsed() >= limit
        {
            progress.finish_and_clear();
            return Err(ClientError::Timeout {
                waited: start.elapsed(),
                pending: pending.into_iter().map(|(d, _)| d).collect(),
            });
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(poll_interval.max(Duration::from_millis(10)));
    }
    progress.finish_and_clear();
    Ok(result)
}

/// Whether the node serves the narinfo of every output (on a mesh node: the quorum accepts it).
fn outputs_served(
    client: &reqwest::blocking::Client,
    opts: &ClientOptions,
    outputs: &BTreeMap<String, OutputInfo>,
) -> Result<bool, ClientError> {
    for o in outputs.values() {
        let base = o.path.rsplit('/').next().unwrap_or(&o.path);
        let Some(hash_part) = base.get(..32) else { return Ok(false) };
        let url = opts.url(&format!("/{hash_part}.narinfo"));
        let resp = client.head(&url).send().map_err(|source| ClientError::Http { method: "HEAD", url, source })?;
        if !resp.status().is_success() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The `--wait --json` document: `{"<drv>": {"<output>": {"path", "nar_hash", "nar_size"}}}`.
pub fn outputs_json(done: &BTreeMap<String, BTreeMap<String, OutputInfo>>) -> serde_json::Value {
    serde_json::to_value(done).unwrap_or(serde_json::Value::Null)
}

/// Where the files of a closure come from, for a summary line.
pub fn describe(closure: &Closure) -> String {
    let files = closure.sources.values().filter(|s| matches!(s.origin, NarOrigin::File(_))).count();
    format!(
        "{} derivation(s) requested, {} .drv file(s), {} source(s) ({} from NAR files), {} bytes",
        closure.requested.len(),
        closure.drvs.len(),
        closure.sources.len(),
        files,
        closure.payload_bytes()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("abc-x.drv"), "abc-x.drv");
        assert_eq!(encode_segment("q-name?x=1+y.drv"), "q-name%3Fx%3D1%2By.drv");
    }
}
