//! The dashboard (issue 14 items 1, 2, 3, 8, 9) in a real browser: a mesh of three real
//! `buildmesh node` processes builds the two revisions of `tests/fixtures/qa` (one breaks a
//! package and fixes another, two outputs are unreproducible), then Debian's chromium, headless
//! and driven through chromedriver (WebDriver), looks at the pages as a person does: the
//! overview lists the members and the branch; the compare page shows the broken and the fixed
//! package and the ready verdict; the builders page says when each member was last heard; the
//! reproducibility page lists the unreproducible outputs with
//! every builder's NarHash and the diff link; a derivation page shows its attestations and its
//! log link; a revision page shows a build finishing without a reload. Every page's JSON twin
//! parses and says what the API says; the binary-cache routes still answer beside the pages.
//!
//! With `BUILDMESH_SCREENSHOTS=DIR` it also saves screenshots of the main pages (wide and phone
//! width) into DIR (docs/img holds the ones of the docs).

mod mesh_support;
mod qa_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use mesh_support::*;
use qa_support::*;

/// The channel of the test's revisions.
const CHANNEL: &str = "qa";

/// The flags that make headless chromium work as root on this closed network.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromedriver (scripts/install-deps.sh installs chromium-driver)");
    let url = format!("http://127.0.0.1:{port}");
    let d = Driver { child, url };
    wait_for("chromedriver to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    d
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push("--window-size=1280,1000".into());
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session through chromedriver")
}

/// The visible text of the page at `url` (after it loaded).
async fn text_of(c: &Client, url: &str) -> String {
    c.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    c.find(Locator::Css("body")).await.expect("body").text().await.expect("text")
}

/// The rows of the job table of a revision page, as text (empty while it has none).
async fn job_rows(c: &Client) -> String {
    let mut out = String::new();
    for r in c.find_all(Locator::Css("#live table.jobs tbody tr")).await.unwrap_or_default() {
        out.push_str(&r.text().await.unwrap_or_default());
        out.push('\n');
    }
    out
}

/// `revision submit` of `drvs` (their `.drv` files in `from`) as `qa@<commit>` on `branch`.
fn submit_revision(url: &str, from: &Path, branch: &str, commit: &str, drvs: &[String]) {
    let dir = from.display().to_string();
    let mut args = vec!["revision", "submit", "--channel", CHANNEL, "--branch", branch, "--commit", commit];
    args.extend(["--from", dir.as_str(), "--replicas", "2", "--api", url, "--json"]);
    args.extend(drvs.iter().map(String::as_str));
    let (st, out, err) = cli(&args);
    assert!(st.success(), "revision submit {commit}: {out}\n{err}");
}

/// GET `path` as JSON (the twin): status and value.
fn twin(url: &str, path: &str) -> (u16, serde_json::Value) {
    let r = http()
        .get(format!("{url}{path}"))
        .header("accept", "application/json")
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let body = r.bytes().expect("body");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {path} (JSON twin): not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// Wait until node 0 says what the fixture's table says of both revisions (broken and fixed in
/// the compare, the unreproducible outputs not matching, nothing left to build but the job no
/// member can build).
fn wait_built(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let (s, j) = twin(url, "/compare?base=qa@r1&target=qa@r2");
        let summary = &j["compare"]["summary"];
        let done = s == 200
            && summary["broken"] == 1
            && summary["fixed"] == 1
            && summary["still-failing"] == 1
            && summary["newly-not-matching"] == 1
            && summary["still-not-matching"] == 1;
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the mesh did not build both revisions in time: {s} {summary}");
        std::thread::sleep(Duration::from_millis(1000));
    }
}

