//! Per-epoch reports as CSV lines: the `--metrics` file and the reports a
//! checkpoint carries.

use crate::{EpochReport, Error, eval};

pub(crate) const CSV_HEADER: &str = "epoch,loss,recall10,recall50,recall100,head100,tail100,fresh100,intrusion10,intrusion100,examples_per_s,loss_share";

pub(crate) fn csv_line(r: &EpochReport) -> String {
    let figures = r.metrics.headline().map(|x| x.to_string()).join(",");
    format!(
        "{},{},{figures},{},{}",
        r.epoch, r.loss, r.examples_per_s, r.loss_share
    )
}

/// The inverse of `csv_line` (for resumed runs; Recall@10/50 by class are
/// not in the CSV and come back as 0).
pub(crate) fn parse_csv_line(line: &str) -> Result<EpochReport, Error> {
    let v: Vec<f64> = line
        .split(',')
        .map(|x| {
            x.parse::<f64>()
                .map_err(|e| format!("report line {line:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if v.len() != 12 {
        return Err(format!("report line {line:?}: expected 12 fields").into());
    }
    let mut m = eval::Metrics {
        recall: [v[2], v[3], v[4]],
        ..Default::default()
    };
    (
        m.recall_by_class[0][2],
        m.recall_by_class[1][2],
        m.recall_by_class[2][2],
    ) = (v[5], v[6], v[7]);
    (m.tail_intrusion[0], m.tail_intrusion[2]) = (v[8], v[9]);
    Ok(EpochReport {
        epoch: v[0] as usize,
        loss: v[1],
        metrics: m,
        examples_per_s: v[10],
        loss_share: v[11],
        max_verify_error: 0.0,
    })
}

pub(crate) fn write_csv(f: &mut Option<std::fs::File>, r: &EpochReport) -> Result<(), Error> {
    use std::io::Write;
    if let Some(f) = f {
        writeln!(f, "{}", csv_line(r)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
