//! Layer-wise Relevance Propagation's building blocks: the rules (zennit's), the composites
//! that assign them to layers, and the canonizers that rewrite a graph into the form the rules
//! are defined on. The LRP method (with the other methods, one level up) runs them.

mod affine;
mod canonize;
mod composites;
mod rules;
mod signs;

pub use canonize::{merge_batch_norms, MergeConvention};
pub use composites::{assign_rules, Composite, CompositeParams, Selector};
pub use rules::{Bound, Rule, STABILIZER};
pub(crate) use signs::nonnegative_outputs;
