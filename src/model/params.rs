//! Parameter layout: every parameter tensor is a named view into one flat buffer.
//!
//! Tensors of the same kind are stacked over layers, as in llm.c (`qkvw` is (L, 3C, C)), and
//! tensors are ordered by optimizer group so that every group is one contiguous range: one
//! fused optimizer launch per group, and one range for a future reduce-scatter.

use serde::{Deserialize, Serialize};

use super::config::{Arch, ModelConfig};
use crate::backend::Tensor;

/// Optimizer parameter groups, as in the speedrun.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Token (and position) embeddings: AdamW unless `--optimizer-all`.
    Embedding,
    /// The untied output projection: AdamW unless `--optimizer-all`.
    Head,
    /// Gains and biases: AdamW unless `--optimizer-all`.
    Scalar,
    /// Hidden 2D matrices: the optimizer chosen by `--optimizer`.
    Matrix,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Embedding, Group::Head, Group::Scalar, Group::Matrix];

    pub fn name(self) -> &'static str {
        match self {
            Group::Embedding => "embedding",
            Group::Head => "head",
            Group::Scalar => "scalar",
            Group::Matrix => "matrix",
        }
    }
}

/// How a tensor is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal { std: f32 },
    Uniform { bound: f32 },
    Zeros,
    Ones,
}

/// One parameter tensor: its name, shape, group, initialisation and place in the buffer.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub group: Group,
    pub init: Init,
    pub tensor: Tensor,
    /// For the matrix group: (rows, cols) of each matrix the optimizer sees; the tensor holds
    /// `len / (rows·cols)` of them back to back (qkvw counts as separate q, k, v matrices).
    pub matrix: Option<(usize, usize)>,
}

/// Views of every parameter (or of every gradient: the same layout in another buffer).
/// Shapes: V = padded vocab, T = max sequence length, L = layers, C = channels.
#[derive(Clone, Debug)]
pub struct ParamTensors {
    pub wte: Tensor,              // (V, C)
    pub wpe: Option<Tensor>,      // (T, C)       gpt2
    pub lm_head: Option<Tensor>,  // (V, C)       speedrun (gpt2 ties it to wte)
    pub ln1w: Option<Tensor>,     // (L, C)       gpt2
    pub ln1b: Option<Tensor>,     // (L, C)       gpt2
    pub qkvw: Tensor,             // (L, 3C, C)
    pub qkvb: Option<Tensor>,     // (L, 3C)      gpt2
    pub attprojw: Tensor,         // (L, C, C)
    pub attprojb: Option<Tensor>, // (L, C)       gpt2
    pub ln2w: Option<Tensor>,     // (L, C)       gpt2
    pub ln2b: Option<Tensor>,     // (L, C)       gpt2
    pub fcw: Tensor,              // (L, 4C, C)
    pub fcb: Option<Tensor>,      // (L, 4C)      gpt2
    pub fcprojw: Tensor,          // (L, C, 4C)
    pub fcprojb: Option<Tensor>,  // (L, C)       gpt2
    pub lnfw: Option<Tensor>,     // (C)          gpt2
    pub lnfb: Option<Tensor>,     // (C)          gpt2
}

impl ParamTensors {
    /// The output projection: `lm_head`, or `wte` where the two are tied.
    pub fn head(&self) -> Tensor {
        self.lm_head.unwrap_or(self.wte)
    }

    /// Layer `l`'s part of every tensor stacked over the `layers` layers.
    pub fn of_layer(&self, l: usize, layers: usize) -> Vec<Tensor> {
        let stacked = [
            self.ln1w,
            self.ln1b,
            Some(self.qkvw),
            self.qkvb,
            Some(self.attprojw),
            self.attprojb,
            self.ln2w,
            self.ln2b,
            Some(self.fcw),
            self.fcb,
            Some(self.fcprojw),
            self.fcprojb,
        ];
        stacked
            .into_iter()
            .flatten()
            .map(|t| t.chunk(l, layers))
            .collect()
    }

