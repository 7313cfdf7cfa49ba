//! VRPLIB CVRPTW reader and VRPLIB solution reader/writer. Does no solving.

use super::{Instance, Solution};
use crate::{Error, Result};
use std::path::Path;

fn err(file: &str, line: usize, reason: impl Into<String>) -> Error {
    Error::Vrplib { file: file.to_string(), line, reason: reason.into() }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Reads a `.vrp` file (VRPLIB CVRPTW).
pub fn read_instance(path: &Path) -> Result<Instance> {
    let text = read_text(path)?;
    parse_instance(&text, &path.display().to_string())
}

/// Reads a `.sol` file (VRPLIB solution).
pub fn read_solution(path: &Path) -> Result<Solution> {
    let text = read_text(path)?;
    parse_solution(&text, &path.display().to_string())
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    None,
    Coord,
    Demand,
    Window,
    Service,
    Depot,
    Skip,
}

fn num<T: std::str::FromStr>(tok: &str, file: &str, line: usize, what: &str) -> Result<T> {
    tok.parse::<T>().map_err(|_| err(file, line, format!("bad {what} {tok:?}")))
}

/// Parses the text of a `.vrp` file. `file` names it in errors.
///
/// Node 1 must be the depot (as in every Solomon and Gehring & Homberger file).
/// A scalar `SERVICE_TIME : s` header applies to every customer unless a
/// `SERVICE_TIME_SECTION` is given.
pub fn parse_instance(text: &str, file: &str) -> Result<Instance> {
    let mut name = String::new();
    let mut dim: Option<usize> = None;
    let mut capacity: Option<i64> = None;
    let mut vehicles = None;
    let mut service_scalar = 0.0;
    let mut coords: Vec<Option<(f64, f64)>> = Vec::new();
    let mut demand: Vec<Option<i64>> = Vec::new();
    let mut window: Vec<Option<(f64, f64)>> = Vec::new();
    let mut service: Vec<Option<f64>> = Vec::new();
    let mut depots = Vec::new();
    let mut section = Section::None;
    let ensure = |dim: Option<usize>, line: usize| dim.ok_or_else(|| err(file, line, "section before DIMENSION"));
    for (ln0, raw) in text.lines().enumerate() {
        let ln = ln0 + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let first = line.chars().next().unwrap_or(' ');
        if first.is_ascii_alphabetic() {
            // keyword line
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim();
                let v = v.trim();
                section = Section::None;
                match k {
                    "NAME" => name = v.to_string(),
                    "DIMENSION" => {
                        let n: usize = num(v, file, ln, "DIMENSION")?;
                        if n < 1 {
                            return Err(err(file, ln, "DIMENSION must be >= 1"));
                        }
                        dim = Some(n);
                        coords = vec![None; n];
                        demand = vec![None; n];
                        window = vec![None; n];
                        service = vec![None; n];
                    }
                    "CAPACITY" => capacity = Some(num(v, file, ln, "CAPACITY")?),
                    "VEHICLES" => vehicles = Some(num(v, file, ln, "VEHICLES")?),
                    "SERVICE_TIME" => service_scalar = num(v, file, ln, "SERVICE_TIME")?,
                    "EDGE_WEIGHT_TYPE" if v != "EUC_2D" => {
                        return Err(err(file, ln, format!("unsupported EDGE_WEIGHT_TYPE {v:?}")));
                    }
                    _ => {}
                }
                continue;
            }
            section = match line {
                "NODE_COORD_SECTION" => Section::Coord,
                "DEMAND_SECTION" => Section::Demand,
                "TIME_WINDOW_SECTION" => Section::Window,
                "SERVICE_TIME_SECTION" => Section::Service,
                "DEPOT_SECTION" => Section::Depot,
                "EOF" => break,
                _ => Section::Skip,
            };
            if section != Section::Skip {
                ensure(dim, ln)?;
            }
            continue;
        }
        let toks: Vec<&str> = line.split_whitespace().collect();
        let n = dim.unwrap_or(0);
        let idx = |t: &str| -> Result<usize> {
            let i: usize = num(t, file, ln, "node id")?;
            if i == 0 || i > n {
                return Err(err(file, ln, format!("node id {i} outside 1..={n}")));
            }
            Ok(i - 1)
        };
        let need = |k: usize| -> Result<()> {
            if toks.len() < k {
                Err(err(file, ln, format!("expected {k} fields, found {}", toks.len())))
            } else {
                Ok(())
            }
        };
        match section {
            Section::Coord => {
                need(3)?;
                let i = idx(toks[0])?;
                coords[i] = Some((num(toks[1], file, ln, "x")?, num(toks[2], file, ln, "y")?));
            }
            Section::Demand => {
                need(2)?;
                let i = idx(toks[0])?;
                demand[i] = Some(num(toks[1], file, ln, "demand")?);
            }
            Section::Window => {
                need(3)?;
                let i = idx(toks[0])?;
                let a: f64 = num(toks[1], file, ln, "ready time")?;
                let b: f64 = num(toks[2], file, ln, "due time")?;
                if b < a {
                    return Err(err(file, ln, format!("time window [{a}, {b}] is empty")));
                }
                window[i] = Some((a, b));
            }
            Section::Service => {
                need(2)?;
                let i = idx(toks[0])?;
                service[i] = Some(num(toks[1], file, ln, "service time")?);
            }
            Section::Depot => {
                let v: i64 = num(toks[0], file, ln, "depot")?;
                if v >= 0 {
                    depots.push(v);
                }
            }
            Section::Skip => {}
            Section::None => return Err(err(file, ln, format!("data outside a section: {line:?}"))),
        }
    }
    let n = dim.ok_or_else(|| err(file, 0, "missing DIMENSION"))?;
    let capacity = capacity.ok_or_else(|| err(file, 0, "missing CAPACITY"))?;
    if !(depots.is_empty() || depots == [1]) {
        return Err(err(file, 0, format!("depot must be node 1, found {depots:?}")));
    }
    let mut c = Vec::with_capacity(n);
    let mut d = Vec::with_capacity(n);
    let mut r = Vec::with_capacity(n);
    let mut u = Vec::with_capacity(n);
    let mut s = Vec::with_capacity(n);
    for i in 0..n {
        c.push(coords[i].ok_or_else(|| err(file, 0, format!("node {} has no coordinates", i + 1)))?);
        d.push(demand[i].unwrap_or(0));
        let (a, b) = window[i].unwrap_or((0.0, f64::INFINITY));
        r.push(a);
        u.push(b);
        s.push(if i == 0 { service[i].unwrap_or(0.0) } else { service[i].unwrap_or(service_scalar) });
    }
    if d[0] != 0 {
        return Err(err(file, 0, format!("depot demand {} must be 0", d[0])));
    }
    Ok(Instance::new(name, capacity, vehicles, c, d, r, u, s))
}

