//! pasvd
fn main() {}
