//! Inline SVG charts: line charts, heatmaps, stacked bars. Plain strings, no script.
use std::fmt::Write;

/// Colours for series, in order.
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Five horizontal grid lines from `y0` to `y1` across [x0, x1], labelled on the left; `py` maps a
/// value to its pixel row.
fn y_grid(svg: &mut String, x0: f64, x1: f64, y0: f64, y1: f64, py: &dyn Fn(f64) -> f64) {
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{x0}" x2="{x1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            py(y),
            py(y),
            x0 - 4.0,
            py(y) + 4.0,
            fmt_tick(y)
        );
    }
}

/// Entry `i` of a legend right of the plot (`x` its right edge, `top` the first entry's row).
fn legend_entry(svg: &mut String, x: f64, top: f64, i: usize, color: &str, name: &str) {
    let ly = top + 14.0 * i as f64;
    let _ = write!(
        svg,
        r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}" class="tick">{}</text>"#,
        x + 8.0,
        ly,
        color,
        x + 22.0,
        ly + 9.0,
        esc(name)
    );
}

/// Stacked bars: one bar per entry of `bars` (label, one value per category), the categories stacked
/// bottom-up in their order, with a legend; y from 0 to the tallest bar.
pub fn stacked_bars(title: &str, y_label: &str, categories: &[&str], bars: &[(String, Vec<f64>)]) -> String {
    let (w, h, ml, mr, mt, mb) = (560.0, 260.0, 48.0, 130.0, 28.0, 36.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" class="chart">"#
    );
    let _ = write!(svg, r#"<text x="{ml}" y="16" class="title">{}</text>"#, esc(title));
    let top = bars
        .iter()
        .map(|(_, v)| v.iter().filter(|x| x.is_finite() && **x > 0.0).sum::<f64>())
        .fold(0.0, f64::max);
    if bars.is_empty() || top <= 0.0 {
        svg.push_str(r#"<text x="60" y="120">no data</text></svg>"#);
        return svg;
    }
    let py = |y: f64| h - mb - y / top * (h - mt - mb);
    y_grid(&mut svg, ml, w - mr, 0.0, top, &py);
    let slot = (w - ml - mr) / bars.len() as f64;
    for (i, (label, values)) in bars.iter().enumerate() {
        let x = ml + slot * i as f64 + slot * 0.1;
        let mut base = 0.0;
        for (c, v) in values.iter().enumerate() {
            if !v.is_finite() || *v <= 0.0 {
                continue;
            }
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {} {:.3}s</title></rect>"#,
                py(base + v),
                slot * 0.8,
                py(base) - py(base + v),
                PALETTE[c % PALETTE.len()],
                esc(label),
                esc(categories.get(c).copied().unwrap_or("")),
                v
            );
            base += v;
        }
    }
    let mut ends = vec![0, bars.len() - 1];
    ends.dedup();
    for (i, label) in ends.iter().map(|&i| (i, &bars[i].0)) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            ml + slot * (i as f64 + 0.5),
            h - 20.0,
            esc(label)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
        (ml + w - mr) / 2.0,
        h - 6.0,
        esc(y_label)
    );
    for (i, c) in categories.iter().enumerate() {
        legend_entry(&mut svg, w - mr, mt, i, PALETTE[i % PALETTE.len()], c);
    }
    svg.push_str("</svg>");
    svg
}

/// A line chart with axes; `y_range` fixes the y axis (else it fits the data).
pub fn line_chart(series: &[Series], title: &str, x_label: &str, y_range: Option<(f64, f64)>) -> String {
    chart(series, title, x_label, y_range, None)
}

/// [`line_chart`] with the x axis labelled at `ticks` (position, label) instead of at its two ends:
/// for an axis drawn in other units than it reads in, such as log10 of a count labelled with counts.
pub fn line_chart_ticks(
    series: &[Series],
    title: &str,
    x_label: &str,
    y_range: Option<(f64, f64)>,
    ticks: &[(f64, String)],
) -> String {
    chart(series, title, x_label, y_range, Some(ticks))
}

