//! The offline planning commands of `anxin`: `plan`, `replan`, `vrptw` and
//! `sample`. They run the scheduler library directly on files, without a
//! server; a summary goes to stdout, progress to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use scheduler::plan::{self, feasibility, input, synth, Event, Haversine, Month, Plan, PlanOptions, Progress};
use scheduler::vrptw::{self, SolveOptions};

/// Exit status when coverage is below 100% (the plan is still written).
pub const EXIT_NOT_COVERED: u8 = 3;

/// Options shared by `plan` and `replan`.
#[derive(Debug, Args)]
pub struct SolveArgs {
    /// Wall-clock limit of the solve, seconds.
    #[arg(long, default_value_t = 60.0)]
    time_limit: f64,
    /// Worker threads [default: all cores].
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed of every random choice (same seed and input = same plan, unless the time limit cuts the search).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Road detour factor applied to straight-line distances.
    #[arg(long, default_value_t = 1.3)]
    detour: f64,
    /// Walking, cycling and driving speeds, km/h.
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [4.5, 12.0, 30.0])]
    speeds: Vec<f64>,
    /// Write the plan here (plan.json); stdout gets the summary either way.
    #[arg(long)]
    out: PathBuf,
    /// Also write the routes as GeoJSON (opens in QGIS or kepler.gl).
    #[arg(long)]
    geojson: Option<PathBuf>,
    /// Do not print progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// `anxin plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// elders.csv: id,name,lat,lon,category,visits_per_month,service_min,days,window,skill,preferred_caregiver
    #[arg(long)]
    elders: PathBuf,
    /// caregivers.csv: id,name,lat,lon,days,shift,max_visits_per_day,skills,mode
    #[arg(long)]
    caregivers: PathBuf,
    /// Month to plan, YYYY-MM.
    #[arg(long)]
    month: String,
    /// Public holidays, comma-separated YYYY-MM-DD (no visits on them).
    #[arg(long, default_value = "")]
    holidays: String,
    #[command(flatten)]
    solve: SolveArgs,
}

/// `anxin replan`.
#[derive(Debug, Args)]
pub struct ReplanArgs {
    /// The elders.csv the plan was made from.
    #[arg(long)]
    elders: PathBuf,
    /// The caregivers.csv the plan was made from.
    #[arg(long)]
    caregivers: PathBuf,
    /// The current plan (plan.json); its month is re-planned.
    #[arg(long)]
    plan: PathBuf,
    /// Events since: a JSON array of {"kind":"caregiver_absent","caregiver":"C01","date":"2026-12-07"},
    /// {"kind":"visit_done","elder":"E001","date":"2026-12-03"} or {"kind":"visit_missed",...}.
    #[arg(long)]
    events: PathBuf,
    /// First date that may change, YYYY-MM-DD; earlier days are history.
    #[arg(long)]
    from: String,
    /// Public holidays, comma-separated YYYY-MM-DD.
    #[arg(long, default_value = "")]
    holidays: String,
    #[command(flatten)]
    solve: SolveArgs,
}

