//! The reproducibility trend as an SVG line chart drawn on the server with `plotters` (its SVG
//! backend; no script, no outside asset): per revision of a branch, the share of built jobs whose
//! builders match, do not match, or is a single builder's.

use plotters::prelude::*;

/// A line of the chart: its legend, colour and value.
type Series = (&'static str, RGBColor, fn(&TrendPoint) -> u64);

/// One revision of the trend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrendPoint {
    /// `C@ID`.
    pub revision: String,
    /// Its commit.
    pub commit: String,
    /// Unix ms it was made.
    pub created_at_ms: u64,
    /// Jobs whose builders agree.
    pub matching: u64,
    /// Jobs whose builders disagree.
    pub not_matching: u64,
    /// Jobs one builder attested.
    pub single: u64,
}

impl TrendPoint {
    fn pct(&self, n: u64) -> f64 {
        let total = self.matching + self.not_matching + self.single;
        if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 }
    }
}

/// The chart of `points` (oldest first) as an SVG document, or why it could not be drawn.
pub fn trend_svg(points: &[TrendPoint]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let last = points.len().saturating_sub(1).max(1) as i32;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0..last, 0f64..100f64)
            .map_err(|e| e.to_string())?;
        let label = |i: &i32| {
            points
                .get(usize::try_from(*i).unwrap_or(usize::MAX))
                .map(|p| p.commit.chars().take(8).collect::<String>())
                .unwrap_or_default()
        };
        chart
            .configure_mesh()
            .x_labels(points.len().clamp(2, 12))
            .x_label_formatter(&label)
            .y_desc("% of built jobs")
            .light_line_style(RGBColor(235, 238, 241).stroke_width(1))
            .draw()
            .map_err(|e| e.to_string())?;
        let series: [Series; 3] = [
            ("matching", RGBColor(26, 127, 55), |p| p.matching),
            ("not matching", RGBColor(207, 34, 46), |p| p.not_matching),
            ("single builder", RGBColor(154, 103, 0), |p| p.single),
        ];
        for (name, color, f) in series {
            let line: Vec<(i32, f64)> = points.iter().enumerate().map(|(i, p)| (i as i32, p.pct(f(p)))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart
                .draw_series(line.into_iter().map(|(x, y)| Circle::new((x, y), 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(209, 217, 224).stroke_width(1))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_series() {
        let p = |c: &str, m, n, s| TrendPoint {
            revision: format!("qa@{c}"),
            commit: c.into(),
            created_at_ms: 0,
            matching: m,
            not_matching: n,
            single: s,
        };
        let svg = trend_svg(&[p("r1", 10, 2, 1), p("r2", 11, 1, 0)]).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["matching", "not matching", "single builder", "r1", "r2"] {
            assert!(svg.contains(text), "{text} missing");
        }
        // One point is still a chart.
        assert!(trend_svg(&[p("r1", 1, 0, 0)]).is_ok());
        assert!(trend_svg(&[]).is_ok());
    }
}
