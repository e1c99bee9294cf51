#![doc = include_str!("../README.md")]

pub use pool_core;