/// Parses a VRPLIB solution: `Route #k: c1 c2 ...` lines (customers from 1,
/// depot omitted) then `Cost X`. Empty routes are dropped.
pub fn parse_solution(text: &str, file: &str) -> Result<Solution> {
    let mut routes = Vec::new();
    let mut cost = None;
    for (ln0, raw) in text.lines().enumerate() {
        let ln = ln0 + 1;
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("Route") {
            let (_, custs) = rest.split_once(':').ok_or_else(|| err(file, ln, "route line without ':'"))?;
            let mut r = Vec::new();
            for t in custs.split_whitespace() {
                let c: usize = num(t, file, ln, "customer")?;
                if c == 0 {
                    return Err(err(file, ln, "customer 0 (customers are numbered from 1)"));
                }
                r.push(c);
            }
            if !r.is_empty() {
                routes.push(r);
            }
        } else if let Some(rest) = line.strip_prefix("Cost") {
            cost = Some(num::<f64>(rest.trim(), file, ln, "cost")?);
        }
    }
    Ok(Solution { routes, cost: cost.unwrap_or(f64::NAN) })
}

/// Formats a solution in VRPLIB format (routes numbered from 1, cost with 4 decimals).
pub fn format_solution(sol: &Solution) -> String {
    let mut out = String::new();
    for (k, r) in sol.routes.iter().enumerate() {
        out.push_str(&format!("Route #{}:", k + 1));
        for c in r {
            out.push_str(&format!(" {c}"));
        }
        out.push('\n');
    }
    out.push_str(&format!("Cost {:.4}\n", sol.cost));
    out
}

/// Writes a solution file in VRPLIB format.
pub fn write_solution(path: &Path, sol: &Solution) -> Result<()> {
    std::fs::write(path, format_solution(sol)).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = "NAME : T\nTYPE : CVRPTW\nDIMENSION : 3\nCAPACITY : 10\nSERVICE_TIME : 5\nEDGE_WEIGHT_TYPE : EUC_2D\nNODE_COORD_SECTION\n1 0 0\n2 3 4\n3 0 1\nDEMAND_SECTION\n1 0\n2 4\n3 4\nTIME_WINDOW_SECTION\n1 0 100\n2 0 50\n3 0 50\nDEPOT_SECTION\n1\n-1\nEOF\n";

    #[test]
    fn parses_tiny_instance_with_scalar_service_time() {
        let i = parse_instance(TINY, "tiny").expect("valid");
        assert_eq!(i.n_customers(), 2);
        assert_eq!(i.service, vec![0.0, 5.0, 5.0]);
        assert_eq!(i.d(0, 1), 5.0);
        assert_eq!(i.capacity, 10);
    }

    #[test]
    fn rejects_bad_numbers_with_line() {
        let bad = TINY.replace("2 3 4", "2 x 4");
        match parse_instance(&bad, "tiny") {
            Err(Error::Vrplib { line, .. }) => assert_eq!(line, 9),
            other => panic!("expected vrplib error, got {other:?}"),
        }
    }

    #[test]
    fn solution_round_trip() {
        let s = Solution { routes: vec![vec![1, 2], vec![3]], cost: 12.5 };
        let back = parse_solution(&format_solution(&s), "x").expect("parses");
        assert_eq!(back, s);
    }
}
