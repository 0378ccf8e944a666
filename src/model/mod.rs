//! The model: configuration, parameter layout, and forward/backward over a backend.

pub mod config;
pub mod gpt;
pub mod params;

pub use config::{Arch, ModelConfig, ModelOverrides, ModelSize};
pub use gpt::{Gpt, Pass};
pub use params::{Group, ParamSpec, num_params};

#[cfg(test)]
mod tests;
