//! The safetensors files of `mixneg loss`: the input ([`LossFile`]: reader
//! and writer) and the output ([`LossResult`]: writer and reader) — in the
//! library so that they are fuzzed and tested like the rest (`fuzz/`,
//! `tests/fuzz_corpus.rs`: every parsed file is written back and must read
//! back to the same bytes). Every malformed file is an error naming what is
//! wrong; nothing here panics on any input.

use crate::Error;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

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
) -> Result<(Vec<f32>, Vec<usize>), Error> {
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

fn check(t: &TensorView<'_>, name: &str, rank: usize, dtype: Dtype) -> Result<(), Error> {
    if t.dtype() != dtype {
        return Err(format!(
            "tensor `{name}` has dtype {:?}, expected {dtype:?}",
            t.dtype()
        )
        .into());
    }
    if t.shape().len() != rank {
        return Err(format!(
            "tensor `{name}` has shape {:?}, expected rank {rank}",
            t.shape()
        )
        .into());
    }
    Ok(())
}

impl LossFile {
    /// Parse a safetensors file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let (u, us) = read_f32(&st, "u", 2)?;
        let (v, vs) = read_f32(&st, "v", 2)?;
        let (log_q, _) = read_f32(&st, "log_q", 1)?;
        if us[1] != vs[1] {
            return Err(format!("u is {us:?} and v is {vs:?}: their K differ").into());
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
                        )
                        .into());
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
                return Err(
                    format!("metadata correct_positive = {s:?}: expected true or false").into(),
                );
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

/// Serializes named tensors (dtype, shape, little-endian bytes) with
/// metadata, in the order given.
fn serialize(
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, Error> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dt, shape, data)| {
            TensorView::new(*dt, shape.clone(), data).map(|t| (*name, t))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok(safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())?)
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|f| f.to_le_bytes()).collect()
}

impl LossFile {
    /// The file's bytes: `u` \[B,K\], `v` \[N,K\], `log_q` \[N\] as F32, `ids` \[N\]
    /// as I64 and `row_weight` \[B\] when present, and the metadata keys
    /// `temperature` and `correct_positive` when set. [`LossFile::parse`]
    /// reads it back to the same value.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut t = vec![
            ("u", Dtype::F32, vec![self.b, self.k], f32_bytes(&self.u)),
            ("v", Dtype::F32, vec![self.n, self.k], f32_bytes(&self.v)),
            (
                "log_q",
                Dtype::F32,
                vec![self.log_q.len()],
                f32_bytes(&self.log_q),
            ),
        ];
        if let Some(ids) = &self.ids {
            let bytes = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
            t.push(("ids", Dtype::I64, vec![ids.len()], bytes));
        }
        if let Some(w) = &self.row_weight {
            t.push(("row_weight", Dtype::F32, vec![w.len()], f32_bytes(w)));
        }
        let mut meta = HashMap::new();
        if let Some(x) = self.temperature {
            meta.insert("temperature".to_string(), x.to_string());
        }
        if let Some(x) = self.correct_positive {
            meta.insert("correct_positive".to_string(), x.to_string());
        }
        serialize(&t, meta)
    }
}

/// The output of `mixneg loss`: `loss` \[1\], `d_u` \[B,K\], `d_v` \[N,K\], `lse`
/// \[B\], `row_loss` \[B\] and `d_temperature` \[1\] as F32, with the τ and diagonal convention used
/// as metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LossResult {
    /// The loss L.
    pub loss: f32,
    /// ∂L/∂U, B×K.
    pub d_u: Vec<f32>,
    /// ∂L/∂V, N×K.
    pub d_v: Vec<f32>,
    /// lse per row.
    pub lse: Vec<f32>,
    /// ℓ per row.
    pub row_loss: Vec<f32>,
    /// ∂L/∂τ.
    pub d_temperature: f32,
    /// B.
    pub b: usize,
    /// N.
    pub n: usize,
    /// K.
    pub k: usize,
    /// The temperature used.
    pub temperature: f32,
    /// Whether the diagonal was corrected.
    pub correct_positive: bool,
}

impl LossResult {
    /// The result of a call on a B×N×K problem.
    pub fn new(
        out: &mixneg::MnsOutput,
        (b, n, k): (usize, usize, usize),
        temperature: f32,
        correct_positive: bool,
    ) -> Self {
        Self {
            loss: out.loss,
            d_u: out.d_u.clone(),
            d_v: out.d_v.clone(),
            lse: out.lse.clone(),
            row_loss: out.row_loss.clone(),
            d_temperature: out.d_temperature,
            b,
            n,
            k,
            temperature,
            correct_positive,
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let (b, n, k) = (self.b, self.n, self.k);
        let t = [
            ("loss", Dtype::F32, vec![1], f32_bytes(&[self.loss])),
            ("d_u", Dtype::F32, vec![b, k], f32_bytes(&self.d_u)),
            ("d_v", Dtype::F32, vec![n, k], f32_bytes(&self.d_v)),
            ("lse", Dtype::F32, vec![b], f32_bytes(&self.lse)),
            ("row_loss", Dtype::F32, vec![b], f32_bytes(&self.row_loss)),
            (
                "d_temperature",
                Dtype::F32,
                vec![1],
                f32_bytes(&[self.d_temperature]),
            ),
        ];
        let meta = HashMap::from([
            ("temperature".to_string(), self.temperature.to_string()),
            (
                "correct_positive".to_string(),
                self.correct_positive.to_string(),
            ),
        ]);
        serialize(&t, meta)
    }

    /// Parses what [`LossResult::to_bytes`] writes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let (loss, ls) = read_f32(&st, "loss", 1)?;
        let (d_u, us) = read_f32(&st, "d_u", 2)?;
        let (d_v, vs) = read_f32(&st, "d_v", 2)?;
        let (lse, es) = read_f32(&st, "lse", 1)?;
        let (row_loss, rs) = read_f32(&st, "row_loss", 1)?;
        let (d_temperature, ts) = read_f32(&st, "d_temperature", 1)?;
        if ls != [1] || ts != [1] || us[1] != vs[1] || es != [us[0]] || rs != [us[0]] {
            return Err(format!(
                "inconsistent shapes: loss {ls:?}, d_u {us:?}, d_v {vs:?}, lse {es:?}, row_loss {rs:?}, d_temperature {ts:?}"
            )
            .into());
        }
        let get = |key: &str| {
            meta.get(key)
                .ok_or_else(|| Error::from(format!("metadata `{key}` missing")))
        };
        let temperature = get("temperature")?;
        let temperature = temperature
            .parse::<f32>()
            .map_err(|e| format!("metadata temperature = {temperature:?}: {e}"))?;
        let correct_positive = match get("correct_positive")?.as_str() {
            "true" => true,
            "false" => false,
            s => return Err(format!("metadata correct_positive = {s:?}").into()),
        };
        Ok(Self {
            loss: loss[0],
            d_u,
            d_v,
            lse,
            row_loss,
            d_temperature: d_temperature[0],
            b: us[0],
            n: vs[0],
            k: us[1],
            temperature,
            correct_positive,
        })
    }
}
