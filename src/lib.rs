//! pyusdt: CPython's USDT markers (gc, import, audit) as events, from a sidecar process.
//!
//! Data path: `discover` (which files carry markers) → `attach` (BPF programs on them) →
//! `decode` (ring buffer records) → `report` (console, JSON lines, summary).
//!
//! The library holds everything; the `pyusdt` binary (src/main.rs) parses the command line and
//! runs a subcommand. The modules the binary and the benchmarks (benches/) use are public.
mod abi;
mod attach;
mod audit_names;
pub mod bpf;
mod budget;
mod budget_memory;
pub mod cli;
pub mod commands;
pub mod decode;
mod discover;
pub mod exit;
pub mod export;
mod globs;
mod k8s;
pub mod model;
pub mod pipeline;
mod preflight;
pub mod privileges;
mod probes;
pub mod report;
mod serve;
pub mod text;
