//! Charts drawn on the server as SVG (no scripts, so the CSP stays strict): horizontal bars
//! with an optional target mark per bar, and columns over time. Every number is also written
//! as text, so the chart reads without colour and to screen readers (`role="img"` with a
//! title listing the values).

use super::html::{Html, esc};
use std::fmt::Write as _;

/// One bar: its label, its value, and an optional target to mark.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub target: Option<f64>,
}

fn number(value: f64) -> String {
    if value.fract().abs() < 1e-9 { format!("{value:.0}") } else { format!("{value:.1}") }
}

/// Horizontal bars; values are shown with `unit`. A bar past its target is drawn in the
/// warning colour and the target as a dark mark.
pub fn bars(title: &str, bars: &[Bar], unit: &str) -> Html {
    const WIDTH: f64 = 640.0;
    const LABEL: f64 = 230.0;
    const ROW: f64 = 28.0;
    let plot = WIDTH - LABEL - 80.0;
    let max =
        bars.iter().flat_map(|bar| std::iter::once(bar.value).chain(bar.target)).fold(0.0_f64, f64::max).max(1e-9);
    let height = ROW * bars.len().max(1) as f64 + 8.0;
    let summary: Vec<String> = bars.iter().map(|bar| format!("{}: {}{unit}", bar.label, number(bar.value))).collect();
    let mut out = format!(
        "<figure class=\"chart\"><figcaption>{}</figcaption><svg role=\"img\" viewBox=\"0 0 {WIDTH} {height}\" width=\"100%\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        esc(title),
        esc(&format!("{title}: {}", summary.join("; ")))
    );
    if bars.is_empty() {
        let _ = write!(out, "<text x=\"0\" y=\"20\" fill=\"#5b6575\">nothing in this period</text>");
    }
    for (index, bar) in bars.iter().enumerate() {
        let y = index as f64 * ROW + 4.0;
        let width = (bar.value / max * plot).max(if bar.value > 0.0 { 2.0 } else { 0.0 });
        let late = bar.target.is_some_and(|target| bar.value > target);
        let colour = if late { "#b3261e" } else { "#1f5fbf" };
        let label: String = bar.label.chars().take(34).collect();
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"13\" fill=\"#1d2430\">{}</text>\
             <rect x=\"{LABEL}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\" rx=\"2\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" fill=\"#1d2430\">{}{}</text>",
            LABEL - 8.0,
            y + 15.0,
            esc(&label),
            ROW - 10.0,
            LABEL + width + 6.0,
            y + 15.0,
            number(bar.value),
            esc(unit)
        );
        if let Some(target) = bar.target {
            let x = LABEL + target / max * plot;
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#1d2430\" stroke-width=\"2\"><title>target {}{}</title></line>",
                y - 2.0,
                y + ROW - 6.0,
                number(target),
                esc(unit)
            );
        }
    }
    out.push_str("</svg></figure>");
    Html::trusted(out)
}

/// Columns over time (oldest first), each labelled below.
pub fn columns(title: &str, columns: &[(String, f64)]) -> Html {
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 180.0;
    const BASE: f64 = 150.0;
    let max = columns.iter().map(|(_, value)| *value).fold(0.0_f64, f64::max).max(1e-9);
    let step = WIDTH / columns.len().max(1) as f64;
    let summary: Vec<String> = columns.iter().map(|(label, value)| format!("{label}: {}", number(*value))).collect();
    let mut out = format!(
        "<figure class=\"chart\"><figcaption>{}</figcaption><svg role=\"img\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>\
         <line x1=\"0\" x2=\"{WIDTH}\" y1=\"{BASE}\" y2=\"{BASE}\" stroke=\"#d7dce3\"/>",
        esc(title),
        esc(&format!("{title}: {}", summary.join("; ")))
    );
    for (index, (label, value)) in columns.iter().enumerate() {
        let height = value / max * (BASE - 20.0);
        let x = index as f64 * step + step * 0.15;
        let width = step * 0.7;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" fill=\"#1f5fbf\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#1d2430\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#5b6575\">{}</text>",
            BASE - height,
            x + width / 2.0,
            BASE - height - 4.0,
            number(*value),
            x + width / 2.0,
            BASE + 16.0,
            esc(label)
        );
    }
    out.push_str("</svg></figure>");
    Html::trusted(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_escape_labels_and_mark_targets() {
        let chart = bars(
            "Time to decision",
            &[
                Bar { label: "<script>".into(), value: 3.0, target: Some(8.0) },
                Bar { label: "late".into(), value: 12.0, target: Some(8.0) },
            ],
            " h",
        )
        .into_string();
        assert!(!chart.contains("<script>") && chart.contains("&lt;script&gt;"), "{chart}");
        assert_eq!(chart.matches("<line").count(), 2, "one target mark per bar");
        assert!(chart.contains("#b3261e"), "the late bar is drawn as late");
        assert!(chart.contains("late: 12 h"), "the values are in the title: {chart}");
        let weeks = columns("Requests per week", &[("w1".into(), 0.0), ("w2".into(), 4.0)]).into_string();
        assert_eq!(weeks.matches("<rect").count(), 2);
    }
}
