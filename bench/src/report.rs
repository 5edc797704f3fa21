//! Samples per row and runtime, their median and p95, and the comparison table (plain
//! text for the terminal, markdown for `--out`).

use std::collections::HashMap;
use std::fmt::Write;

/// The runtimes in table order: cairn first, then what it is compared with.
pub const CAIRN: &str = "cairn";
pub const RUNC: &str = "containerd(runc)";
pub const CRUN: &str = "containerd(crun)";

/// Samples of every row, in the order rows were first recorded.
#[derive(Default)]
pub struct Results {
    rows: Vec<(String, String)>,
    samples: HashMap<(String, String), Vec<f64>>,
}

impl Results {
    /// Records one sample of `row` (in `unit`) for `runtime`.
    pub fn add(&mut self, row: &str, unit: &str, runtime: &str, value: f64) {
        if !self.rows.iter().any(|(r, _)| r == row) {
            self.rows.push((row.to_string(), unit.to_string()));
        }
        self.samples
            .entry((row.to_string(), runtime.to_string()))
            .or_default()
            .push(value);
    }

    fn stats(&self, row: &str, runtime: &str) -> Option<(f64, f64)> {
        let mut v = self
            .samples
            .get(&(row.to_string(), runtime.to_string()))?
            .clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((percentile(&v, 50.0), percentile(&v, 95.0)))
    }

    /// The table as (header, rows) of cells.
    fn cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let header = [
            "row",
            "unit",
            "cairn med / p95",
            "containerd(runc) med / p95",
            "cairn/runc",
            "containerd(crun) med / p95",
            "cairn/crun",
        ]
        .map(String::from)
        .to_vec();
        let mut rows = Vec::new();
        for (row, unit) in &self.rows {
            let cairn = self.stats(row, CAIRN);
            let mut line = vec![row.clone(), unit.clone(), pair(cairn)];
            for other in [RUNC, CRUN] {
                let s = self.stats(row, other);
                line.push(pair(s));
                line.push(ratio(cairn, s));
            }
            rows.push(line);
        }
        (header, rows)
    }

    /// Aligned plain-text table.
    pub fn text(&self) -> String {
        let (header, rows) = self.cells();
        let mut widths: Vec<usize> = header.iter().map(String::len).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&header).chain(rows.iter()) {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        out
    }

    /// Markdown table.
    pub fn markdown(&self) -> String {
        let (header, rows) = self.cells();
        let mut out = format!("| {} |\n", header.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
        for r in rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn pair(s: Option<(f64, f64)>) -> String {
    s.map_or_else(|| "-".into(), |(m, p)| format!("{} / {}", num(m), num(p)))
}

fn ratio(cairn: Option<(f64, f64)>, other: Option<(f64, f64)>) -> String {
    match (cairn, other) {
        (Some((c, _)), Some((o, _))) if o > 0.0 => format!("{:.3}", c / o),
        _ => "-".into(),
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let mut r = Results::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            r.add("x", "ms", CAIRN, v);
            r.add("x", "ms", RUNC, v * 10.0);
        }
        assert_eq!(r.stats("x", CAIRN), Some((2.0, 4.0)));
        let md = r.markdown();
        assert!(
            md.contains("| x | ms | 2.00 / 4.00 | 20.00 / 40.00 | 0.100 | - | - |"),
            "{md}"
        );
    }
}
