//! Trainer checkpoints: model, optimizer and frequency-estimator state plus
//! the position in the training stream, in one safetensors file written
//! atomically (write to a temporary file, fsync, rename, fsync the
//! directory). The file is the safetensors bytes followed by a 16-byte
//! trailer, [`MAGIC`] and the FNV-1a hash of *everything before it* —
//! header length, JSON header with the metadata (step, generator states,
//! reports, fingerprint) and every tensor — so that any changed byte, in any
//! region, is detected (FNV-1a's steps are bijections of its state: two
//! inputs that differ in one byte never hash alike). With the fingerprint of
//! the run's configuration, a corrupt, truncated or foreign file is refused
//! with an error and nothing is loaded.

use crate::Error;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The trainer's resumable state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Global step count (batches done).
    pub step: u64,
    /// Current epoch (1-based).
    pub epoch: usize,
    /// Batches done in the current epoch.
    pub step_in_epoch: usize,
    /// The sampling generator's state now.
    pub rng: u64,
    /// The generator's state at the start of the epoch (its shuffle).
    pub epoch_rng: u64,
    /// Sum of the epoch's batch losses so far.
    pub loss_sum: f64,
    /// Largest kernel-verification error so far in the epoch.
    pub max_err: f64,
    /// Finished epochs' CSV lines (epoch 0 included).
    pub reports: Vec<String>,
    /// Tower parameters and optimizer slots, query tower then item tower.
    pub tensors: Vec<Vec<f32>>,
    /// The frequency estimator's state.
    pub estimator: Vec<Vec<f64>>,
}

/// The trailer's first 8 bytes: format name and version.
pub const MAGIC: &[u8; 8] = b"MNSCKPT2";

