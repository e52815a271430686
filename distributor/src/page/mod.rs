//! The fleet page: server-rendered HTML with SVG charts, kept live by a little plain JavaScript
//! (fleet.js) that polls `GET /api/v1/fleet`. Nothing is fetched from anywhere else. Every value
//! the script updates carries a JSON pointer into that document (`data-f` and friends), so the
//! HTML is rendered here only, once.

use std::fmt::Write;

use crate::stats::Window;
use crate::view::{EdgeView, FleetView, JobView, RegionView};

const SCRIPT: &str = include_str!("fleet.js");
const STYLE: &str = include_str!("style.css");

/// HTML-escapes text for an element or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON pointer token (RFC 6901), HTML-escaped for an attribute.
fn token(s: &str) -> String {
    esc(&s.replace('~', "~0").replace('/', "~1"))
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.1} %", v * 100.0))
}

pub fn bytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut x, mut i) = (v as f64, 0);
    while x >= 1024.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v} B")
    } else {
        format!("{x:.1} {}", UNITS[i])
    }
}

/// A text cell kept live: `data-f` relative to the row's pointer.
fn cell(out: &mut String, field: &str, fmt: &str, text: &str) {
    let _ = write!(out, r#"<td class="n" data-f="{field}" data-fmt="{fmt}">{}</td>"#, esc(text));
}

/// A horizontal bar of `ratio` (0..1) on a track, `width` pixels wide.
fn bar(out: &mut String, field: &str, ratio: Option<f64>, width: u32) {
    let w = ratio.unwrap_or(0.0).clamp(0.0, 1.0) * f64::from(width);
    let _ = write!(
        out,
        r#"<svg width="{width}" height="10" role="img"><rect class="track" width="{width}" height="10"/><rect class="fill" data-w="{field}" data-max="{width}" width="{w:.1}" height="10"/></svg>"#
    );
}

/// Bytes served by tier as one stacked bar.
fn tiers(out: &mut String, prefix: &str, w: &Window, width: u32) {
    let _ = write!(out, r#"<svg class="stack" width="{width}" height="10" role="img">"#);
    let mut x = 0.0;
    for (tier, share) in [("memory", w.bytes_memory), ("disk", w.bytes_disk), ("upstream", w.bytes_upstream)] {
        let part = share.unwrap_or(0.0) * f64::from(width);
        // Drawn from the left in this order; fleet.js moves each segment after the ones before.
        let _ = write!(
            out,
            r#"<rect class="{tier}" x="{x:.1}" width="{part:.1}" height="10" data-w="{prefix}/bytes_{tier}" data-max="{width}"/>"#
        );
        x += part;
    }
    out.push_str("</svg>");
}

fn chart(out: &mut String, ratios: &[Option<f64>]) {
    let (width, height, slot) = (240.0, 48.0, 20.0);
    let _ = write!(
        out,
        r#"<svg width="{width}" height="{height}" role="img" aria-label="hit ratio per 5 minutes, last hour"><rect class="track" width="{width}" height="{height}"/>"#
    );
    for (i, r) in ratios.iter().enumerate() {
        let h = r.unwrap_or(0.0).clamp(0.0, 1.0) * height;
        let _ = write!(
            out,
            r#"<rect class="fill" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" data-bar="/hit_ratio_chart/{i}" data-height="{height}"/>"#,
            i as f64 * slot + 1.0,
            height - h,
            slot - 2.0
        );
    }
    out.push_str("</svg>");
}

fn summary(out: &mut String, r: &RegionView) {
    out.push_str(r#"<div class="summary"><dl>"#);
    for (label, field, value) in [
        ("hit ratio, 5 min", "/window_5m/hit_ratio", r.window_5m.hit_ratio),
        ("hit ratio, 1 h", "/window_1h/hit_ratio", r.window_1h.hit_ratio),
        ("origin offload, 5 min", "/window_5m/origin_offload", r.window_5m.origin_offload),
        ("origin offload, 1 h", "/window_1h/origin_offload", r.window_1h.origin_offload),
    ] {
        let _ = write!(out, r#"<dt>{label}</dt><dd data-f="{field}" data-fmt="pct">{}</dd>"#, pct(value));
    }
    let _ = write!(
        out,
        r#"<dt>served, 1 h</dt><dd data-f="/window_1h/bytes_served" data-fmt="bytes">{}</dd></dl><div><div class="muted">hit ratio, last hour</div>"#,
        bytes(r.window_1h.bytes_served)
    );
    chart(out, &r.hit_ratio_chart);
    out.push_str(r#"</div><div><div class="muted">most pulled, last hour</div><ol class="top">"#);
    for (i, p) in r.top.iter().enumerate().take(10) {
        let _ = write!(
            out,
            r#"<li><span data-f="/top/{i}/name">{}</span> <span class="muted" data-f="/top/{i}/count">{}</span></li>"#,
            esc(&p.name),
            p.count
        );
    }
    if r.top.is_empty() {
        out.push_str(r#"<li class="muted">no pulls reported</li>"#);
    }
    out.push_str("</ol></div></div>");
}

fn edge_row(out: &mut String, region: &str, id: &str, e: &EdgeView) {
    let _ = write!(
        out,
        r#"<tr data-p="/regions/{}/edges/{}" data-edge="{}"><td>{}</td>"#,
        token(region),
        token(id),
        esc(id),
        esc(id)
    );
    let _ = write!(
        out,
        r#"<td><span class="state {0}" data-cls="/state" data-base="state" data-f="/state" title="{1}">{0}</span> <span class="muted" data-f="/reason">{1}</span></td>"#,
        e.state,
        esc(e.reason.as_deref().unwrap_or_default())
    );
    cell(out, "/applied_version", "text", &e.applied_version.to_string());
    cell(out, "/lag", "text", &e.lag.to_string());
    cell(out, "/last_report_seconds", "secs", &format!("{:.0} s", e.last_report_seconds));
    cell(out, "/window_5m/hit_ratio", "pct", &pct(e.window_5m.hit_ratio));
    cell(out, "/window_1h/hit_ratio", "pct", &pct(e.window_1h.hit_ratio));
    for (prefix, window) in [("/window_5m", &e.window_5m), ("/window_1h", &e.window_1h)] {
        out.push_str("<td>");
        tiers(out, prefix, window, 90);
        out.push_str("</td>");
    }
    cell(out, "/window_5m/origin_offload", "pct", &pct(e.window_5m.origin_offload));
    cell(out, "/window_1h/origin_offload", "pct", &pct(e.window_1h.origin_offload));
    out.push_str(r#"<td class="n">"#);
    bar(out, "/disk_ratio", e.disk_ratio, 60);
    let _ = write!(
        out,
        r#" <span data-f="/cache_used_bytes" data-fmt="bytes">{}</span> / <span data-f="/cache_max_bytes" data-fmt="bytes">{}</span></td>"#,
        bytes(e.cache_used_bytes),
        bytes(e.cache_max_bytes)
    );
    cell(out, "/fills_in_flight", "text", &e.fills_in_flight.to_string());
    cell(out, "/window_5m/errors", "text", &e.window_5m.errors.to_string());
    out.push_str("</tr>");
}

fn region(out: &mut String, name: &str, r: &RegionView) {
    let _ = write!(
        out,
        r#"<section class="region" data-p="/regions/{}" data-region="{}"><h2>{}</h2>"#,
        token(name),
        esc(name),
        esc(name)
    );
    summary(out, r);
    out.push_str(
        r#"<table><thead><tr><th>edge</th><th>state</th><th>policy</th><th>lag</th><th>last report</th><th>hit 5 min</th><th>hit 1 h</th><th>bytes by tier, 5 min</th><th>bytes by tier, 1 h</th><th>offload 5 min</th><th>offload 1 h</th><th>disk</th><th>fills</th><th>errors 5 min</th></tr></thead><tbody>"#,
    );
    for (id, e) in &r.edges {
        edge_row(out, name, id, e);
    }
    out.push_str("</tbody></table></section>");
}

fn job_row(out: &mut String, i: usize, j: &JobView) {
    let _ = write!(
        out,
        r#"<tr data-p="/jobs/{i}" data-job="{}"><td>{}</td><td>{}</td><td>{}</td>"#,
        esc(&j.id),
        esc(&j.id),
        esc(&j.images.join(", ")),
        esc(&if j.regions.is_empty() { "all".to_owned() } else { j.regions.join(", ") })
    );
    let state = serde_json::to_value(j.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let _ = write!(
        out,
        r#"<td><span class="state {state}" data-cls="/state" data-base="state" data-f="/state">{state}</span></td><td>"#
    );
    bar(out, "/progress", Some(j.progress), 120);
    let _ = write!(
        out,
        r#" <span data-f="/progress" data-fmt="pct">{}</span> <span class="muted">(<span data-f="/blobs_done">{}</span>/<span data-f="/blobs_total">{}</span> blobs)</span></td></tr>"#,
        pct(Some(j.progress)),
        j.blobs_done,
        j.blobs_total
    );
}

/// The whole page.
pub fn render(view: &FleetView) -> String {
    let mut out = String::with_capacity(4096 + 1500 * view.regions.values().map(|r| r.edges.len()).sum::<usize>());
    let edges: usize = view.regions.values().map(|r| r.edges.len()).sum();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en" data-layout="{}"><head><meta charset="utf-8"><title>Berth fleet</title><meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body><header><h1>Berth fleet</h1><span>{} regions, {edges} edges</span><span>policy version <b data-f="/log_version">{}</b></span><span class="legend">bytes by tier:<span class="memory"></span>memory<span class="disk"></span>disk<span class="upstream"></span>upstream</span><form method="post" action="/logout"><button>Log out</button></form></header>"#,
        view.layout,
        view.regions.len(),
        view.log_version
    );
    for (name, r) in &view.regions {
        region(&mut out, name, r);
    }
    if view.regions.is_empty() {
        out.push_str(r#"<p class="muted">No edge has reported yet.</p>"#);
    }
    out.push_str(r#"<h2>Prefetch jobs</h2><table><thead><tr><th>job</th><th>images</th><th>regions</th><th>state</th><th>progress</th></tr></thead><tbody>"#);
    for (i, j) in view.jobs.iter().enumerate() {
        job_row(&mut out, i, j);
    }
    out.push_str(r#"</tbody></table><h2>Recent invalidations</h2><table><thead><tr><th>version</th><th>kind</th><th>target</th><th>regions</th></tr></thead><tbody>"#);
    for inv in &view.invalidations {
        let regions = if inv.regions.is_empty() { "all".to_owned() } else { inv.regions.join(", ") };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            inv.version,
            inv.kind,
            esc(&inv.target),
            esc(&regions)
        );
    }
    let _ = write!(out, "</tbody></table><script>{SCRIPT}</script></body></html>");
    out
}

/// The login form, with a message after a failed attempt.
pub fn login(message: Option<&str>) -> String {
    let message = message.map(|m| format!(r#"<p class="error">{}</p>"#, esc(m))).unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Berth fleet: log in</title><style>{STYLE}</style></head><body><form class="login" method="post" action="/login"><h1>Berth fleet</h1>{message}<label for="token">Admin token</label><input id="token" name="token" type="password" autocomplete="current-password" autofocus required><button type="submit">Log in</button></form></body></html>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_escape_and_format() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(token("a/b~c"), "a~1b~0c");
        assert_eq!(pct(Some(0.6666)), "66.7 %");
        assert_eq!(pct(None), "–");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
