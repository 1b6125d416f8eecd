//! `macro-kernels`: the kernels of `src/kernels.rs`, run once as plain Rust and once
//! through offload on the local node, with the results compared.
//!
//! `cargo run -p macro-kernels --release [-- ITEMS]` prints one line per kernel and exits
//! with status 1 if a result differs. Nothing to package by hand: `build.rs` compiled the
//! kernels to the package embedded in this binary.
//!
//! `-- ITEMS --credentials DIR --peer ADDR [--peer ADDR ...]` runs every kernel on the
//! local node *and* on the cluster nodes at those addresses (see `offload node`), and
//! also compares the two.

mod kernels;

use std::process::ExitCode;
use std::time::Instant;

use offload::{Cluster, LaunchError, Options};

/// Deterministic pseudo-random numbers in `[-1, 1)` (splitmix64).
fn inputs(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// A text of `n` bytes: words of varying length, spaces, tabs and newlines.
fn text(n: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "offload", "a", "kernel", "runs\t", "on", "every", "core\n", "  ",
    ];
    let mut out = Vec::with_capacity(n + 16);
    let mut k = 0usize;
    while out.len() < n {
        out.extend_from_slice(WORDS[k * 7 % WORDS.len()].as_bytes());
        out.push(b' ');
        k += 1;
    }
    out.truncate(n);
    out
}

/// The results of one run of every kernel, for comparing back ends.
#[derive(PartialEq)]
struct Results {
    saxpy: Vec<f32>,
    poly: Vec<f64>,
    wc: [u64; 3],
}

fn run(cluster: &Cluster, items: usize) -> Result<(bool, Results), LaunchError> {
    let mut ok = true;
    println!("on {}:", cluster.nodes().join(", "));

    // saxpy: f32, split in and inout.
    let x: Vec<f32> = inputs(items, 1).iter().map(|&v| v as f32).collect();
    let y0: Vec<f32> = inputs(items, 2).iter().map(|&v| v as f32).collect();
    let mut direct = y0.clone();
    for i in 0..items {
        kernels::saxpy(i, 2.5, &x[i..i + 1], &mut direct[i..i + 1]);
    }
    let mut saxpy = y0;
    let started = Instant::now();
    let report = kernels::saxpy::launch(cluster, items, 2.5, &x, &mut saxpy)?;
    ok &= compare("saxpy", direct == saxpy, started, &report);

    // poly: whole coefficients, split in, out.
    let coeffs = inputs(16, 3);
    let x = inputs(items, 4);
    let mut direct = vec![0.0; items];
    for i in 0..items {
        kernels::poly(i, &coeffs, &x[i..i + 1], &mut direct[i..i + 1]);
    }
    let mut poly = vec![0.0; items];
    let started = Instant::now();
    let report = kernels::poly::launch(cluster, items, &coeffs, &x, &mut poly)?;
    ok &= compare("poly", direct == poly, started, &report);

    // wc: a range kernel over bytes, whole input, sum buffer; with a progress callback.
    let text = text(items * 8);
    let mut direct = [0u64; 3];
    kernels::wc(0, text.len(), &text, &mut direct);
    let mut offloaded = [0u64; 3];
    let started = Instant::now();
    let kernel = kernels::wc::kernel()?;
    let options = Options::default().progress(|done, total| {
        if done == total {
            eprintln!("wc: {done}/{total} bytes counted");
        }
    });
    let report = kernels::wc::launch_with(
        cluster,
        &kernel,
        &options,
        text.len(),
        &text,
        &mut offloaded,
    )?;
    ok &= compare("wc", direct == offloaded, started, &report);
    println!(
        "wc: {} lines, {} words, {} bytes",
        offloaded[0], offloaded[1], offloaded[2]
    );
    Ok((
        ok,
        Results {
            saxpy,
            poly,
            wc: offloaded,
        },
    ))
}

fn compare(name: &str, same: bool, started: Instant, report: &offload::Report) -> bool {
    println!(
        "{name}: {} items in {:.1} ms ({} packets on {} workers, code {}): {}",
        report.items,
        started.elapsed().as_secs_f64() * 1e3,
        report.packets,
        report.workers,
        report
            .code_origin
            .as_ref()
            .map_or("compiled by the nodes", |o| o.describe()),
        if same {
            "same as direct Rust"
        } else {
            "DIFFERS from direct Rust"
        }
    );
    same
}

/// What the command line asks for.
struct Args {
    items: usize,
    credentials: Option<std::path::PathBuf>,
    peers: Vec<std::net::SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        items: 1 << 20,
        credentials: None,
        peers: Vec::new(),
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--credentials" => args.credentials = words.next().map(Into::into),
            "--peer" => {
                let addr = words.next().unwrap_or_default();
                args.peers.push(
                    addr.parse()
                        .map_err(|_| format!("--peer `{addr}` is not HOST:PORT"))?,
                );
            }
            n => {
                args.items = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("`{n}` is not a positive number of items"))?
            }
        }
    }
    if args.peers.is_empty() != args.credentials.is_none() {
        return Err("--peer and --credentials go together".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("macro-kernels: {e}\nusage: macro-kernels [ITEMS] [--credentials DIR --peer ADDR...]");
            return ExitCode::from(2);
        }
    };
    let result = Cluster::local()
        .and_then(|local| run(&local, args.items))
        .and_then(
            |(ok, local)| match (&args.credentials, args.peers.is_empty()) {
                (Some(dir), false) => {
                    let credentials = offload::Credentials::load(dir)?;
                    let config = offload::ClientConfig::new(credentials).peers(args.peers.clone());
                    let (cluster_ok, remote) = run(&Cluster::connect(config)?, args.items)?;
                    let same = remote == local;
                    println!(
                        "cluster vs local: {}",
                        if same {
                            "identical results"
                        } else {
                            "results DIFFER"
                        }
                    );
                    Ok(ok && cluster_ok && same)
                }
                _ => Ok(ok),
            },
        );
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("macro-kernels: {e}");
            ExitCode::FAILURE
        }
    }
}
