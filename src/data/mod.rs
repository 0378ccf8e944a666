//! Token data: llm.c / FineWeb `.bin` shards, the training and validation
//! loaders over them, and a synthetic Markov source with a known entropy rate.

pub mod loader;
pub mod shard;
pub mod synth;

pub use loader::{LoaderPosition, TrainLoader, ValData};
pub use shard::{DataError, Shard, resolve_glob, write_shard};
pub use synth::{MarkovChain, SynthConfig, SynthError, SynthSummary, write_synth_dataset};
