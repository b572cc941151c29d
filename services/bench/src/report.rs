//! The load bench's figures: latency percentiles from an HDR histogram, the comparison of
//! two result files, the terminal table and the plots (hand-written SVG in one
//! self-contained HTML page; no scripts, no network fonts).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: u64,
    /// 90th percentile.
    pub p90_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// 99.9th percentile.
    pub p999_ms: u64,
    /// Largest sample.
    pub max_ms: u64,
}

impl Percentiles {
    /// The percentiles of a histogram; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self { count: 0, p50_ms: 0, p90_ms: 0, p99_ms: 0, p999_ms: 0, max_ms: 0 };
        }
        Self {
            count: h.len(),
            p50_ms: h.value_at_quantile(0.5),
            p90_ms: h.value_at_quantile(0.9),
            p99_ms: h.value_at_quantile(0.99),
            p999_ms: h.value_at_quantile(0.999),
            max_ms: h.max(),
        }
    }
}

/// A new histogram of milliseconds, 1 ms to 1 h, 3 significant digits.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000, 3)?)
}

/// Points of the latency distribution for the plot: (percentile, ms), on a log scale of
/// 1/(1-q) from the median to the maximum.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    // q = 1 - 10^-k for k in 0.3..=5 by 0.1 (50% .. 99.999%).
    let mut k = 0.3f64;
    while k <= 5.0 + 1e-9 {
        let q = 1.0 - 10f64.powf(-k);
        out.push((q * 100.0, h.value_at_quantile(q)));
        k += 0.1;
    }
    out.push((100.0, h.max()));
    out
}

/// Whether a figure is better when lower (`*_ms`, `*_mb`, `*_secs`) or higher (`*_per_sec`,
/// `*_fraction`); other names are reported but never fail a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Latencies, memory, durations.
    Lower,
    /// Throughputs.
    Higher,
    /// Counts and the like.
    Neither,
}

/// The direction of a figure, from its name.
pub fn better(name: &str) -> Better {
    if name.ends_with("_per_sec") || name.ends_with("_fraction") {
        Better::Higher
    } else if name.ends_with("_ms") || name.ends_with("_mb") || name.ends_with("_secs") {
        Better::Lower
    } else {
        Better::Neither
    }
}

/// One line of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// Figure name.
    pub name: String,
    /// Earlier value.
    pub old: f64,
    /// This run's value.
    pub new: f64,
    /// new / old (None when old is zero).
    pub ratio: Option<f64>,
    /// Whether it is worse than the threshold allows.
    pub regressed: bool,
}

/// Compares the figures of two runs. A lower-is-better figure regresses when
/// new > old * (1 + threshold); a higher-is-better one when new < old * (1 - threshold).
/// Figures missing from either side are skipped.
pub fn compare(old: &BTreeMap<String, f64>, new: &BTreeMap<String, f64>, threshold: f64) -> Vec<Ratio> {
    let mut out = Vec::new();
    for (name, &n) in new {
        let Some(&o) = old.get(name) else { continue };
        let ratio = (o != 0.0).then(|| n / o);
        let regressed = match (better(name), ratio) {
            (Better::Lower, Some(r)) => r > 1.0 + threshold,
            (Better::Higher, Some(r)) => r < 1.0 - threshold,
            _ => false,
        };
        out.push(Ratio { name: name.clone(), old: o, new: n, ratio, regressed });
    }
    out
}

/// The `figures` object of a result file.
pub fn figures_of(result: &serde_json::Value) -> anyhow::Result<BTreeMap<String, f64>> {
    let obj = result
        .get("figures")
        .and_then(|f| f.as_object())
        .ok_or_else(|| anyhow::anyhow!("result file has no `figures` object"))?;
    Ok(obj.iter().filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x))).collect())
}

/// The comparison as a table.
pub fn compare_table(rows: &[Ratio], threshold: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32} {:>14} {:>14} {:>8}  (threshold {:.0}%)",
        "figure",
        "old",
        "new",
        "ratio",
        threshold * 100.0
    );
    for r in rows {
        let ratio = r.ratio.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.3}"));
        let flag = if r.regressed { "  REGRESSED" } else { "" };
        let _ = writeln!(s, "{:<32} {:>14} {:>14} {:>8}{flag}", r.name, num(r.old), num(r.new), ratio);
    }
    s
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() < 0.1 {
        format!("{x:.6}")
    } else {
        format!("{x:.3}")
    }
}

