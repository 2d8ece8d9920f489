//! The safetensors input of `mixneg loss`, parsed into owned data — in the
//! library so that it is fuzzed and tested like the rest (`fuzz/`,
//! `tests/fuzz_corpus.rs`). Every malformed file is an error naming what is
//! wrong; nothing here panics on any input.

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

/// The tensors and options of one `mixneg loss` input file.
#[derive(Debug, Clone, PartialEq)]
pub struct LossFile {
    /// B×K queries.
    pub u: Vec<f32>,
    /// N×K candidates.
    pub v: Vec<f32>,
    /// N sampling log-probabilities.
    pub log_q: Vec<f32>,
    /// Optional N item ids (I64 or I32 in the file).
    pub ids: Option<Vec<i64>>,
    /// Optional B row weights.
    pub row_weight: Option<Vec<f32>>,
    /// B.
    pub b: usize,
    /// N.
    pub n: usize,
    /// K.
    pub k: usize,
    /// Metadata `temperature`, if present.
    pub temperature: Option<f32>,
    /// Metadata `correct_positive`, if present.
    pub correct_positive: Option<bool>,
}

fn read_f32(
    st: &SafeTensors<'_>,
    name: &str,
    rank: usize,
) -> Result<(Vec<f32>, Vec<usize>), String> {
    let t = st
        .tensor(name)
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    check(&t, name, rank, Dtype::F32)?;
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((v, t.shape().to_vec()))
}

fn check(t: &TensorView<'_>, name: &str, rank: usize, dtype: Dtype) -> Result<(), String> {
    if t.dtype() != dtype {
        return Err(format!(
            "tensor `{name}` has dtype {:?}, expected {dtype:?}",
            t.dtype()
        ));
    }
    if t.shape().len() != rank {
        return Err(format!(
            "tensor `{name}` has shape {:?}, expected rank {rank}",
            t.shape()
        ));
    }
    Ok(())
}

impl LossFile {
    /// Parse a safetensors file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let (u, us) = read_f32(&st, "u", 2)?;
        let (v, vs) = read_f32(&st, "v", 2)?;
        let (log_q, _) = read_f32(&st, "log_q", 1)?;
        if us[1] != vs[1] {
            return Err(format!("u is {us:?} and v is {vs:?}: their K differ"));
        }
        let ids = match st.tensor("ids") {
            Err(_) => None,
            Ok(t) => {
                let d = t.data();
                Some(match t.dtype() {
                    Dtype::I64 => {
                        check(&t, "ids", 1, Dtype::I64)?;
                        d.chunks_exact(8)
                            .map(|c| {
                                i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                            })
                            .collect()
                    }
                    Dtype::I32 => {
                        check(&t, "ids", 1, Dtype::I32)?;
                        d.chunks_exact(4)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                            .collect()
                    }
                    other => {
                        return Err(format!(
                            "tensor `ids` has dtype {other:?}, expected I64 or I32"
                        ));
                    }
                })
            }
        };
        let row_weight = match st.tensor("row_weight") {
            Ok(_) => Some(read_f32(&st, "row_weight", 1)?.0),
            Err(_) => None,
        };
        let temperature = match meta.get("temperature") {
            Some(s) => Some(
                s.parse::<f32>()
                    .map_err(|e| format!("metadata temperature = {s:?}: {e}"))?,
            ),
            None => None,
        };
        let correct_positive = match meta.get("correct_positive").map(String::as_str) {
            None => None,
            Some("true") | Some("1") => Some(true),
            Some("false") | Some("0") => Some(false),
            Some(s) => {
                return Err(format!(
                    "metadata correct_positive = {s:?}: expected true or false"
                ));
            }
        };
        Ok(Self {
            u,
            v,
            log_q,
            ids,
            row_weight,
            b: us[0],
            n: vs[0],
            k: us[1],
            temperature,
            correct_positive,
        })
    }

    /// The loss input, with τ and the diagonal convention given.
    pub fn input(&self, temperature: f32, correct_positive: bool) -> mixneg::MnsInput<'_> {
        let mut x = mixneg::MnsInput::new(&self.u, &self.v, &self.log_q, self.k)
            .temperature(temperature)
            .correct_positive(correct_positive);
        if let Some(ids) = &self.ids {
            x = x.ids(ids);
        }
        if let Some(w) = &self.row_weight {
            x = x.row_weight(w);
        }
        x
    }
}
