//! The load tool against a real server (started in-process on loopback, its
//! store in a temporary directory): a short stream run and a short unary run
//! report every alarm acknowledged and nothing lost, write the report and the
//! acked log, and `verify` finds every acknowledged alarm; an acked log that
//! cannot be written fails the run. Bad arguments are refused naming the flag.

use std::process::Command;

use server::app::start;
use server::config::{Config, RawConfig};
use tokio::net::TcpListener;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anxin-loadtest"))
}

fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_then_verify_finds_every_acknowledged_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let raw = RawConfig { data_dir: Some(dir.path().join("data")), ..Default::default() };
    let config = Config::from_raw(&raw).unwrap();
    let server = start(&config, TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let target = format!("http://{}", server.addr);
    let log = dir.path().join("acked.log");
    for (mode, seed) in [("stream", "1"), ("unary", "2")] {
        let json = dir.path().join(format!("{mode}.json"));
        let mut args: Vec<String> = [
            "run",
            "--target",
            &target,
            "--mode",
            mode,
            "--scenario",
            "burst",
            "--rate",
            "200",
            "--duration",
            "2",
            "--caregivers",
            "20",
            "--elders",
            "50",
            "--pace-s",
            "0.2",
            "--move-every-s",
            "0.5",
            "--seed",
            seed,
            "--json",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(json.display().to_string());
        args.push("--acked-log".into());
        args.push(log.display().to_string());
        // The tool blocks; the server runs on this test's runtime meanwhile.
        let out = tokio::task::spawn_blocking(move || tool().args(args).output().unwrap()).await.unwrap();
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        let r = report(&json);
        assert!(r["sent"].as_u64().unwrap() > 100, "{mode}: {r}");
        assert_eq!(r["acked"], r["sent"], "{mode}: {r}");
        assert_eq!(r["lost"], 0, "{mode}: {r}");
        for k in ["p50", "p99", "p999", "max"] {
            assert!(r["ack_latency_ms"][k].as_f64().unwrap() > 0.0, "{mode}: {r}");
        }
    }
    // An acked log that cannot be written fails the run, naming the flag:
    // `verify` would never check the keys it lost. A thousand keys overflow
    // the log's buffer, so its writes fail during the run, not only at the end.
    let args = ["run", "--target", &target, "--mode", "unary", "--rate", "1000", "--duration", "1"]
        .iter()
        .map(|a| a.to_string())
        .chain(["--caregivers", "5", "--elders", "20", "--acked-log", "/dev/full"].map(String::from))
        .collect::<Vec<_>>();
    let out = tokio::task::spawn_blocking(move || tool().args(args).output().unwrap()).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--acked-log /dev/full: ") && err.contains("keys failed"), "{err}");
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    let verify = |target: String, log: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            tool().args(["verify", "--target", &target, "--acked-log"]).arg(&log).output().unwrap()
        })
    };
    let out = verify(target.clone(), log.clone()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checked"], lines as u64);
    assert_eq!(v["missing"], 0);
    // A key the server never saw is missing, and verify says so with its exit status.
    std::fs::write(&log, "never-sent-key\n").unwrap();
    let out = verify(target, log).await.unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["missing"], 1);
    server.shutdown().await.unwrap();
}

#[test]
fn bad_arguments_name_the_flag() {
    let out = tool().args(["run", "--target", "http://127.0.0.1:1", "--pace-s", "700"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pace-s"), "{}", String::from_utf8_lossy(&out.stderr));
}
