//! VRPTW benchmark runner: solves each given `.vrp` with a time limit and prints
//! cost, feasibility, gaps to `bks.csv` (DIMACS) and `bks_float64.csv` (exact),
//! and per-family mean gaps.
//!
//! Usage: `cargo run --release -p scheduler --example vrptw_bench -- [--time-limit S] [--seed N] [--threads T] FILE.vrp...`
//! (bks files are looked up next to each instance, then in its parent directory).

use scheduler::vrptw::{self, SolveOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn load_bks(dir: &Path, file: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for d in [dir.to_path_buf(), dir.parent().map(Path::to_path_buf).unwrap_or_default()] {
        if let Ok(t) = std::fs::read_to_string(d.join(file)) {
            for l in t.lines().skip(1) {
                let f: Vec<&str> = l.split(',').collect();
                let v = if file == "bks.csv" { f.get(2) } else { f.get(1) };
                if let (Some(name), Some(Ok(v))) = (f.first(), v.map(|x| x.parse::<f64>())) {
                    m.insert(name.to_string(), v);
                }
            }
            break;
        }
    }
    m
}

fn family(name: &str) -> String {
    // C101 -> C1, RC2_10_1 -> RC2, R1_2_3 -> R1
    let letters: String = name.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let digit = name[letters.len()..].chars().next().unwrap_or('?');
    format!("{letters}{digit}")
}

fn main() -> anyhow_free::Result {
    let mut args = std::env::args().skip(1);
    let mut limit = 10.0;
    let mut seed = 1u64;
    let mut threads = 1usize;
    let mut files: Vec<PathBuf> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--time-limit" => limit = args.next().and_then(|x| x.parse().ok()).ok_or("bad --time-limit")?,
            "--seed" => seed = args.next().and_then(|x| x.parse().ok()).ok_or("bad --seed")?,
            "--threads" => threads = args.next().and_then(|x| x.parse().ok()).ok_or("bad --threads")?,
            _ => files.push(PathBuf::from(a)),
        }
    }
    files.sort();
    let mut fam: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    let mut all_feasible = true;
    println!("instance      cost        feasible  routes  gap_bks%  gap_f64%  secs");
    for f in &files {
        let inst = vrptw::read_instance(f).map_err(|e| e.to_string())?;
        let dir = f.parent().unwrap_or(Path::new("."));
        let bks = load_bks(dir, "bks.csv");
        let bks64 = load_bks(dir, "bks_float64.csv");
        let t = Instant::now();
        let opts = SolveOptions { time_limit: Duration::from_secs_f64(limit), seed, threads, max_iterations: None };
        let sol = vrptw::solve(&inst, &opts).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        let rep = vrptw::check(&inst, &sol);
        all_feasible &= rep.is_ok();
        let g = |b: Option<&f64>| b.map(|b| 100.0 * (sol.cost - b) / b);
        let (g1, g2) = (g(bks.get(&inst.name)), g(bks64.get(&inst.name)));
        println!(
            "{:<12} {:>10.4}  {:<8}  {:>6}  {:>8.3}  {:>8.3}  {:>5.1}",
            inst.name,
            sol.cost,
            if rep.is_ok() { "yes" } else { "NO" },
            sol.routes.len(),
            g1.unwrap_or(f64::NAN),
            g2.unwrap_or(f64::NAN),
            secs
        );
        let e = fam.entry(family(&inst.name)).or_insert((0.0, 0.0, 0));
        e.0 += g1.unwrap_or(0.0);
        e.1 += g2.unwrap_or(0.0);
        e.2 += 1;
    }
    println!("\nfamily  n   mean_gap_bks%  mean_gap_f64%");
    let (mut s1, mut s2, mut n) = (0.0, 0.0, 0);
    for (k, (a, b, c)) in &fam {
        println!("{:<6} {:>2}   {:>12.3}  {:>13.3}", k, c, a / *c as f64, b / *c as f64);
        s1 += a;
        s2 += b;
        n += c;
    }
    if n > 0 {
        println!("ALL    {:>2}   {:>12.3}  {:>13.3}", n, s1 / n as f64, s2 / n as f64);
    }
    println!("all feasible: {all_feasible}  (time limit {limit} s, seed {seed}, threads {threads})");
    Ok(())
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
