//! The frame every page shares: the head (viewport, inline CSS, no outside asset), the navigation,
//! and small pieces the pages reuse (status badges, availability bars, pagers, times).

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The style sheet, inline (the dashboard works offline). Fluid: tables scroll sideways inside
/// their box on a narrow screen, the page never does.
pub const CSS: &str = r#"
:root{--fg:#1b1f24;--mute:#59636e;--bg:#fff;--line:#d1d9e0;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--info:#0969da;--soft:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#24292f;color:#fff;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:.3rem 1rem;align-items:baseline}
header a{color:#fff;text-decoration:none}header a.on{text-decoration:underline}
header .brand{font-weight:700;margin-right:.5rem}
main{max-width:80rem;margin:0 auto;padding:1rem}
h1{font-size:1.4rem;margin:.2rem 0 .8rem;overflow-wrap:anywhere}h2{font-size:1.15rem;margin:1.4rem 0 .5rem}
a{color:var(--info)}
.mute{color:var(--mute)}.error{color:var(--bad);overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--soft);white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font:.85rem ui-monospace,SFMono-Regular,Menlo,monospace;overflow-wrap:anywhere}
.b{display:inline-block;padding:0 .45rem;border-radius:1rem;font-size:.8rem;border:1px solid var(--line);white-space:nowrap}
.succeeded,.matching,.yes,.fixed,.newly-matching{color:var(--ok);border-color:var(--ok)}
.failed,.not-matching,.no,.broken,.newly-not-matching{color:var(--bad);border-color:var(--bad)}
.blocked,.still-failing,.still-not-matching,.single{color:var(--warn);border-color:var(--warn)}
.building,.queued{color:var(--info);border-color:var(--info)}
.bar{background:var(--soft);border:1px solid var(--line);height:.9rem;border-radius:.2rem;min-width:6rem;position:relative}
.bar>span{display:block;height:100%;background:var(--ok);border-radius:.2rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(9rem,1fr));gap:.6rem}
.card{border:1px solid var(--line);border-radius:.4rem;padding:.5rem .7rem}
.card .v{font-size:1.3rem;font-weight:600}
form.filters{display:flex;flex-wrap:wrap;gap:.4rem;align-items:end;margin:.5rem 0}
form.filters label{display:flex;flex-direction:column;font-size:.8rem;color:var(--mute)}
input,select,button{font:inherit;padding:.2rem .4rem;max-width:100%}
.pager{margin:.6rem 0;display:flex;gap:.8rem;flex-wrap:wrap}
.verdict{font-size:1.2rem;font-weight:700}
svg{max-width:100%;height:auto}
"#;

/// The live-update script of pages that change while builds run: every 3 s it fetches the same
/// URL and swaps the page's `#live` element for the new one (no reload; filters in the URL stay).
pub const LIVE_SCRIPT: &str = r#"
(function(){var busy=false;setInterval(function(){if(busy||document.hidden)return;busy=true;
fetch(location.href,{headers:{Accept:'text/html'},cache:'no-store'}).then(function(r){return r.ok?r.text():null})
.then(function(t){if(!t)return;var d=new DOMParser().parseFromString(t,'text/html');var n=d.getElementById('live'),o=document.getElementById('live');
if(n&&o){o.replaceWith(n);var s=document.getElementById('updated');if(s)s.textContent=new Date().toLocaleTimeString();}})
.catch(function(){}).finally(function(){busy=false;});},3000);})();
"#;

/// Which navigation entry is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The overview.
    Overview,
    /// Revisions and revision pages.
    Revisions,
    /// Compare.
    Compare,
    /// Weather.
    Weather,
    /// Reproducibility.
    Reproducibility,
    /// Builders.
    Builders,
    /// None (error pages, derivations, packages).
    None,
}

