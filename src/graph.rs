//! The model graph: nodes in topological order, named as torchvision names its modules, and
//! the two passes every method is made of — a forward that keeps what the backward needs, and
//! a backward walk whose step (input-VJP or an LRP rule) the caller chooses.

use crate::error::{Error, Result};
use crate::layers::{Layer, Op};
use crate::tensor::{Device, Tensor};

pub type NodeId = usize;

#[derive(Debug, Clone)]
pub struct Node {
    /// The module name (`layer3.1.conv2`, `features.18`), unique in the graph.
    pub name: String,
    /// Other names of the same output, e.g. a block's final ReLU is also `layer4.1` and `layer4`.
    pub aliases: Vec<String>,
    pub op: Op,
    pub inputs: Vec<NodeId>,
}

impl Node {
    pub fn new(name: impl Into<String>, op: Op, inputs: Vec<NodeId>) -> Self {
        Self {
            name: name.into(),
            aliases: Vec::new(),
            op,
            inputs,
        }
    }

    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<Node>,
}

/// Every node's output from one forward pass, indexed by node.
pub struct Activations(Vec<Tensor>);

impl Activations {
    pub fn get(&self, id: NodeId) -> &Tensor {
        &self.0[id]
    }

    pub fn output(&self) -> &Tensor {
        self.0.last().expect("a graph has at least its input node")
    }

    /// The most elements any node holds per batch row: how a pass's memory grows with rows.
    pub fn widest_row(&self) -> usize {
        self.0.iter().map(row_len).max().unwrap_or(0)
    }
}

/// Elements per batch row of `t` ([rows, ...]).
fn row_len(t: &Tensor) -> usize {
    t.elem_count() / t.dims().first().copied().unwrap_or(1).max(1)
}

/// A backward step: given a node, its inputs, its output and the signal arriving at its output,
/// return the signal for each of its inputs.
pub type BackwardStep<'a> = dyn FnMut(NodeId, &Node, &[&Tensor], &Tensor, &Tensor) -> Result<Vec<Tensor>> + 'a;

impl Graph {
    /// The same function with each ReLU or ReLU6 that alone reads a BatchNorm fused into it
    /// ([`crate::layers::BatchNorm2d::then`]; the activation's node left as an identity): one
    /// pass less over those activations forward and back, the same values bit for bit. Node ids
    /// are unchanged, as is every node's output but the fused BatchNorms' (now the activation's).
    pub fn with_fused_activations(&self) -> Result<Graph> {
        let mut readers = vec![0usize; self.nodes.len()];
        for node in &self.nodes {
            for &i in &node.inputs {
                readers[i] += 1;
            }
        }
        let mut nodes = self.nodes.clone();
        for id in 0..nodes.len() {
            let Op::Activation(activation) = nodes[id].op else {
                continue;
            };
            let [norm] = nodes[id].inputs[..] else { continue };
            let Op::BatchNorm2d(bn) = &nodes[norm].op else { continue };
            if readers[norm] != 1 {
                continue;
            }
            if let Some(fused) = bn.then(activation) {
                nodes[norm].op = Op::BatchNorm2d(fused);
                nodes[id].op = Op::Identity;
            }
        }
        Graph::new(nodes)
    }

