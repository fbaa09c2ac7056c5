//! Time of one allreduce through the training's MPI collective (`train::mpi::Mpi`), as a
//! step makes them: `mpirun -np 2 target/release/examples/mpi_latency [FLOATS]` (default 8;
//! 250000 is a 1 MB gradient bucket). Add `--mca btl tcp,self` to mpirun for TCP instead of
//! shared memory. Build with `cargo build --release -p mobilenet --features mpi --example
//! mpi_latency`.

#[cfg(feature = "mpi")]
fn main() {
    use mobilenet::train::dist::Collective;
    let timeout = std::time::Duration::from_secs(30);
    let mpi = mobilenet::train::mpi::Mpi::init(timeout).expect("MPI starts");
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().expect("FLOATS is a count"),
        None => 8,
    };
    let mut v = vec![1.0f32; n];
    for _ in 0..20 {
        mpi.sum_f32(&mut v);
    }
    let (start, iters) = (std::time::Instant::now(), 300);
    for _ in 0..iters {
        mpi.sum_f32(&mut v);
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / iters as f64;
    if mpi.rank() == 0 {
        println!(
            "{n} floats on {} ranks: {us:.1} µs per allreduce",
            mpi.size()
        );
    }
}

#[cfg(not(feature = "mpi"))]
fn main() {
    eprintln!("built without the mpi feature: cargo build --release -p mobilenet --features mpi --example mpi_latency");
}
