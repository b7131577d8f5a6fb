//! The one mechanism every gradient method shares: run a (possibly perturbed, possibly
//! stacked) batch forward, seed the target logits, and walk back to a node. Methods differ
//! only in which batches they build and how they combine what comes back.

use crate::error::{Error, Result};
use crate::graph::{Activations, Graph, NodeId};
use crate::layers::Layer;
use crate::model::Model;
use crate::tensor::{Device, Tensor};

/// Rows evaluated per pass when the caller does not say (bounds memory, keeps gemms full).
pub const DEFAULT_ROWS_PER_PASS: usize = 16;

/// The most path points (Integrated Gradients), noisy copies (SmoothGrad) or rows per pass
/// one explanation may ask for. 4096 passes of a ResNet-50 at 224x224 take minutes on a CPU,
/// with progress and cancel; a larger count is a slip (`--n-steps 1000000` would run for
/// hours), refused with this range.
pub const MAX_ROWS: usize = 4096;

/// Reports (done, total) steps; returning false cancels the run.
pub struct Progress<'a>(Option<&'a mut dyn FnMut(usize, usize) -> bool>);

impl<'a> Progress<'a> {
    pub fn new(callback: &'a mut dyn FnMut(usize, usize) -> bool) -> Self {
        Self(Some(callback))
    }

    pub fn none() -> Self {
        Self(None)
    }

    pub(crate) fn report(&mut self, done: usize, total: usize) -> Result<()> {
        match &mut self.0 {
            Some(callback) => match callback(done, total) {
                true => Ok(()),
                false => Err(Error::Cancelled),
            },
            None => Ok(()),
        }
    }
}

pub(crate) struct Probe<'a> {
    pub model: &'a Model,
    /// The model's graph the passes run on: [`Model::graph_for_gradients_at`] `at`.
    pub graph: &'a Graph,
    /// One target class per sample of the batch.
    pub targets: &'a [usize],
    /// Where the gradient is taken: the input (node 0) or a layer's output.
    pub at: NodeId,
    /// [`crate::graph::Activations::widest_row`] of a pass: sizes passes to the device.
    pub widest_row: usize,
    /// The most input rows one pass may hold within the explanation's memory budget.
    pub rows_in_memory: usize,
}

pub(crate) struct Pass {
    /// d(target logit)/d(output of `at`), one row per stacked row.
    pub gradient: Tensor,
    /// The output of `at` in this pass.
    pub activation: Tensor,
}

impl Probe<'_> {
    pub fn batch(&self) -> usize {
        self.targets.len()
    }

    /// Runs `input` = k stacked copies of the batch ([k*B, ...]); with `replace`, node `at`
    /// outputs it instead of its own value (layer IG).
    pub fn run(&self, input: &Tensor, replace: Option<&Tensor>) -> Result<Pass> {
        let activations = self.graph.forward(input, replace.map(|t| (self.at, t)))?;
        self.backward(&activations)
    }

    /// The backward half of `run`, from a forward pass already made.
    pub fn backward(&self, activations: &Activations) -> Result<Pass> {
        let graph = self.graph;
        let logits = activations.output();
        let (rows, classes) = (logits.dim(0)?, logits.dim(1)?);
        check_targets(self.targets, classes)?;
        let copies = rows / self.batch();
        let tiled: Vec<usize> = (0..copies).flat_map(|_| self.targets.iter().copied()).collect();
        let seed = one_hot(&tiled, classes, &logits.device())?;
        let gradient = graph.gradient(activations, graph.output_id(), seed, self.at)?;
        Ok(Pass {
            gradient,
            activation: activations.get(self.at).clone(),
        })
    }
}

impl Probe<'_> {
    /// d(target logit)/d(output of each of `nodes`), from one backward pass over a forward
    /// pass already made; zeros where the output does not depend on a node.
    pub fn gradients_at(&self, activations: &Activations, nodes: &[NodeId]) -> Result<Vec<Tensor>> {
        let graph = self.graph;
        let logits = activations.output();
        let classes = logits.dim(1)?;
        check_targets(self.targets, classes)?;
        let seed = one_hot(self.targets, classes, &logits.device())?;
        let mut kept: Vec<Option<Tensor>> = vec![None; nodes.len()];
        let first = nodes.iter().copied().min().unwrap_or(0);
        graph.backward(
            activations,
            graph.output_id(),
            seed,
            first.saturating_sub(1),
            &mut |id, node, inputs, output, signal| {
                if let Some(k) = nodes.iter().position(|&n| n == id) {
                    kept[k] = Some(signal.clone());
                }
                node.op.input_vjp(inputs, output, signal)
            },
        )?;
        nodes
            .iter()
            .zip(kept)
            .map(|(&id, grad)| grad.map_or_else(|| activations.get(id).zeros_like(), Ok))
            .collect()
    }
}

