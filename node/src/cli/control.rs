//! Where to send a control request (anything but `GET`/`HEAD`): a node may serve its control
//! routes on a separate admin listener (`admin_http`), which `GET /api/v1/node` names.
//!
//! [`control_api`] asks the node at `--api` once and answers the admin listener's URL when the
//! node has a separate one that this machine can reach (the `--api` host is this machine, or the
//! admin address is not a loopback address); otherwise `--api` itself, whose refusal (403) then
//! says where the control routes are. A node that does not answer, or an older one without the
//! field, keeps `--api`.

use std::net::SocketAddr;
use std::time::Duration;

/// The base URL for control requests to the node at `api` (see the module docs).
pub fn control_api(api: &str) -> String {
    let api = api.trim_end_matches('/').to_string();
    let Some((admin, http)) = advertised(&api) else { return api };
    if admin == http {
        return api;
    }
    let reachable = !admin.ip().is_loopback() || crate::cli::token::is_local(&api);
    if !reachable {
        return api;
    }
    let host = if admin.ip().is_unspecified() {
        match reqwest::Url::parse(&api).ok().and_then(|u| u.host_str().map(str::to_string)) {
            Some(h) => h,
            None => return api,
        }
    } else if admin.is_ipv6() {
        format!("[{}]", admin.ip())
    } else {
        admin.ip().to_string()
    };
    let url = format!("http://{host}:{}", admin.port());
    tracing::debug!(api, admin = %url, "control requests go to the node's admin listener");
    url
}

/// `(admin_http, http)` of the node at `api`, when it says.
fn advertised(api: &str) -> Option<(SocketAddr, SocketAddr)> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().ok()?;
    let text = client.get(format!("{api}/api/v1/node")).send().ok()?.text().ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let admin = v.get("admin_http")?.as_str()?.parse().ok()?;
    let http = v.get("http")?.as_str()?.parse().ok()?;
    Some((admin, http))
}
