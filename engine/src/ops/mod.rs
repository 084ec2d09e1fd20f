//! What an operator touches: configuration, the command line, metrics,
//! the dashboard, `ringcast doctor`, `ringcast shell`, and the allocation
//! counter.

pub mod alloc_count;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod metrics;
pub mod shell;
