//! CPU kernels for MobileNet inference and training.
//!
//! This crate knows nothing about MobileNet: its functions take slices, shapes and strides.
//! Every fast kernel has a scalar reference beside it, and tests compare each instruction-set
//! variant with that reference on edge sizes.
//!
//! Instruction sets are chosen at run time ([`Isa::detect`]), never at compile time, so one
//! release binary runs on any x86-64 or aarch64 machine.

mod isa;

pub use isa::Isa;