    /// Checks that node 0 is the input, every other node only reads earlier nodes, and names are unique.
    pub fn new(nodes: Vec<Node>) -> Result<Self> {
        match nodes.first() {
            Some(Node { op: Op::Input, .. }) => {}
            _ => return Err(Error::InvalidGraph("the first node must be the input".into())),
        }
        if nodes.len() < 2 {
            return Err(Error::InvalidGraph("the graph has no layers".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (id, node) in nodes.iter().enumerate() {
            if !seen.insert(node.name.as_str()) {
                return Err(Error::InvalidGraph(format!("two nodes are named `{}`", node.name)));
            }
            if id > 0 && matches!(node.op, Op::Input) {
                return Err(Error::InvalidGraph(format!(
                    "`{}`: only the first node can be the input",
                    node.name
                )));
            }
            let arity_ok = match node.op {
                Op::Input => node.inputs.is_empty(),
                Op::Add(_) => node.inputs.len() >= 2,
                Op::Mul(_) | Op::MatMul(_) => node.inputs.len() == 2,
                Op::Concat(_) => !node.inputs.is_empty(),
                _ => node.inputs.len() == 1,
            };
            if !arity_ok {
                return Err(Error::InvalidGraph(format!(
                    "`{}` ({}) has {} inputs",
                    node.name,
                    node.op.kind(),
                    node.inputs.len()
                )));
            }
            if let Some(&bad) = node.inputs.iter().find(|&&i| i >= id) {
                return Err(Error::InvalidGraph(format!(
                    "`{}` reads node {bad}, which does not come before it",
                    node.name
                )));
            }
        }
        Ok(Self { nodes })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The same graph with every parameter on `device` (uploaded once, here).
    pub fn to_device(&self, device: &Device) -> Result<Graph> {
        let nodes = self
            .nodes
            .iter()
            .map(|node| {
                Ok(Node {
                    op: node.op.to_device(device)?,
                    ..node.clone()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Graph { nodes })
    }

    /// The same graph with node `id` running `op` instead (same inputs, same name).
    pub fn with_op(&self, id: NodeId, op: Op) -> Graph {
        let mut nodes = self.nodes.clone();
        nodes[id].op = op;
        Graph { nodes }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub fn output_id(&self) -> NodeId {
        self.nodes.len() - 1
    }

    /// The node a module name (or alias) refers to.
    pub fn find(&self, name: &str) -> Result<NodeId> {
        self.nodes
            .iter()
            .position(|n| n.answers_to(name))
            .ok_or_else(|| Error::UnknownLayerName {
                name: name.to_string(),
                available: self.nodes[1..]
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Runs the graph on `input`, keeping every node's output. With `replace = Some((id, t))`,
    /// node `id` outputs `t` instead of computing (captum's layer-output override).
    pub fn forward(&self, input: &Tensor, replace: Option<(NodeId, &Tensor)>) -> Result<Activations> {
        let mut outputs: Vec<Tensor> = Vec::with_capacity(self.nodes.len());
        outputs.push(input.clone());
        for (id, node) in self.nodes.iter().enumerate().skip(1) {
            let out = match replace {
                Some((target, t)) if target == id => t.clone(),
                _ => {
                    let inputs: Vec<&Tensor> = node.inputs.iter().map(|&i| &outputs[i]).collect();
                    node.op
                        .forward(&inputs)
                        .map_err(|e| self.node_error(id, input.dims(), e))?
                }
            };
            outputs.push(out);
        }
        Ok(Activations(outputs))
    }

    /// About how many bytes one forward and backward pass of `rows` inputs of `input` dims
    /// ([N, C, H, W], N ignored) holds at its peak on the CPU, planned from the shapes alone:
    /// every node's output is kept for the backward pass, which builds a signal of the same
    /// size per node and, at worst, a convolution's unfolded patches each way. None when the
    /// shapes do not fit the graph (the forward then says where).
    pub fn pass_bytes(&self, input: &[usize], rows: usize) -> Option<u64> {
        let (mut kept, mut widest_temporary) = (0u64, 0u64);
        for (out, temporary) in self.plan(input)?.iter().skip(1) {
            kept = kept.saturating_add(out.iter().product::<usize>() as u64);
            widest_temporary = widest_temporary.max(*temporary as u64);
        }
        let per_row = kept
            .saturating_mul(2)
            .saturating_add(widest_temporary.saturating_mul(2));
        Some(per_row.saturating_mul(rows as u64).saturating_mul(4))
    }

    /// Each node's last reader (itself where none reads it): when a forward pass that keeps
    /// outputs only while they are needed frees them.
    fn last_uses(&self) -> Vec<NodeId> {
        let mut last_use: Vec<NodeId> = (0..self.nodes.len()).collect();
        for (id, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                last_use[i] = id;
            }
        }
        last_use
    }

    /// About how many bytes a forward pass of `rows` inputs of `input` dims holds at its peak
    /// on the CPU, keeping each output only until its last use, as [`Graph::predict`] does.
    /// None when the shapes do not fit the graph (the forward then says where).
    pub fn forward_bytes(&self, input: &[usize], rows: usize) -> Option<u64> {
        let planned = self.plan(input)?;
        let size = |id: NodeId| planned[id].0.iter().product::<usize>() as u64;
        let last_use = self.last_uses();
        let (mut live, mut peak) = (size(0), size(0));
        for (id, node) in self.nodes.iter().enumerate().skip(1) {
            live = live.saturating_add(size(id));
            peak = peak.max(live.saturating_add(planned[id].1 as u64));
            let mut freed = node.inputs.clone();
            freed.sort_unstable();
            freed.dedup();
            for i in freed.into_iter().filter(|&i| last_use[i] == id) {
                live -= size(i);
            }
        }
        Some(peak.saturating_mul(rows as u64).saturating_mul(4))
    }

    /// The output's dims for one input of `input` dims ([N, C, H, W], N ignored), from the
    /// shapes alone; None when they do not fit the graph.
    pub fn output_dims(&self, input: &[usize]) -> Option<Vec<usize>> {
        self.plan(input)?.pop().map(|(dims, _)| dims)
    }

    /// Every node's output dims for one input, and the largest temporary it builds.
    fn plan(&self, input: &[usize]) -> Option<Vec<(Vec<usize>, usize)>> {
        self.plan_before(input, self.nodes.len())
    }

    /// [`Graph::plan`] of the nodes before `end`.
    fn plan_before(&self, input: &[usize], end: NodeId) -> Option<Vec<(Vec<usize>, usize)>> {
        let mut row = input.to_vec();
        *row.first_mut()? = 1;
        let mut planned = vec![(row, 0)];
        for node in self.nodes.iter().take(end).skip(1) {
            let inputs: Vec<&[usize]> = node.inputs.iter().map(|&i| planned[i].0.as_slice()).collect();
            let next = node.op.plan(&inputs)?;
            planned.push(next);
        }
        Some(planned)
    }

    /// Runs the graph keeping only what later nodes still read: for predictions.
    pub fn predict(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.predict_sized(input)?.0)
    }

    /// [`Graph::predict`], also returning [`Activations::widest_row`] of the pass.
    pub fn predict_sized(&self, input: &Tensor) -> Result<(Tensor, usize)> {
        let mut widest_row = row_len(input);
        let last_use = self.last_uses();
        let mut outputs: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        outputs[0] = Some(input.clone());
        for (id, node) in self.nodes.iter().enumerate().skip(1) {
            let inputs: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&i| {
                    outputs[i]
                        .as_ref()
                        .expect("inputs are computed first and kept until last use")
                })
                .collect();
            let out = node
                .op
                .forward(&inputs)
                .map_err(|e| self.node_error(id, input.dims(), e))?;
            widest_row = widest_row.max(row_len(&out));
            for &i in &node.inputs {
                if last_use[i] == id {
                    outputs[i] = None;
                }
            }
            outputs[id] = Some(out);
        }
        let output = outputs.pop().flatten().expect("the output node was computed");
        Ok((output, widest_row))
    }

    /// Walks back from node `from` (seeded with `seed`, shaped like its output) to node `to`,
    /// applying `step` at every node in between, and returns the signal at `to`'s output.
    /// Branches add up where they meet.
    pub fn backward(
        &self,
        activations: &Activations,
        from: NodeId,
        seed: Tensor,
        to: NodeId,
        step: &mut BackwardStep<'_>,
    ) -> Result<Tensor> {
        let mut signals: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        signals[from] = Some(seed);
        for id in (to + 1..=from).rev() {
            let Some(signal) = signals[id].take() else { continue };
            let node = &self.nodes[id];
            let inputs: Vec<&Tensor> = node.inputs.iter().map(|&i| activations.get(i)).collect();
            let back = step(id, node, &inputs, activations.get(id), &signal).map_err(|e| in_layer(node, e))?;
            for (&input, s) in node.inputs.iter().zip(back) {
                signals[input] = Some(match signals[input].take() {
                    Some(acc) => acc.add(&s)?,
                    None => s,
                });
            }
        }
        match signals[to].take() {
            Some(s) => Ok(s),
            // The output does not depend on `to`: its gradient is zero.
            None => Ok(activations.get(to).zeros_like()?),
        }
    }

    /// The error node `id` raised on an input of `input` dims, with the layer named. A width
    /// that does not fit is blamed on the input's size unless the width does not depend on it:
    /// then the weights do not fit together.
    fn node_error(&self, id: NodeId, input: &[usize], error: Error) -> Error {
        match in_layer(&self.nodes[id], error) {
            Error::InputSizeMismatch {
                layer,
                kind,
                expected,
                found,
            } => match self.fixed_width_source(id, input) {
                Some(because) => Error::WeightsDoNotFit {
                    layer: format!("`{layer}` ({kind})"),
                    expected,
                    found,
                    because,
                },
                None => Error::InputSizeMismatch {
                    layer,
                    kind,
                    expected,
                    found,
                },
            },
            other => other,
        }
    }

    /// Why the shape node `id` receives does not depend on the input's size, if it does not:
    /// it comes, through nodes that keep their input's shape, from a Linear layer (whose
    /// weights set it), or another input size gives the node the same shape.
    fn fixed_width_source(&self, id: NodeId, input: &[usize]) -> Option<String> {
        let &from = self.nodes[id].inputs.first()?;
        let planned = self.plan_before(input, id)?;
        let mut at = from;
        loop {
            let node = &self.nodes[at];
            if node.op.kind() == "Linear" {
                return Some(format!("from `{}` (Linear)", node.name));
            }
            match node.inputs.as_slice() {
                [previous] if planned[*previous].0 == planned[at].0 => at = *previous,
                _ => break,
            }
        }
        let mut larger = input.to_vec();
        for side in larger.iter_mut().skip(2) {
            *side += 32;
        }
        let elsewhere = self.plan_before(&larger, id)?;
        (elsewhere[from].0 == planned[from].0).then(|| "at every input size".to_string())
    }

    /// The plain gradient walk: every node applies its input-VJP.
    pub fn gradient(&self, activations: &Activations, from: NodeId, seed: Tensor, to: NodeId) -> Result<Tensor> {
        self.backward(activations, from, seed, to, &mut |_, node, inputs, output, signal| {
            node.op.input_vjp(inputs, output, signal)
        })
    }
}

/// Attaches the layer's name to errors raised inside it.
fn in_layer(node: &Node, error: Error) -> Error {
    let layer = node.name.clone();
    let kind = node.op.kind().to_string();
    match error {
        Error::InputTooSmall { height, width, min } => Error::FeatureMapTooSmall {
            layer,
            height,
            width,
            min,
        },
        Error::InputSizeMismatch { expected, found, .. } => Error::InputSizeMismatch {
            layer,
            kind,
            expected,
            found,
        },
        Error::InvalidGraph(message) => Error::InLayer { layer, kind, message },
        Error::Tensor(e) => Error::InLayer {
            layer,
            kind,
            message: e.to_string(),
        },
        Error::Shape(message) => Error::InLayer { layer, kind, message },
        other => other,
    }
}
