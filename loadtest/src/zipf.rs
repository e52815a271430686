//! A Zipf-popularity pull workload: some images are pulled far more than others, as in a real
//! fleet, over a working set larger than the cache.

use std::net::SocketAddr;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::load::Conn;
use crate::push::{Image, OCI_MANIFEST};

/// Samples ranks 0..n with probability proportional to 1/(rank+1)^s.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights.iter().map(|w| {
            acc += w / total;
            acc
        });
        Zipf { cdf: cdf.collect() }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let x: f64 = rng.gen();
        self.cdf.partition_point(|c| *c < x).min(self.cdf.len() - 1)
    }
}

/// The sequence of image indexes to pull (the same for every peer).
pub fn schedule(images: usize, pulls: usize, s: f64, seed: u64) -> Vec<usize> {
    let zipf = Zipf::new(images, s);
    let mut rng = StdRng::seed_from_u64(seed);
    (0..pulls).map(|_| zipf.sample(&mut rng)).collect()
}

/// Pulls (manifest by tag, then every blob) following `schedule` with `workers` connections.
/// Returns (requests, bytes served, failures).
pub async fn run(
    addr: SocketAddr,
    images: &[Image],
    schedule: &[usize],
    workers: usize,
) -> Result<(usize, u64, usize)> {
    let chunks: Vec<Vec<Image>> =
        (0..workers).map(|w| schedule.iter().skip(w).step_by(workers).map(|i| images[*i].clone()).collect()).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let (mut requests, mut bytes, mut failures) = (0usize, 0u64, 0usize);
            for image in chunk {
                let t =
                    conn.get(&format!("/v2/{}/manifests/{}", image.repo, image.tag), Some(OCI_MANIFEST), None).await?;
                requests += 1;
                bytes += t.bytes;
                failures += (t.status != 200) as usize;
                for (d, _) in &image.blobs {
                    let t = conn.get(&format!("/v2/{}/blobs/{d}", image.repo), None, None).await?;
                    requests += 1;
                    bytes += t.bytes;
                    failures += (t.status != 200) as usize;
                }
            }
            anyhow::Ok((requests, bytes, failures))
        }));
    }
    let mut total = (0, 0, 0);
    for t in tasks {
        let (r, b, f) = t.await??;
        total = (total.0 + r, total.1 + b, total.2 + f);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_favour_low_ranks() {
        let s = schedule(100, 10_000, 1.0, 7);
        let top = s.iter().filter(|i| **i == 0).count();
        let tail = s.iter().filter(|i| **i == 99).count();
        assert!(top > 10 * tail.max(1), "top {top} tail {tail}");
        assert_eq!(s, schedule(100, 10_000, 1.0, 7), "deterministic");
    }
}
