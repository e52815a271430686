//! A lazy puller's read of a cold layer: a 64 KiB range near the end of a 100 MiB blob nobody
//! has pulled, through the edge, against the same range straight from the origin. Each trial
//! pushes a fresh blob; the origin's own time to first byte is measured on it first.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::load::Conn;
use crate::peers;
use crate::push::{random, Pusher};
use crate::report::{f1, Table};

const RANGE: u64 = 64 << 10;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(edge_binary: &Path, work: &Path, blob_mib: u64, trials: usize) -> Result<String> {
    let mut origin = peers::origin(&work.join("origin"))?;
    peers::wait_ready(&mut origin).await?;
    let mut edge = peers::berth(&work.join("berth"), edge_binary, origin.addr, 8 << 30, 256 << 20)?;
    peers::wait_ready(&mut edge).await?;
    let pusher = Pusher::new(&origin.url());
    let len = blob_mib << 20;
    let (first, last) = (len - 2 * RANGE, len - RANGE - 1);
    let range = format!("bytes={first}-{last}");
    let (mut origin_ttfb, mut edge_ttfb, mut edge_total, mut origin_total) = (vec![], vec![], vec![], vec![]);
    for _ in 0..trials {
        let digest = pusher.blob("bench/range", random(len as usize)).await?;
        let path = format!("/v2/bench/range/blobs/{digest}");
        let mut direct = Conn::connect(origin.addr).await?;
        let o = direct.get_with(&path, &[("Range", &range)], None).await?;
        let mut client = Conn::connect(edge.addr).await?;
        let e = client.get_with(&path, &[("Range", &range)], None).await?;
        if o.status != 206 || e.status != 206 || e.bytes != RANGE {
            bail!("range answers: origin {} ({} bytes), edge {} ({} bytes)", o.status, o.bytes, e.status, e.bytes);
        }
        origin_ttfb.push(ms(o.first_byte));
        origin_total.push(ms(o.total));
        edge_ttfb.push(ms(e.first_byte));
        edge_total.push(ms(e.total));
    }
    let mut t = Table::new(
        &format!("Cold range near the end of a {blob_mib} MiB blob"),
        &format!(
            "{trials} trials, a fresh blob each; a 64 KiB range ({range} of {len}) requested of the origin, then of the edge (which has never seen the blob: the range starts its fill). Medians in ms; first byte of the body, and the complete range (the edge sends its last byte once the whole blob is fetched and verified)."
        ),
        &["measure", "origin", "Berth"],
    );
    t.row(vec!["time to first byte".into(), f1(median(&mut origin_ttfb)), f1(median(&mut edge_ttfb))]);
    t.row(vec!["whole range".into(), f1(median(&mut origin_total)), f1(median(&mut edge_total))]);
    Ok(t.markdown())
}
