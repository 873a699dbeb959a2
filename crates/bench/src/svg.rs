//! A small hand-written SVG line chart (stacked panels sharing one x axis): enough for the
//! sweep's plot without pulling in a plotting library.

use std::fmt::Write;

/// One line of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// Any SVG colour.
    pub color: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed, without point markers (for reference lines).
    pub dashed: bool,
}

/// One chart of the figure: its own y axis, the figure's x axis.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    /// Logarithmic y axis (non-positive values are left out).
    pub log_y: bool,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 860.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 70.0;
const PANEL_GAP: f64 = 60.0;
const BOTTOM: f64 = 50.0;

/// Renders the panels stacked, under `title`, with `x_label` under the last one.
pub fn plot(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + PANEL_GAP) - PANEL_GAP + BOTTOM;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    let all_x: Vec<f64> = panels
        .iter()
        .flat_map(|p| {
            p.series
                .iter()
                .flat_map(|s| s.points.iter().map(|&(x, _)| x))
        })
        .filter(|x| x.is_finite())
        .collect();
    let x_axis = Axis::linear(0.0, all_x.iter().copied().fold(0.0, f64::max));
    let plot_w = WIDTH - LEFT - RIGHT;

    for (n, panel) in panels.iter().enumerate() {
        let top = TOP + n as f64 * (PANEL_HEIGHT + PANEL_GAP);
        let bottom = top + PANEL_HEIGHT;
        let ys: Vec<f64> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(_, y)| y))
            .filter(|y| y.is_finite() && (!panel.log_y || *y > 0.0))
            .collect();
        let y_axis = if panel.log_y {
            Axis::log(
                ys.iter().copied().fold(f64::INFINITY, f64::min),
                ys.iter().copied().fold(0.0, f64::max),
            )
        } else {
            Axis::linear(0.0, ys.iter().copied().fold(0.0, f64::max))
        };
        let px = |x: f64| LEFT + x_axis.frac(x) * plot_w;
        let py = |y: f64| bottom - y_axis.frac(y) * PANEL_HEIGHT;

        let _ = writeln!(s, r#"<g class="panel">"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
            top - 10.0,
            escape(&panel.title)
        );
        // Grid and ticks.
        for &t in &y_axis.ticks {
            let y = py(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                tick_label(t)
            );
        }
        for &t in &x_axis.ticks {
            let x = px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#f0f0f0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                bottom + 16.0,
                tick_label(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            LEFT - 58.0,
            top + PANEL_HEIGHT / 2.0,
            escape(&panel.y_label)
        );
        // Lines, markers and the legend.
        for (k, series) in panel.series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || y > 0.0))
                .collect();
            let coords: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline class="series" data-name="{}" points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                escape(&series.name),
                coords.join(" "),
                escape(&series.color)
            );
            if !series.dashed {
                for &(x, y) in &pts {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                        px(x),
                        py(y),
                        escape(&series.color)
                    );
                }
            }
            let ly = top + 14.0 + k as f64 * 20.0;
            let lx = LEFT + plot_w + 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 22.0,
                escape(&series.color),
                lx + 28.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        let _ = writeln!(s, "</g>");
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        height - 12.0,
        escape(x_label)
    );
    s.push_str("</svg>\n");
    s
}

