//! The two plots of a run, as self-contained SVG written by hand (axes, ticks, polylines):
//!
//! - `throughput.svg`: received datagrams/s against offered datagrams/s, one series per
//!   target (filled marks: lossless trials, hollow: something was lost), with the line where
//!   everything offered is received;
//! - `latency.svg`: the CDF of end-to-end latency per relay target, solid for "last packet to
//!   durable", dashed for "first packet to crash line", on a log time axis when the values
//!   span more than two decades;
//! - `latency_load.svg`: both latencies' p99 (lines, filled marks) and median (hollow marks)
//!   per relay target at each load: one at a time, half and all of the lossless rate, and
//!   the crash storm, so the cost of load shows as a slope.

use std::fmt::Write as _;

use super::report::{Results, LOADS};
use super::stats::Summary;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One axis: a value range mapped onto pixels, linear or log10.
#[derive(Clone, Copy, Debug)]
struct Axis {
    min: f64,
    max: f64,
    log: bool,
}

impl Axis {
    fn linear(max: f64) -> Self {
        Self {
            min: 0.0,
            max: nice_ceiling(max.max(1e-9)),
            log: false,
        }
    }

    fn log(min: f64, max: f64) -> Self {
        let lo = 10f64.powf(min.max(1e-6).log10().floor());
        let hi = 10f64.powf(max.max(lo * 10.0).log10().ceil());
        Self {
            min: lo,
            max: hi,
            log: true,
        }
    }

    /// Position of `v` in 0..=1.
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (v - self.min) / (self.max - self.min)
        };
        f.clamp(0.0, 1.0)
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut v = self.min;
            while v <= self.max * 1.0001 {
                t.push(v);
                v *= 10.0;
            }
            return t;
        }
        let step = nice_step(self.max / 5.0);
        (0..=((self.max / step).round() as usize))
            .map(|i| i as f64 * step)
            .collect()
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_step(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= v * 0.999)
        .unwrap_or(10.0 * p)
}

/// The smallest multiple of a nice step (a fifth of `v`, rounded up) that covers `v`.
fn nice_ceiling(v: f64) -> f64 {
    let step = nice_step(v / 5.0);
    (v / step).ceil() * step
}

fn label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A chart being drawn.
struct Chart {
    svg: String,
    x: Axis,
    y: Axis,
    /// Category names at x = 0, 1, ... instead of numeric ticks (empty: numeric).
    x_labels: Vec<String>,
    legend: usize,
}

impl Chart {
    fn new(title: &str, x: Axis, y: Axis, x_title: &str, y_title: &str) -> Self {
        Self::with_x_labels(title, x, y, &[], x_title, y_title)
    }

