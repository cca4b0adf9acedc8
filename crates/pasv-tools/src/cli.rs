//! The command lines of the binaries, as clap definitions.
//!
//! Only the definitions live here (flags, their help, environment variables, value parsers);
//! what the binaries do with the parsed values stays in `src/bin/`. Keeping them in the
//! library lets `cargo xtask dist` generate the man pages and shell completions from the very
//! structures the binaries parse with.

pub mod pasv;
pub mod pasvd;