/// An axis: its range and tick values.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    /// From `lo` to a round number at or above `max`, with ticks at 1, 2 or 5 × 10^k.
    fn linear(lo: f64, max: f64) -> Axis {
        let max = if max.is_finite() && max > lo {
            max
        } else {
            lo + 1.0
        };
        let step = nice_step((max - lo) / 5.0);
        let hi = (max / step).ceil() * step;
        let ticks = (0..)
            .map(|i| lo + i as f64 * step)
            .take_while(|t| *t <= hi + step * 1e-9)
            .collect();
        Axis {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    /// Whole decades around `min..max`, a tick per decade.
    fn log(min: f64, max: f64) -> Axis {
        let (min, max) = if min.is_finite() && min > 0.0 && max >= min {
            (min, max)
        } else {
            (1.0, 10.0)
        };
        let lo = min.log10().floor();
        let mut hi = max.log10().ceil();
        if hi <= lo {
            hi = lo + 1.0;
        }
        let ticks = (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect();
        Axis {
            lo: 10f64.powf(lo),
            hi: 10f64.powf(hi),
            log: true,
            ticks,
        }
    }

    /// Where `v` sits between the ends, 0 to 1.
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        f.clamp(0.0, 1.0)
    }
}

/// The 1, 2 or 5 × 10^k at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// `0.01`, `0.5`, `20`, `1500`, `25k`.
fn tick_label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", trim(v / 1_000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

/// Escapes text for SVG content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color: "#123456".into(),
            points,
            dashed: false,
        }
    }

    #[test]
    fn plot_is_a_valid_svg_with_every_series() {
        let panels = vec![
            Panel {
                title: "latency <ms> & more".into(),
                y_label: "ms".into(),
                log_y: true,
                series: vec![
                    series("p50", vec![(1000.0, 0.8), (2000.0, 1.2), (3000.0, 40.0)]),
                    series("p99", vec![(1000.0, 2.0), (2000.0, 0.0), (3000.0, 900.0)]),
                ],
            },
            Panel {
                title: "throughput".into(),
                y_label: "msgs/s".into(),
                log_y: false,
                series: vec![
                    series(
                        "delivered",
                        vec![(1000.0, 1000.0), (2000.0, 1990.0), (3000.0, 2100.0)],
                    ),
                    Series {
                        dashed: true,
                        ..series("offered", vec![(1000.0, 1000.0), (3000.0, 3000.0)])
                    },
                ],
            },
        ];
        let svg = plot("sweep", "offered msgs/s", &panels);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let lines: Vec<_> = root
            .descendants()
            .filter(|n| n.attribute("class") == Some("series"))
            .collect();
        let names: Vec<&str> = lines
            .iter()
            .filter_map(|n| n.attribute("data-name"))
            .collect();
        assert_eq!(names, ["p50", "p99", "delivered", "offered"]);
        let points = |i: usize| lines[i].attribute("points").unwrap().split(' ').count();
        assert_eq!(points(0), 3);
        assert_eq!(points(1), 2, "a zero cannot be drawn on a log axis");
        assert_eq!(points(2), 3);
        let texts: Vec<&str> = root.descendants().filter_map(|n| n.text()).collect();
        assert!(
            texts.contains(&"latency <ms> & more"),
            "escaped and read back"
        );
        assert!(texts.contains(&"offered msgs/s"));
        // Every coordinate lies inside the picture.
        for c in root.descendants().filter(|n| n.has_tag_name("circle")) {
            let x: f64 = c.attribute("cx").unwrap().parse().unwrap();
            let y: f64 = c.attribute("cy").unwrap().parse().unwrap();
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
            assert!(
                (TOP..=TOP + 2.0 * PANEL_HEIGHT + PANEL_GAP).contains(&y),
                "{y}"
            );
        }
    }

    #[test]
    fn axes_round_outwards() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(1000.0), 1000.0);
        let a = Axis::linear(0.0, 4321.0);
        assert_eq!(a.hi, 5000.0);
        assert_eq!(a.ticks, [0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0]);
        let l = Axis::log(0.8, 900.0);
        assert_eq!(l.ticks, [0.1, 1.0, 10.0, 100.0, 1000.0]);
        assert!((l.frac(10.0) - 0.5).abs() < 1e-9);
        assert_eq!(tick_label(25_000.0), "25k");
        assert_eq!(tick_label(0.5), "0.5");
        // Empty data still gives a drawable axis.
        assert!(Axis::linear(0.0, 0.0).hi > 0.0);
        assert_eq!(Axis::log(f64::INFINITY, 0.0).ticks, [1.0, 10.0]);
    }
}
