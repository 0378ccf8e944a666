//! The model: configuration, parameter layout, and forward/backward over a backend.

pub mod config;
pub mod decode;
pub mod gpt;
pub mod params;

pub use config::{Arch, ModelConfig, ModelOverrides, ModelSize};
pub use decode::{Decoder, sample_token};
pub use gpt::{Gpt, Pass, activation_floats};
pub use params::{Group, ParamSpec, num_params, param_layout};

#[cfg(test)]
mod tests;
