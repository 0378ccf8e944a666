//! The command line: `speedrun [train] …`, `speedrun data synth …`, `speedrun records …`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use half::bf16;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::backend::CudaBackend;
use crate::backend::cuda::{self, Gpu, kernels};
use crate::bench::BenchConfig;
use crate::data::ValData;
use crate::data::tokenizer::{self, END_OF_TEXT, GPT2_VOCAB};
use crate::data::{self, SynthConfig, fineweb, prepare, write_synth_dataset};
use crate::dist::Comm;
use crate::dist::tcp::{NodeSpec, TcpComm};
use crate::grok::GrokConfig;
use crate::memory::MemoryReport;
use crate::model::{Arch, Decoder, Gpt, ModelConfig, ModelOverrides, ModelSize, sample_token};
use crate::optim::{NsCoefficients, OptimConfig, OptimizerKind, UpdateRule};
use crate::records::GIT_COMMIT;
use crate::records::{self, Record};
use crate::study::{self, StudyFile, Trial};
use crate::train::checkpoint::Checkpoint;
use crate::train::{RunOptions, STOP_REQUESTED, Schedule, TrainConfig, train_on, train_ranks};
use crate::{landscape, plot, progress};

#[derive(Parser, Debug)]
#[command(
    name = "speedrun",
    version,
    about = "Train GPT-2-class language models on token shards as fast as the hardware allows, \
             and log how long each run takes to reach a target validation loss.",
    long_about = None,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command, `speedrun` trains: these are the flags of `speedrun train`.
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (the default command).
    Train(Box<TrainArgs>),
    /// Make or inspect training data.
    #[command(subcommand)]
    Data(DataCommand),
    /// Print the records log as a markdown table, oldest run first.
    Records(RecordsArgs),
    /// Generate text from a trained checkpoint (with a key/value cache).
    Sample(SampleArgs),
    /// The validation loss along a line or on a plane through a checkpoint's weights, in
    /// filter-normalised random directions or towards a second checkpoint; writes a CSV and
    /// SVG/PNG plots.
    Landscape(LandscapeArgs),
    /// Grokking: a small transformer learns modular division a / b (mod p) from half of all
    /// pairs, memorises them, and much later generalises to the rest. Logs both accuracies at
    /// log-spaced steps, plots them, and appends the run to the records log.
    Grok(Box<GrokArgs>),
    /// The memory a training run with these flags needs: weights, gradients, optimizer state
    /// and activations, in bytes per parameter and in total, on the CPU backend (f32), in
    /// mixed precision (bf16 compute, f32 master weights and state) and on the CUDA backend,
    /// next to the lectures' 16Ψ rule for mixed-precision Adam. Takes the training flags; reads
    /// no data. With --device cuda it also runs one training step on the GPU (random tokens)
    /// and prints what the backend allocated next to the estimate.
    Memory(Box<TrainArgs>),
    /// Time training steps of a model on random tokens: forward, backward and optimizer
    /// milliseconds (medians), tokens per second, achieved GFLOP/s and the backend's f32
    /// matrix-product peak.
    Bench(BenchArgs),
    /// Optimizer studies: tuned comparisons of optimizers on several workloads, in the style
    /// of AlgoPerf's external tuning (see README, "Studies").
    #[command(subcommand)]
    Study(StudyCommand),
    /// A study's report: per workload, each optimizer's best trial, its time, steps and tokens
    /// to the target, and the AlgoPerf scores, as markdown; loss curves, performance profiles
    /// and time to target against model size as SVG and PNG plots.
    Report(ReportArgs),
    /// Compile every CUDA kernel of kernels/ with NVRTC for the given architectures, without a
    /// GPU: one line per file with its register use and spills; fails if any file does not
    /// compile. Needs libnvrtc.so.13 (CUDA 13 toolkit or the nvidia-cuda-nvrtc pip wheel).
    Kernels(KernelsArgs),
    /// Run every CUDA kernel on random inputs and compare it with the CPU reference on the same
    /// inputs: a table of ‖gpu−cpu‖/‖cpu‖ per tensor (tolerance 1e-2 for bf16 tensors, 1e-4 for
    /// f32 ones); fails if any is out of tolerance. Not yet run on a GPU.
    Check(CheckArgs),
}

#[derive(Subcommand, Debug)]
enum StudyCommand {
    /// Run every trial of a study file that has no record yet: rerun it after a stop and it
    /// continues (an interrupted trial from its last checkpoint).
    Run(StudyRunArgs),
    /// List a study's trials, their drawn hyper-parameters and which are done.
    Plan(StudyPlanArgs),
}

