//! Token data: llm.c / FineWeb `.bin` shards and the training and validation loaders over
//! them; getting shards (FineWeb download, GPT-2 tokenisation of your own text, a synthetic
//! Markov source with a known entropy rate); and inspecting them.

pub mod fineweb;
pub mod inspect;
pub mod loader;
pub mod prepare;
pub mod shard;
pub mod synth;
pub mod tokenizer;

pub use loader::{LoaderPosition, TrainLoader, ValData};
pub use shard::{DataError, Shard, resolve_glob, write_shard};
pub use synth::{MarkovChain, SynthConfig, SynthError, SynthSummary, write_synth_dataset};
