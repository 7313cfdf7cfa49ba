//! Crash safety of the real binary: `anxin serve` is killed with SIGKILL
//! while alarms stream in, restarted on the same data directory, and every
//! alarm it acknowledged must be found with its incident.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn serve(dir: &std::path::Path, port: u16) -> (Server, Channel) {
    let child = Command::new(env!("CARGO_BIN_EXE_anxin"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("anxin starts");
    let server = Server(child);
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(ch) = Channel::from_shared(url.clone()).unwrap().connect().await {
            return (server, ch);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "anxin did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_alarm_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut server, ch) = serve(dir.path(), port).await;
    let mut reg = pb::registry_service_client::RegistryServiceClient::new(ch.clone());
    let mut app = pb::caregiver_service_client::CaregiverServiceClient::new(ch.clone());
    for i in 0..50 {
        let e = pb::Elder {
            id: format!("E{i}"),
            name: "老人".into(),
            location: Some(pb::GeoPoint { lat: 43.86 + 0.001 * i as f64, lon: 125.38 }),
            ..Default::default()
        };
        reg.upsert_elder(pb::UpsertElderRequest { elder: Some(e) }).await.unwrap();
    }
    for i in 0..20 {
        let c = pb::Caregiver {
            id: format!("C{i}"),
            name: "护理员".into(),
            home: Some(pb::GeoPoint { lat: 43.86 + 0.002 * i as f64, lon: 125.381 }),
            mode: pb::TravelMode::Bike as i32,
            ..Default::default()
        };
        reg.upsert_caregiver(pb::UpsertCaregiverRequest { caregiver: Some(c) }).await.unwrap();
        let on = pb::SetStatusRequest {
            caregiver_id: format!("C{i}"),
            status: pb::CaregiverStatus::Available as i32,
            ..Default::default()
        };
        app.set_status(on).await.unwrap();
    }

    // Stream alarms (bounded: at most 20,000 or 20 s) and kill the server mid-stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::RaiseAlarmRequest>(1024);
    let mut alarms = pb::alarm_service_client::AlarmServiceClient::new(ch.clone());
    let producer = tokio::spawn(async move {
        let kinds = [pb::AlarmKind::SosButton, pb::AlarmKind::Fall, pb::AlarmKind::LowBattery];
        for n in 0..20_000u64 {
            let req = pb::RaiseAlarmRequest {
                idempotency_key: format!("crash-{n}"),
                elder_id: format!("E{}", n % 50),
                kind: kinds[(n % 3) as usize] as i32,
                sequence: n,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return;
            }
        }
    });
    let mut acks = alarms.stream_alarms(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut killed = false;
    while let Ok(Some(Ok(ack))) = tokio::time::timeout(Duration::from_secs(5), acks.next()).await {
        if let Some(pb::alarm_ack::Result::Accepted(_)) = ack.result {
            acked.push(ack.idempotency_key);
        }
        if !killed && (acked.len() >= 300 || Instant::now() > deadline) {
            server.0.kill().unwrap(); // SIGKILL: no shutdown, no flush
            server.0.wait().unwrap();
            killed = true;
        }
    }
    assert!(killed, "the alarm stream ended before the kill");
    producer.abort();
    assert!(acked.len() >= 300, "the server acknowledged only {} alarms before the kill", acked.len());

    let (_server, ch) = serve(dir.path(), port).await;
    let mut dispatch = pb::dispatch_service_client::DispatchServiceClient::new(ch);
    let mut missing = Vec::new();
    for key in &acked {
        let req = pb::GetIncidentRequest { incident_id: String::new(), idempotency_key: key.clone() };
        match dispatch.get_incident(req).await {
            Ok(inc) => assert!(!inc.into_inner().id.is_empty()),
            Err(_) => missing.push(key.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged alarms lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}
