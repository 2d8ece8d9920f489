//! Dense products through the `gemm` crate (the towers, the worlds' planted
//! scores and the evaluation's scores).

/// C (m×n) = A·B through the `gemm` crate, with A and B given by their
/// column and row strides (so that transposes are free) and C row-major.
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_cs: isize,
    a_rs: isize,
    b: &[f32],
    b_cs: isize,
    b_rs: isize,
    c: &mut [f32],
) {
    let extent = |rows: usize, cols: usize, cs: isize, rs: isize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs as usize + (cols - 1) * cs as usize + 1
        }
    };
    assert!(
        a.len() >= extent(m, k, a_cs, a_rs)
            && b.len() >= extent(k, n, b_cs, b_rs)
            && c.len() >= m * n
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assert above makes every pointer cover the elements its
    // strides reach; c does not alias a or b (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// C (m×n) = A (m×k) · B (k×n), all row-major (`trans_b`: B given as n×k).
pub fn matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], trans_b: bool, c: &mut [f32]) {
    let (b_cs, b_rs) = if trans_b {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    gemm_strided(m, n, k, a, 1, k as isize, b, b_cs, b_rs, c)
}

/// C (k×n) = Aᵀ · B with A m×k and B m×n, row-major.
pub fn matmul_at_b(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_strided(k, n, m, a, k as isize, 1, b, 1, n as isize, c)
}
