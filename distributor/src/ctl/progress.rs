//! Progress bars for `berthctl prefetch --wait`: one line per region, redrawn in place on a
//! terminal, printed when it changes otherwise.

use std::io::{IsTerminal, Write};

use berth_shared::protocol::JobState;

use crate::jobs::JobStatus;

const WIDTH: usize = 30;

pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
    }
}

pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// One line of progress.
pub fn bar(label: &str, done: u64, total: u64, bytes: u64, state: JobState) -> String {
    let filled = if total == 0 { 0 } else { (done as usize * WIDTH) / total as usize };
    format!(
        "{label:<16} [{}{}] {:>5}/{:<5} blobs {:>10}  {}",
        "#".repeat(filled.min(WIDTH)),
        "-".repeat(WIDTH - filled.min(WIDTH)),
        done,
        total,
        human_bytes(bytes),
        state_name(state)
    )
}

/// Draws a job's progress per region.
pub struct Drawer {
    tty: bool,
    drawn: usize,
    last: Vec<String>,
}

impl Drawer {
    pub fn new() -> Self {
        Drawer { tty: std::io::stdout().is_terminal(), drawn: 0, last: Vec::new() }
    }

    pub fn draw(&mut self, status: &JobStatus) {
        let lines: Vec<String> = status
            .by_region
            .iter()
            .map(|(region, r)| {
                let (done, total, bytes) =
                    r.edges.iter().fold((0, 0, 0), |(d, t, b), e| (d + e.blobs_done, t + e.blobs_total, b + e.bytes));
                bar(region, done, total, bytes, r.state)
            })
            .collect();
        if lines == self.last {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty && self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for line in &lines {
            let _ = writeln!(out, "{line}\x1b[K");
        }
        let _ = out.flush();
        self.drawn = lines.len();
        self.last = lines;
    }
}

impl Default for Drawer {
    fn default() -> Self {
        Drawer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_draw_proportional_bars() {
        let line = bar("eu-west", 5, 10, 3 << 20, JobState::Running);
        assert!(line.contains(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))), "{line}");
        assert!(line.contains("5/10") && line.contains("3.0 MiB") && line.ends_with("running"), "{line}");
        assert!(bar("x", 0, 0, 0, JobState::Pending).contains(&"-".repeat(30)));
    }
}
