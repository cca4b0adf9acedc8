//! pasv
fn main() {}
