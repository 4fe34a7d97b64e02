//! The subcommands: `list` (discovery only), `run` and `agent` (both through `session`).
pub mod agent;
pub mod child;
pub mod doctor;
pub mod flow;
pub mod kernel_metrics;
pub mod list;
pub mod process_probes;
pub mod run;
pub mod session;
pub mod top;
pub mod top_tui;