/// The part `of_page` of a page's JSON twin and the part `of_api` of the API's answer, once they
/// agree (or the last pair after 30 s). Pages are cached for a few seconds (refreshed in the
/// background), and `wait_built` does not wait for every second attestation, so right after it a
/// page may still show the answer from a moment before.
fn agree(
    url: &str,
    page: &str,
    api: &str,
    of_page: impl Fn(&serde_json::Value) -> serde_json::Value,
    of_api: impl Fn(&serde_json::Value) -> serde_json::Value,
) -> (serde_json::Value, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, a) = get_json(&format!("{url}{api}"));
        let (_, p) = twin(url, page);
        let (p, a) = (of_page(&p), of_api(&a));
        if p == a || Instant::now() > deadline {
            return (p, a);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn dashboard_in_a_real_browser() {
    buildmesh_tests::require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let store = QaStore::new(&tmp.path().join("nix"));
    let r1 = store.instantiate(1);
    let r2 = store.instantiate(2);
    let c = Cluster::start(tmp.path(), 3, &[]);
    let url = c.urls[0].clone();
    submit_revision(&url, &store.drv_dir(), "main", "r1", &r1.drvs());
    submit_revision(&url, &store.drv_dir(), "main", "r2", &r2.drvs());
    let t = Instant::now();
    wait_built(&url);
    eprintln!("both revisions built in {:.1} s", t.elapsed().as_secs_f64());

    // Routes beside the pages still answer as before; unknown pages are 404.
    let (s, body) = get(&format!("{url}/nix-cache-info"));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("StoreDir: /nix/store"));
    let hello = r2.pkg("hello").outputs["out"].clone();
    let hash = hello.trim_start_matches("/nix/store/").split('-').next().unwrap();
    let (s, body) = get(&format!("{url}/{hash}.narinfo"));
    assert_eq!(s, 200, "narinfo of {hello}: {}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(&format!("StorePath: {hello}")));
    for path in ["/no-such-page", "/revision/qa@nope", "/drv/00000000000000000000000000000000-x.drv", "/package/nope"] {
        let (s, _) = get(&format!("{url}{path}"));
        assert_eq!(s, 404, "GET {path}");
    }

    // Every page's JSON twin parses; those of an API route say what it says.
    let unrepro_drv = r2.pkg("unrepro").drv.clone();
    let unrepro_base = unrepro_drv.trim_start_matches("/nix/store/").to_string();
    let pages = [
        "/".to_string(),
        "/revisions".to_string(),
        "/revision/qa@r2".to_string(),
        "/revision/qa:main?status=failed".to_string(),
        "/compare?base=qa@r1&target=qa:main".to_string(),
        "/weather?revision=qa@r2".to_string(),
        "/reproducibility?revision=qa@r2".to_string(),
        "/builders".to_string(),
        format!("/drv/{unrepro_base}"),
        "/package/broken".to_string(),
    ];
    for p in &pages {
        let (s, j) = twin(&url, p);
        assert_eq!(s, 200, "GET {p} (JSON): {j}");
        let (s, html) = get(&format!("{url}{p}"));
        assert_eq!(s, 200, "GET {p} (HTML)");
        let html = String::from_utf8_lossy(&html);
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("name=\"viewport\""), "GET {p}: {html}");
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "GET {p} loads an outside asset");
    }
    let (page, api) = agree(
        &url,
        "/revision/qa@r2?status=failed",
        "/api/v1/revisions/qa@r2?status=failed",
        |p| p.clone(),
        |a| a.clone(),
    );
    assert_eq!(page, api, "the revision page's twin is the API's answer");
    let (page, api) = agree(
        &url,
        "/compare?base=qa@r1&target=qa@r2",
        "/api/v1/compare?base=qa@r1&target=qa@r2",
        |p| p["compare"]["summary"].clone(),
        |a| a["summary"].clone(),
    );
    assert_eq!(page, api, "the compare page's twin is the API's answer");
    let (_, page) = twin(&url, "/compare?base=qa@r1&target=qa@r2");
    assert_eq!(page["ready"]["ready"], false, "{}", page["ready"]);
    let (_, page) = twin(&url, "/builders");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let members: Vec<&serde_json::Value> =
        page["peers"].as_array().unwrap().iter().filter(|p| p["member"] == true).collect();
    assert_eq!(members.len(), c.peer_ids.len() - 1, "{}", page["peers"]);
    for p in members {
        let seen = p["last_seen_ms"].as_u64().unwrap_or_else(|| panic!("no last_seen_ms: {p}"));
        assert!(seen <= now_ms && now_ms - seen < 120_000, "heard within the announcement period: {p}");
    }
    let (_, page) = twin(&url, "/reproducibility?revision=qa@r2");
    let listed: Vec<&str> =
        page["not_matching"].as_array().unwrap().iter().filter_map(|n| n["package"].as_str()).collect();
    assert!(listed.contains(&"unrepro") && listed.contains(&"stamp-a"), "{}", page["not_matching"]);

    // The slow build the live update watches: a revision of its own, submitted once the browser
    // shows its page.
    let live_dir = tmp.path().join("live");
    let mut drvs = Drvs::new(&live_dir);
    let (slow, _) = drvs.add("slow-1.0", "sleep 8; echo slow > $out", &[]);
    let slow_drv = sd().display(&slow);

    let driver = start_driver();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let profile = tmp.path().join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    rt.block_on(async {
        let b = browser(&driver, &profile).await;

        // Overview: every member and the branch with its latest revision.
        let text = text_of(&b, &format!("{url}/")).await;
        for peer in &c.peer_ids {
            assert!(text.contains(&peer[..12]), "the overview does not list member {peer}:\n{text}");
        }
        assert!(
            text.contains("main") && text.contains("qa@r2"),
            "the overview does not show branch main at qa@r2:\n{text}"
        );
        assert!(text.contains("unrepro") && text.contains("broken"), "recent problems missing:\n{text}");

        // Builders: every other member with when this node last heard its announcement.
        let text = text_of(&b, &format!("{url}/builders")).await;
        assert!(text.contains("last seen"), "no last seen column:\n{text}");
        let mut seen_cells = Vec::new();
        for cell in b.find_all(Locator::Css("table td.seen")).await.unwrap() {
            seen_cells.push(cell.text().await.unwrap());
        }
        assert_eq!(seen_cells.first().map(String::as_str), Some("now"), "this node: {seen_cells:?}");
        let heard = seen_cells.iter().filter(|t| t.ends_with(" s ago") || t.ends_with(" min ago")).count();
        assert!(heard >= c.peer_ids.len() - 1, "every other member was heard lately: {seen_cells:?}");

        // Compare: the broken and the fixed package, and the verdict.
        let text = text_of(&b, &format!("{url}/compare?base=qa@r1&target=qa@r2&class=broken")).await;
        assert!(text.contains("Ready: no"), "no ready verdict:\n{text}");
        let rows = b.find_all(Locator::Css("table tbody tr")).await.unwrap();
        let mut broken_rows = Vec::new();
        for r in rows {
            broken_rows.push(r.text().await.unwrap());
        }
        assert!(broken_rows.iter().any(|r| r.starts_with("broken") && r.contains("broken")), "{broken_rows:?}");
        let text = text_of(&b, &format!("{url}/compare?base=qa@r1&target=qa@r2&class=fixed")).await;
        assert!(
            text.contains("fixed\tx86_64-linux") || text.contains("fixed x86_64-linux"),
            "no fixed package row:\n{text}"
        );

        // Reproducibility: the unreproducible outputs, each builder's NarHash, the diff link.
        let text = text_of(&b, &format!("{url}/reproducibility?revision=qa@r2")).await;
        for p in ["unrepro", "stamp-a"] {
            assert!(text.contains(p), "{p} is not listed as not matching:\n{text}");
        }
        assert!(text.matches("sha256:").count() >= 4, "fewer than two NarHashes per output:\n{text}");
        let diff = b.find(Locator::LinkText("diff")).await.expect("a diff link");
        let href = diff.attr("href").await.unwrap().unwrap_or_default();
        assert!(href.starts_with("/diff?path=%2Fnix%2Fstore%2F"), "{href}");
        let svg = b.find(Locator::Css("div.chart svg")).await.expect("the trend chart");
        assert!(svg.html(false).await.unwrap().contains("not matching"), "the chart has no legend");

        // A derivation: its attestations by two builders and its log link.
        let text = text_of(&b, &format!("{url}/drv/{unrepro_base}")).await;
        assert!(text.contains("Outputs and attestations") && text.matches("sha256:").count() >= 2, "{text}");
        let log = b.find(Locator::LinkText("The build log")).await.expect("a log link");
        let href = log.attr("href").await.unwrap().unwrap_or_default();
        assert_eq!(href, format!("/api/v1/builds/{unrepro_base}/log"));

        // Live: the page of a revision whose build is running shows it finishing, no reload.
        submit_revision(&url, &live_dir, "live", "l1", std::slice::from_ref(&slow_drv));
        let page = format!("{url}/revision/qa@l1");
        b.goto(&page).await.unwrap();
        let first = job_rows(&b).await;
        assert!(
            first.contains("slow") && !first.contains("succeeded"),
            "the slow build is not shown running:\n{first}"
        );
        b.execute("window.__notReloaded = true; return true;", vec![]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = job_rows(&b).await;
            if text.contains("succeeded") {
                break;
            }
            assert!(Instant::now() < deadline, "the page did not show the build finishing:\n{text}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let marker = b.execute("return window.__notReloaded === true;", vec![]).await.unwrap();
        assert_eq!(marker, serde_json::json!(true), "the page was reloaded");

        if let Ok(dir) = std::env::var("BUILDMESH_SCREENSHOTS") {
            screenshots(&b, &url, Path::new(&dir), &unrepro_base).await;
        }
        b.close().await.unwrap();
    });
}

/// Screenshots of the main pages at a wide and a phone width.
async fn screenshots(b: &Client, url: &str, dir: &Path, drv: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let pages = [
        ("overview", "/".to_string()),
        ("revision", "/revision/qa@r2".to_string()),
        ("compare", "/compare?base=qa@r1&target=qa@r2".to_string()),
        ("weather", "/weather?revision=qa@r2".to_string()),
        ("reproducibility", "/reproducibility?revision=qa@r2".to_string()),
        ("builders", "/builders".to_string()),
        ("drv", format!("/drv/{drv}")),
    ];
    for (width, suffix) in [(1280u32, ""), (412, "-phone")] {
        b.set_window_size(width, 1000).await.unwrap();
        for (name, path) in &pages {
            b.goto(&format!("{url}{path}")).await.unwrap();
            let png = b.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}{suffix}.png")), png).unwrap();
        }
    }
}
