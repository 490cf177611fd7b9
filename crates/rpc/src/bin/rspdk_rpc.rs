//! rspdk_rpc CLI (placeholder).
fn main() {}
