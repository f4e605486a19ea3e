//! One file per subcommand; each has its arguments and a `run` that
//! returns `Ok(false)` when it ran and found failures.

pub mod check;
pub mod eval;
pub mod publish;
pub mod replay;
pub mod run;
pub mod test;