    fn with_x_labels(
        title: &str,
        x: Axis,
        y: Axis,
        x_labels: &[&str],
        x_title: &str,
        y_title: &str,
    ) -> Self {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
            escape(title)
        );
        let mut c = Self {
            svg,
            x,
            y,
            x_labels: x_labels.iter().map(|l| l.to_string()).collect(),
            legend: 0,
        };
        c.axes(x_title, y_title);
        c
    }

    fn px(&self, x: f64, y: f64) -> (f64, f64) {
        let w = WIDTH - LEFT - RIGHT;
        let h = HEIGHT - TOP - BOTTOM;
        (LEFT + self.x.frac(x) * w, TOP + h - self.y.frac(y) * h)
    }

    fn axes(&mut self, x_title: &str, y_title: &str) {
        let (x0, y0) = (LEFT, HEIGHT - BOTTOM);
        let (x1, y1) = (WIDTH - RIGHT, TOP);
        let x_ticks: Vec<(f64, String)> = if self.x_labels.is_empty() {
            self.x.ticks().into_iter().map(|t| (t, label(t))).collect()
        } else {
            (0..self.x_labels.len())
                .map(|i| (i as f64, escape(&self.x_labels[i])))
                .collect()
        };
        for (t, text) in x_ticks {
            let (px, _) = self.px(t, self.y.min);
            let _ = writeln!(
                self.svg,
                r##"<line x1="{px:.1}" y1="{y1}" x2="{px:.1}" y2="{y0}" stroke="#e5e5e5"/><text x="{px:.1}" y="{}" text-anchor="middle">{text}</text>"##,
                y0 + 16.0,
            );
        }
        for t in self.y.ticks() {
            let (_, py) = self.px(self.x.min, t);
            let _ = writeln!(
                self.svg,
                r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                py + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            self.svg,
            r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(22 {}) rotate(-90)" text-anchor="middle">{}</text>"##,
            x1 - x0,
            y0 - y1,
            (x0 + x1) / 2.0,
            HEIGHT - 18.0,
            escape(x_title),
            (y0 + y1) / 2.0,
            escape(y_title)
        );
    }

    fn polyline(&mut self, points: &[(f64, f64)], color: &str, dashed: bool) {
        if points.is_empty() {
            return;
        }
        let mut d = String::new();
        for &(x, y) in points {
            let (px, py) = self.px(x, y);
            let _ = write!(d, "{px:.1},{py:.1} ");
        }
        let _ = writeln!(
            self.svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{}/>"#,
            d.trim_end(),
            if dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            }
        );
    }

    /// A circle of radius `r` (series drawn later get smaller marks, so marks at the same
    /// point stay visible as rings).
    fn mark(&mut self, x: f64, y: f64, r: f64, color: &str, filled: bool) {
        let (px, py) = self.px(x, y);
        let _ = writeln!(
            self.svg,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="{r:.1}" stroke="{color}" stroke-width="1.5" fill="{}"/>"#,
            if filled { color } else { "white" }
        );
    }

    fn legend(&mut self, text: &str, color: &str, dashed: bool) {
        let x = WIDTH - RIGHT + 14.0;
        let y = TOP + 10.0 + 20.0 * self.legend as f64;
        self.legend += 1;
        let _ = writeln!(
            self.svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"{}/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            if dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            x + 30.0,
            y + 4.0,
            escape(text)
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

/// `throughput.svg`.
pub fn throughput(results: &Results) -> String {
    let max = results
        .targets
        .iter()
        .flat_map(|t| &t.trials)
        .flat_map(|t| [t.achieved_pps, t.received_pps.unwrap_or(0.0)])
        .fold(1.0, f64::max);
    let axis = Axis::linear(max);
    let mut c = Chart::new(
        "Received against offered load",
        axis,
        axis,
        "offered datagrams/s (achieved by the generator)",
        "datagrams/s received by the target",
    );
    c.polyline(&[(0.0, 0.0), (axis.max, axis.max)], "#999", true);
    c.legend("all received", "#999", true);
    for (i, t) in results.targets.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64, bool)> = t
            .trials
            .iter()
            .filter_map(|tr| Some((tr.achieved_pps, tr.received_pps?, tr.lossless)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
        c.polyline(&line, color, false);
        let r = (7.0 - 1.5 * i as f64).max(2.5);
        for &(x, y, lossless) in &pts {
            c.mark(x, y, r, color, lossless);
        }
        c.legend(&t.name, color, false);
    }
    c.legend("filled: lossless trial", "#fff", false);
    c.finish()
}

/// `latency.svg`.
pub fn latency(results: &Results) -> String {
    let series: Vec<_> = results
        .targets
        .iter()
        .filter_map(|t| Some((t.name.as_str(), t.latency.as_ref()?)))
        .collect();
    let values = series
        .iter()
        .flat_map(|(_, l)| l.durable_cdf.iter().chain(&l.crash_line_cdf))
        .map(|p| p.0);
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let x = if hi > 0.0 && lo > 0.0 && hi / lo > 100.0 {
        Axis::log(lo, hi)
    } else {
        Axis::linear(hi.max(1.0))
    };
    let y = Axis {
        min: 0.0,
        max: 1.0,
        log: false,
    };
    let mut c = Chart::new(
        "End-to-end latency, crashes one at a time (CDF)",
        x,
        y,
        "milliseconds",
        "share of dumps",
    );
    for (i, (name, l)) in series.iter().enumerate() {
        let color = COLORS[(i + 1) % COLORS.len()];
        let steps = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
            let mut out = Vec::with_capacity(pts.len() * 2);
            let mut prev = 0.0;
            for &(v, share) in pts {
                out.push((v, prev));
                out.push((v, share));
                prev = share;
            }
            out
        };
        c.polyline(&steps(&l.durable_cdf), color, false);
        c.polyline(&steps(&l.crash_line_cdf), color, true);
        c.legend(&format!("{name}, durable"), color, false);
        c.legend(&format!("{name}, crash line"), color, true);
    }
    c.finish()
}

/// `latency_load.svg`.
pub fn latency_load<'r>(results: &'r Results) -> String {
    // Per target: (load index, durable, crash line) for every load it was measured at.
    type Point<'a> = (usize, Option<&'a Summary>, Option<&'a Summary>);
    let mut series: Vec<(String, Vec<Point<'r>>)> = Vec::new();
    for t in &results.targets {
        let pts: Vec<Point<'r>> = t
            .loads()
            .iter()
            .enumerate()
            .filter_map(|(i, (_, l))| l.map(|l| (i, Some(&l.durable), Some(&l.crash_line))))
            .collect();
        if !pts.is_empty() {
            series.push((t.name.clone(), pts));
        }
    }
    let storm_at = LOADS.len() - 1;
    for st in results.storms() {
        let p = (
            storm_at,
            st.durable_latency.as_ref(),
            st.crash_line_latency.as_ref(),
        );
        match series.iter_mut().find(|(name, _)| *name == st.target) {
            Some((_, pts)) => pts.push(p),
            None => series.push((st.target.clone(), vec![p])),
        }
    }
    let values = series
        .iter()
        .flat_map(|(_, pts)| pts)
        .flat_map(|&(_, d, c)| [d, c])
        .flatten()
        .flat_map(|s| [s.median_ms, s.p99_ms])
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let y = if hi > 0.0 && hi / lo > 10.0 {
        Axis::log(lo, hi)
    } else {
        Axis::linear(hi.max(1.0))
    };
    let x = Axis {
        min: -0.5,
        max: LOADS.len() as f64 - 0.5,
        log: false,
    };
    let mut c = Chart::with_x_labels(
        "Latency under load: last packet to durable, first packet to crash line (p99; hollow: median)",
        x,
        y,
        &LOADS,
        "load (percentages of the target's lossless rate)",
        "milliseconds",
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[(i + 1) % COLORS.len()];
        for dashed in [false, true] {
            // Solid: last packet to durable; dashed: first packet to crash line.
            let pick = |p: &Point<'r>| -> Option<&'r Summary> {
                if dashed {
                    p.2
                } else {
                    p.1
                }
            };
            let line: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|p| Some((p.0 as f64, pick(p)?.p99_ms)))
                .collect();
            c.polyline(&line, color, dashed);
            for p in pts {
                if let Some(s) = pick(p) {
                    c.mark(p.0 as f64, s.p99_ms, 3.5, color, true);
                    c.mark(p.0 as f64, s.median_ms, 3.5, color, false);
                }
            }
        }
        c.legend(&format!("{name}, durable"), color, false);
        c.legend(&format!("{name}, crash line"), color, true);
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::{Latency, TargetResult, Trial};

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(19_000.0), 20_000.0);
        assert_eq!(nice_step(5.0), 5.0);
        assert_eq!(nice_ceiling(123_456.0), 150_000.0);
        assert_eq!(
            Axis::linear(9.0).ticks(),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(
            Axis::log(0.7, 250.0).ticks(),
            vec![0.1, 1.0, 10.0, 100.0, 1000.0]
        );
        assert_eq!(label(120_000.0), "120k");
        assert_eq!(label(2.5e6), "2.5M");
        assert_eq!(label(0.5), "0.5");
    }

    #[test]
    fn plots_are_svg_with_a_series_per_target() {
        let mut r = Results::default();
        for (name, cap) in [("baseline", 100_000.0), ("hosted-relay", 40_000.0)] {
            r.targets.push(TargetResult {
                name: name.into(),
                trials: [100_000.0, 50_000.0, 25_000.0]
                    .iter()
                    .map(|&x: &f64| Trial {
                        achieved_pps: x,
                        received_pps: Some(x.min(cap)),
                        lossless: x <= cap,
                        ..Trial::default()
                    })
                    .collect(),
                latency: (name != "baseline").then(|| Latency {
                    durable_cdf: vec![(1.0, 0.5), (300.0, 1.0)],
                    crash_line_cdf: vec![(0.5, 0.5), (2.0, 1.0)],
                    ..Latency::default()
                }),
                ..TargetResult::default()
            });
        }
        let t = throughput(&r);
        assert!(t.starts_with("<svg") && t.ends_with("</svg>\n"));
        assert_eq!(t.matches("<polyline").count(), 3);
        assert_eq!(t.matches("<circle").count(), 6);
        assert!(t.contains(">hosted-relay<"));
        let l = latency(&r);
        assert_eq!(l.matches("<polyline").count(), 2);
        assert!(l.contains("hosted-relay, durable"));
        // 0.5 ms to 300 ms: a log axis with decade ticks.
        assert!(l.contains(">1k<") && l.contains(">0.1<"), "{l}");

        // Under load: the latency run's point only so far, then half, full and the storm.
        let s = |median_ms: f64, p99_ms: f64| Summary {
            count: 10,
            median_ms,
            p99_ms,
            ..Summary::default()
        };
        let hosted = &mut r.targets[1];
        hosted.latency.as_mut().unwrap().durable = s(1.0, 2.0);
        hosted.latency.as_mut().unwrap().crash_line = s(0.5, 1.0);
        for (slot, k) in [
            (&mut hosted.latency_at_half_rate, 2.0),
            (&mut hosted.latency_at_lossless_rate, 4.0),
        ] {
            *slot = Some(Latency {
                durable: s(k, 2.0 * k),
                crash_line: s(k / 2.0, k),
                ..Latency::default()
            });
        }
        r.hosted_storm = Some(crate::harness::report::StormResult {
            target: "hosted-relay".into(),
            durable_latency: Some(s(100.0, 900.0)),
            crash_line_latency: Some(s(5.0, 20.0)),
            ..Default::default()
        });
        let ll = latency_load(&r);
        assert!(ll.starts_with("<svg") && ll.ends_with("</svg>\n"));
        // One series per relay target, both latencies: two lines of four points each.
        assert_eq!(ll.matches("<polyline").count(), 2, "{ll}");
        assert_eq!(ll.matches("<circle").count(), 4 * 2 * 2);
        for load in LOADS {
            assert!(ll.contains(&format!(">{load}<")), "{load}: {ll}");
        }
        // 0.5 ms to 900 ms: decades.
        assert!(ll.contains(">1k<") && ll.contains(">0.1<"), "{ll}");
        assert!(ll.contains("hosted-relay, crash line"));
    }
}
