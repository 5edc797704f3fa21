//! Samples per row and runtime, their median and p95, the comparison table (plain text for
//! the terminal, markdown for `--out`), and the targets of issue 5 with whether this run
//! meets them.

use std::collections::HashMap;
use std::fmt::Write;

/// The runtimes in table order: cairn first, then what it is compared with.
pub const CAIRN: &str = "cairn";
pub const RUNC: &str = "containerd(runc)";
pub const CRUN: &str = "containerd(crun)";
/// Not a runtime: the bench running the CNI plugins itself (shown in the cairn column).
pub const PLUGINS: &str = "plugins";

/// The row of RunPodSandbox with the CNI bridge network.
pub const BRIDGE_ROW: &str = "RunPodSandbox (CNI bridge)";
/// The row of the CNI plugins alone, recorded under [`PLUGINS`].
pub const PLUGINS_ROW: &str = "CNI plugins alone (ADD chain)";
/// Derived, after [`PLUGINS_ROW`]: each runtime's bridge median minus the plugins' median.
const OVERHEAD_ROW: &str = "  = bridge pod - plugins (medians)";

/// What a target asks of a ratio (cairn / the other) or of cairn's bridge overhead.
#[derive(Clone, Copy)]
enum Goal {
    /// cairn / other at most this.
    RatioAtMost(f64),
    /// cairn / other at least this.
    RatioAtLeast(f64),
    /// cairn's bridge pod minus the plugins alone, at most this many ms.
    OverheadAtMost(f64),
}

/// The targets: a row (or a row name's prefix, ending in ", "), the runtime compared with,
/// and the goal.
const TARGETS: &[(&str, &str, Goal)] = &[
    (
        "CreateContainer + StartContainer",
        RUNC,
        Goal::RatioAtMost(0.1),
    ),
    (
        "CreateContainer + StartContainer",
        CRUN,
        Goal::RatioAtMost(0.25),
    ),
    ("ExecSync true", RUNC, Goal::RatioAtMost(0.1)),
    ("RunPodSandbox (host network)", RUNC, Goal::RatioAtMost(0.1)),
    (BRIDGE_ROW, PLUGINS, Goal::OverheadAtMost(5.0)),
    ("shim RSS per pod", RUNC, Goal::RatioAtMost(0.25)),
    ("shim PSS per pod", RUNC, Goal::RatioAtMost(0.25)),
    ("daemon RSS, ", RUNC, Goal::RatioAtMost(0.33)),
    ("pull throughput", RUNC, Goal::RatioAtLeast(2.0)),
];

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

    fn median(&self, row: &str, runtime: &str) -> Option<f64> {
        self.stats(row, runtime).map(|(m, _)| m)
    }

    /// A runtime's bridge pod median minus the plugins' median.
    fn overhead(&self, runtime: &str) -> Option<f64> {
        Some(self.median(BRIDGE_ROW, runtime)? - self.median(PLUGINS_ROW, PLUGINS)?)
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
            if row == PLUGINS_ROW {
                continue;
            }
            let cairn = self.stats(row, CAIRN);
            let mut line = vec![row.clone(), unit.clone(), pair(cairn)];
            for other in [RUNC, CRUN] {
                let s = self.stats(row, other);
                line.push(pair(s));
                line.push(ratio(cairn, s));
            }
            rows.push(line);
            if row == BRIDGE_ROW && self.stats(PLUGINS_ROW, PLUGINS).is_some() {
                let plugins = pair(self.stats(PLUGINS_ROW, PLUGINS));
                rows.push(vec![PLUGINS_ROW.into(), "ms".into(), plugins]);
                rows.push(self.overhead_cells());
            }
        }
        (header, rows)
    }

    /// The derived row: each runtime's bridge pod median minus the plugins' median.
    fn overhead_cells(&self) -> Vec<String> {
        let cairn = self.overhead(CAIRN);
        let mut line = vec![OVERHEAD_ROW.into(), "ms".into(), opt_num(cairn)];
        for other in [RUNC, CRUN] {
            let o = self.overhead(other);
            line.push(opt_num(o));
            line.push(ratio(cairn.map(|c| (c, c)), o.map(|o| (o, o))));
        }
        line
    }

    /// The targets as (target, measured, goal, verdict) cells; rows this run has no numbers
    /// for (crun left out) are "n/a".
    fn target_cells(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for &(row, other, goal) in TARGETS {
            let row = self.find_row(row);
            let (what, measured, bound, met) = match goal {
                Goal::OverheadAtMost(max) => {
                    let v = self.overhead(CAIRN);
                    (
                        format!("{row}: cairn - plugins alone"),
                        v.map(|v| format!("{} ms", num(v))),
                        format!("<= {max} ms"),
                        v.map(|v| v <= max),
                    )
                }
                Goal::RatioAtMost(max) | Goal::RatioAtLeast(max) => {
                    let r = self.ratio_of(&row, other);
                    let at_most = matches!(goal, Goal::RatioAtMost(_));
                    let short = other
                        .trim_start_matches("containerd(")
                        .trim_end_matches(')');
                    (
                        format!("{row}: cairn/{short}"),
                        r.map(|r| format!("{r:.3}")),
                        format!("{} {max}", if at_most { "<=" } else { ">=" }),
                        r.map(|r| if at_most { r <= max } else { r >= max }),
                    )
                }
            };
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "n/a",
            };
            out.push(vec![
                what,
                measured.unwrap_or_else(|| "-".into()),
                bound,
                verdict.into(),
            ]);
        }
        out
    }

    /// The recorded row named `name`, or the first starting with it when it ends in ", "
    /// (rows whose name carries a count); `name` itself when none matches.
    fn find_row(&self, name: &str) -> String {
        self.rows
            .iter()
            .map(|(r, _)| r)
            .find(|r| *r == name || (name.ends_with(", ") && r.starts_with(name)))
            .cloned()
            .unwrap_or_else(|| name.trim_end_matches(", ").to_string())
    }

    fn ratio_of(&self, row: &str, other: &str) -> Option<f64> {
        let (c, o) = (self.median(row, CAIRN)?, self.median(row, other)?);
        (o > 0.0).then(|| c / o)
    }

    /// Aligned plain-text table, then the targets.
    pub fn text(&self) -> String {
        let (header, rows) = self.cells();
        let mut out = aligned(&header, &rows);
        if self.stats(PLUGINS_ROW, PLUGINS).is_some() {
            let _ = writeln!(out, "{PLUGINS_NOTE}");
        }
        let targets = self.target_cells();
        let _ = writeln!(out, "\n{TARGETS_TITLE}");
        for line in aligned(&[], &targets).lines() {
            let _ = writeln!(out, "  {line}");
        }
        out
    }

    /// Markdown table, then the targets as a second table.
    pub fn markdown(&self) -> String {
        let (header, rows) = self.cells();
        let mut out = markdown_table(&header, &rows);
        if self.stats(PLUGINS_ROW, PLUGINS).is_some() {
            let _ = writeln!(out, "\n{PLUGINS_NOTE}");
        }
        let header = ["target", "measured", "goal", "this run"].map(String::from);
        let _ = writeln!(out, "\n{TARGETS_TITLE}\n");
        out.push_str(&markdown_table(&header, &self.target_cells()));
        out
    }
}