/// The whole page: head, navigation, `body` in `<main>`; `live` adds [`LIVE_SCRIPT`].
pub fn frame(title: &str, nav: Nav, live: bool, body: Markup) -> Markup {
    let entries = [
        (Nav::Overview, "/", "Overview"),
        (Nav::Revisions, "/revisions", "Revisions"),
        (Nav::Compare, "/compare", "Compare"),
        (Nav::Weather, "/weather", "Weather"),
        (Nav::Reproducibility, "/reproducibility", "Reproducibility"),
        (Nav::Builders, "/builders", "Builders"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · buildmesh" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a.brand href="/" { "buildmesh" }
                    nav {
                        @for (n, href, label) in entries {
                            a.on[n == nav] href=(href) { (label) } " "
                        }
                    }
                }
                main {
                    (body)
                    @if live {
                        p.mute { small { "Updates live; last update " span #updated { "at load" } "." } }
                        script { (PreEscaped(LIVE_SCRIPT)) }
                    }
                }
            }
        }
    }
}

/// A status, verdict or class as a coloured badge (its CSS class is its name).
pub fn badge(s: &str) -> Markup {
    html! { span class={ "b " (s) } { (s) } }
}

/// An availability bar at `ratio` (0..=1) with its percentage.
pub fn bar(ratio: f64) -> Markup {
    let pct = (ratio.clamp(0.0, 1.0) * 100.0).round();
    html! {
        div.bar title={ (pct) " %" } role="img" aria-label={ (pct) " % available" } {
            span style={ "width:" (pct) "%" } {}
        }
    }
}

/// Previous/next links of a table: `href(page)` makes the link of a page.
pub fn pager(page: usize, pages: usize, total: usize, href: impl Fn(usize) -> String) -> Markup {
    let page = page.clamp(1, pages.max(1));
    html! {
        div.pager {
            span.mute { "page " (page) " of " (pages) " (" (total) " rows)" }
            @if page > 1 { a href=(href(1)) { "« first" } a href=(href(page - 1)) { "‹ previous" } }
            @if page < pages { a href=(href(page + 1)) { "next ›" } a href=(href(pages)) { "last »" } }
        }
    }
}

/// A unix-ms time as UTC `YYYY-MM-DD HH:MM:SS` (0 = "-").
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// How long before `now_ms` the time `ms` was, for a person: `12 s ago`, `4 min ago`, `3 h ago`,
/// else the UTC date ([`time`]).
pub fn ago(ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(ms) / 1000;
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7_200 => format!("{} min ago", secs / 60),
        7_200..172_800 => format!("{} h ago", secs / 3600),
        _ => time(ms),
    }
}

/// Howard Hinnant's days-to-civil (the Gregorian date of a day count since 1970-01-01).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A long key or id cut to its first 12 characters (the whole in the `title`).
pub fn short(id: &str) -> Markup {
    let cut: String = id.chars().take(12).collect();
    html! { code title=(id) { (cut) @if id.chars().count() > 12 { "…" } } }
}

/// Bytes as KiB/MiB/GiB.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        x if x >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", x / 1024.0 / 1024.0 / 1024.0),
        x if x >= 1024.0 * 1024.0 => format!("{:.1} MiB", x / 1024.0 / 1024.0),
        x if x >= 1024.0 => format!("{:.1} KiB", x / 1024.0),
        x => format!("{x} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_000), "1970-01-01 00:00:01");
        assert_eq!(time(1_796_515_200_000), "2026-12-06 00:00:00");
    }

    #[test]
    fn ago_is_relative_then_a_date() {
        let now = 1_796_515_200_000;
        assert_eq!(ago(now - 12_000, now), "12 s ago");
        assert_eq!(ago(now + 5_000, now), "0 s ago", "a clock ahead is not the future");
        assert_eq!(ago(now - 600_000, now), "10 min ago");
        assert_eq!(ago(now - 3 * 3_600_000, now), "3 h ago");
        assert_eq!(ago(now - 86_400_000 * 3, now), "2026-12-03 00:00:00");
    }

    #[test]
    fn frame_has_viewport_and_no_outside_asset() {
        let page = frame("t", Nav::Overview, true, html! { p { "x" } }).into_string();
        assert!(page.contains(r#"name="viewport""#));
        assert!(!page.contains("http://") && !page.contains("https://"), "{page}");
        assert!(page.contains(r#"id="live""#) || page.contains("getElementById('live')"));
    }
}