/// A one-hot [rows, classes] matrix with ones at `(row, targets[row])`.
pub(crate) fn one_hot(targets: &[usize], classes: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; targets.len() * classes];
    for (row, &t) in targets.iter().enumerate() {
        data[row * classes + t] = 1.0;
    }
    device.tensor(&data, &[targets.len(), classes])
}

pub(crate) fn check_targets(targets: &[usize], classes: usize) -> Result<()> {
    match targets.iter().find(|&&t| t >= classes) {
        Some(&t) => Err(Error::TargetOutOfRange {
            target: t as i64,
            num_classes: classes,
        }),
        None => Ok(()),
    }
}

/// Splits perturbations of the probe's batch (the indices `rows`: IG's path points, SmoothGrad's
/// noisy copies; all of them, or one [`Share`]) into passes of at most `rows_per_pass` rows (at
/// least one perturbation each), fewer when the device bounds the size of a tensor (a GPU's
/// largest storage buffer): a method that would need more is split, not refused.
/// Before handing out the next passes' indices, `next` waits until the device has finished the
/// previous pass and reports progress: the bar follows the work rather than its submission, a
/// cancel lands between passes, and at most one pass's buffers are in flight on a GPU.
pub(crate) struct Passes<'p, 'a> {
    rows: Vec<usize>,
    per_pass: usize,
    start: usize,
    started: bool,
    device: Device,
    progress: &'p mut Progress<'a>,
}

impl<'p, 'a> Passes<'p, 'a> {
    pub fn new(
        rows: Vec<usize>,
        rows_per_pass: Option<usize>,
        probe: &Probe<'_>,
        progress: &'p mut Progress<'a>,
    ) -> Self {
        let device = probe.model.device().clone();
        let mut per_pass = rows_per_pass.unwrap_or(DEFAULT_ROWS_PER_PASS);
        if let Some(max_len) = device.max_tensor_len() {
            per_pass = per_pass.min(max_len / probe.widest_row.max(1));
        }
        per_pass = per_pass.min(probe.rows_in_memory);
        Self {
            rows,
            per_pass: (per_pass / probe.batch().max(1)).max(1),
            start: 0,
            started: false,
            device,
            progress,
        }
    }

    /// The perturbations of the next pass, or None when all are done.
    pub async fn next(&mut self) -> Result<Option<Vec<usize>>> {
        if self.started {
            self.device.settle().await?;
        }
        self.started = true;
        let total = self.rows.len();
        self.progress.report(self.start, total)?;
        if self.start >= total {
            return Ok(None);
        }
        let end = (self.start + self.per_pass).min(total);
        let pass = self.rows[self.start..end].to_vec();
        self.start = end;
        Ok(Some(pass))
    }
}

/// One share of a multi-pass method's perturbations (IG's path points, SmoothGrad's noisy
/// copies), so that several workers (the page's Web Workers) can explain one input together:
/// share `index` of `count` takes perturbations `index`, `index + count`, ... The shares'
/// attributions, and IG's convergence deltas, add up to those of the whole method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    /// The perturbations of `total` this share takes: all of them without a share.
    pub(crate) fn rows(share: Option<Share>, total: usize) -> Vec<usize> {
        match share {
            Some(Share { index, count }) => (index..total).step_by(count.max(1)).collect(),
            None => (0..total).collect(),
        }
    }

    /// The share of the whole a share's constant terms carry (IG's score difference).
    pub(crate) fn fraction(share: Option<Share>) -> f64 {
        share.map_or(1.0, |s| 1.0 / s.count as f64)
    }

    /// Refused unless `count` is at least 1, `index` below it, and every share of `total`
    /// perturbations gets at least one.
    pub(crate) fn check(self, total: usize) -> Result<()> {
        if self.count == 0 || self.index >= self.count || self.count > total {
            return Err(Error::invalid_parameter(
                "share",
                format!(
                    "share {} of {} does not fit {total} perturbations: give an index below the count, \
                     and a count from 1 to {total}",
                    self.index, self.count
                ),
            ));
        }
        Ok(())
    }
}

/// Splits [k*B, ...] into k tensors of [B, ...].
pub(crate) fn unstack(rows: &Tensor, batch: usize) -> Result<Vec<Tensor>> {
    let k = rows.dim(0)? / batch;
    (0..k).map(|i| rows.narrow_rows(i * batch, batch)).collect()
}
