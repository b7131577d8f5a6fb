//! Axis permutations that move single elements, on the CPU: a (batched) 2-D transpose in
//! 16 x 16 tiles. candle copies a permuted tensor element by element through a strided index
//! unless a contiguous run of elements survives the permutation; ConvNeXt's blocks move
//! channels last and back ([N, C, H, W] <-> [N, H, W, C]) four times per block and pass, which
//! left no run longer than one element: 5 % of a ConvNeXt-Tiny SmoothGrad.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::elementwise::f32_data;
use super::fresh::written_in_chunks;
use crate::error::Result;

/// Output rows per parallel task: enough for about 32k elements, in whole tiles.
const CHUNK_ELEMENTS: usize = 1 << 15;

/// The side of the square tiles: a tile's 16 reads of a source row share one 64-byte line, and
/// so do its 16 writes of an output row.
const TILE: usize = 16;

/// `x` with its axes in `order`, when the permutation is a transpose of two groups of axes
/// (behind a group it keeps in front) that leaves no contiguous run: None otherwise, where
/// candle's strided copy is the right tool (or nothing moves).
pub fn permute_as_transpose(x: &Tensor, order: &[usize]) -> Result<Option<Tensor>> {
    let Some((batch, rows, cols)) = as_batched_transpose(x.dims(), order) else {
        return Ok(None);
    };
    let op = Transpose { batch, rows, cols };
    let permuted_shape: Vec<usize> = order.iter().map(|&axis| x.dims()[axis]).collect();
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?.reshape(permuted_shape)?))
}

/// (batch, rows, cols) when moving `dims` to `order` is out[b][c][r] = x[b][r][c] for x seen
/// as [batch, rows, cols], with rows and cols both longer than one element.
fn as_batched_transpose(dims: &[usize], order: &[usize]) -> Option<(usize, usize, usize)> {
    // Axes of one element go anywhere for free; the rest, numbered in input order.
    let rank_of = |axis: usize| dims[..axis].iter().filter(|&&d| d != 1).count();
    let moved: Vec<usize> = order
        .iter()
        .filter(|&&axis| dims[axis] != 1)
        .map(|&axis| rank_of(axis))
        .collect();
    let sizes: Vec<usize> = dims.iter().copied().filter(|&d| d != 1).collect();
    // Runs of axes that stay neighbours in order: (first input rank, elements).
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, &rank) in moved.iter().enumerate() {
        match groups.last_mut() {
            Some((_, elements)) if i > 0 && moved[i - 1] + 1 == rank => *elements *= sizes[rank],
            _ => groups.push((rank, sizes[rank])),
        }
    }
    // Each group's place in the input: the output holds them in order [1, 0] or [0, 2, 1].
    let place: Vec<usize> = groups
        .iter()
        .map(|&(rank, _)| groups.iter().filter(|other| other.0 < rank).count())
        .collect();
    match place[..] {
        [1, 0] => Some((1, groups[1].1, groups[0].1)),
        [0, 2, 1] => Some((groups[0].1, groups[2].1, groups[1].1)),
        _ => None,
    }
}

/// out[b][c][r] = x[b][r][c] for x as [batch, rows, cols].
struct Transpose {
    batch: usize,
    rows: usize,
    cols: usize,
}

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        "batched-transpose"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let &Transpose { batch, rows, cols } = self;
        // Output rows (each `rows` long) per task: whole tiles, about CHUNK_ELEMENTS.
        let rows_per_task = (CHUNK_ELEMENTS / rows.max(1)).div_ceil(TILE).max(1) * TILE;
        // SAFETY: each task writes every element of its output rows, below.
        let out = unsafe {
            written_in_chunks(x, rows_per_task * rows, |task, _, out| {
                let first_row = task * rows_per_task;
                let mut done = 0;
                while done * rows < out.len() {
                    // A tile's rows: output rows c0.. of one batch element.
                    let (b, c0) = ((first_row + done) / cols, (first_row + done) % cols);
                    let tile_rows = TILE.min(cols - c0).min(out.len() / rows - done);
                    let source = &x[b * rows * cols..][..rows * cols];
                    let out = &mut out[done * rows..][..tile_rows * rows];
                    for r0 in (0..rows).step_by(TILE) {
                        let r_end = (r0 + TILE).min(rows);
                        for (k, out_row) in out.chunks_exact_mut(rows).enumerate() {
                            for (o, r) in out_row[r0..r_end].iter_mut().zip(r0..r_end) {
                                o.write(source[r * cols + c0 + k]);
                            }
                        }
                    }
                    done += tile_rows;
                }
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((batch, cols, rows))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{as_batched_transpose, permute_as_transpose};

    #[test]
    fn recognises_transposes_of_axis_groups() {
        // ConvNeXt's channels-last and back.
        assert_eq!(
            as_batched_transpose(&[2, 96, 56, 56], &[0, 2, 3, 1]),
            Some((2, 96, 3136))
        );
        assert_eq!(
            as_batched_transpose(&[2, 56, 56, 96], &[0, 3, 1, 2]),
            Some((2, 3136, 96))
        );
        // A batch of one: a plain transpose; size-1 axes anywhere.
        assert_eq!(
            as_batched_transpose(&[1, 96, 56, 56], &[0, 2, 3, 1]),
            Some((1, 96, 3136))
        );
        assert_eq!(as_batched_transpose(&[5, 1, 7], &[2, 1, 0]), Some((1, 5, 7)));
        // Runs of elements survive (attention heads), nothing moves, or three groups move.
        assert_eq!(as_batched_transpose(&[2, 197, 6, 64], &[0, 2, 1, 3]), None);
        assert_eq!(as_batched_transpose(&[2, 3, 4], &[0, 1, 2]), None);
        assert_eq!(as_batched_transpose(&[2, 3, 4], &[2, 1, 0]), None);
        assert_eq!(as_batched_transpose(&[4, 1], &[1, 0]), None);
    }

    /// Equal to candle's strided copy on shapes that are not whole tiles, the tasks' seams too.
    #[test]
    fn matches_candles_copy() -> crate::error::Result<()> {
        let cases: [(&[usize], &[usize]); 5] = [
            (&[3, 37, 5, 7], &[0, 2, 3, 1]),
            (&[3, 5, 7, 37], &[0, 3, 1, 2]),
            (&[1, 600, 70], &[0, 2, 1]),
            (&[33, 1, 17], &[2, 1, 0]),
            (&[2, 3, 4, 5], &[1, 2, 3, 0]),
        ];
        for (dims, order) in cases {
            let n: usize = dims.iter().product();
            let x = Tensor::arange(0f32, n as f32, &Device::Cpu)?.reshape(dims)?;
            let ours = permute_as_transpose(&x, order)?.expect("a transpose");
            let candle = x.permute(order)?.contiguous()?;
            assert_eq!(ours.dims(), candle.dims());
            assert_eq!(
                ours.flatten_all()?.to_vec1::<f32>()?,
                candle.flatten_all()?.to_vec1::<f32>()?,
                "{dims:?} to {order:?}"
            );
        }
        Ok(())
    }
}
