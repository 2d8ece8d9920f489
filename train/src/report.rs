//! Per-epoch reports as CSV lines: the `--metrics` file and the reports a
//! checkpoint carries.

use crate::{EpochReport, Error, eval};

pub(crate) fn csv_header() -> String {
    format!(
        "epoch,loss,{},examples_per_s,loss_share",
        eval::COLUMNS.join(",")
    )
}

pub(crate) fn csv_line(r: &EpochReport) -> String {
    let figures = r.metrics.columns().map(|x| x.to_string()).join(",");
    format!(
        "{},{},{figures},{},{}",
        r.epoch, r.loss, r.examples_per_s, r.loss_share
    )
}

/// The inverse of `csv_line` (for resumed runs; the figures that are not
/// in the CSV come back as 0).
pub(crate) fn parse_csv_line(line: &str) -> Result<EpochReport, Error> {
    let v: Vec<f64> = line
        .split(',')
        .map(|x| {
            x.parse::<f64>()
                .map_err(|e| format!("report line {line:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let n = eval::COLUMNS.len();
    if v.len() != n + 4 {
        return Err(format!("report line {line:?}: expected {} fields", n + 4).into());
    }
    let cols: [f64; 14] = v[2..2 + n].try_into().map_err(|_| "report line: columns")?;
    Ok(EpochReport {
        epoch: v[0] as usize,
        loss: v[1],
        metrics: eval::Metrics::from_columns(&cols),
        examples_per_s: v[n + 2],
        loss_share: v[n + 3],
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