fn chart(
    series: &[Series],
    title: &str,
    x_label: &str,
    y_range: Option<(f64, f64)>,
    ticks: Option<&[(f64, String)]>,
) -> String {
    let (w, h, ml, mr, mt, mb) = (560.0, 260.0, 48.0, 130.0, 28.0, 36.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" class="chart">"#
    );
    let _ = write!(svg, r#"<text x="{ml}" y="16" class="title">{}</text>"#, esc(title));
    if pts.is_empty() {
        svg.push_str(r#"<text x="60" y="120">no data</text></svg>"#);
        return svg;
    }
    // The axis spans the data and every tick.
    let xs = || pts.iter().map(|p| p.0).chain(ticks.unwrap_or(&[]).iter().map(|t| t.0));
    let x0 = xs().fold(f64::INFINITY, f64::min);
    let mut x1 = xs().fold(f64::NEG_INFINITY, f64::max);
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, mut y1) = y_range.unwrap_or_else(|| {
        (
            pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).min(0.0),
            pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        )
    });
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    y_grid(&mut svg, ml, w - mr, y0, y1, &py);
    match ticks {
        Some(ticks) => {
            for (x, label) in ticks {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
                    px(*x),
                    h - 22.0,
                    esc(label)
                );
            }
        }
        None => {
            let _ = write!(
                svg,
                r#"<text x="{ml}" y="{}" class="tick">{}</text>"#,
                h - 8.0,
                fmt_tick(x0)
            );
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"#,
                w - mr,
                h - 8.0,
                fmt_tick(x1)
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
        (ml + w - mr) / 2.0,
        h - 8.0,
        esc(x_label)
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if path.len() == 1 {
            let (x, y) = path[0].split_once(',').unwrap_or(("0", "0"));
            let _ = write!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#, s.color);
        } else {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                s.color,
                path.join(" ")
            );
        }
        legend_entry(&mut svg, w - mr, mt, i, s.color, s.name);
    }
    svg.push_str("</svg>");
    svg
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() < 1e6) {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The colour classes of [`heat`]: (lowest value of the class, colour, label), from the top. A
/// diverging red–yellow–green scale (ColorBrewer RdYlGn) in classes that separate what the
/// comparisons turn on: 0.7, 0.8, 0.9 and 0.95.
pub const HEAT_CLASSES: [(f64, &str, &str); 6] = [
    (0.95, "#1a9850", "≥ 0.95"),
    (0.9, "#91cf60", "0.90–0.95"),
    (0.8, "#d9ef8b", "0.80–0.90"),
    (0.7, "#fee08b", "0.70–0.80"),
    (0.5, "#fc8d59", "0.50–0.70"),
    (f64::NEG_INFINITY, "#d73027", "< 0.50"),
];

/// Colour of a score in [0, 1], by [`HEAT_CLASSES`].
pub fn heat(v: f64) -> String {
    HEAT_CLASSES
        .iter()
        .find(|(lo, _, _)| v >= *lo)
        .map(|(_, c, _)| c.to_string())
        .unwrap_or_else(|| HEAT_CLASSES[5].1.to_string())
}

/// A heatmap: rows × columns of optional values in [0, 1] (missing cells are grey).
pub fn heatmap(title: &str, rows: &[String], cols: &[String], cell: impl Fn(usize, usize) -> Option<f64>) -> String {
    let cw = (640.0 / cols.len().max(1) as f64).clamp(3.0, 28.0);
    let ch = (560.0 / rows.len().max(1) as f64).clamp(2.0, 16.0);
    let (ml, mt) = (150.0, 36.0);
    // Wide enough for the title, whatever the number of columns.
    let w = (ml + cw * cols.len() as f64 + 10.0).max(8.0 + 6.5 * title.chars().count() as f64);
    let w = w.max(ml + 6.0 * 80.0);
    let h = mt + ch * rows.len() as f64 + 40.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" class="chart">"#
    );
    let _ = write!(svg, r#"<text x="4" y="16" class="title">{}</text>"#, esc(title));
    // The legend, under the cells.
    let ly = mt + ch * rows.len() as f64 + 12.0;
    for (k, (_, color, label)) in HEAT_CLASSES
        .iter()
        .rev()
        .chain([&(0.0, "#eee", "not measured")])
        .enumerate()
    {
        let x = ml + 80.0 * k as f64;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{ly:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
            x + 13.0,
            ly + 9.0,
            esc(label)
        );
    }
    let label_every_row = (12.0 / ch).ceil().max(1.0) as usize;
    let label_every_col = (24.0 / cw).ceil().max(1.0) as usize;
    for (j, c) in cols.iter().enumerate() {
        if j % label_every_col == 0 {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{}" class="tick">{}</text>"#,
                ml + cw * j as f64,
                mt - 4.0,
                esc(c)
            );
        }
    }
    for (i, r) in rows.iter().enumerate() {
        let y = mt + ch * i as f64;
        if i % label_every_row == 0 {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
                ml - 4.0,
                y + ch.min(12.0) - 1.0,
                esc(r)
            );
        }
        for (j, col) in cols.iter().enumerate() {
            let (fill, tip) = match cell(i, j) {
                Some(v) => (heat(v), format!("{r}, step {col}: {v:.2}")),
                None => ("#eee".to_string(), format!("{r}, step {col}: not measured")),
            };
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{}</title></rect>"#,
                ml + cw * j as f64,
                y,
                cw - 0.5,
                ch - 0.5,
                esc(&tip)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let s = [Series {
            name: "a<b",
            color: PALETTE[0],
            points: vec![(0.0, 0.5), (1.0, 1.0)],
        }];
        let c = line_chart(&s, "t", "step", Some((0.0, 1.0)));
        assert!(c.starts_with("<svg") && c.ends_with("</svg>") && c.contains("a&lt;b") && c.contains("polyline"));
        let h = heatmap("h", &["f".into()], &["0".into(), "1".into()], |_, j| {
            (j == 0).then_some(0.9)
        });
        // Two cells and the legend's seven boxes.
        assert_eq!(h.matches("<rect").count(), 2 + 7);
        assert!(h.contains("not measured"));
        // The classes separate 0.7 / 0.8 / 0.9 / 0.95.
        let classes: Vec<String> = [1.0, 0.95, 0.92, 0.85, 0.75, 0.6, 0.1]
            .iter()
            .map(|&v| heat(v))
            .collect();
        assert_eq!(
            classes,
            ["#1a9850", "#1a9850", "#91cf60", "#d9ef8b", "#fee08b", "#fc8d59", "#d73027"]
        );
        assert_eq!(heat(0.8), "#d9ef8b");
        assert_eq!(heat(0.7999), "#fee08b");
    }
}
