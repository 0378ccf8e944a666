//! The hidden matrices of a group as runs of one shape: each run is one batch for the matrix
//! optimizers (Muon, Shampoo, SOAP).

use anyhow::Result;

use super::GroupRange;
use crate::model::ParamSpec;

/// `count` matrices of `rows × cols`, back to back from `offset` in the group's range.
#[derive(Clone, Copy, Debug)]
pub(super) struct MatrixSet {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub count: usize,
}

impl MatrixSet {
    pub fn len(&self) -> usize {
        self.rows * self.cols * self.count
    }
}

/// Consecutive tensors of the same matrix shape form one set; `optimizer` names the rule in
/// the error for a parameter that is not a matrix.
pub(super) fn matrix_sets(
    range: &GroupRange,
    specs: &[&ParamSpec],
    optimizer: &str,
) -> Result<Vec<MatrixSet>> {
    let mut sets: Vec<MatrixSet> = Vec::new();
    for spec in specs {
        let Some((rows, cols)) = spec.matrix else {
            anyhow::bail!(
                "parameter {} is not a matrix; {optimizer} cannot update it",
                spec.name
            );
        };
        let offset = spec.tensor.offset - range.param.offset;
        let count = spec.tensor.len / (rows * cols);
        match sets.last_mut() {
            Some(last)
                if (last.rows, last.cols) == (rows, cols) && last.offset + last.len() == offset =>
            {
                last.count += count
            }
            _ => sets.push(MatrixSet {
                offset,
                rows,
                cols,
                count,
            }),
        }
    }
    Ok(sets)
}