#[derive(Args, Debug)]
struct StudyRunArgs {
    /// The study file (TOML, or JSON if it ends in .json).
    file: PathBuf,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct StudyPlanArgs {
    /// The study file (TOML, or JSON if it ends in .json).
    file: PathBuf,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The records log holding the study's trials.
    #[arg(long, default_value = "records/records.jsonl")]
    records: PathBuf,
    /// The study to report on [default: the only study in the log].
    #[arg(long)]
    study: Option<String>,
    /// Directory of the report and plots [default: records/reports/<study>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Plot loss curves and the scale plot on a logarithmic time/token axis.
    #[arg(long)]
    log_x: bool,
}

#[derive(Args, Debug)]
struct KernelsArgs {
    /// An architecture to compile for, like sm_80 or sm_90a (repeatable) [default: sm_90a and
    /// sm_80].
    #[arg(long = "arch")]
    archs: Vec<String>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// The device to check against the CPU reference: only cuda.
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Write train/val shards sampled from a random sparse Markov chain whose entropy rate (the
    /// lowest loss any model can reach) is known exactly: for tests and CPU demos.
    Synth(SynthArgs),
    /// Print a shard's header, token statistics and a decoded excerpt; a bad file gets the
    /// same errors as in training.
    Inspect(InspectArgs),
    /// Turn text files and JSON Lines files into GPT-2 token shards: an end-of-text token
    /// (50256) before each document, the first --val-tokens tokens to validation shards
    /// (<prefix>_val_000000.bin, …), the rest to training shards (<prefix>_train_000001.bin, …).
    Prepare(PrepareArgs),
    /// Download the GPT-2-tokenised FineWeb-10B shards the NanoGPT speedrun trains on (the
    /// Hugging Face dataset kjj0/fineweb10B-gpt2), resuming partial files and checking each.
    Fineweb(FinewebArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    /// GPU 0 where one opens (an NVIDIA driver and device are present), else the CPU.
    Auto,
    /// The CPU reference backend (f32, all cores).
    Cpu,
    /// NVIDIA GPU 0: bf16 activations, f32 weights, gradients and optimizer state; our kernels
    /// and cuBLASLt. Not yet verified on hardware: `speedrun check --device cuda` compares it
    /// with the CPU. Shampoo and SOAP solve their eigendecompositions and QR with cuSOLVER
    /// (libcusolver, loaded when first needed).
    Cuda,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Where to train.
    #[arg(long, value_enum, default_value_t = Device::Auto, help_heading = "Run")]
    device: Device,
    /// CPU threads [default: all cores].
    #[arg(long, help_heading = "Run")]
    threads: Option<usize>,
    /// Data-parallel ranks (on the CPU: threads of this process sharing --threads), each with
    /// a disjoint share of every step's micro-batches; the batch stays --batch-tokens, which
    /// must hold a multiple of --ranks micro-batches. The result equals one rank's up to the
    /// order of floating-point sums.
    #[arg(long, default_value_t = 1, help_heading = "Run")]
    ranks: usize,
    /// GPUs of this machine to train on, data-parallel: one rank (a thread of this process)
    /// per GPU, gradients reduce-scattered and weights gathered by NCCL; the batch stays
    /// --batch-tokens, which must hold a multiple of --gpus micro-batches [default: every
    /// visible GPU, where NCCL loads and they can share the micro-batches equally, else one;
    /// CUDA_VISIBLE_DEVICES chooses them]. With --nodes each process drives one
    /// GPU ($LOCAL_RANK): leave it out.
    #[arg(long, help_heading = "Run")]
    gpus: Option<usize>,
    /// Processes, on one machine or several, that train one model together, one rank each
    /// (with --device cuda: GPU $LOCAL_RANK, joined by NCCL), meeting at --rendezvous; start
    /// every node with the same binary and flags but --node-rank [default: $WORLD_SIZE (torchrun) or $SLURM_NTASKS (srun), else 1].
    #[arg(long, help_heading = "Run")]
    nodes: Option<usize>,
    /// This process's place among --nodes, from 0; node 0 validates, checkpoints and writes
    /// the record [default: $RANK or $SLURM_PROCID].
    #[arg(long, help_heading = "Run")]
    node_rank: Option<usize>,
    /// HOST:PORT where node 0 listens and the other nodes connect [default:
    /// $MASTER_ADDR:$MASTER_PORT, port 29500 if unset].
    #[arg(long, help_heading = "Run")]
    rendezvous: Option<String>,
    /// Seconds the nodes may take to meet before the run ends with an error naming the
    /// missing ones.
    #[arg(long, default_value_t = 300, help_heading = "Run")]
    rendezvous_timeout: u64,
    /// Seconds a wait on the GPUs may go without their NCCL collectives completing before the
    /// run ends with an error (a rank that died would leave the others waiting forever); it
    /// counts from the start of the wait, so it includes the computing queued before them.
    #[arg(long, default_value_t = 600, help_heading = "Run")]
    collective_timeout: u64,
    /// Random seed of the initial weights.
    #[arg(long, default_value_t = 0, help_heading = "Run")]
    seed: u64,
    /// Stop at the first validation loss at or below this (the speedrun's target is 3.28).
    #[arg(long, help_heading = "Run")]
    target_loss: Option<f64>,
    /// Optimizer steps of the run; the learning-rate schedule spans them.
    #[arg(long, default_value_t = 5100, help_heading = "Run")]
    max_steps: usize,
    /// Validate every this many steps, and at the end (0: only at the end).
    #[arg(long, default_value_t = 125, help_heading = "Run")]
    val_every: usize,
    /// Directory of checkpoints (each run writes into <dir>/<run id>/).
    #[arg(long, default_value = "checkpoints", help_heading = "Run")]
    checkpoint_dir: PathBuf,
    /// Save a checkpoint every this many steps and at the end (0: none). Not counted as
    /// training time.
    #[arg(long, default_value_t = 500, help_heading = "Run")]
    checkpoint_every: usize,
    /// Continue the run saved in this checkpoint; give the same flags as the original run.
    #[arg(long, help_heading = "Run")]
    resume: Option<PathBuf>,
    /// The records log the finished run is appended to.
    #[arg(long, default_value = "records/records.jsonl", help_heading = "Run")]
    records: PathBuf,
    /// Do not append a record.
    #[arg(long, help_heading = "Run")]
    no_record: bool,
    /// Without a terminal, print a progress line every this many steps.
    #[arg(long, default_value_t = 10, help_heading = "Run")]
    log_every: usize,

    /// Architecture.
    #[arg(long, value_enum, default_value_t = Arch::Speedrun, help_heading = "Model")]
    arch: Arch,
    /// Size preset.
    #[arg(long, value_enum, default_value_t = ModelSize::D12, help_heading = "Model")]
    model: ModelSize,
    /// Number of layers [default: the preset's].
    #[arg(long, help_heading = "Model")]
    layers: Option<usize>,
    /// Model width (channels) [default: the preset's].
    #[arg(long, help_heading = "Model")]
    width: Option<usize>,
    /// Attention heads; must divide the width [default: the preset's].
    #[arg(long, help_heading = "Model")]
    heads: Option<usize>,
    /// Vocabulary size; tokens in the data must be below it [default: 50257, GPT-2's].
    #[arg(long, help_heading = "Model")]
    vocab: Option<usize>,
    /// Longest sequence the model supports [default: 1024].
    #[arg(long, help_heading = "Model")]
    context: Option<usize>,
    /// speedrun: logit soft-cap c in c·tanh(z/c); 0 turns it off [default: 15].
    #[arg(long, help_heading = "Model")]
    softcap: Option<f32>,
    /// speedrun: rotary embedding base [default: 10000].
    #[arg(long, help_heading = "Model")]
    rope_base: Option<f32>,

    /// Optimizer of the hidden matrices; embeddings, head and gains/biases use AdamW unless
    /// --optimizer-all.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Muon, help_heading = "Optimizer")]
    optimizer: OptimizerKind,
    /// Use --optimizer (element-wise ones only) for every group: each group takes the
    /// optimizer's settings, with --embed-lr, --head-lr, --scalar-lr and --embed-weight-decay
    /// overriding the learning rate and decay of their groups.
    #[arg(long, help_heading = "Optimizer")]
    optimizer_all: bool,
    /// Learning rate of the hidden matrices [default: muon 0.05; adamw 0.0018 (speedrun),
    /// 6e-4 (gpt2); sgd 1e-3; adagrad 1e-2; rmsprop 1e-2; adadelta 1; adam 1e-3; nadamw
    /// 0.00175; sf-adamw 0.0025; shampoo 0.0018; soap 3e-3].
    #[arg(long, help_heading = "Optimizer")]
    lr: Option<f32>,
    /// Weight decay of the hidden matrices: decoupled for adamw, nadamw and muon, added to the
    /// gradient (L2) for the others [default: 0; adamw 0.1 (gpt2); nadamw 0.081].
    #[arg(long, help_heading = "Optimizer")]
    weight_decay: Option<f32>,
    /// Learning rate of the token (and position) embeddings [default: 0.6 (speedrun), 6e-4
    /// (gpt2); with --optimizer-all: --lr].
    #[arg(long, help_heading = "Optimizer")]
    embed_lr: Option<f32>,
    /// Learning rate of the untied lm_head [default: 0.008 (speedrun); with
    /// --optimizer-all: --lr].
    #[arg(long, help_heading = "Optimizer")]
    head_lr: Option<f32>,
    /// Learning rate of gains and biases [default: 0.04 (speedrun), 6e-4 (gpt2); with
    /// --optimizer-all: --lr].
    #[arg(long, help_heading = "Optimizer")]
    scalar_lr: Option<f32>,
    /// Adam β1, for every group under adam, adamw, nadamw or sf-adamw [default: 0.8
    /// (speedrun), 0.9 (gpt2); 0.9 for adam and sf-adamw, 0.933 for nadamw on the matrices].
    #[arg(long, help_heading = "Optimizer")]
    adam_beta1: Option<f32>,
    /// Adam β2, for every group under adam, adamw, nadamw or sf-adamw [default: 0.95; 0.999
    /// for adam and sf-adamw, 0.9955 for nadamw on the matrices].
    #[arg(long, help_heading = "Optimizer")]
    adam_beta2: Option<f32>,
    /// Adam ε, for every group under adam, adamw, nadamw or sf-adamw [default: 1e-10
    /// (speedrun), 1e-8 (gpt2 and the matrices under adam, nadamw or sf-adamw)].
    #[arg(long, help_heading = "Optimizer")]
    adam_eps: Option<f32>,
    /// Weight decay of the embedding and head groups [default: 0 (speedrun), 0.1 (gpt2); with
    /// --optimizer-all: --weight-decay].
    #[arg(long, help_heading = "Optimizer")]
    embed_weight_decay: Option<f32>,
    /// muon, sgd, rmsprop: momentum [default: 0.95 (muon), 0 (sgd, rmsprop)].
    #[arg(long, help_heading = "Optimizer")]
    momentum: Option<f32>,
    /// muon, sgd: Nesterov momentum [default: true (muon), false (sgd)].
    #[arg(long, action = ArgAction::Set, help_heading = "Optimizer")]
    nesterov: Option<bool>,
    /// sgd: dampening of the gradient's share of the momentum [default: 0].
    #[arg(long, help_heading = "Optimizer")]
    dampening: Option<f32>,
    /// adagrad, rmsprop, adadelta, shampoo, soap: ε [default: 1e-10, 1e-8, 1e-6, 1e-12 (added
    /// to the factors' eigenvalues), 1e-8].
    #[arg(long, help_heading = "Optimizer")]
    eps: Option<f32>,
    /// adagrad: step t uses lr / (1 + (t − 1)·lr_decay) [default: 0].
    #[arg(long, help_heading = "Optimizer")]
    lr_decay: Option<f32>,
    /// adagrad: starting value of the sum of squared gradients [default: 0].
    #[arg(long, help_heading = "Optimizer")]
    initial_accumulator: Option<f32>,
    /// rmsprop: smoothing constant α of the square average [default: 0.99].
    #[arg(long, help_heading = "Optimizer")]
    alpha: Option<f32>,
    /// rmsprop: normalise by the centered second moment (an estimate of the variance).
    #[arg(long, action = ArgAction::Set, help_heading = "Optimizer")]
    centered: Option<bool>,
    /// shampoo, soap: β1, the gradient's moving average [default: 0.95].
    #[arg(long, help_heading = "Optimizer")]
    beta1: Option<f32>,
    /// shampoo, soap: β2, the moving average of the Kronecker factors and of the second moment
    /// [default: 0.95].
    #[arg(long, help_heading = "Optimizer")]
    beta2: Option<f32>,
    /// shampoo, soap: steps between recomputing the inverse roots (shampoo) or the eigenbases
    /// (soap) [default: 10].
    #[arg(long, help_heading = "Optimizer")]
    precond_every: Option<usize>,
    /// shampoo, soap: matrices larger than this along a side are preconditioned in tiles of at
    /// most this size [default: 1024 (shampoo), 10000 (soap)].
    #[arg(long, help_heading = "Optimizer")]
    shampoo_block: Option<usize>,
    /// shampoo: rescale each tile's step to the norm of Adam's (grafting) [default: true].
    #[arg(long, action = ArgAction::Set, help_heading = "Optimizer")]
    graft: Option<bool>,
    /// adadelta: smoothing constant ρ of both running averages [default: 0.9].
    #[arg(long, help_heading = "Optimizer")]
    rho: Option<f32>,
    /// muon: Newton–Schulz iterations [default: 5].
    #[arg(long, help_heading = "Optimizer")]
    ns_steps: Option<usize>,
    /// muon: the Newton–Schulz polynomials: Keller Jordan's quintic at every step, or Polar
    /// Express's per-step ones (at most 5 steps) [default: quintic].
    #[arg(long, value_enum, help_heading = "Optimizer")]
    ns_coeffs: Option<NsCoefficients>,
    /// muon: momentum at step 0, ramped linearly to --momentum [default: 0.85].
    #[arg(long, help_heading = "Optimizer")]
    momentum_warmup_start: Option<f32>,
    /// muon: steps of the momentum ramp [default: 300].
    #[arg(long, help_heading = "Optimizer")]
    momentum_warmup_steps: Option<usize>,
    /// Clip the global gradient norm to this; 0 turns clipping off [default: 0 (speedrun),
    /// 1 (gpt2)].
    #[arg(long, help_heading = "Optimizer")]
    grad_clip: Option<f32>,

    /// Linear learning-rate warm-up steps [default: 0 (speedrun); gpt2: 700 as llm.c, at most
    /// a tenth of the run].
    #[arg(long, help_heading = "Schedule")]
    warmup_steps: Option<usize>,
    /// Warm-up as a fraction of --max-steps, rounded to whole steps (instead of
    /// --warmup-steps; studies search it so that it scales with each workload's budget).
    #[arg(long, conflicts_with = "warmup_steps", help_heading = "Schedule")]
    warmup_frac: Option<f64>,
    /// Fraction of the run at the end over which learning rates decay linearly [default: 0.4
    /// (speedrun), 1 (gpt2); 0 with sf-adamw].
    #[arg(long, help_heading = "Schedule")]
    cooldown_frac: Option<f32>,
    /// Learning rate at the last step as a fraction of the peak [default: 0.1 (speedrun), 0
    /// (gpt2)].
    #[arg(long, help_heading = "Schedule")]
    final_lr_frac: Option<f32>,

    /// Tokens per optimizer step; must be a multiple of micro-batch × sequence length, the
    /// quotient is the number of gradient accumulation steps.
    #[arg(long, default_value_t = 524_288, help_heading = "Batch")]
    batch_tokens: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 16, help_heading = "Batch")]
    micro_batch: usize,
    /// Tokens per sequence (at most the model's context).
    #[arg(long, default_value_t = 1024, help_heading = "Batch")]
    seq_len: usize,