const PLUGINS_NOTE: &str = "CNI plugins alone: no runtime; the bench runs the same network \
     list itself, plugin by plugin, into a fresh netns (shown in the cairn column).";

const TARGETS_TITLE: &str = "targets (medians; ratios are cairn / containerd):";

/// `header` (if any) and `rows` as left-aligned columns.
fn aligned(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        widths.resize(widths.len().max(r.len()), 0);
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header = (!header.is_empty()).then_some(header);
    let mut out = String::new();
    for r in header.into_iter().chain(rows.iter().map(Vec::as_slice)) {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
    for r in rows {
        let mut cells = r.clone();
        cells.resize(header.len(), String::new());
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
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

fn opt_num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), num)
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

    #[test]
    fn plugins_row_overhead_and_targets() {
        let mut r = Results::default();
        r.add(BRIDGE_ROW, "ms", CAIRN, 20.0);
        r.add(BRIDGE_ROW, "ms", RUNC, 60.0);
        r.add(PLUGINS_ROW, "ms", PLUGINS, 16.0);
        r.add("ExecSync true", "ms", CAIRN, 1.0);
        r.add("ExecSync true", "ms", RUNC, 20.0);
        r.add("daemon RSS, 5 pods", "MB", CAIRN, 20.0);
        r.add("daemon RSS, 5 pods", "MB", RUNC, 50.0);
        r.add("pull throughput", "MB/s", CAIRN, 50.0);
        r.add("pull throughput", "MB/s", RUNC, 40.0);
        let md = r.markdown();
        let pos = |s: &str| {
            md.find(s)
                .unwrap_or_else(|| panic!("{s:?} missing in\n{md}"))
        };
        assert!(
            pos("| RunPodSandbox (CNI bridge) |")
                < pos("| CNI plugins alone (ADD chain) | ms | 16.00 / 16.00 |")
        );
        pos("|   = bridge pod - plugins (medians) | ms | 4.00 | 44.00 | 0.091 | - | - |");
        pos("| RunPodSandbox (CNI bridge): cairn - plugins alone | 4.00 ms | <= 5 ms | met |");
        pos("| ExecSync true: cairn/runc | 0.050 | <= 0.1 | met |");
        pos("| daemon RSS, 5 pods: cairn/runc | 0.400 | <= 0.33 | MISSED |");
        pos("| pull throughput: cairn/runc | 1.250 | >= 2 | MISSED |");
        pos("| CreateContainer + StartContainer: cairn/crun | - | <= 0.25 | n/a |");
        let text = r.text();
        assert!(text.contains("targets (medians"), "{text}");
    }
}
