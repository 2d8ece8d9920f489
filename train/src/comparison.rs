//! The main job's comparison (`mixneg train`): the MNS model beside
//! corrected batch softmax trained on the same world, seed and epochs, with
//! the popularity list and the planted model — a table, a plain reading of
//! the difference, and a plot.

use crate::data::Dataset;
use crate::eval::Metrics;
use crate::{Error, TrainConfig};
use std::path::Path;

/// One row of the comparison: a model and its three figures.
#[derive(Debug, Clone)]
pub struct Row {
    /// The model's name.
    pub name: String,
    /// Recall@100 over all test interactions.
    pub recall100: f64,
    /// Low-quality intrusion@100: the share of the top 100 that is
    /// low-quality items.
    pub lowq100: f64,
    /// Recall@100 of the fresh items' test interactions.
    pub fresh100: f64,
}

impl Row {
    fn of(name: String, m: &Metrics) -> Row {
        let c = m.columns();
        Row {
            name,
            recall100: c[2],
            lowq100: c[11],
            fresh100: c[9],
        }
    }
}

/// The rows: batch softmax, MNS, the popularity list and (synthetic data)
/// the planted model.
pub fn rows(
    cfg: &TrainConfig,
    batch_softmax: &Metrics,
    mns: &Metrics,
    popularity: &Metrics,
    planted: Option<&Metrics>,
) -> Vec<Row> {
    let mut v = vec![
        Row::of(format!("batch softmax (B = {})", cfg.batch), batch_softmax),
        Row::of(
            format!("MNS (B = {}, B' = {})", cfg.batch, cfg.b_prime),
            mns,
        ),
        Row::of("popularity list".into(), popularity),
    ];
    if let Some(p) = planted {
        v.push(Row::of("planted model (knows all)".into(), p));
    }
    v
}

/// The table, with the fresh slice's count of test interactions.
pub fn print(rows: &[Row], data: &Dataset) {
    let fresh_tests = data
        .test
        .iter()
        .filter(|&&(_, i)| data.fresh[i as usize])
        .count();
    println!(
        "\n{:<30} {:>10} {:>16} {:>16}",
        "side by side", "Recall@100", "low-quality@100", "fresh Recall@100"
    );
    for r in rows {
        println!(
            "{:<30} {:>10.4} {:>16.4} {:>16.4}",
            r.name, r.recall100, r.lowq100, r.fresh100
        );
    }
    println!(
        "({} test interactions, {fresh_tests} of them with fresh items)",
        data.test.len()
    );
}

/// A paragraph in plain words: what the world is, and what the numbers of
/// the two models say — every clause computed from them.
pub fn reading(
    cfg: &TrainConfig,
    data: &Dataset,
    batch_softmax: &Metrics,
    mns: &Metrics,
) -> String {
    let (b, m) = (
        Row::of(String::new(), batch_softmax),
        Row::of(String::new(), mns),
    );
    let low = data.low_quality.iter().filter(|&&x| x).count();
    let fresh = data.fresh.iter().filter(|&&x| x).count();
    let n = data.n_items as f64;
    let world = if low > 0 {
        format!(
            "In this world {:.0}% of the {} items are low quality: users are shown them as often as \
             the others but choose them less, so they are rare in the training log. ",
            100.0 * low as f64 / n,
            data.n_items
        )
    } else {
        String::new()
    };
    let lowq = if low == 0 {
        String::new()
    } else if m.lowq100 < b.lowq100 {
        format!(
            "MNS, which adds {} items drawn uniformly from the whole corpus to each batch's negatives, \
             leaves {:.1}% low-quality items in an average top 100, against {:.1}% for batch softmax \
             ({:.1}x fewer). ",
            cfg.b_prime,
            100.0 * m.lowq100,
            100.0 * b.lowq100,
            b.lowq100 / m.lowq100.max(1e-12)
        )
    } else {
        format!(
            "MNS, which adds {} uniform corpus negatives to each batch, does not push low-quality \
             items out of the top 100 here ({:.1}% against {:.1}% for batch softmax). ",
            cfg.b_prime,
            100.0 * m.lowq100,
            100.0 * b.lowq100
        )
    };
    let recall = format!(
        "Its Recall@100 is {:.4} against {:.4} ({:+.4}). ",
        m.recall100,
        b.recall100,
        m.recall100 - b.recall100
    );
    let fresh_s = if fresh == 0 {
        String::new()
    } else {
        let verdict = if m.fresh100 == 0.0 && b.fresh100 == 0.0 {
            "neither model puts them in a top 100 (they have no feedback at all)"
        } else if m.fresh100 < b.fresh100 {
            "MNS ranks them lower: it pushes down every item without feedback, good ones included"
        } else {
            "MNS does not rank them lower"
        };
        format!(
            "The {fresh} fresh items never appear in the training log: their Recall@100 is {:.4} \
             with MNS and {:.4} with batch softmax — {verdict}. ",
            m.fresh100, b.fresh100
        )
    };
    format!(
        "{world}{lowq}{recall}{fresh_s}One world and one seed: `mixneg experiment` and \
         EXPERIMENTS.md give the differences over seeds with their intervals."
    )
}

/// A panel of the plot: its title and the figure it shows.
type Figure = (&'static str, fn(&Row) -> f64);

/// A bar chart of the rows' three figures (one panel each), as SVG.
pub fn plot(rows: &[Row], path: &Path) -> Result<(), Error> {
    use plotters::prelude::*;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let err = |e: String| Error::Invalid(format!("plot {}: {e}", path.display()));
    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((1, 3));
    let colors = [
        RGBColor(90, 90, 90),
        RGBColor(31, 119, 180),
        RGBColor(200, 200, 200),
        RGBColor(44, 160, 44),
    ];
    let figures: [Figure; 3] = [
        ("Recall@100", |r| r.recall100),
        ("low-quality intrusion@100", |r| r.lowq100),
        ("fresh Recall@100", |r| r.fresh100),
    ];
    for (panel, (title, get)) in panels.iter().zip(figures) {
        let top = rows.iter().map(get).fold(0.0f64, f64::max).max(1e-6) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(20)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..rows.len() as f64, 0.0..top)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, r) in rows.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series([Rectangle::new(
                    [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, get(r))],
                    c.filled(),
                )])
                .map_err(|e| err(e.to_string()))?
                .label(r.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
