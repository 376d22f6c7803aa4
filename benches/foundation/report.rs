//! The bench's results: one [`Row`] per number, as a ratio against its baseline and a target,
//! printed as a sentence when measured and as one table at the end.
//!
//! Pure: formats numbers, never measures, and never fails on a missed target (the bench reports;
//! it does not judge a build).

use std::time::Duration;

/// One measured number next to its baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub metric: String,
    /// What nanolet measured, with its unit.
    pub nanolet: String,
    /// What it is compared with, with its unit (a baseline run, or the target's absolute value).
    pub baseline: String,
    /// `nanolet / baseline`; `None` when it could not be measured.
    pub ratio: Option<f64>,
    /// The largest ratio that meets the target.
    pub target: f64,
    /// Why it was not measured, or anything else the reader needs.
    pub note: String,
}

impl Row {
    pub fn verdict(&self) -> &'static str {
        match self.ratio {
            None => "not measured",
            Some(r) if r <= self.target => "meets target",
            Some(_) => "MISSES target",
        }
    }

    /// `pod start overhead: nanolet 82 ms vs runc run -d 60 ms = 1.37x (target <= 1.2x): …`
    pub fn sentence(&self) -> String {
        let mut line = match self.ratio {
            Some(r) => format!(
                "{}: nanolet {} vs {} = {r:.2}x (target <= {}x): {}",
                self.metric,
                self.nanolet,
                self.baseline,
                self.target,
                self.verdict()
            ),
            None => format!("{}: {}", self.metric, self.verdict()),
        };
        if !self.note.is_empty() {
            line.push_str(&format!(" [{}]", self.note));
        }
        line
    }
}

/// The summary table: one line per row, aligned, notes below.
pub fn table(rows: &[Row]) -> String {
    let headers = [
        "metric", "nanolet", "baseline", "ratio", "target", "verdict",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.clone(),
                r.nanolet.clone(),
                r.baseline.clone(),
                r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x")),
                format!("<= {}x", r.target),
                r.verdict().to_string(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&headers.map(String::from));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        out.push_str(&format!("  {}: {}\n", r.metric, r.note));
    }
    out
}

/// The median; the mean of the middle two for an even count. `None` for no samples.
pub fn median(samples: &[Duration]) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2),
    }
}

/// `82.4 ms`.
pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `1.51 MiB (1582784 B)`.
pub fn mebibytes(bytes: u64) -> String {
    format!("{:.2} MiB ({bytes} B)", bytes as f64 / 1_048_576.0)
}
