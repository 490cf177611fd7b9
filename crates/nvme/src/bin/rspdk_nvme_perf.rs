//! rspdk_nvme_perf (in progress).
fn main() {}
