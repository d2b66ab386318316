//! How the commands that change a node's state (`submit`, `retry`, `cancel`) find the node's API
//! token ([`crate::http::auth`]), first match wins:
//!
//! 1. `--token-file FILE` (or `$BUILDMESH_TOKEN_FILE`);
//! 2. `$BUILDMESH_TOKEN`, the token itself;
//! 3. `--data-dir DIR`: the node's data dir, `DIR/api.token`;
//! 4. `--config FILE` (or `$BUILDMESH_CONFIG`): the node's config, the `api.token` of its
//!    `data_dir`;
//! 5. when `--api` is on this machine (a loopback address or `localhost`): the `api.token` of the
//!    default data dir (`$XDG_DATA_HOME/buildmesh`, `~/.local/share/buildmesh`), then of
//!    `/var/lib/buildmesh` (the systemd unit's), the first that can be read.
//!
//! A source named explicitly (1 to 4) that cannot be read is an error; with none of them, the
//! request goes without a token and a node answers 401.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::http::auth;

/// The environment variable holding the token itself.
pub const TOKEN_ENV: &str = "BUILDMESH_TOKEN";
/// Where a node installed with the systemd unit keeps its data.
pub const SYSTEM_DATA_DIR: &str = "/var/lib/buildmesh";

/// Where to find the node's API token (see the module docs for the order).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenArgs {
    /// A file holding the node's API token (a copy of the node's DATA/api.token). The token itself
    /// can be given in $BUILDMESH_TOKEN instead.
    #[arg(long, env = "BUILDMESH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The node's data dir, to read its api.token (when the node runs on this machine).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's TOML config, to read the api.token of its data_dir.
    #[arg(long, env = "BUILDMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TokenArgs {
    /// The token for requests to the node at `api`, or `None` when there is none to send.
    pub fn resolve(&self, api: &str) -> anyhow::Result<Option<String>> {
        if let Some(file) = &self.token_file {
            return read(file, "--token-file").map(Some);
        }
        if let Some(t) = std::env::var_os(TOKEN_ENV).filter(|t| !t.is_empty()) {
            let t = t.into_string().map_err(|_| anyhow::anyhow!("${TOKEN_ENV} is not valid UTF-8"))?;
            let t = t.trim().to_string();
            auth::check_token(&t).map_err(|e| anyhow::anyhow!("${TOKEN_ENV}: {e}"))?;
            return Ok(Some(t));
        }
        if let Some(dir) = &self.data_dir {
            return read(&auth::token_path(dir), "the node's --data-dir").map(Some);
        }
        if let Some(config) = &self.config {
            let c = crate::config::Config::from_file(config)?;
            return read(&auth::token_path(&c.data_dir), &format!("the data_dir of config {}", config.display()))
                .map(Some);
        }
        if !is_local(api) {
            return Ok(None);
        }
        for dir in [crate::config::default_data_dir(), PathBuf::from(SYSTEM_DATA_DIR)] {
            let path = auth::token_path(&dir);
            match auth::read_token_file(&path) {
                Ok(t) => {
                    tracing::debug!(file = %path.display(), "using the API token of the local node");
                    return Ok(Some(t));
                }
                Err(e) => tracing::debug!(cause = %e, "no API token here"),
            }
        }
        Ok(None)
    }
}

fn read(path: &Path, from: &str) -> anyhow::Result<String> {
    auth::read_token_file(path).with_context(|| format!("reading the API token ({from})"))
}

/// Whether the API URL names this machine: a loopback IP address or `localhost`.
pub fn is_local(api: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(api) else { return false };
    let Some(host) = url.host_str() else { return false };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A hint for a failed state-changing request: what to do when the node wants a token.
pub fn hint(status: u16, sent_token: bool) -> &'static str {
    match (status, sent_token) {
        (401, false) => {
            " (this needs the node's API token: set BUILDMESH_TOKEN, or pass --token-file FILE, --data-dir DIR \
             or --config FILE of the node)"
        }
        (401, true) => " (the token given is not this node's: it is in the node's DATA/api.token)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_urls() {
        assert!(is_local("http://127.0.0.1:7800"));
        assert!(is_local("http://127.1.2.3:7800/"));
        assert!(is_local("http://localhost:7800"));
        assert!(is_local("http://[::1]:7800"));
        assert!(!is_local("http://192.0.2.1:7800"));
        assert!(!is_local("http://node.example.org:7800"));
        assert!(!is_local("not a url"));
    }

    #[test]
    fn explicit_sources_win_and_must_be_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = auth::load_or_create(dir.path()).unwrap();
        let token = std::fs::read_to_string(auth::token_path(dir.path())).unwrap().trim().to_string();
        let args = TokenArgs { data_dir: Some(dir.path().into()), ..TokenArgs::default() };
        assert_eq!(args.resolve("http://192.0.2.1:1").unwrap(), Some(token.clone()));
        let args = TokenArgs { token_file: Some(auth::token_path(dir.path())), ..TokenArgs::default() };
        assert_eq!(args.resolve("http://192.0.2.1:1").unwrap(), Some(token.clone()));
        let config = dir.path().join("c.toml");
        std::fs::write(&config, format!("data_dir = {:?}\n", dir.path().display().to_string())).unwrap();
        let args = TokenArgs { config: Some(config), ..TokenArgs::default() };
        assert_eq!(args.resolve("http://192.0.2.1:1").unwrap(), Some(token));
        let args = TokenArgs { data_dir: Some(dir.path().join("missing")), ..TokenArgs::default() };
        let e = format!("{:#}", args.resolve("http://127.0.0.1:1").unwrap_err());
        assert!(e.contains("--data-dir") && e.contains("api.token"), "{e}");
    }
}