    /// Training shards (a glob of llm.c/FineWeb .bin files, read in name order).
    #[arg(
        long,
        default_value = "data/fineweb10B/fineweb_train_*.bin",
        help_heading = "Data"
    )]
    train_data: String,
    /// Validation shards (a glob); the first --val-tokens tokens are used.
    #[arg(
        long,
        default_value = "data/fineweb10B/fineweb_val_*.bin",
        help_heading = "Data"
    )]
    val_data: String,
    /// Validation tokens; a multiple of micro-batch × sequence length.
    #[arg(long, default_value_t = 10_485_760, help_heading = "Data")]
    val_tokens: usize,
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Output directory.
    #[arg(long, default_value = "data/synth")]
    out: PathBuf,
    /// Number of states (= token ids 0..vocab).
    #[arg(long, default_value_t = SynthConfig::default().vocab)]
    vocab: usize,
    /// Possible next tokens per token (≥ 3 for large vocabularies, so the chain mixes).
    #[arg(long, default_value_t = SynthConfig::default().successors)]
    successors: usize,
    /// Training tokens.
    #[arg(long, default_value_t = SynthConfig::default().train_tokens)]
    train_tokens: usize,
    /// Validation tokens.
    #[arg(long, default_value_t = SynthConfig::default().val_tokens)]
    val_tokens: usize,
    /// Most tokens per shard file.
    #[arg(long, default_value_t = SynthConfig::default().shard_tokens)]
    shard_tokens: usize,
    /// Seed of the chain and of the samples.
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    seed: u64,
}

#[derive(Args, Debug)]
struct PrepareArgs {
    /// Inputs: .jsonl/.json/.ndjson files hold one JSON object per line whose string "text"
    /// field is a document; any other file is one document of UTF-8 text.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output directory; it must not already hold shards with the same prefix (delete them or
    /// choose another --out or --prefix).
    #[arg(long)]
    out: PathBuf,
    /// Shard names start with this.
    #[arg(long, default_value = prepare::DEFAULT_PREFIX)]
    prefix: String,
    /// Tokens set aside for validation, from the start of the token stream. Validation reads
    /// one token more than it evaluates: the default is the speedrun's 10485760 + 1.
    #[arg(long, default_value_t = prepare::DEFAULT_VAL_TOKENS)]
    val_tokens: usize,
    /// Most tokens per shard.
    #[arg(long, default_value_t = prepare::DEFAULT_SHARD_TOKENS)]
    shard_tokens: usize,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct FinewebArgs {
    /// Training shards to fetch (100M tokens, about 200 MB each; the dataset has 103), besides
    /// the validation shard.
    #[arg(long)]
    train_shards: usize,
    /// Directory of the shards (where `speedrun train` looks by default).
    #[arg(long, default_value = fineweb::DEFAULT_DIR)]
    dir: PathBuf,
    /// Files are fetched from <base-url>/<file>.
    #[arg(long, default_value = fineweb::DEFAULT_BASE_URL)]
    base_url: String,
    /// Further attempts after a network error, timeout or server error.
    #[arg(long, default_value_t = fineweb::DEFAULT_RETRIES)]
    retries: usize,
    /// Seconds to wait for a connection or for data before trying again.
    #[arg(long, default_value_t = fineweb::DEFAULT_TIMEOUT.as_secs())]
    timeout: u64,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Token shard(s) (.bin).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// How many of the most frequent tokens to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// How many tokens of the shard's start to show.
    #[arg(long, default_value_t = 64)]
    excerpt: usize,
}

#[derive(Args, Debug)]
struct SampleArgs {
    /// A checkpoint written by `speedrun train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue, encoded with GPT-2's tokenizer (models with GPT-2's vocabulary);
    /// without it, generation starts after an end-of-text token.
    #[arg(long, conflicts_with = "prompt_tokens")]
    prompt: Option<String>,
    /// Token ids to continue, comma-separated (for models with a vocabulary of their own).
    #[arg(long, value_delimiter = ',')]
    prompt_tokens: Option<Vec<u32>>,
    /// Tokens to generate; prompt and generation must fit in the model's context.
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Softmax temperature; 0 always picks the most likely token.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample among the k most likely tokens only (0: among all).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct LandscapeArgs {
    /// The checkpoint whose weights w₀ are the origin.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Move towards this checkpoint's weights w₁ (of the same model): d = w₁ − w₀, so α = 1
    /// is w₁. Without it, d is a filter-normalised random direction.
    #[arg(long, conflicts_with = "plane")]
    to: Option<PathBuf>,
    /// A plane through two random directions instead of a line.
    #[arg(long)]
    plane: bool,
    /// α (and β) run from −range to +range.
    #[arg(long, default_value_t = 1.0)]
    range: f64,
    /// Points per axis; odd, so that the origin (α = 0) is on the grid.
    #[arg(long, default_value_t = 21)]
    points: usize,
    /// Seed of the random directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation shards [default: those of the checkpoint's run].
    #[arg(long)]
    val_data: Option<String>,
    /// Validation tokens per evaluation, a multiple of the run's micro-batch × sequence
    /// length [default: the run's --val-tokens].
    #[arg(long)]
    val_tokens: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "landscape")]
    out: PathBuf,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Without a terminal, print a progress line every this many evaluations.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
}