/// The figures as a table.
pub fn figures_table(figures: &BTreeMap<String, f64>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<32} {:>14}", "figure", "value");
    for (k, v) in figures {
        let _ = writeln!(s, "{k:<32} {:>14}", num(*v));
    }
    s
}

/// One time series for a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 7] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// "Nice" upper bound for an axis.
fn nice_max(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

/// A line chart as SVG. `x_labels` replaces the numeric x ticks when given (as (x, label)).
pub fn line_chart(
    title: &str,
    x_title: &str,
    y_title: &str,
    series: &[Series],
    x_labels: Option<&[(f64, String)]>,
) -> String {
    let (w, h, l, r, t, b) = (760.0, 360.0, 70.0, 20.0, 40.0, 50.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in xs {
        x0 = x0.min(x);
        x1 = x1.max(x);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let ymax = nice_max(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max));
    let px = |x: f64| l + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| t + ph - y / ymax * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let y = ymax * f64::from(i) / 5.0;
        let yy = py(y);
        let _ = write!(s, r##"<line x1="{l}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>"##, l + pw);
        let _ = write!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, l - 6.0, yy + 4.0, num_short(y));
    }
    let ticks: Vec<(f64, String)> = match x_labels {
        Some(t) => t.to_vec(),
        None => (0..=6)
            .map(|i| {
                let x = x0 + (x1 - x0) * f64::from(i) / 6.0;
                (x, num_short(x))
            })
            .collect(),
    };
    for (x, label) in ticks {
        if x < x0 || x > x1 {
            continue;
        }
        let xx = px(x);
        let _ = write!(s, r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{t}" y2="{}" stroke="#eee"/>"##, t + ph);
        let _ = write!(s, r#"<text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#, t + ph + 16.0, esc(&label));
    }
    let _ = write!(s, r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, l + pw / 2.0, h - 10.0, esc(x_title));
    let _ = write!(
        s,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        t + ph / 2.0,
        esc(y_title)
    );
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = se.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = write!(s, r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/>"#, l + 10.0, ly - 4.0);
        let _ = write!(s, r#"<text x="{}" y="{ly}">{}</text>"#, l + 28.0, esc(&se.name));
    }
    s.push_str("</svg>");
    s
}

fn num_short(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The latency distribution chart: x is the percentile on a log scale of 1/(1-q).
pub fn latency_chart(points: &[(f64, u64)]) -> String {
    let tf = |pct: f64| -(1.0 - (pct / 100.0).min(0.999_999)).log10();
    let series = Series {
        name: "end-to-end latency (raw publish to notification)".into(),
        points: points.iter().map(|&(p, v)| (tf(p), v as f64)).collect(),
    };
    let labels: Vec<(f64, String)> =
        [50.0, 90.0, 99.0, 99.9, 99.99, 99.999].iter().map(|&p| (tf(p), format!("{p}%"))).collect();
    line_chart("Latency distribution", "percentile", "milliseconds", &[series], Some(&labels))
}

/// A self-contained HTML page with the charts and the figures.
pub fn html_page(title: &str, figures: &BTreeMap<String, f64>, charts: &[String]) -> String {
    let mut s = String::new();
    let _ = write!(s, "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title>", esc(title));
    s.push_str("<style>body{font-family:sans-serif;margin:2em;max-width:800px}td{padding:2px 12px}td.v{text-align:right}</style></head><body>");
    let _ = write!(s, "<h1>{}</h1><table>", esc(title));
    for (k, v) in figures {
        let _ = write!(s, "<tr><td>{}</td><td class=\"v\">{}</td></tr>", esc(k), num(*v));
    }
    s.push_str("</table>");
    for c in charts {
        let _ = write!(s, "<div>{c}</div>");
    }
    s.push_str("</body></html>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn percentiles_of_a_known_distribution() -> anyhow::Result<()> {
        let mut h = latency_histogram()?;
        for v in 1..=1000u64 {
            h.record(v)?;
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_ms, 500);
        assert_eq!(p.p90_ms, 900);
        assert_eq!(p.p99_ms, 990);
        assert_eq!(p.p999_ms, 999);
        assert_eq!(p.max_ms, 1000);
        Ok(())
    }

    #[test]
    fn empty_histogram_gives_zeros_and_no_points() -> anyhow::Result<()> {
        let h = latency_histogram()?;
        assert_eq!(Percentiles::of(&h).count, 0);
        assert_eq!(Percentiles::of(&h).max_ms, 0);
        assert!(distribution(&h).is_empty());
        Ok(())
    }

    #[test]
    fn distribution_is_monotone_and_ends_at_the_max() -> anyhow::Result<()> {
        let mut h = latency_histogram()?;
        for v in [5u64, 7, 9, 12, 30, 400, 2500] {
            h.record_n(v, 100)?;
        }
        let d = distribution(&h);
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{d:?}");
        assert_eq!(d.last().map(|p| p.1), Some(h.max()));
        assert_eq!(d[0].1, h.value_at_quantile(1.0 - 10f64.powf(-0.3)));
        Ok(())
    }

    #[test]
    fn direction_comes_from_the_name() {
        assert_eq!(better("e2e_p99_ms"), Better::Lower);
        assert_eq!(better("peak_rss_mb"), Better::Lower);
        assert_eq!(better("notifications_out_per_sec"), Better::Higher);
        assert_eq!(better("pipeline_vs_raw_producer_fraction"), Better::Higher);
        assert_eq!(better("incidents"), Better::Neither);
    }

    #[test]
    fn compare_flags_regressions_past_the_threshold_only() {
        let old = map(&[("e2e_p99_ms", 100.0), ("in_per_sec", 1000.0), ("incidents", 10.0), ("gone_ms", 5.0)]);
        let ok = map(&[("e2e_p99_ms", 119.0), ("in_per_sec", 801.0), ("incidents", 1.0)]);
        let rows = compare(&old, &ok, 0.2);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| !r.regressed), "{rows:?}");
        let p99 = rows.iter().find(|r| r.name == "e2e_p99_ms").and_then(|r| r.ratio);
        assert_eq!(p99, Some(1.19));

        let bad = map(&[("e2e_p99_ms", 121.0), ("in_per_sec", 799.0), ("incidents", 1000.0)]);
        let rows = compare(&old, &bad, 0.2);
        let regressed: Vec<&str> = rows.iter().filter(|r| r.regressed).map(|r| r.name.as_str()).collect();
        assert_eq!(regressed, ["e2e_p99_ms", "in_per_sec"]);
        // Improvements never regress.
        let better_run = map(&[("e2e_p99_ms", 10.0), ("in_per_sec", 100_000.0)]);
        assert!(compare(&old, &better_run, 0.0).iter().all(|r| !r.regressed));
    }

    #[test]
    fn compare_with_a_zero_baseline_has_no_ratio() {
        let rows = compare(&map(&[("x_ms", 0.0)]), &map(&[("x_ms", 3.0)]), 0.2);
        assert_eq!(rows[0].ratio, None);
        assert!(!rows[0].regressed);
        assert!(compare_table(&rows, 0.2).contains("n/a"));
    }

    #[test]
    fn figures_are_read_from_a_result_file() -> anyhow::Result<()> {
        let v = serde_json::json!({"figures": {"a_ms": 3, "b_per_sec": 2.5, "label": "x"}});
        assert_eq!(figures_of(&v)?, map(&[("a_ms", 3.0), ("b_per_sec", 2.5)]));
        assert!(figures_of(&serde_json::json!({})).is_err());
        Ok(())
    }

    #[test]
    fn charts_are_self_contained_svg() {
        let s = line_chart(
            "t<1>",
            "x",
            "y",
            &[Series { name: "a".into(), points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)] }],
            None,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("t&lt;1&gt;"));
        assert!(s.contains("<polyline"));
        assert!(!s.contains("http://") || s.matches("http://").count() == 1, "only the SVG namespace");
        let page = html_page("run", &map(&[("a_ms", 1.0)]), &[s]);
        assert!(!page.contains("<script") && page.contains("<svg"));
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
    }
}
