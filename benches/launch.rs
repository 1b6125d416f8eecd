//! `launch`: overhead of `Cluster::launch` and macro-kernel throughput (being written).

fn main() {}