#[derive(Args, Debug)]
struct GrokArgs {
    /// The prime modulus. Power et al. use 97 (with --lr 1e-3; hours on a CPU); the default 47
    /// groks on a 2-core CPU in minutes.
    #[arg(long, default_value_t = GrokConfig::default().p, help_heading = "Data")]
    p: u32,
    /// Fraction of the p·(p − 1) pairs used for training; the rest validate.
    #[arg(long, default_value_t = GrokConfig::default().train_frac, help_heading = "Data")]
    train_frac: f64,
    /// Seeds the split, the initialisation and the batch order.
    #[arg(long, default_value_t = GrokConfig::default().seed, help_heading = "Data")]
    seed: u64,
    /// Architecture.
    #[arg(long, value_enum, default_value_t = GrokConfig::default().arch, help_heading = "Model")]
    arch: Arch,
    #[arg(long, default_value_t = GrokConfig::default().layers, help_heading = "Model")]
    layers: usize,
    /// Model width (channels).
    #[arg(long, default_value_t = GrokConfig::default().width, help_heading = "Model")]
    width: usize,
    #[arg(long, default_value_t = GrokConfig::default().heads, help_heading = "Model")]
    heads: usize,
    /// The update rule of every parameter (with its reference defaults for what --lr,
    /// --weight-decay and the Adam flags do not set); muon (at --muon-lr), shampoo and soap
    /// update the hidden matrices and AdamW the rest.
    #[arg(long, value_enum, default_value_t = GrokConfig::default().optimizer, help_heading = "Optimizer")]
    optimizer: OptimizerKind,
    /// Learning rate (of every parameter, or of all but the hidden matrices with muon).
    #[arg(long, default_value_t = GrokConfig::default().lr, help_heading = "Optimizer")]
    lr: f32,
    /// Muon learning rate of the hidden matrices (with --optimizer muon).
    #[arg(long, default_value_t = GrokConfig::default().muon_lr, help_heading = "Optimizer")]
    muon_lr: f32,
    #[arg(long, default_value_t = GrokConfig::default().beta1, help_heading = "Optimizer")]
    beta1: f32,
    #[arg(long, default_value_t = GrokConfig::default().beta2, help_heading = "Optimizer")]
    beta2: f32,
    #[arg(long, default_value_t = GrokConfig::default().eps, help_heading = "Optimizer")]
    eps: f32,
    /// Weight decay of every parameter (decoupled for adamw, nadamw and muon; what makes the
    /// model grok; try 0).
    #[arg(long, default_value_t = GrokConfig::default().weight_decay, help_heading = "Optimizer")]
    weight_decay: f32,
    /// Linear learning-rate warm-up steps, then a constant rate.
    #[arg(long, default_value_t = GrokConfig::default().warmup_steps, help_heading = "Optimizer")]
    warmup_steps: usize,
    /// Examples per step, sampled epoch by epoch [default: the whole training set].
    #[arg(long, help_heading = "Run")]
    batch: Option<usize>,
    #[arg(long, default_value_t = GrokConfig::default().max_steps, help_heading = "Run")]
    max_steps: usize,
    /// Stop after this many seconds of training (evaluations excluded).
    #[arg(long, help_heading = "Run")]
    time_budget: Option<f64>,
    /// Keep training after the validation accuracy has reached 99% (by default the run stops
    /// once it is ≥ 99% at two consecutive evaluations).
    #[arg(long, help_heading = "Run")]
    keep_going: bool,
    /// Directory of the plot (grok.svg, grok.png) and the curve (grok.csv).
    #[arg(long, default_value = "grok", help_heading = "Run")]
    out: PathBuf,
    /// The records log the finished run is appended to.
    #[arg(long, default_value = "records/records.jsonl", help_heading = "Run")]
    records: PathBuf,
    /// Do not append a record.
    #[arg(long, help_heading = "Run")]
    no_record: bool,
    /// Without a terminal, print a progress line every this many steps.
    #[arg(long, default_value_t = 100, help_heading = "Run")]
    log_every: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto, help_heading = "Run")]
    device: Device,
    /// CPU threads [default: all cores].
    #[arg(long, help_heading = "Run")]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Architecture.
    #[arg(long, value_enum, default_value_t = Arch::Gpt2)]
    arch: Arch,
    /// Size preset.
    #[arg(long, value_enum, default_value_t = ModelSize::D12)]
    model: ModelSize,
    /// Optimizer of the hidden matrices (the others use the architecture's AdamW).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    optimizer: OptimizerKind,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Micro-batches per optimizer step (gradient accumulation): a step is
    /// accum × batch × seq-len tokens, e.g. 32 × 16 × 1024 = 524,288 as in the speedrun.
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Timed steps (the medians are reported).
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Side of the square matrix product (activations times weights, in the backend's compute
    /// precision: f32 on the CPU, bf16 on a GPU) timed for the peak behind the MFU; 0 skips it
    /// [default: 2048 on the CPU, 8192 on a GPU].
    #[arg(long)]
    gemm_size: Option<usize>,
    /// Also write the figures as JSON to this file (the keys scripts/torch_reference.py
    /// writes, so scripts/gpu_session.sh can put both side by side).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn bench(args: &BenchArgs) -> Result<()> {
    let model = ModelConfig::new(args.arch, args.model, &ModelOverrides::default())?;
    ensure!(
        args.batch > 0 && args.seq_len > 0 && args.seq_len <= model.max_seq_len,
        "--batch must be positive and --seq-len in 1..={}",
        model.max_seq_len
    );
    let device = choose_device(args.device, args.optimizer, 1)?;
    let mut backend = open_backend(device, args.threads)?;
    // A GPU needs a large product to approach its peak; a 2-core CPU would take minutes on one.
    let on_gpu = backend.describe().starts_with("cuda");
    let config = BenchConfig {
        optim: OptimConfig::defaults(args.arch, args.optimizer),
        model,
        batch: args.batch,
        seq_len: args.seq_len,
        accum: args.accum,
        steps: args.steps,
        warmup: args.warmup,
        gemm_size: args.gemm_size.unwrap_or(if on_gpu { 8192 } else { 2048 }),
    };
    info!(
        "timing {} steps after {} warm-up steps",
        args.steps, args.warmup
    );
    let report = crate::bench::run(backend.as_mut(), &config)?;
    print!("{report}");
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        crate::atomic::write_file(path, |file| writeln!(file, "{text}"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[derive(Args, Debug)]
struct RecordsArgs {
    /// The records log.
    #[arg(long, default_value = "records/records.jsonl")]
    file: PathBuf,
    /// Also score the optimizers AlgoPerf's way on the runs that have a target: each run one
    /// trial, each distinct model/batch/data/target one workload.
    #[arg(long)]
    algoperf: bool,
}

impl TrainArgs {
    /// Flags given that the chosen architecture or optimizer has no use for: an error rather
    /// than silently ignored.
    fn inapplicable_flags(&self) -> Vec<&'static str> {
        use OptimizerKind as K;
        let kind = self.optimizer;
        let is = |kinds: &[OptimizerKind]| kinds.contains(&kind);
        let muon = is(&[K::Muon]);
        let speedrun = self.arch == Arch::Speedrun;
        // With every group under a rule of another family, no group uses the Adam flags.
        let adam_groups = !self.optimizer_all || is(&[K::Adam, K::Adamw, K::Nadamw, K::SfAdamw]);
        [
            (
                "--momentum",
                self.momentum.is_some(),
                is(&[K::Muon, K::Sgd, K::Rmsprop]),
            ),
            (
                "--nesterov",
                self.nesterov.is_some(),
                is(&[K::Muon, K::Sgd]),
            ),
            ("--ns-steps", self.ns_steps.is_some(), muon),
            ("--ns-coeffs", self.ns_coeffs.is_some(), muon),
            (
                "--momentum-warmup-start",
                self.momentum_warmup_start.is_some(),
                muon,
            ),
            (
                "--momentum-warmup-steps",
                self.momentum_warmup_steps.is_some(),
                muon,
            ),
            ("--dampening", self.dampening.is_some(), is(&[K::Sgd])),
            (
                "--eps",
                self.eps.is_some(),
                is(&[K::Adagrad, K::Rmsprop, K::Adadelta, K::Shampoo, K::Soap]),
            ),
            ("--beta1", self.beta1.is_some(), is(&[K::Shampoo, K::Soap])),
            ("--beta2", self.beta2.is_some(), is(&[K::Shampoo, K::Soap])),
            (
                "--precond-every",
                self.precond_every.is_some(),
                is(&[K::Shampoo, K::Soap]),
            ),
            (
                "--shampoo-block",
                self.shampoo_block.is_some(),
                is(&[K::Shampoo, K::Soap]),
            ),
            ("--graft", self.graft.is_some(), is(&[K::Shampoo])),
            ("--lr-decay", self.lr_decay.is_some(), is(&[K::Adagrad])),
            (
                "--initial-accumulator",
                self.initial_accumulator.is_some(),
                is(&[K::Adagrad]),
            ),
            ("--alpha", self.alpha.is_some(), is(&[K::Rmsprop])),
            ("--centered", self.centered.is_some(), is(&[K::Rmsprop])),
            ("--rho", self.rho.is_some(), is(&[K::Adadelta])),
            ("--adam-beta1", self.adam_beta1.is_some(), adam_groups),
            ("--adam-beta2", self.adam_beta2.is_some(), adam_groups),
            ("--adam-eps", self.adam_eps.is_some(), adam_groups),
            ("--softcap", self.softcap.is_some(), speedrun),
            ("--rope-base", self.rope_base.is_some(), speedrun),
            // gpt2 ties the head to the embeddings; speedrun has no gains or biases.
            ("--head-lr", self.head_lr.is_some(), speedrun),
            ("--scalar-lr", self.scalar_lr.is_some(), !speedrun),
        ]
        .into_iter()
        .filter_map(|(name, given, applies)| (given && !applies).then_some(name))
        .collect()
    }
}

fn set<T: Copy>(target: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *target = v;
    }
}

impl TrainArgs {
    /// Every group's update rule: the architecture's defaults with the flags applied.
    fn optim_config(&self) -> Result<OptimConfig> {
        let mut optim = OptimConfig::defaults(self.arch, self.optimizer);
        let matrix = &mut optim.matrix;
        set(matrix.lr_mut(), self.lr);
        set(matrix.weight_decay_mut(), self.weight_decay);
        match matrix {
            UpdateRule::Muon(muon) => {
                set(&mut muon.momentum, self.momentum);
                set(&mut muon.nesterov, self.nesterov);
                set(&mut muon.ns_steps, self.ns_steps);
                set(&mut muon.ns_coefficients, self.ns_coeffs);
                set(&mut muon.momentum_warmup_start, self.momentum_warmup_start);
                set(&mut muon.momentum_warmup_steps, self.momentum_warmup_steps);
            }
            UpdateRule::Sgd(sgd) => {
                set(&mut sgd.momentum, self.momentum);
                set(&mut sgd.nesterov, self.nesterov);
                set(&mut sgd.dampening, self.dampening);
            }
            UpdateRule::Adagrad(adagrad) => {
                set(&mut adagrad.eps, self.eps);
                set(&mut adagrad.lr_decay, self.lr_decay);
                set(
                    &mut adagrad.initial_accumulator_value,
                    self.initial_accumulator,
                );
            }
            UpdateRule::Rmsprop(rmsprop) => {
                set(&mut rmsprop.eps, self.eps);
                set(&mut rmsprop.alpha, self.alpha);
                set(&mut rmsprop.momentum, self.momentum);
                set(&mut rmsprop.centered, self.centered);
            }
            UpdateRule::Adadelta(adadelta) => {
                set(&mut adadelta.eps, self.eps);
                set(&mut adadelta.rho, self.rho);
            }
            UpdateRule::Shampoo(shampoo) => {
                set(&mut shampoo.beta1, self.beta1);
                set(&mut shampoo.beta2, self.beta2);
                set(&mut shampoo.eps, self.eps);
                set(&mut shampoo.precond_every, self.precond_every);
                set(&mut shampoo.block, self.shampoo_block);
                set(&mut shampoo.graft, self.graft);
            }
            UpdateRule::Soap(soap) => {
                set(&mut soap.beta1, self.beta1);
                set(&mut soap.beta2, self.beta2);
                set(&mut soap.eps, self.eps);
                set(&mut soap.precond_every, self.precond_every);
                set(&mut soap.block, self.shampoo_block);
            }
            UpdateRule::SfAdamw(sf) => {
                set(&mut sf.beta1, self.adam_beta1);
                set(&mut sf.beta2, self.adam_beta2);
                set(&mut sf.eps, self.adam_eps);
            }
            UpdateRule::Adam(_) | UpdateRule::Adamw(_) | UpdateRule::Nadamw(_) => {}
        }
        if self.optimizer_all {
            ensure!(
                !optim.matrix.matrices_only(),
                "--optimizer-all needs an element-wise optimizer: {} updates hidden matrices only",
                self.optimizer
            );
            optim.embedding = optim.matrix.clone();
            optim.head = optim.matrix.clone();
            optim.scalar = optim.matrix.clone();
        }
        for (rule, lr) in [
            (&mut optim.embedding, self.embed_lr),
            (&mut optim.head, self.head_lr),
            (&mut optim.scalar, self.scalar_lr),
        ] {
            set(rule.lr_mut(), lr);
        }
        set(optim.embedding.weight_decay_mut(), self.embed_weight_decay);
        set(optim.head.weight_decay_mut(), self.embed_weight_decay);
        for rule in [
            &mut optim.matrix,
            &mut optim.embedding,
            &mut optim.head,
            &mut optim.scalar,
        ] {
            if let Some(adam) = rule.adam_mut() {
                set(&mut adam.beta1, self.adam_beta1);
                set(&mut adam.beta2, self.adam_beta2);
                set(&mut adam.eps, self.adam_eps);
            }
        }
        Ok(optim)
    }

    fn config(&self) -> Result<TrainConfig> {
        let unused = self.inapplicable_flags();
        ensure!(
            unused.is_empty(),
            "--arch {} --optimizer {} has no use for {}",
            self.arch,
            self.optimizer,
            unused.join(", ")
        );
        let overrides = ModelOverrides {
            layers: self.layers,
            channels: self.width,
            heads: self.heads,
            vocab: self.vocab,
            max_seq_len: self.context,
            softcap: self.softcap,
            rope_base: self.rope_base,
        };
        let model = ModelConfig::new(self.arch, self.model, &overrides)?;

        let optim = self.optim_config()?;

        let (warmup, mut cooldown, final_frac, clip) = match self.arch {
            Arch::Speedrun => (0, 0.4, 0.1, 0.0),
            Arch::Gpt2 => (700.min(self.max_steps / 10), 1.0, 0.0, 1.0),
        };
        if self.optimizer == OptimizerKind::SfAdamw {
            // Schedule-Free replaces the decay by its averaging.
            cooldown = 0.0;
        }
        if let Some(frac) = self.warmup_frac {
            ensure!(
                (0.0..=1.0).contains(&frac),
                "--warmup-frac must be between 0 and 1, not {frac}"
            );
        }
        let warmup_of_frac =
            (self.warmup_frac).map(|f| (f * self.max_steps as f64).round() as usize);
        let schedule = Schedule {
            warmup_steps: self.warmup_steps.or(warmup_of_frac).unwrap_or(warmup),
            cooldown_frac: self.cooldown_frac.unwrap_or(cooldown),
            final_lr_frac: self.final_lr_frac.unwrap_or(final_frac),
        };

        // An overflowing product is no multiple of anything: the same error.
        let sequence_tokens = self.micro_batch.checked_mul(self.seq_len).unwrap_or(0);
        ensure!(
            sequence_tokens > 0
                && self.batch_tokens > 0
                && self.batch_tokens.is_multiple_of(sequence_tokens),
            "--batch-tokens {} is not a positive multiple of --micro-batch {} × --seq-len {}",
            self.batch_tokens,
            self.micro_batch,
            self.seq_len
        );
        ensure!(
            self.seq_len <= model.max_seq_len,
            "--seq-len {} exceeds the model's context of {} (raise --context)",
            self.seq_len,
            model.max_seq_len
        );
        let config = TrainConfig {
            model,
            optim,
            schedule,
            micro_batch: self.micro_batch,
            seq_len: self.seq_len,
            grad_accum: self.batch_tokens / sequence_tokens,
            train_data: self.train_data.clone(),
            val_data: self.val_data.clone(),
            val_tokens: self.val_tokens,
            val_every: self.val_every,
            max_steps: self.max_steps,
            target_loss: self.target_loss,
            grad_clip: self.grad_clip.unwrap_or(clip),
            seed: self.seed,
        };
        config.validate()?;
        Ok(config)
    }

    /// Where this process stands in a multi-node run, if it is one.
    fn node_spec(&self) -> Result<Option<NodeSpec>> {
        NodeSpec::resolve(
            self.nodes,
            self.node_rank,
            self.rendezvous.clone(),
            Duration::from_secs(self.rendezvous_timeout),
            |name| std::env::var(name).ok(),
        )
    }

    /// Trains `config` on this device with these ranks, or as one of several nodes; returns
    /// the record (None on nodes other than 0).
    fn train(&self, config: &TrainConfig, options: &RunOptions) -> Result<Option<Record>> {
        ensure!(
            self.collective_timeout > 0,
            "--collective-timeout must be positive"
        );
        ensure!(
            self.gpus.is_none() || self.ranks == 1,
            "--ranks runs ranks as CPU threads and --gpus one rank per GPU: give one of them"
        );
        let device = choose_device(self.device, self.optimizer, self.ranks)?;
        let Some(spec) = self.node_spec()? else {
            let gpus = self.gpus_to_use(device, config.grad_accum)?;
            if gpus > 1 {
                let timeout = self.collective_timeout();
                let open = move |comm: &dyn Comm| open_rank_gpu(comm, timeout);
                return train_ranks(config, options, gpus, &open).map(Some);
            }
            return train_ranks(config, options, self.ranks, &move |_| new_backend(device))
                .map(Some);
        };
        ensure!(
            self.ranks == 1,
            "with --nodes every node is one rank: leave out --ranks"
        );
        ensure!(
            self.gpus.is_none_or(|gpus| gpus == 1),
            "with --nodes every process drives one GPU ($LOCAL_RANK or $SLURM_LOCALID): start \
             one process per GPU and leave out --gpus"
        );
        info!(
            "node {} of {}: meeting the others at {}",
            spec.node_rank, spec.nodes, spec.rendezvous
        );
        // Nodes must run the same build with the same settings and checkpoint at the same
        // steps (saving is a collective); where they start is checked once they have met.
        let run = format!(
            "{GIT_COMMIT} {} checkpoint every {}",
            serde_json::to_string(config)?,
            options.checkpoint_every
        );
        let comm = TcpComm::rendezvous(&spec, &run)?;
        // With --device cuda on every node the gradients are summed by NCCL on the GPUs (its
        // set-up is collective, so only where every node asked for a GPU); otherwise through
        // the host over TCP.
        let mut backend: Box<dyn Backend> = match (device, open_cuda(device)?) {
            (Device::Cuda, Some(mut cuda)) => {
                cuda.use_nccl(&comm, self.collective_timeout())?;
                Box::new(cuda)
            }
            (_, Some(cuda)) => Box::new(cuda),
            (_, None) => Box::new(CpuBackend::<f32>::new()),
        };
        train_on(backend.as_mut(), config, options, &comm)
    }

    fn collective_timeout(&self) -> Duration {
        Duration::from_secs(self.collective_timeout)
    }

    /// How many GPUs this process trains on: --gpus, else every visible one where NCCL loads
    /// and they can share a step's `grad_accum` micro-batches (1 where it trains on one GPU or
    /// on the CPU).
    fn gpus_to_use(&self, device: Device, grad_accum: usize) -> Result<usize> {
        let visible = || crate::backend::cuda::visible_gpus();
        Ok(match (device, self.gpus) {
            (Device::Cpu, None) => 1,
            (Device::Cpu, Some(_)) => {
                bail!("--gpus needs a GPU: it cannot go with --device cpu (CPU ranks are --ranks)")
            }
            (_, Some(0)) => bail!("--gpus must be positive"),
            (_, Some(gpus)) => {
                let visible = visible();
                ensure!(
                    gpus <= visible,
                    "--gpus {gpus}: this machine shows {visible} GPU(s) to this process"
                );
                gpus
            }
            (_, None) => match visible() {
                0 | 1 => 1,
                // With several GPUs, --device auto takes them where the first one opens.
                _ if device == Device::Auto && Gpu::open(0).is_err() => 1,
                gpus if !crate::backend::cuda::nccl::present() => {
                    warn!(
                        "{gpus} GPUs visible, but NCCL (libnccl.so.2) cannot be loaded: \
                         training on one"
                    );
                    1
                }
                gpus if !grad_accum.is_multiple_of(gpus) => {
                    warn!(
                        "{gpus} GPUs visible, but they cannot share the {grad_accum} \
                         micro-batches of a step equally: training on one (give --gpus, or \
                         a --batch-tokens that makes a multiple of {gpus} micro-batches)"
                    );
                    1
                }
                gpus => gpus,
            },
        })
    }

    fn run(&self) -> Result<()> {
        let config = self.config()?;
        set_threads(self.threads)?;
        let options = RunOptions {
            checkpoint_dir: self.checkpoint_dir.clone(),
            checkpoint_every: self.checkpoint_every,
            resume: self.resume.clone(),
            records: (!self.no_record).then(|| self.records.clone()),
            log_every: self.log_every,
            record_divergence: false,
            trial: None,
        };
        stop_on_ctrl_c("stopping after this step to save a checkpoint")?;
        let Some(record) = self.train(&config, &options)? else {
            info!("done; node 0 writes the record");
            return Ok(());
        };
        info!(
            "done: {} steps, {} tokens, final val loss {:.4}, {:.1} s of training, {:.0} tokens/s{}",
            record.steps,
            record.tokens,
            record.final_val_loss,
            record.train_seconds,
            record.tokens_per_second,
            match (record.target_loss, record.time_to_target) {
                (Some(t), Some(s)) => format!(", target {t} reached in {s:.1} s"),
                (Some(t), None) => format!(", target {t} not reached"),
                _ => String::new(),
            }
        );
        Ok(())
    }
}

/// The first Ctrl-C sets [`STOP_REQUESTED`] and warns `what` the run does then; the second
/// quits at once.
fn stop_on_ctrl_c(what: &'static str) -> Result<()> {
    ctrlc::set_handler(move || {
        if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        warn!("{what} (Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")
}

/// Sizes the CPU thread pool (default: all cores).
fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(threads) = threads {
        ensure!(threads > 0, "--threads must be positive");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot start the CPU thread pool")?;
    }
    Ok(())
}

/// One training step of `config`'s model and optimizer on the GPU, and the bytes its backend
/// allocated, next to `report`'s estimate for the CUDA backend.
fn measure_memory(args: &TrainArgs, config: &TrainConfig, report: &MemoryReport) -> Result<()> {
    let device = choose_device(Device::Cuda, args.optimizer, 1)?;
    let mut backend = new_backend(device)?;
    let bench = BenchConfig {
        model: config.model.clone(),
        optim: config.optim.clone(),
        batch: config.micro_batch,
        seq_len: config.seq_len,
        accum: 1,
        steps: 1,
        warmup: 0,
        gemm_size: 0,
    };
    let measured = crate::bench::run(backend.as_mut(), &bench)?.peak_memory_bytes;
    let estimate: u64 = report.cuda_bytes().iter().sum();
    println!(
        "\nmeasured on {}: {:.3} GB allocated by the backend in one training step (estimate \
         {:.3} GB; the difference is token buffers and scratch; cuBLASLt's workspace and the \
         CUDA context are not counted)",
        backend.describe(),
        measured as f64 / 1e9,
        estimate as f64 / 1e9
    );
    Ok(())
}

/// The device a run of `optimizer` on `ranks` ranks of this process trains on: `auto` picks
/// the GPU only where the CUDA backend can run the job, and `cuda` is refused up front where it
/// cannot (rather than at the first step).
fn choose_device(device: Device, optimizer: OptimizerKind, ranks: usize) -> Result<Device> {
    let needs_solver = matches!(optimizer, OptimizerKind::Shampoo | OptimizerKind::Soap);
    let unsupported = if ranks > 1 {
        Some(format!(
            "--ranks {ranks} runs its ranks as threads sharing one device; on GPUs give --gpus \
             instead (one rank per GPU)"
        ))
    } else if needs_solver && device != Device::Cpu && !crate::backend::cuda::solver::present() {
        Some(format!(
            "{optimizer:?} needs cuSOLVER on the GPU, and libcusolver cannot be loaded"
        ))
    } else {
        None
    };
    Ok(match (device, unsupported) {
        (Device::Cuda, Some(reason)) => bail!("--device cuda: {reason}; use --device cpu"),
        (Device::Auto, Some(reason)) => {
            if Gpu::open(0).is_ok() {
                info!("training on the CPU: {reason}");
            }
            Device::Cpu
        }
        (device, _) => device,
    })
}

/// The backend for `device`, with `threads` CPU threads.
fn open_backend(device: Device, threads: Option<usize>) -> Result<Box<dyn Backend>> {
    set_threads(threads)?;
    new_backend(device)
}

/// A fresh backend for `device` (the CPU thread pool as already set).
fn new_backend(device: Device) -> Result<Box<dyn Backend>> {
    Ok(match open_cuda(device)? {
        Some(cuda) => Box::new(cuda),
        None => Box::new(CpuBackend::<f32>::new()),
    })
}

/// This process's GPU: its local rank where a launcher set one (torchrun's LOCAL_RANK,
/// Slurm's SLURM_LOCALID), so that the processes of one machine take one GPU each; else 0.
/// A process that sees one GPU (a launcher that binds one to each, like Slurm's
/// --gpus-per-task=1) takes that one.
fn local_gpu() -> usize {
    if crate::backend::cuda::visible_gpus() == 1 {
        return 0;
    }
    ["LOCAL_RANK", "SLURM_LOCALID"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// The backend of rank `comm.rank()` of a run on several GPUs of this machine: GPU `rank`,
/// joined to the others by NCCL, whose waits end the run after `timeout`.
fn open_rank_gpu(comm: &dyn Comm, timeout: Duration) -> Result<Box<dyn Backend>> {
    let gpu = Gpu::open(comm.rank())?;
    let mut cuda = start_cuda(gpu, comm.is_lead())?;
    cuda.use_nccl(comm, timeout)?;
    Ok(Box::new(cuda))
}

/// The CUDA backend on `gpu`; `warn`: say that it is unverified.
fn start_cuda(gpu: Gpu, warn: bool) -> Result<CudaBackend<bf16>> {
    let backend = CudaBackend::<bf16>::on(gpu)
        .context("cannot start the CUDA backend (--device cpu trains on the CPU instead)")?;
    if warn {
        warn!(
            "the CUDA backend has not yet been verified on a GPU: run `speedrun check --device \
             cuda` on this machine before trusting its numbers"
        );
    }
    Ok(backend)
}

/// The CUDA backend where `device` asks for a GPU (None: the CPU).
fn open_cuda(device: Device) -> Result<Option<CudaBackend<bf16>>> {
    let gpu = match device {
        Device::Cpu => None,
        // Opening the GPU first gives the one-sentence reason where there is none.
        Device::Cuda => Some(Gpu::open(local_gpu())?),
        // A GPU that opens is used; with none (no driver, no device), the CPU.
        Device::Auto => Gpu::open(local_gpu()).ok(),
    };
    let Some(gpu) = gpu else {
        return Ok(None);
    };
    start_cuda(gpu, true).map(Some)
}

fn compile_kernels(args: &KernelsArgs) -> Result<()> {
    let archs = if args.archs.is_empty() {
        kernels::REQUIRED_ARCHS
            .iter()
            .map(|a| a.to_string())
            .collect()
    } else {
        args.archs.clone()
    };
    kernels::compile_all(&archs)
}

fn check_device(args: &CheckArgs) -> Result<()> {
    ensure!(
        args.device == Device::Cuda,
        "check compares the CUDA kernels with the CPU reference: use --device cuda"
    );
    cuda::check::run(0, args.seed)
}

fn prepare_shards(args: &PrepareArgs) -> Result<()> {
    set_threads(args.threads)?;
    let options = prepare::PrepareOptions {
        prefix: args.prefix.clone(),
        val_tokens: args.val_tokens,
        shard_tokens: args.shard_tokens,
        ..prepare::PrepareOptions::new(args.inputs.clone(), &args.out)
    };
    // prepare() logs what it wrote.
    prepare::prepare(&options)?;
    Ok(())
}

fn download_fineweb(args: &FinewebArgs) -> Result<()> {
    ensure!(args.timeout > 0, "--timeout must be positive");
    let options = fineweb::DownloadOptions {
        base_url: args.base_url.clone(),
        retries: args.retries,
        timeout: std::time::Duration::from_secs(args.timeout),
        ..fineweb::DownloadOptions::new(&args.dir, args.train_shards)
    };
    let summary = fineweb::download(&options)?;
    info!(
        "{} shard(s) in {}: {} already there, {:.1} MB downloaded",
        summary.files.len(),
        args.dir.display(),
        summary.skipped,
        summary.downloaded_bytes as f64 / 1e6
    );
    Ok(())
}

fn inspect(args: &InspectArgs) -> Result<()> {
    for file in &args.files {
        let summary = data::inspect::summarize(file, args.top, args.excerpt)?;
        print!("{}", data::inspect::Report(&summary));
    }
    Ok(())
}

fn sample(args: &SampleArgs) -> Result<()> {
    ensure!(
        args.temperature.is_finite() && args.temperature >= 0.0,
        "--temperature must be finite and not negative, not {}",
        args.temperature
    );
    let checkpoint = Checkpoint::open(&args.checkpoint)?;
    let config = checkpoint.state.config.model.clone();
    let gpt2 = config.vocab == GPT2_VOCAB;
    let prompt = match (&args.prompt_tokens, &args.prompt) {
        (Some(tokens), _) => tokens.clone(),
        (None, Some(text)) if gpt2 => tokenizer::encode(text),
        (None, None) if gpt2 => vec![END_OF_TEXT],
        (None, _) => bail!(
            "this model's vocabulary has {} tokens, not GPT-2's {GPT2_VOCAB}: give --prompt-tokens",
            config.vocab
        ),
    };
    ensure!(!prompt.is_empty(), "the prompt is empty");
    ensure!(
        prompt.len() + args.tokens <= config.max_seq_len,
        "{} prompt tokens + {} new ones exceed the model's context of {}",
        prompt.len(),
        args.tokens,
        config.max_seq_len
    );
    let mut backend = open_backend(args.device, args.threads)?;
    let backend = backend.as_mut();
    let mut decoder = Decoder::new(backend, &config)?;
    checkpoint.restore_params(backend, &decoder.specs)?;
    info!(
        "{} {} from {} (step {}), on {}",
        config.arch,
        config.name,
        args.checkpoint.display(),
        checkpoint.state.step,
        backend.describe()
    );
    let mut logits = Vec::new();
    for &token in &prompt {
        logits = decoder.step(backend, token)?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut out = std::io::stdout().lock();
    let mut generated = Vec::new();
    let mut printed = 0;
    if gpt2 && args.prompt_tokens.is_none() {
        write!(out, "{}", args.prompt.as_deref().unwrap_or(""))?;
    }
    for i in 0..args.tokens {
        let token = sample_token(&logits, args.temperature, args.top_k, &mut rng);
        generated.push(token);
        if gpt2 {
            // Print what decodes completely so far: a character may span several tokens.
            let text = tokenizer::decode(&generated);
            if !text.ends_with(char::REPLACEMENT_CHARACTER) {
                write!(out, "{}", &text[printed..])?;
                printed = text.len();
            }
        } else {
            write!(out, "{}{token}", if i == 0 { "" } else { "," })?;
        }
        out.flush()?;
        if i + 1 < args.tokens {
            logits = decoder.step(backend, token)?;
        }
    }
    writeln!(out)?;
    Ok(())
}

fn landscape(args: &LandscapeArgs) -> Result<()> {
    ensure!(
        args.range.is_finite() && args.range > 0.0,
        "--range must be positive and finite, not {}",
        args.range
    );
    ensure!(
        args.points % 2 == 1,
        "--points must be odd, so that the origin is on the grid, not {}",
        args.points
    );
    let checkpoint = Checkpoint::open(&args.checkpoint)?;
    let run = &checkpoint.state.config;
    let mut backend = open_backend(args.device, args.threads)?;
    let backend = backend.as_mut();
    let model = Gpt::new(backend, &run.model, run.micro_batch, run.seq_len)?;
    checkpoint.restore_params(backend, &model.specs)?;
    let origin = backend.read(model.param_buffer)?;
    let val_data = args.val_data.as_deref().unwrap_or(&run.val_data);
    let val_tokens = args.val_tokens.unwrap_or(run.val_tokens);
    let val = ValData::load(val_data, val_tokens, run.model.vocab)
        .context("validation data (--val-data, --val-tokens)")?;
    val.batch_count(run.micro_batch, run.seq_len)
        .context("validation data (--val-tokens)")?;
    let base = model.param_buffer.offset;
    let tensors: Vec<_> = model
        .specs
        .iter()
        .map(|s| s.tensor.offset - base..s.tensor.offset - base + s.tensor.len)
        .collect();
    let random = |seed| landscape::filter_normalized_direction(&origin, &tensors, seed);
    let axis = landscape::grid(args.range, args.points);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    info!(
        "{} {} from {} (step {}): loss on {val_tokens} tokens of '{val_data}'",
        run.model.arch,
        run.model.name,
        args.checkpoint.display(),
        checkpoint.state.step
    );
    let (csv, values) = if args.plane {
        let (d1, d2) = (random(args.seed), random(args.seed.wrapping_add(1)));
        let mut objective = landscape::ModelLoss {
            backend,
            model: &model,
            val: &val,
        };
        let directions = (d1.as_slice(), d2.as_slice());
        let losses = landscape::plane(
            &mut objective,
            &origin,
            directions,
            &axis,
            &axis,
            args.log_every,
        )?;
        let mut csv = String::from("alpha,beta,loss\n");
        for (j, beta) in axis.iter().enumerate() {
            for (i, alpha) in axis.iter().enumerate() {
                csv.push_str(&format!("{alpha},{beta},{}\n", losses[j * axis.len() + i]));
            }
        }
        (csv, losses)
    } else {
        let direction = match &args.to {
            Some(path) => {
                let target = Checkpoint::open(path)?;
                ensure!(
                    target.state.config.model == run.model,
                    "{} holds another model than {}",
                    path.display(),
                    args.checkpoint.display()
                );
                target.restore_params(backend, &model.specs)?;
                let far = backend.read(model.param_buffer)?;
                far.iter().zip(&origin).map(|(w1, w0)| w1 - w0).collect()
            }
            None => random(args.seed),
        };
        let mut objective = landscape::ModelLoss {
            backend,
            model: &model,
            val: &val,
        };
        let losses = landscape::line(&mut objective, &origin, &direction, &axis, args.log_every)?;
        let mut csv = String::from("alpha,loss\n");
        for (alpha, loss) in axis.iter().zip(&losses) {
            csv.push_str(&format!("{alpha},{loss}\n"));
        }
        (csv, losses)
    };
    let name = if args.plane {
        "landscape_plane"
    } else {
        "landscape_line"
    };
    let csv_path = args.out.join(format!("{name}.csv"));
    crate::atomic::write_file(&csv_path, |f| f.write_all(csv.as_bytes()))
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    let title = format!(
        "{} {} at step {}",
        run.model.arch, run.model.name, checkpoint.state.step
    );
    let stem = args.out.join(name);
    if args.plane {
        let map = plot::Heatmap {
            title: &title,
            x_label: "α",
            y_label: "β",
            xs: axis.clone(),
            ys: axis.clone(),
            values: values.clone(),
            value_label: "validation loss",
        };
        plot::heatmap(&map, &stem)?;
    } else {
        let label = match &args.to {
            Some(path) => format!("towards {}", path.display()),
            None => format!("random direction (seed {})", args.seed),
        };
        let points = axis.iter().copied().zip(values.iter().copied()).collect();
        let line = plot::LinePlot {
            title: &title,
            x_label: "α",
            y_label: "validation loss",
            series: vec![plot::Series::new(label, points)],
            ..Default::default()
        };
        plot::line_plot(&line, &stem)?;
    }
    // The origin is the middle of the grid (an odd number of points per axis).
    let origin_loss = values[values.len() / 2];
    let lowest = values.iter().copied().fold(f64::INFINITY, f64::min);
    info!(
        "wrote {}; loss at the origin {origin_loss:.4}, lowest {lowest:.4}",
        csv_path.display()
    );
    Ok(())
}

fn grok(args: &GrokArgs) -> Result<()> {
    let config = GrokConfig {
        p: args.p,
        train_frac: args.train_frac,
        seed: args.seed,
        arch: args.arch,
        layers: args.layers,
        width: args.width,
        heads: args.heads,
        optimizer: args.optimizer,
        lr: args.lr,
        muon_lr: args.muon_lr,
        beta1: args.beta1,
        beta2: args.beta2,
        eps: args.eps,
        weight_decay: args.weight_decay,
        warmup_steps: args.warmup_steps,
        batch: args.batch,
        max_steps: args.max_steps,
        time_budget: args.time_budget,
        stop_when_grokked: !args.keep_going,
    };
    config.validate()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut backend = open_backend(args.device, args.threads)?;
    stop_on_ctrl_c("stopping after this step to evaluate and record the run")?;
    let result = crate::grok::run(backend.as_mut(), &config, args.log_every)?;

    let mut csv = String::from("step,train_loss,train_acc,val_loss,val_acc,train_seconds\n");
    for p in &result.curve {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            p.step, p.train_loss, p.train_acc, p.val_loss, p.val_acc, p.train_seconds
        ));
    }
    let csv_path = args.out.join("grok.csv");
    crate::atomic::write_file(&csv_path, |f| f.write_all(csv.as_bytes()))
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    let accuracy = |value: fn(&crate::grok::GrokPoint) -> f64| {
        result
            .curve
            .iter()
            .map(|p| (p.step as f64, 100.0 * value(p)))
            .collect()
    };
    let title = format!(
        "a / b mod {}: {} layers × {}, {} (wd {}), {:.0}% of pairs for training",
        config.p,
        config.layers,
        config.width,
        config.optimizer,
        config.weight_decay,
        100.0 * result.train_size as f64 / (result.train_size + result.val_size) as f64
    );
    let plot = plot::LinePlot {
        title: &title,
        x_label: "optimization step",
        y_label: "accuracy (%)",
        series: vec![
            plot::Series::new("train", accuracy(|p| p.train_acc)),
            plot::Series::new("validation", accuracy(|p| p.val_acc)),
        ],
        log_x: true,
        ..Default::default()
    };
    let [svg, png] = plot::line_plot(&plot, &args.out.join("grok"))?;
    info!(
        "wrote {}, {} and {}",
        csv_path.display(),
        svg.display(),
        png.display()
    );
    if !args.no_record {
        let record = records::GrokRecord::new(&config, &result);
        records::append(&args.records, &record)?;
        info!("appended the run to {}", args.records.display());
    }
    Ok(())
}

fn synth(args: &SynthArgs) -> Result<()> {
    let config = SynthConfig {
        vocab: args.vocab,
        successors: args.successors,
        train_tokens: args.train_tokens,
        val_tokens: args.val_tokens,
        shard_tokens: args.shard_tokens,
        seed: args.seed,
    };
    let summary = write_synth_dataset(&args.out, &config)?;
    info!(
        "wrote {} train shard(s) and {} val shard(s) to {}",
        summary.train_files.len(),
        summary.val_files.len(),
        args.out.display()
    );
    info!(
        "entropy rate {:.6} nats/token: the lowest validation loss any model can reach \
         (marginal entropy {:.6}); train with --vocab {}",
        summary.entropy_rate, summary.marginal_entropy, args.vocab
    );
    Ok(())
}

fn print_records(args: &RecordsArgs) -> Result<()> {
    let records = records::load(&args.file)?;
    if records.is_empty() {
        bail!("{} holds no records yet", args.file.display());
    }
    print!("{}", records::table(&records));
    if args.algoperf {
        let runs: Vec<records::Record> = (records.iter())
            .filter_map(|entry| match entry {
                records::Entry::Train(r) => Some(r.as_ref().clone()),
                records::Entry::Grok(_) => None,
            })
            .collect();
        print!("\n{}", records::algoperf_table(&runs));
    }
    Ok(())
}

/// The training flags of one trial, parsed as `speedrun train` parses its own.
#[derive(Parser, Debug)]
#[command(name = "trial", no_binary_name = true)]
struct TrialFlags {
    #[command(flatten)]
    train: TrainArgs,
}

/// A study's trials, each with its training flags and settings, checked before anything runs.
fn plan_study(study: &StudyFile) -> Result<Vec<(Trial, TrainArgs, TrainConfig)>> {
    (study.trials().into_iter())
        .map(|trial| {
            let parsed = TrialFlags::try_parse_from(&trial.args)
                .map_err(|e| anyhow!("{}", e.render().to_string().lines().next().unwrap_or("")))
                .and_then(|flags| {
                    let config = flags.train.config()?;
                    ensure!(
                        config.target_loss.is_some(),
                        "no --target-loss: a study measures the time to a target"
                    );
                    Ok((flags.train, config))
                })
                .with_context(|| {
                    format!(
                        "study {}, trial {}: {}",
                        study.name,
                        trial.label(),
                        trial.args.join(" ")
                    )
                })?;
            Ok((trial, parsed.0, parsed.1))
        })
        .collect()
}

/// The records of `study`'s trials already in its log, each checked against the trial the
/// study file now plans (same hyper-parameters, same settings).
fn finished_trials(
    study: &StudyFile,
    plan: &[(Trial, TrainArgs, TrainConfig)],
) -> Result<Vec<records::Record>> {
    if !study.records.exists() {
        return Ok(Vec::new());
    }
    let mut finished = Vec::new();
    for entry in records::load(&study.records)? {
        let records::Entry::Train(record) = entry else {
            continue;
        };
        let Some(tag) = record.trial.as_ref().filter(|t| t.study == study.name) else {
            continue;
        };
        let same_trial = |(t, _, _): &&(Trial, TrainArgs, TrainConfig)| {
            (t.tag.workload == tag.workload)
                && t.tag.optimizer == tag.optimizer
                && t.tag.study_index == tag.study_index
                && t.tag.trial == tag.trial
        };
        let Some((trial, _, config)) = plan.iter().find(same_trial) else {
            continue;
        };
        ensure!(
            trial.tag.hparams == tag.hparams && *config == record.config,
            "{} holds a record of study {} trial {} with other settings than the study file now \
             gives it; name the changed study differently, or give it another records log",
            study.records.display(),
            study.name,
            trial.label()
        );
        finished.push(*record);
    }
    Ok(finished)
}

fn is_finished(trial: &Trial, finished: &[records::Record]) -> bool {
    finished
        .iter()
        .any(|r| r.trial.as_ref() == Some(&trial.tag))
}

/// The checkpoint a trial continues from: the newest in its directory, unless that run had
/// already finished (its record was never written): then the trial starts over.
fn resume_point(dir: &std::path::Path) -> Result<Option<PathBuf>> {
    let Some(path) = study::latest_checkpoint(dir)? else {
        return Ok(None);
    };
    if let Some(why) = Checkpoint::open(&path)?.state.finished() {
        warn!(
            "{} is from a finished run ({why}) that left no record; starting the trial over",
            path.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        return Ok(None);
    }
    Ok(Some(path))
}

fn study_run(args: &StudyRunArgs) -> Result<()> {
    let study = StudyFile::load(&args.file)?;
    let plan = plan_study(&study)?;
    let finished = finished_trials(&study, &plan)?;
    let pending: Vec<_> = plan
        .iter()
        .filter(|(t, _, _)| !is_finished(t, &finished))
        .collect();
    info!(
        "study {}: {} trials ({} workload(s) × {} optimizer(s) × {} trial(s) × {} stud(ies)), \
         {} done, {} to run; records to {}",
        study.name,
        plan.len(),
        study.workloads.len(),
        study.optimizers.len(),
        study.trials,
        study.studies,
        plan.len() - pending.len(),
        pending.len(),
        study.records.display()
    );
    set_threads(args.threads)?;
    stop_on_ctrl_c("stopping after this step to save the trial's checkpoint")?;
    let mut overall = progress::Overall::new(plan.len(), plan.len() - pending.len());
    for (trial, flags, config) in pending {
        info!("trial {}: {}", trial.label(), trial.describe_hparams());
        let dir = study.checkpoint_dir(&trial.tag);
        let options = RunOptions {
            checkpoint_dir: dir.clone(),
            checkpoint_every: flags.checkpoint_every,
            resume: resume_point(&dir)?,
            records: Some(study.records.clone()),
            log_every: flags.log_every,
            record_divergence: true,
            trial: Some(trial.tag.clone()),
        };
        ensure!(
            flags.node_spec()?.is_none(),
            "study {}, trial {}: studies run on one node (unset --nodes, $WORLD_SIZE and \
             $SLURM_NTASKS)",
            study.name,
            trial.label()
        );
        let record = flags.train(config, &options).map_err(|e| {
            if STOP_REQUESTED.load(Ordering::Relaxed) {
                anyhow!(
                    "study interrupted during trial {}; run `speedrun study run {}` again to \
                     continue from its checkpoint",
                    trial.label(),
                    args.file.display()
                )
            } else {
                e.context(format!("study {}, trial {}", study.name, trial.label()))
            }
        })?;
        if !study.keep_checkpoints && dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
            // And the directories above it that this leaves empty (remove_dir keeps the others).
            for parent in dir.ancestors().skip(1) {
                if parent == study.checkpoint_dir || std::fs::remove_dir(parent).is_err() {
                    break;
                }
            }
        }
        let record = record.context("a one-node run returns its record")?;
        let outcome = match (record.diverged_at, record.time_to_target) {
            (Some(step), _) => format!("diverged at step {step}"),
            (None, Some(t)) => format!("target reached in {t:.1} s ({} steps)", record.steps),
            (None, None) => format!("target not reached in {} steps", record.steps),
        };
        overall.finish_one(&format!("{}: {outcome}", trial.label()));
    }
    drop(overall);
    info!(
        "study {} complete; its report: speedrun report --records {} --study {}",
        study.name,
        study.records.display(),
        study.name
    );
    Ok(())
}

fn study_plan(args: &StudyPlanArgs) -> Result<()> {
    let study = StudyFile::load(&args.file)?;
    let plan = plan_study(&study)?;
    let finished = finished_trials(&study, &plan)?;
    println!("| study | workload | optimizer | trial | hyper-parameters | status |");
    println!("|---:|---|---|---:|---|---|");
    for (trial, _, _) in &plan {
        let status = if is_finished(trial, &finished) {
            "done".to_string()
        } else {
            match study::latest_checkpoint(&study.checkpoint_dir(&trial.tag))? {
                Some(path) => format!("interrupted ({})", path.display()),
                None => "to run".to_string(),
            }
        };
        let t = &trial.tag;
        println!(
            "| {} | {} | {} | {} | {} | {status} |",
            t.study_index,
            t.workload,
            t.optimizer,
            t.trial,
            trial.describe_hparams()
        );
    }
    Ok(())
}

fn report(args: &ReportArgs) -> Result<()> {
    let runs: Vec<records::Record> = (records::load(&args.records)?.into_iter())
        .filter_map(|entry| match entry {
            records::Entry::Train(r) if r.trial.is_some() => Some(*r),
            _ => None,
        })
        .collect();
    let mut studies: Vec<&str> = runs
        .iter()
        .filter_map(|r| Some(r.trial.as_ref()?.study.as_str()))
        .collect();
    studies.sort();
    studies.dedup();
    let name = match (&args.study, studies.as_slice()) {
        (Some(name), _) => name.clone(),
        (None, [only]) => only.to_string(),
        (None, []) => bail!("{} holds no study trials", args.records.display()),
        (None, many) => bail!(
            "{} holds several studies ({}): choose one with --study",
            args.records.display(),
            many.join(", ")
        ),
    };
    let trials: Vec<records::Record> = (runs.iter())
        .filter(|r| r.trial.as_ref().is_some_and(|t| t.study == name))
        .cloned()
        .collect();
    ensure!(
        !trials.is_empty(),
        "{} holds no trials of study {name:?} (it has: {})",
        args.records.display(),
        studies.join(", ")
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("records/reports").join(&name));
    let written = crate::report::write(&name, &trials, &out, args.log_x)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => cli.train.run(),
        Some(Command::Train(args)) => args.run(),
        Some(Command::Data(DataCommand::Synth(args))) => synth(&args),
        Some(Command::Records(args)) => print_records(&args),
        Some(Command::Sample(args)) => sample(&args),
        Some(Command::Landscape(args)) => landscape(&args),
        Some(Command::Grok(args)) => grok(&args),
        Some(Command::Bench(args)) => bench(&args),
        Some(Command::Study(StudyCommand::Run(args))) => study_run(&args),
        Some(Command::Study(StudyCommand::Plan(args))) => study_plan(&args),
        Some(Command::Report(args)) => report(&args),
        Some(Command::Kernels(args)) => compile_kernels(&args),
        Some(Command::Check(args)) => check_device(&args),
        Some(Command::Memory(args)) => {
            let config = args.config()?;
            let report = MemoryReport::new(
                &config.model,
                &config.optim,
                config.micro_batch,
                config.seq_len,
            )?;
            print!("{report}");
            if args.device == Device::Cuda {
                measure_memory(&args, &config, &report)?;
            }
            Ok(())
        }
        Some(Command::Data(DataCommand::Inspect(args))) => inspect(&args),
        Some(Command::Data(DataCommand::Fineweb(args))) => download_fineweb(&args),
        Some(Command::Data(DataCommand::Prepare(args))) => prepare_shards(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_the_cuda_backend_cannot_run_stay_on_the_cpu() {
        use OptimizerKind as K;
        for (optimizer, ranks) in [(K::Muon, 2), (K::Shampoo, 2)] {
            let error = choose_device(Device::Cuda, optimizer, ranks).unwrap_err();
            assert!(error.to_string().contains("use --device cpu"), "{error}");
            assert_eq!(
                choose_device(Device::Auto, optimizer, ranks).unwrap(),
                Device::Cpu
            );
            assert_eq!(
                choose_device(Device::Cpu, optimizer, ranks).unwrap(),
                Device::Cpu
            );
        }
        for device in [Device::Auto, Device::Cpu, Device::Cuda] {
            assert_eq!(choose_device(device, K::Muon, 1).unwrap(), device);
            assert_eq!(choose_device(device, K::Adamw, 1).unwrap(), device);
            // cuSOLVER gives the CUDA backend the preconditioners' solvers, where it loads.
            for optimizer in [K::Shampoo, K::Soap] {
                let chosen = choose_device(device, optimizer, 1);
                match (device, crate::backend::cuda::solver::present()) {
                    (Device::Cuda, false) => {
                        let error = chosen.unwrap_err().to_string();
                        assert!(error.contains("cuSOLVER"), "{error}");
                    }
                    (Device::Auto, false) => assert_eq!(chosen.unwrap(), Device::Cpu),
                    _ => assert_eq!(chosen.unwrap(), device),
                }
            }
        }
    }
}
