//! speedrun: train GPT-2-class language models as fast as the hardware allows.
//!
//! The modules follow the pipeline: data → model → backend → optim → train → records → cli.

// Layer kernels take buffers and sizes explicitly, as in llm.c; bundling them into structs
// would only hide what each kernel reads and writes.
#![allow(clippy::too_many_arguments)]

pub mod algoperf;
pub mod atomic;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod dist;
pub mod grok;
pub mod hash;
pub mod landscape;
pub mod memory;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod records;
pub mod report;
pub mod study;
pub mod train;
