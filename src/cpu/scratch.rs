//! Scratch management: 64-byte-aligned buffers, and the pool that keeps one
//! call's large buffers for the next (see [`super::CpuBackend`]).

use rayon::prelude::*;

/// A zero-filled f32 buffer whose first element is 64-byte aligned (one
/// cache line, one zmm register). The kernels' row strides are multiples of
/// 16 floats, so every vector they load or store is then line-aligned;
/// `Vec<f32>` only guarantees 4 bytes (large allocations come back at
/// 16 bytes past a page), which made most 64-byte accesses straddle two
/// lines. Safe code: the alignment is found with `align_offset` and the
/// buffer over-allocated by one line.
pub(crate) struct Aligned {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl Aligned {
    /// `len` zeros, starting on a 64-byte boundary.
    pub(crate) fn zeroed(len: usize) -> Self {
        let buf = vec![0.0f32; len + 16];
        let off = buf.as_ptr().align_offset(64);
        assert!(off < 16, "f32 buffer cannot be 64-byte aligned");
        Self { buf, off, len }
    }

    /// `len` zeros, in this buffer's memory if it is large enough (zeroed in
    /// parallel, already paged in) but not more than 4× too large (so that
    /// one huge call does not pin its memory behind later small ones), else
    /// in a new one (this one freed first).
    pub(crate) fn recycle(self, len: usize) -> Self {
        let fits = self.buf.len() >= len + 16;
        let oversized = self.buf.len() > 4 * (len + 16) + (1 << 16);
        if fits && !oversized {
            // `off` (< 16) still aligns the same allocation; off + len fits.
            let mut a = Self { len, ..self };
            a.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
            a
        } else {
            drop(self);
            Self::zeroed(len)
        }
    }
}

impl Default for Aligned {
    /// An empty buffer (to be [`Aligned::recycle`]d).
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            off: 0,
            len: 0,
        }
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// The large buffers of one call, kept between calls (see
/// [`super::CpuBackend`]): the packed inputs, the dV accumulator and, per
/// column part, its strip, dU share and scaled U rows.
#[derive(Default)]
pub(crate) struct Scratch {
    pub up: Aligned,
    pub ug: Aligned,
    pub vp: Aligned,
    pub vt: Aligned,
    pub dv: Aligned,
    pub parts: Vec<[Aligned; 4]>,
}

/// Idle [`Scratch`]es: a call takes one (or starts empty) and puts it back,
/// so concurrent calls on one backend (or its clones) each get their own.
#[derive(Default)]
pub(crate) struct ScratchPool(std::sync::Mutex<Vec<Scratch>>);

impl ScratchPool {
    /// An idle scratch, or an empty one.
    pub fn take(&self) -> Scratch {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        idle.pop().unwrap_or_default()
    }

    /// Gives a scratch back for later calls.
    pub fn put(&self, s: Scratch) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// Frees every idle scratch.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl std::fmt::Debug for ScratchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.0.lock().map_or(0, |v| v.len());
        write!(f, "ScratchPool({idle} idle)")
    }
}
