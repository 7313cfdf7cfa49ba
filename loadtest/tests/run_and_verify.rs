//! The load tool against a real server (started in-process on loopback, its
//! store in a temporary directory): a short stream run and a short unary run
//! report every alarm acknowledged and nothing lost, write the report and the
//! acked log; in a storm every device that fell silent gets its DEVICE_OFFLINE
//! alarm from the server's supervision; `verify` finds every acknowledged
//! alarm; an acked log that cannot be written fails the run. Across a SIGKILL of the server (run in a
//! process of its own) nothing acknowledged is lost; with the server gone for
//! good, the run counts what was never answered as lost and fails. Bad
//! arguments are refused naming the flag.

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
    // A storm: 90% of the elders' devices fall silent at once, and the
    // server's supervision raises an alarm for each, which the tool finds.
    let json = dir.path().join("storm.json");
    let args = ["run", "--target", &target, "--scenario", "storm", "--rate", "100", "--duration", "2"]
        .iter()
        .map(|a| a.to_string())
        .chain(["--caregivers", "10", "--elders", "60", "--seed", "3", "--json"].map(String::from))
        .chain([json.display().to_string()])
        .collect::<Vec<_>>();
    let out = tokio::task::spawn_blocking(move || tool().args(args).output().unwrap()).await.unwrap();
    assert!(out.status.success(), "storm: {}", String::from_utf8_lossy(&out.stderr));
    let r = report(&json);
    assert_eq!((r["devices_silenced"].as_u64(), r["offline_raised"].as_u64()), (Some(54), Some(54)), "{r}");
    assert_eq!(r["lost"], 0, "{r}");
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

/// The server process `killed_mid_run` kills: when the test binary is run
/// again with `LT_CHILD_DATA` and `LT_CHILD_LISTEN` set, this serves on that
/// address from that directory until killed. Run plainly, it has nothing to do.
#[test]
fn child_server() {
    let (Ok(data), Ok(listen)) = (std::env::var("LT_CHILD_DATA"), std::env::var("LT_CHILD_LISTEN")) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let raw = RawConfig { data_dir: Some(data.into()), listen: Some(listen), ..Default::default() };
        let config = Config::from_raw(&raw).unwrap();
        let _server = server::app::bind_and_start(&config).await.unwrap();
        std::future::pending::<()>().await;
    });
}

/// Starts `child_server` in a process of its own and waits until it accepts connections.
fn spawn_server(data: &std::path::Path, addr: std::net::SocketAddr) -> std::process::Child {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_server", "--nocapture", "--test-threads", "1"])
        .env("LT_CHILD_DATA", data)
        .env("LT_CHILD_LISTEN", addr.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(up.elapsed() < std::time::Duration::from_secs(30), "the server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// Waits until the acked log holds at least `n` keys (the tool writes them
/// within 100 ms of their acknowledgement).
fn wait_for_acks(log: &std::path::Path, n: usize) -> usize {
    let t = std::time::Instant::now();
    loop {
        let have = lines(log);
        if have >= n {
            return have;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "only {have} acks");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// SIGKILL of the server while the tool streams (and then calls) alarms in:
/// the tool sends what was not answered again to the restarted server, loses
/// nothing, and `verify` finds every acknowledged alarm on it. So too in a
/// storm killed after its devices fell silent: the gateway's heartbeat
/// stream is opened again, and every silent device's DEVICE_OFFLINE alarm is
/// found on the restarted server (whose supervision starts afresh). With the
/// server killed and not restarted, the alarms never answered are counted as
/// lost and the run fails.
#[test]
fn killed_mid_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let target = format!("http://{addr}");
    let run = |mode: &str, scenario: &str, log: &std::path::Path, json: &std::path::Path, retry_for: &str| {
        let args = ["run", "--target", &target, "--mode", mode, "--scenario", scenario, "--rate", "400"]
            .into_iter()
            .chain(["--duration", "5", "--caregivers", "20", "--elders", "100", "--pace-s", "0.2"])
            .chain(["--retry-for", retry_for]);
        tool().args(args).arg("--acked-log").arg(log).arg("--json").arg(json).spawn().unwrap()
    };
    let mut server = spawn_server(&data, addr);
    // A storm's devices fall silent 2 s in, as its spike begins: more than the
    // 800 alarms of those 2 s acknowledged means the silence has begun.
    for (mode, scenario, kill_after) in
        [("stream", "steady", 200), ("unary", "steady", 200), ("stream", "storm", 1_500)]
    {
        let name = format!("{scenario}-{mode}");
        let (log, json) = (dir.path().join(format!("{name}.log")), dir.path().join(format!("{name}.json")));
        let mut lt = run(mode, scenario, &log, &json, "30");
        let before = wait_for_acks(&log, kill_after);
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        server = spawn_server(&data, addr);
        let status = lt.wait().unwrap();
        let r = report(&json);
        assert!(status.success(), "{name}: {r}");
        assert_eq!(r["offline_raised"], r["devices_silenced"], "{name}: {r}");
        if scenario == "storm" {
            assert_eq!(r["devices_silenced"], 90, "{r}");
        }
        assert!(r["sent"].as_u64().unwrap() > before as u64 + 100, "{name}: the kill was mid-run: {r}");
        assert_eq!((r["acked"].clone(), r["lost"].clone()), (r["sent"].clone(), 0.into()), "{name}: {r}");
        assert_eq!(lines(&log) as u64, r["acked"].as_u64().unwrap(), "{name}: every ack logged");
        let out = tool().args(["verify", "--target", &target, "--acked-log"]).arg(&log).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((v["checked"].clone(), v["missing"].clone()), (r["acked"].clone(), 0.into()), "{name}");
    }
    // Killed for good: what was never answered is lost, and the run says so.
    let (log, json) = (dir.path().join("gone.log"), dir.path().join("gone.json"));
    let mut lt = run("unary", "steady", &log, &json, "1");
    wait_for_acks(&log, 200);
    server.kill().unwrap();
    server.wait().unwrap();
    let status = lt.wait().unwrap();
    let r = report(&json);
    assert!(!status.success(), "{r}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["lost"].as_u64(), Some(r["sent"].as_u64().unwrap() - r["acked"].as_u64().unwrap()), "{r}");
}

#[test]
fn bad_arguments_name_the_flag() {
    let out = tool().args(["run", "--target", "http://127.0.0.1:1", "--pace-s", "700"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pace-s"), "{}", String::from_utf8_lossy(&out.stderr));
}