/// The checkpoint file of a directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Write `state` atomically to `dir` for a run of configuration `fingerprint`.
pub fn save(dir: &Path, fingerprint: &str, state: &State) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let f32_bytes: Vec<Vec<u8>> = state
        .tensors
        .iter()
        .map(|t| t.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let f64_bytes: Vec<Vec<u8>> = state
        .estimator
        .iter()
        .map(|t| t.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = vec![];
    for (i, b) in f32_bytes.iter().enumerate() {
        views.push((
            format!("t{i:03}"),
            TensorView::new(Dtype::F32, vec![b.len() / 4], b).map_err(|e| e.to_string())?,
        ));
    }
    for (i, b) in f64_bytes.iter().enumerate() {
        views.push((
            format!("e{i:03}"),
            TensorView::new(Dtype::F64, vec![b.len() / 8], b).map_err(|e| e.to_string())?,
        ));
    }
    let meta: HashMap<String, String> = [
        ("fingerprint", fingerprint.to_string()),
        ("step", state.step.to_string()),
        ("epoch", state.epoch.to_string()),
        ("step_in_epoch", state.step_in_epoch.to_string()),
        ("rng", state.rng.to_string()),
        ("epoch_rng", state.epoch_rng.to_string()),
        ("loss_sum", state.loss_sum.to_bits().to_string()),
        ("max_err", state.max_err.to_bits().to_string()),
        ("reports", state.reports.join("\n")),
        ("tensors", state.tensors.len().to_string()),
        ("estimator", state.estimator.len().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut bytes = safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())?;
    let sum = fnv(FNV_OFFSET, &bytes);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&sum.to_le_bytes());
    let tmp = dir.join("checkpoint.safetensors.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path(dir)).map_err(|e| Error::io(path(dir), e))?;
    // The rename is durable once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    Ok(())
}

/// Read the checkpoint of `dir`, if any: `Ok(None)` when there is none, an
/// error when it is unreadable, corrupt or from another configuration.
pub fn load(dir: &Path, fingerprint: &str) -> Result<Option<State>, Error> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let bad = |why: String| Error::Invalid(format!("checkpoint {} refused: {why}", p.display()));
    let Some(body_len) = bytes.len().checked_sub(16) else {
        return Err(bad(format!("{} bytes: truncated", bytes.len())));
    };
    let (body, trailer) = bytes.split_at(body_len);
    if &trailer[..8] != MAGIC {
        return Err(bad(
            "no mixneg checkpoint trailer (truncated, or not a checkpoint)".into(),
        ));
    }
    let want = u64::from_le_bytes(trailer[8..].try_into().expect("8 bytes"));
    if fnv(FNV_OFFSET, body) != want {
        return Err(bad("checksum mismatch (corrupt file)".into()));
    }
    let st = SafeTensors::deserialize(body).map_err(|e| bad(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(body).map_err(|e| bad(e.to_string()))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("no metadata".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata `{k}` missing")))
    };
    let num = |k: &str| -> Result<u64, Error> {
        get(k)?
            .parse::<u64>()
            .map_err(|e| bad(format!("`{k}`: {e}")))
    };
    if get("fingerprint")? != fingerprint {
        return Err(bad(
            "it was written by a run with another configuration".into()
        ));
    }
    let mut tensors = vec![];
    for i in 0..num("tensors")? {
        let t = st
            .tensor(&format!("t{i:03}"))
            .map_err(|e| bad(e.to_string()))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor t{i:03} is {:?}", t.dtype())));
        }
        tensors.push(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    let mut estimator = vec![];
    for i in 0..num("estimator")? {
        let t = st
            .tensor(&format!("e{i:03}"))
            .map_err(|e| bad(e.to_string()))?;
        if t.dtype() != Dtype::F64 {
            return Err(bad(format!("tensor e{i:03} is {:?}", t.dtype())));
        }
        estimator.push(
            t.data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        );
    }
    Ok(Some(State {
        step: num("step")?,
        epoch: num("epoch")? as usize,
        step_in_epoch: num("step_in_epoch")? as usize,
        rng: num("rng")?,
        epoch_rng: num("epoch_rng")?,
        loss_sum: f64::from_bits(num("loss_sum")?),
        max_err: f64::from_bits(num("max_err")?),
        reports: get("reports")?.lines().map(str::to_string).collect(),
        tensors,
        estimator,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            step: 1234,
            epoch: 2,
            step_in_epoch: 17,
            rng: 0xDEAD_BEEF_1234_5678,
            epoch_rng: 42,
            loss_sum: 3.25,
            max_err: 1e-7,
            reports: vec!["0,nan,0.1".into(), "1,5.5,0.2".into()],
            tensors: vec![vec![1.0, -2.5, 3.0], vec![0.5; 5]],
            estimator: vec![vec![0.25, 7.0]],
        }
    }

    /// A flipped bit in *any* byte of the file — the header length, the
    /// JSON header (metadata: step, generator states, reports, the
    /// fingerprint), either tensor region, the trailer — is refused, and an
    /// intact file loads back exactly.
    #[test]
    fn every_corrupted_byte_is_refused() {
        let dir = std::env::temp_dir().join(format!("mixneg-ckpt-{}", std::process::id()));
        save(&dir, "fp", &state()).unwrap();
        assert_eq!(load(&dir, "fp").unwrap(), Some(state()));
        let good = std::fs::read(path(&dir)).unwrap();
        let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let text = String::from_utf8_lossy(&good[8..header]).into_owned();
        assert!(text.contains("\"step\":\"1234\""), "{text}");
        for at in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[at] ^= bit;
                std::fs::write(path(&dir), &bad).unwrap();
                let region = match at {
                    a if a < 8 => "header length",
                    a if a < header => "JSON header",
                    a if a < good.len() - 16 => "tensor data",
                    _ => "trailer",
                };
                let r = load(&dir, "fp");
                assert!(r.is_err(), "byte {at} ({region}) ^ {bit:#x} loaded: {r:?}");
            }
        }
        // Truncated anywhere, and another configuration's fingerprint.
        for len in [0, 8, good.len() / 2, good.len() - 1] {
            std::fs::write(path(&dir), &good[..len]).unwrap();
            assert!(load(&dir, "fp").is_err(), "truncated to {len} bytes");
        }
        std::fs::write(path(&dir), &good).unwrap();
        assert!(load(&dir, "other").is_err());
        assert_eq!(load(&dir, "fp").unwrap(), Some(state()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