/// `anxin vrptw`.
#[derive(Debug, Args)]
pub struct VrptwArgs {
    /// A VRPLIB CVRPTW instance (.vrp), e.g. Solomon or Gehring & Homberger.
    file: PathBuf,
    /// Wall-clock limit, seconds.
    #[arg(long, default_value_t = 10.0)]
    time_limit: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Independent parallel starts (1 = deterministic single thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the VRPLIB solution here (`Route #k: ...` lines, then `Cost X`); stdout otherwise.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `anxin sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    #[arg(long, default_value_t = 10_000)]
    elders: usize,
    #[arg(long, default_value_t = 200)]
    caregivers: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for elders.csv and caregivers.csv (created if needed).
    #[arg(long)]
    out_dir: PathBuf,
}

impl SolveArgs {
    fn options(&self) -> anyhow::Result<(PlanOptions, Haversine)> {
        if !(self.time_limit.is_finite() && self.time_limit > 0.0) {
            bail!("--time-limit: {} is not a positive number of seconds", self.time_limit);
        }
        if !(self.detour.is_finite() && (1.0..=5.0).contains(&self.detour)) {
            bail!("--detour: {} is not between 1 and 5", self.detour);
        }
        if let Some(s) = self.speeds.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!("--speeds: {s} is not a positive speed");
        }
        let opts = PlanOptions {
            time_limit: Duration::from_secs_f64(self.time_limit),
            seed: self.seed,
            threads: self.threads,
            lns_iterations: None,
        };
        let travel = Haversine { detour: self.detour, speed_kmh: [self.speeds[0], self.speeds[1], self.speeds[2]] };
        Ok((opts, travel))
    }

    fn progress(&self) -> impl Fn(&Progress) + Sync + '_ {
        let last = parking_lot::Mutex::new((plan::Phase::Done, Duration::ZERO));
        move |p: &Progress| {
            if self.quiet {
                return;
            }
            let mut last = last.lock();
            if p.phase == last.0 && p.elapsed < last.1 + Duration::from_secs(2) {
                return;
            }
            *last = (p.phase, p.elapsed);
            eprintln!(
                "[{:>6.1} s] {:<9} travel {:>10.1} min  coverage {:>6.2}%",
                p.elapsed.as_secs_f64(),
                format!("{:?}", p.phase).to_lowercase(),
                p.best_travel_min,
                100.0 * p.coverage
            );
        }
    }

    /// Writes plan.json (and GeoJSON) and returns the exit status.
    fn write(
        &self,
        input: &plan::PlanInput,
        travel: &Haversine,
        outcome: &plan::PlanOutcome,
    ) -> anyhow::Result<ExitCode> {
        let violations = feasibility::validate(input, travel, &outcome.plan);
        if !violations.is_empty() {
            bail!("internal error: the plan breaks {} rule(s), first: {}", violations.len(), violations[0]);
        }
        write_json(&self.out, &outcome.plan)?;
        if let Some(g) = &self.geojson {
            write_json(g, &plan::to_geojson(input, &outcome.plan))?;
        }
        print!("{}", outcome.summary());
        println!("plan written to {}", self.out.display());
        Ok(if outcome.exit_code() == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_COVERED) })
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn month_and_holidays(month: &str, holidays: &str) -> anyhow::Result<(Month, Vec<u32>)> {
    let m = Month::parse(month).context("--month")?;
    let h = m.parse_holidays(holidays).context("--holidays")?;
    Ok((m, h))
}

/// Reads and validates both spreadsheets; every bad row is listed.
fn load_input(elders: &Path, caregivers: &Path, month: Month, holidays: Vec<u32>) -> anyhow::Result<plan::PlanInput> {
    match input::load(elders, caregivers, month, holidays) {
        Ok(i) => Ok(i),
        Err(scheduler::Error::Input(issues)) => {
            for i in &issues {
                eprintln!("{i}");
            }
            bail!("{} invalid row(s); nothing was planned", issues.len())
        }
        Err(e) => Err(e.into()),
    }
}

pub fn plan(a: &PlanArgs) -> anyhow::Result<ExitCode> {
    let (month, holidays) = month_and_holidays(&a.month, &a.holidays)?;
    let (opts, travel) = a.solve.options()?;
    let input = load_input(&a.elders, &a.caregivers, month, holidays)?;
    let progress = a.solve.progress();
    let outcome = plan::plan(&input, &travel, &opts, Some(&progress))?;
    a.solve.write(&input, &travel, &outcome)
}

pub fn replan(a: &ReplanArgs) -> anyhow::Result<ExitCode> {
    let (opts, travel) = a.solve.options()?;
    let text = std::fs::read_to_string(&a.plan).with_context(|| format!("reading {}", a.plan.display()))?;
    let current: Plan =
        serde_json::from_str(&text).with_context(|| format!("{} is not a plan.json", a.plan.display()))?;
    let text = std::fs::read_to_string(&a.events).with_context(|| format!("reading {}", a.events.display()))?;
    let events: Vec<Event> =
        serde_json::from_str(&text).with_context(|| format!("{}: not a JSON array of events", a.events.display()))?;
    let (month, holidays) = month_and_holidays(&current.month, &a.holidays)?;
    let input = load_input(&a.elders, &a.caregivers, month, holidays)?;
    let progress = a.solve.progress();
    let out = plan::replan(&input, &travel, &current, &events, &a.from, &opts, Some(&progress))?;
    println!("{} event(s) applied from {}; {} route(s) changed", events.len(), a.from, out.changed_routes.len());
    a.solve.write(&input, &travel, &out.outcome)
}

pub fn vrptw(a: &VrptwArgs) -> anyhow::Result<ExitCode> {
    if !(a.time_limit.is_finite() && a.time_limit > 0.0) {
        bail!("--time-limit: {} is not a positive number of seconds", a.time_limit);
    }
    let inst = vrptw::read_instance(&a.file)?;
    let opts = SolveOptions {
        time_limit: Duration::from_secs_f64(a.time_limit),
        seed: a.seed,
        threads: a.threads.max(1),
        max_iterations: None,
    };
    let t = std::time::Instant::now();
    let sol = vrptw::solve(&inst, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    if let Err(v) = vrptw::check(&inst, &sol) {
        bail!("internal error: the solution is infeasible: {:?}", v.first());
    }
    match &a.out {
        Some(p) => vrptw::write_solution(p, &sol)?,
        None => print!("{}", vrptw::format_solution(&sol)),
    }
    eprintln!(
        "{}: {} customers, {} routes, cost {:.4}, feasible, {:.1} s",
        inst.name,
        inst.n_customers(),
        sol.routes.len(),
        sol.cost,
        secs
    );
    Ok(ExitCode::SUCCESS)
}

pub fn sample(a: &SampleArgs) -> anyhow::Result<ExitCode> {
    if a.elders == 0 || a.caregivers == 0 {
        bail!("--elders and --caregivers must be at least 1");
    }
    let s = synth::generate(a.seed, a.elders, a.caregivers, synth::default_centre());
    std::fs::create_dir_all(&a.out_dir).with_context(|| format!("creating {}", a.out_dir.display()))?;
    for (name, text) in [
        ("elders.csv", input::elders_to_csv(&s.input.elders)),
        ("caregivers.csv", input::caregivers_to_csv(&s.input.caregivers)),
    ] {
        let p = a.out_dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    let holidays: Vec<String> = s.input.holidays.iter().map(|&d| s.input.month.date(d)).collect();
    println!(
        "{} elders ({} visits) and {} caregivers written to {}; plan them with --month {} --holidays {}",
        s.input.elders.len(),
        s.witness.coverage.required_visits,
        s.input.caregivers.len(),
        a.out_dir.display(),
        s.input.month.to_text(),
        holidays.join(",")
    );
    Ok(ExitCode::SUCCESS)
}
