//! `anxin`: the Anxin (安心) alarm-dispatch and visit-scheduling server and its tools.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use server::config::{log_format, Config, RawConfig};

/// mimalloc: per-thread free lists instead of glibc's arenas; the alarm path
/// allocates small short-lived objects on several threads (see ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Anxin (安心): real-time alarm dispatch and monthly visit planning for
/// community elder care.
///
/// Settings come from, in order of precedence: flags, environment variables,
/// the config file (--config, TOML), built-in defaults. RUST_LOG filters logs
/// (default "info").
#[derive(Debug, Parser)]
#[command(name = "anxin", version, about, long_about)]
struct Cli {
    /// TOML config file: listen, data_dir, log_format, otlp_endpoint, a [dispatch] and a [planning]
    /// table (every key is listed in the README, "Usage").
    #[arg(long, global = true, env = "ANXIN_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, env = "ANXIN_LOG_FORMAT")]
    log_format: Option<String>,
    /// Export a span for every RPC and pipeline stage over OTLP/gRPC to this collector
    /// (e.g. http://127.0.0.1:4317). Off when unset.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (with gRPC health and server reflection).
    Serve(ServeArgs),
    /// Run a simulated district against an in-process server on a temporary
    /// store and report throughput, latency and incident outcomes.
    Demo(server::demo::DemoArgs),
    /// Plan a month of visits from elders.csv and caregivers.csv; writes plan.json.
    /// Exits 3 when coverage is below 100% (the plan and the reasons are still written).
    Plan(server::cli::PlanArgs),
    /// Repair the rest of a month's plan after events (absences, visits done or missed).
    Replan(server::cli::ReplanArgs),
    /// Solve a VRPLIB CVRPTW benchmark instance with the routing engine.
    Vrptw(server::cli::VrptwArgs),
    /// Write a synthetic district (elders.csv, caregivers.csv) that a 100% plan exists for.
    Sample(server::cli::SampleArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "ANXIN_LISTEN")]
    listen: Option<String>,
    /// Directory of the embedded store (created on first start) [default: ./anxin-data].
    #[arg(long, env = "ANXIN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds a caregiver has to accept an offer [default: 60].
    #[arg(long, env = "ANXIN_OFFER_TIMEOUT_S")]
    offer_timeout_s: Option<f64>,
    /// Repeats of the same device and kind within this many seconds merge into the open incident [default: 120].
    #[arg(long, env = "ANXIN_MERGE_WINDOW_S")]
    merge_window_s: Option<f64>,
    /// Search radius for caregivers, km [default: 30].
    #[arg(long, env = "ANXIN_MAX_RADIUS_KM")]
    max_radius_km: Option<f64>,
}

fn raw_config(cli: &Cli) -> anyhow::Result<RawConfig> {
    let mut raw = match &cli.config {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    if cli.log_format.is_some() {
        raw.log_format = cli.log_format.clone();
    }
    if cli.otlp_endpoint.is_some() {
        raw.otlp_endpoint = cli.otlp_endpoint.clone();
    }
    if let Command::Serve(a) = &cli.command {
        raw.listen = a.listen.clone().or(raw.listen);
        raw.data_dir = a.data_dir.clone().or(raw.data_dir);
        raw.dispatch.offer_timeout_s = a.offer_timeout_s.or(raw.dispatch.offer_timeout_s);
        raw.dispatch.merge_window_s = a.merge_window_s.or(raw.dispatch.merge_window_s);
        raw.dispatch.max_radius_km = a.max_radius_km.or(raw.dispatch.max_radius_km);
    }
    Ok(raw)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("anxin: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("anxin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let raw = raw_config(&cli)?;
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let _telemetry = server::telemetry::init(log_format(&raw)?, raw.otlp_endpoint.as_deref(), default_level)?;
    match cli.command {
        Command::Serve(_) => {
            let config = Config::from_raw(&raw)?;
            let mut running = server::app::bind_and_start(&config).await?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
            tokio::select! {
                r = running.wait() => r?,
                r = tokio::signal::ctrl_c() => {
                    r.context("waiting for ctrl-c")?;
                    tracing::info!("interrupted; shutting down");
                    running.shutdown().await?;
                }
                _ = term.recv() => {
                    tracing::info!("terminated; shutting down");
                    running.shutdown().await?;
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Demo(args) => server::demo::run(&args, &raw).await,
        Command::Plan(args) => offline(move || server::cli::plan(&args)).await,
        Command::Replan(args) => offline(move || server::cli::replan(&args)).await,
        Command::Vrptw(args) => offline(move || server::cli::vrptw(&args)).await,
        Command::Sample(args) => offline(move || server::cli::sample(&args)).await,
    }
}

/// Runs a CPU-bound command off the async workers.
async fn offline(
    f: impl FnOnce() -> anyhow::Result<std::process::ExitCode> + Send + 'static,
) -> anyhow::Result<std::process::ExitCode> {
    tokio::task::spawn_blocking(f).await.context("command task")?
}
