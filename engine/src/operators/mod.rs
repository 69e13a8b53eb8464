//! The operators, one per file. Each implements [`crate::operator::Operator`].

pub mod filter;
pub mod groups;
pub mod project;
pub mod session_window;
pub mod union;
pub mod updating_aggregate;
pub mod window_aggregate;

#[cfg(test)]
pub(crate) mod test_util;