    /// The tensors no layer owns: embeddings, head, final norm.
    pub fn outside_layers(&self) -> Vec<Tensor> {
        [Some(self.wte), self.wpe, self.lm_head, self.lnfw, self.lnfb]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The parameter layout of a model inside a given base buffer.
pub struct ParamLayout {
    pub tensors: ParamTensors,
    pub specs: Vec<ParamSpec>,
    pub total: usize,
}

struct Builder {
    base: Tensor,
    next: usize,
    specs: Vec<ParamSpec>,
}

impl Builder {
    fn add(
        &mut self,
        name: &'static str,
        shape: &[usize],
        group: Group,
        init: Init,
        matrix: Option<(usize, usize)>,
    ) -> Tensor {
        let len = shape.iter().product();
        let tensor = self.base.slice(self.next, len);
        self.next += len;
        self.specs.push(ParamSpec {
            name,
            shape: shape.to_vec(),
            group,
            init,
            tensor,
            matrix,
        });
        tensor
    }

    fn push(&mut self, name: &'static str, shape: &[usize], group: Group, init: Init) -> Tensor {
        self.add(name, shape, group, init, None)
    }

    /// A stack of hidden matrices, each seen by the optimizer as a `rows × cols` block.
    fn matrices(
        &mut self,
        name: &'static str,
        shape: &[usize],
        init: Init,
        block: (usize, usize),
    ) -> Tensor {
        self.add(name, shape, Group::Matrix, init, Some(block))
    }
}

/// Number of parameters of a model, padding included.
pub fn num_params(config: &ModelConfig) -> usize {
    let unbounded = Tensor {
        buffer: 0,
        offset: 0,
        len: usize::MAX,
    };
    param_layout(config, unbounded).total
}

/// Lays the parameters of `config` out in `base`, in group order.
pub fn param_layout(config: &ModelConfig, base: Tensor) -> ParamLayout {
    let (l, c, v, t) = (
        config.layers,
        config.channels,
        config.padded_vocab,
        config.max_seq_len,
    );
    let mut b = Builder {
        base,
        next: 0,
        specs: Vec::new(),
    };
    let tensors = match config.arch {
        Arch::Gpt2 => {
            // llm.c / GPT-2: N(0, 0.02), residual projections scaled by 1/√(2L).
            let normal = Init::Normal { std: 0.02 };
            let residual = Init::Normal {
                std: 0.02 / ((2 * l) as f32).sqrt(),
            };
            let wte = b.push("wte", &[v, c], Group::Embedding, normal);
            let wpe = b.push("wpe", &[t, c], Group::Embedding, normal);
            let ln1w = b.push("ln1w", &[l, c], Group::Scalar, Init::Ones);
            let ln1b = b.push("ln1b", &[l, c], Group::Scalar, Init::Zeros);
            let qkvb = b.push("qkvb", &[l, 3 * c], Group::Scalar, Init::Zeros);
            let attprojb = b.push("attprojb", &[l, c], Group::Scalar, Init::Zeros);
            let ln2w = b.push("ln2w", &[l, c], Group::Scalar, Init::Ones);
            let ln2b = b.push("ln2b", &[l, c], Group::Scalar, Init::Zeros);
            let fcb = b.push("fcb", &[l, 4 * c], Group::Scalar, Init::Zeros);
            let fcprojb = b.push("fcprojb", &[l, c], Group::Scalar, Init::Zeros);
            let lnfw = b.push("lnfw", &[c], Group::Scalar, Init::Ones);
            let lnfb = b.push("lnfb", &[c], Group::Scalar, Init::Zeros);
            let qkvw = b.matrices("qkvw", &[l, 3 * c, c], normal, (c, c));
            let attprojw = b.matrices("attprojw", &[l, c, c], residual, (c, c));
            let fcw = b.matrices("fcw", &[l, 4 * c, c], normal, (4 * c, c));
            let fcprojw = b.matrices("fcprojw", &[l, c, 4 * c], residual, (c, 4 * c));
            ParamTensors {
                wte,
                wpe: Some(wpe),
                lm_head: None,
                ln1w: Some(ln1w),
                ln1b: Some(ln1b),
                qkvw,
                qkvb: Some(qkvb),
                attprojw,
                attprojb: Some(attprojb),
                ln2w: Some(ln2w),
                ln2b: Some(ln2b),
                fcw,
                fcb: Some(fcb),
                fcprojw,
                fcprojb: Some(fcprojb),
                lnfw: Some(lnfw),
                lnfb: Some(lnfb),
            }
        }
        Arch::Speedrun => {
            // modded-nanogpt: embeddings N(0, 1); hidden matrices uniform with std 0.5/√fan_in;
            // output projections and lm_head start at zero.
            let hidden = |fan_in: usize| Init::Uniform {
                bound: 3f32.sqrt() * 0.5 / (fan_in as f32).sqrt(),
            };
            let wte = b.push("wte", &[v, c], Group::Embedding, Init::Normal { std: 1.0 });
            let lm_head = b.push("lm_head", &[v, c], Group::Head, Init::Zeros);
            let qkvw = b.matrices("qkvw", &[l, 3 * c, c], hidden(c), (c, c));
            let attprojw = b.matrices("attprojw", &[l, c, c], Init::Zeros, (c, c));
            let fcw = b.matrices("fcw", &[l, 4 * c, c], hidden(c), (4 * c, c));
            let fcprojw = b.matrices("fcprojw", &[l, c, 4 * c], Init::Zeros, (c, 4 * c));
            ParamTensors {
                wte,
                wpe: None,
                lm_head: Some(lm_head),
                ln1w: None,
                ln1b: None,
                qkvw,
                qkvb: None,
                attprojw,
                attprojb: None,
                ln2w: None,
                ln2b: None,
                fcw,
                fcb: None,
                fcprojw,
                fcprojb: None,
                lnfw: None,
                lnfb: None,
            }
        }
    };
    ParamLayout {
        tensors,
        specs: b.specs,
        total: b.next,
    }
}
