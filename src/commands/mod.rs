//! The subcommands, each a thin file: parse its flags, build the pipeline (src/pipeline/), run it.
pub mod agent;
pub mod child;
pub mod doctor;
pub mod flow;
pub mod list;
pub mod run;
pub mod top;
pub mod top_tui;
