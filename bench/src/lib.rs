//! Shared helpers for ringcast's benches and the comparison suite.
//!
//! # Layout
//! - [`sys`]: the few raw syscalls the benches need (`writev`, `eventfd`,
//!   `socketpair`), so bench files stay free of `unsafe`.
//! - [`payload`]: deterministic JSON payloads of a requested size.
//! - `src/bin/chart.rs`: draws the comparison chart from loadgen reports.

pub mod payload;
pub mod sys;
