//! The sweep's charts (`sim --sweep`): one SVG per figure against the number of nodes on a log
//! axis, one line per churn rate, drawn with `plotters`' SVG backend (no font files needed: the
//! SVG names a font family and the viewer renders the text).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use crate::Figures;

/// One chart: its file name, title, axis label, value of a run, and the goal line it is read
/// against (if any).
struct Chart {
    file: &'static str,
    title: &'static str,
    y_desc: &'static str,
    value: fn(&Figures) -> Option<f64>,
    goal: Option<(f64, &'static str)>,
}

const CHARTS: [Chart; 4] = [
    Chart {
        file: "sim-makespan-ratio.svg",
        title: "makespan: mesh / central list scheduler",
        y_desc: "makespan ratio",
        value: |f| f.makespan_ratio,
        goal: Some((1.1, "goal without churn: 1.1")),
    },
    Chart {
        file: "sim-messages.svg",
        title: "messages received per node per derivation",
        y_desc: "messages / node / drv",
        value: |f| Some(f.messages_per_node_per_job),
        goal: None,
    },
    Chart {
        file: "sim-bytes.svg",
        title: "bytes received per node per derivation",
        y_desc: "KB / node / drv",
        value: |f| Some(f.bytes_per_node_per_job / 1000.0),
        goal: None,
    },
    Chart {
        file: "sim-memory.svg",
        title: "simulator peak memory (VmHWM)",
        y_desc: "peak RSS, MB",
        value: |f| f.peak_rss_bytes.map(|b| b as f64 / 1e6),
        goal: None,
    },
];

const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// Write every chart of `runs` into `dir`; returns the files written.
pub fn write_all(runs: &[Figures], dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for c in &CHARTS {
        let path = dir.join(c.file);
        let svg = draw(c, runs)?;
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        files.push(path.display().to_string());
    }
    Ok(files)
}

fn draw(c: &Chart, runs: &[Figures]) -> Result<String> {
    // churn (as text, to group floats) -> [(nodes, value)], averaged over seeds.
    let mut lines: BTreeMap<String, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for f in runs {
        if let Some(v) = (c.value)(f) {
            lines.entry(format!("{}", f.churn)).or_default().entry(f.nodes).or_default().push(v);
        }
    }
    let points: Vec<(String, Vec<(f64, f64)>)> = lines
        .into_iter()
        .map(|(churn, by_n)| {
            let pts = by_n.into_iter().map(|(n, v)| (n as f64, v.iter().sum::<f64>() / v.len() as f64)).collect();
            (churn, pts)
        })
        .collect();
    let xs = points.iter().flat_map(|(_, p)| p.iter().map(|x| x.0));
    let (x_lo, x_hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (x_lo, x_hi) = if x_lo > x_hi { (10.0, 10_000.0) } else { (x_lo / 1.5, x_hi * 1.5) };
    let ys = points.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).chain(c.goal.map(|g| g.0));
    let y_hi = ys.fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let y_lo = if c.goal.is_some() { 0.9f64.min(y_hi / 1.15 * 0.9) } else { 0.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(c.title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), y_lo..y_hi)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("nodes (log scale)")
            .y_desc(c.y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(RGBColor(235, 238, 241).stroke_width(1))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        if let Some((goal, label)) = c.goal {
            chart
                .draw_series(LineSeries::new([(x_lo, goal), (x_hi, goal)], RGBColor(120, 120, 120).stroke_width(1)))
                .map_err(|e| anyhow!("{e}"))?
                .label(label)
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RGBColor(120, 120, 120)));
        }
        for (i, (churn, pts)) in points.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("churn {churn} crashes/node/h"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(nodes: usize, churn: f64, ratio: f64) -> Figures {
        Figures {
            seed: 1,
            nodes,
            drvs: 100,
            replicas: 2,
            churn,
            makespan_s: Some(ratio * 100.0),
            central_makespan_s: Some(100.0),
            makespan_ratio: Some(ratio),
            duplicated_builds: 0,
            duplicated_fraction: 0.0,
            builds_started: 200,
            central_builds_started: 200,
            messages_per_node_per_job: 10.0,
            bytes_per_node_per_job: 2000.0,
            published_per_node_per_job: 0.1,
            announcements_per_node_per_job: 5.0,
            queued_build_s: 0.0,
            drvs_complete: 100,
            drvs_failed: 0,
            crashes: 0,
            violations: 0,
            wall_s: 1.0,
            peak_rss_bytes: Some(50_000_000),
            trace_hash: String::new(),
        }
    }

    #[test]
    fn charts_are_svg_with_one_line_per_churn_rate() {
        let runs = [fig(100, 0.0, 1.05), fig(1000, 0.0, 1.2), fig(100, 0.1, 1.3), fig(1000, 0.1, 1.4)];
        let svg = draw(&CHARTS[0], &runs).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("churn 0 crashes/node/h") && svg.contains("churn 0.1 crashes/node/h"));
        assert!(svg.contains("goal without churn"));
        // Each series' line is drawn in its colour (and its legend sample in the same).
        assert!(svg.matches("#1F77B4").count() >= 2 && svg.matches("#D62728").count() >= 2, "{svg}");
        // Charts for figures some runs lack (no peak memory) still draw.
        let mut none = fig(100, 0.0, 1.0);
        none.peak_rss_bytes = None;
        assert!(draw(&CHARTS[3], &[none]).unwrap().starts_with("<svg"));
    }
}
