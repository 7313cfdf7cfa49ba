//! End-to-end tests: the real server on an ephemeral loopback port and a real
//! SQLite store in a temporary directory, driven by tonic clients.

use std::path::Path;
use std::time::Duration;

use proto::v1 as pb;
use server::app::{start, RunningServer};
use server::config::{Config, RawConfig};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

type Alarms = pb::alarm_service_client::AlarmServiceClient<Channel>;
type Dispatch = pb::dispatch_service_client::DispatchServiceClient<Channel>;
type Caregivers = pb::caregiver_service_client::CaregiverServiceClient<Channel>;
type Registry = pb::registry_service_client::RegistryServiceClient<Channel>;

struct Clients {
    alarms: Alarms,
    dispatch: Dispatch,
    caregivers: Caregivers,
    registry: Registry,
    channel: Channel,
}

async fn boot(dir: &Path) -> (RunningServer, Clients) {
    boot_with(dir, |_| {}).await
}

/// `boot` with settings changed by `tune` (after the test defaults).
async fn boot_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> (RunningServer, Clients) {
    let raw = RawConfig { data_dir: Some(dir.to_owned()), ..Default::default() };
    let mut config = Config::from_raw(&raw).unwrap();
    config.tick_ms = 50;
    tune(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = start(&config, listener).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let clients = Clients {
        alarms: Alarms::new(channel.clone()),
        dispatch: Dispatch::new(channel.clone()),
        caregivers: Caregivers::new(channel.clone()),
        registry: Registry::new(channel.clone()),
        channel,
    };
    (server, clients)
}

/// Shuts the server down (its clients first) and boots it again on the same data directory.
async fn restart(server: RunningServer, c: Clients, dir: &Path) -> (RunningServer, Clients) {
    drop(c);
    server.shutdown().await.unwrap();
    boot(dir).await
}

fn point(lat: f64, lon: f64) -> Option<pb::GeoPoint> {
    Some(pb::GeoPoint { lat, lon })
}

async fn elder(c: &mut Clients, id: &str, lat: f64, lon: f64) {
    let e = pb::Elder {
        id: id.into(),
        name: "王秀英".into(),
        address: "长春市二道区东盛街道1号楼".into(),
        location: point(lat, lon),
        categories: vec![pb::ElderCategory::LivingAlone as i32],
        family_contacts: vec![pb::FamilyContact {
            name: "李明".into(),
            relation: "son".into(),
            phone: "13900000000".into(),
        }],
        ..Default::default()
    };
    let r = c.registry.upsert_elder(pb::UpsertElderRequest { elder: Some(e) }).await.unwrap().into_inner();
    assert!(r.created);
}

async fn caregiver(c: &mut Clients, id: &str, lat: f64, lon: f64) {
    let cg = pb::Caregiver {
        id: id.into(),
        name: "护理员".into(),
        home: point(lat, lon),
        mode: pb::TravelMode::Bike as i32,
        ..Default::default()
    };
    c.registry.upsert_caregiver(pb::UpsertCaregiverRequest { caregiver: Some(cg) }).await.unwrap();
    let s = c
        .caregivers
        .set_status(pb::SetStatusRequest {
            caregiver_id: id.into(),
            status: pb::CaregiverStatus::Available as i32,
            location: point(lat, lon),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, pb::CaregiverStatus::Available as i32);
}

/// Sets a caregiver's duty status (where they are unchanged).
async fn duty(c: &mut Clients, id: &str, status: pb::CaregiverStatus) {
    let req = pb::SetStatusRequest { caregiver_id: id.into(), status: status as i32, location: None };
    c.caregivers.set_status(req).await.unwrap();
}

/// A caregiver's status as the registry reports it.
async fn status_of(c: &mut Clients, id: &str) -> i32 {
    c.registry.get_caregiver(pb::GetByIdRequest { id: id.into() }).await.unwrap().into_inner().status
}

fn alarm(key: &str, elder: &str, kind: pb::AlarmKind) -> pb::RaiseAlarmRequest {
    pb::RaiseAlarmRequest {
        idempotency_key: key.into(),
        elder_id: elder.into(),
        kind: kind as i32,
        ..Default::default()
    }
}

fn act(incident: &str, caregiver: &str) -> pb::IncidentActionRequest {
    pb::IncidentActionRequest { incident_id: incident.into(), caregiver_id: caregiver.into(), note: String::new() }
}

async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("stream event in time").unwrap().unwrap()
}

/// Two caregivers and one elder near the first of them.
async fn district(c: &mut Clients) {
    elder(c, "E1", 43.8650, 125.3860).await;
    caregiver(c, "near", 43.8660, 125.3870).await;
    caregiver(c, "far", 43.8900, 125.4200).await;
}

#[tokio::test]
async fn raise_assign_accept_arrive_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    let mut feed = c
        .caregivers
        .watch_assignments(pb::WatchAssignmentsRequest { caregiver_id: "near".into() })
        .await
        .unwrap()
        .into_inner();
    let mut console = c
        .dispatch
        .watch_incidents(pb::WatchIncidentsRequest { include_open_snapshot: false, min_severity: 0 })
        .await
        .unwrap()
        .into_inner();

    // An urgent alarm goes to the nearest caregiver alone (critical ones to the two nearest).
    let r = c.alarms.raise_alarm(alarm("k1", "E1", pb::AlarmKind::Inactivity)).await.unwrap().into_inner();
    let inc = r.incident.unwrap();
    assert!(!r.duplicate);
    assert_eq!(inc.state, pb::IncidentState::Offered as i32);
    assert_eq!(inc.assigned_caregiver_id, "near");
    assert_eq!(inc.offered_to, vec!["near".to_string()]);
    assert_eq!(inc.severity, pb::Severity::Urgent as i32);
    assert!(inc.assigned_eta_s > 0.0);

    let offer = next(&mut feed).await;
    assert_eq!(offer.kind, pb::AssignmentEventKind::Offer as i32);
    assert_eq!(offer.incident.as_ref().unwrap().id, inc.id);
    assert_eq!(offer.elder.as_ref().unwrap().family_contacts[0].phone, "13900000000");
    let created = next(&mut console).await;
    let offered = next(&mut console).await;
    assert_eq!(created.kind, pb::IncidentEventKind::Created as i32);
    assert_eq!(offered.kind, pb::IncidentEventKind::Offered as i32);
    assert!(offered.seq > created.seq);

    let busy = c.registry.get_caregiver(pb::GetByIdRequest { id: "near".into() }).await.unwrap().into_inner();
    assert_eq!(busy.status, pb::CaregiverStatus::Busy as i32);
    assert_eq!(busy.active_incident_id, inc.id);

    // Only the holder may act.
    let err = c.dispatch.accept_incident(act(&inc.id, "far")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let a = c.dispatch.accept_incident(act(&inc.id, "near")).await.unwrap().into_inner();
    assert_eq!(a.state, pb::IncidentState::Accepted as i32);
    let a = c.dispatch.mark_arrived(act(&inc.id, "near")).await.unwrap().into_inner();
    assert_eq!(a.state, pb::IncidentState::OnScene as i32);
    let done = c
        .dispatch
        .resolve_incident(pb::ResolveIncidentRequest {
            incident_id: inc.id.clone(),
            caregiver_id: "near".into(),
            outcome: pb::ResolutionOutcome::Assisted as i32,
            note: "helped her up".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, pb::IncidentState::Resolved as i32);
    assert_eq!(done.outcome, pb::ResolutionOutcome::Assisted as i32);
    let kinds: Vec<i32> =
        vec![next(&mut console).await.kind, next(&mut console).await.kind, next(&mut console).await.kind];
    assert_eq!(
        kinds,
        [
            pb::IncidentEventKind::Accepted as i32,
            pb::IncidentEventKind::Arrived as i32,
            pb::IncidentEventKind::Resolved as i32
        ]
    );
    let free = c.registry.get_caregiver(pb::GetByIdRequest { id: "near".into() }).await.unwrap().into_inner();
    assert_eq!(free.status, pb::CaregiverStatus::Available as i32);
    let closed = next(&mut feed).await;
    assert!(closed.kind != pb::AssignmentEventKind::Offer as i32);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn decline_redispatches_to_the_next_nearest() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    let mut far_feed = c
        .caregivers
        .watch_assignments(pb::WatchAssignmentsRequest { caregiver_id: "far".into() })
        .await
        .unwrap()
        .into_inner();
    let inc =
        c.alarms.raise_alarm(alarm("k1", "E1", pb::AlarmKind::SosButton)).await.unwrap().into_inner().incident.unwrap();
    assert_eq!(inc.assigned_caregiver_id, "near");
    let again = c.dispatch.decline_incident(act(&inc.id, "near")).await.unwrap().into_inner();
    assert_eq!(again.state, pb::IncidentState::Offered as i32);
    assert_eq!(again.assigned_caregiver_id, "far");
    assert_eq!(again.declined_by, vec!["near".to_string()]);
    let offer = next(&mut far_feed).await;
    assert_eq!((offer.kind, offer.incident.unwrap().id), (pb::AssignmentEventKind::Offer as i32, inc.id.clone()));
    // Both declined: escalated, visible, not dropped.
    let last = c.dispatch.decline_incident(act(&inc.id, "far")).await.unwrap().into_inner();
    assert_eq!(last.state, pb::IncidentState::Escalated as i32);
    assert_eq!(last.escalation_reason, pb::EscalationReason::AllDeclined as i32);
    let open = c
        .dispatch
        .list_incidents(pb::ListIncidentsRequest {
            states: vec![pb::IncidentState::Escalated as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.incidents.len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn nobody_available_is_escalated_on_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    elder(&mut c, "E1", 43.8650, 125.3860).await;
    let mut console = c
        .dispatch
        .watch_incidents(pb::WatchIncidentsRequest {
            include_open_snapshot: true,
            min_severity: pb::Severity::Urgent as i32,
        })
        .await
        .unwrap()
        .into_inner();
    // Routine alarms are below this console's filter.
    c.alarms.raise_alarm(alarm("low", "E1", pb::AlarmKind::LowBattery)).await.unwrap();
    let inc =
        c.alarms.raise_alarm(alarm("smoke", "E1", pb::AlarmKind::Smoke)).await.unwrap().into_inner().incident.unwrap();
    assert_eq!(inc.state, pb::IncidentState::Escalated as i32);
    assert_eq!(inc.escalation_reason, pb::EscalationReason::NoCaregiverAvailable as i32);
    let created = next(&mut console).await;
    assert_eq!(created.incident.unwrap().kind, pb::AlarmKind::Smoke as i32, "routine alarm filtered out");
    let esc = next(&mut console).await;
    assert_eq!(esc.kind, pb::IncidentEventKind::Escalated as i32);
    // The ladder's family rung: the console is told whom to call.
    let family = next(&mut console).await;
    assert_eq!(family.kind, pb::IncidentEventKind::FamilyNotified as i32);
    assert!(family.note.ends_with("family contacts: 李明 (son) 13900000000"), "{}", family.note);
    assert!(family.incident.unwrap().family_notified_unix_ms > 0);
    // A dispatcher hands it to a caregiver who comes on duty.
    caregiver(&mut c, "late", 43.87, 125.39).await;
    let r = c
        .dispatch
        .reassign_incident(pb::ReassignIncidentRequest {
            incident_id: inc.id.clone(),
            caregiver_id: "late".into(),
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.state, r.assigned_caregiver_id.as_str()), (pb::IncidentState::Offered as i32, "late"));
    let k = c.dispatch.get_kpis(pb::GetKpisRequest {}).await.unwrap().into_inner();
    assert_eq!(k.alarms_received, 2);
    // Both alarms escalated and took the family rung.
    let by_reason = |r: pb::EscalationReason| k.escalations.iter().find(|e| e.reason == r as i32).map(|e| e.count);
    assert_eq!(by_reason(pb::EscalationReason::NoCaregiverAvailable), Some(2));
    assert_eq!(by_reason(pb::EscalationReason::FamilyContact), Some(2));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn duplicate_key_returns_the_original_incident() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    elder(&mut c, "E2", 43.8655, 125.3865).await;
    let first = c.alarms.raise_alarm(alarm("dup", "E1", pb::AlarmKind::Wandering)).await.unwrap().into_inner();
    let again = c.alarms.raise_alarm(alarm("dup", "E1", pb::AlarmKind::Wandering)).await.unwrap().into_inner();
    assert!(again.duplicate);
    assert_eq!(again.incident.unwrap().id, first.incident.as_ref().unwrap().id);
    let far = c.registry.get_caregiver(pb::GetByIdRequest { id: "far".into() }).await.unwrap().into_inner();
    assert_eq!(far.status, pb::CaregiverStatus::Available as i32, "the retry took nobody");
    let err = c.alarms.raise_alarm(alarm("dup", "E2", pb::AlarmKind::Fall)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("idempotency_key"), "{}", err.message());
    // The stream API acknowledges each alarm, errors included, and goes on.
    let reqs = vec![
        pb::RaiseAlarmRequest { sequence: 1, ..alarm("dup", "E1", pb::AlarmKind::Wandering) },
        pb::RaiseAlarmRequest { sequence: 2, ..alarm("s2", "nobody", pb::AlarmKind::Fall) },
        pb::RaiseAlarmRequest { sequence: 3, ..alarm("s3", "E2", pb::AlarmKind::Gas) },
    ];
    let mut acks = c.alarms.stream_alarms(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let mut by_seq = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let a = next(&mut acks).await;
        by_seq.insert(a.sequence, a.result.unwrap());
    }
    assert!(matches!(&by_seq[&1], pb::alarm_ack::Result::Accepted(r) if r.duplicate));
    assert!(
        matches!(&by_seq[&2], pb::alarm_ack::Result::Error(e) if e.code == Code::NotFound as i32 && e.message.contains("elder_id"))
    );
    assert!(matches!(&by_seq[&3], pb::alarm_ack::Result::Accepted(r) if !r.duplicate));
    server.shutdown().await.unwrap();
}

/// Concurrent unary calls are taken in together (one batch per burst): each
/// caller still gets its own answer, errors included, and twenty concurrent
/// retries of one key agree on one incident with exactly one original.
#[tokio::test]
async fn concurrent_unary_calls_each_get_their_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    let calls = (0..100)
        .map(|i| alarm(&format!("u{i}"), "E1", pb::AlarmKind::LowBattery))
        .chain((0..20).map(|_| alarm("same", "E1", pb::AlarmKind::Wandering)))
        .chain(std::iter::once(alarm("bad", "nobody", pb::AlarmKind::Fall)))
        .map(|req| {
            let mut client = c.alarms.clone();
            tokio::spawn(async move { (req.idempotency_key.clone(), client.raise_alarm(req).await) })
        })
        .collect::<Vec<_>>();
    let (mut same, mut originals) = (std::collections::HashSet::new(), 0);
    for call in calls {
        let (key, out) = call.await.unwrap();
        match key.as_str() {
            "bad" => assert_eq!(out.unwrap_err().code(), Code::NotFound, "an unknown elder"),
            "same" => {
                let r = out.unwrap().into_inner();
                same.insert(r.incident.unwrap().id);
                originals += usize::from(!r.duplicate);
            }
            _ => {
                // One elder's low-battery alarms: the first opens an incident,
                // the repeats merge into it.
                let r = out.unwrap().into_inner();
                let inc = r.incident.unwrap();
                assert!(!r.duplicate);
                assert!(r.merged || inc.idempotency_key == key, "{key} answered with {}", inc.idempotency_key);
                assert_eq!(inc.kind, pb::AlarmKind::LowBattery as i32);
            }
        }
    }
    assert_eq!((same.len(), originals), (1, 1));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    let check = |r: Result<tonic::Response<pb::RaiseAlarmResponse>, tonic::Status>, code: Code, field: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(field), "{field} not in {:?}", e.message());
    };
    let mut bad = alarm("b1", "E1", pb::AlarmKind::Fall);
    bad.location = point(91.0, 125.0);
    check(c.alarms.raise_alarm(bad.clone()).await, Code::InvalidArgument, "location.lat");
    bad.location = point(43.0, f64::NAN);
    check(c.alarms.raise_alarm(bad).await, Code::InvalidArgument, "location.lon");
    check(c.alarms.raise_alarm(alarm("", "E1", pb::AlarmKind::Fall)).await, Code::InvalidArgument, "idempotency_key");
    check(c.alarms.raise_alarm(alarm("b2", "", pb::AlarmKind::Fall)).await, Code::InvalidArgument, "elder_id");
    check(c.alarms.raise_alarm(alarm("b3", "E404", pb::AlarmKind::Fall)).await, Code::NotFound, "E404");
    check(c.alarms.raise_alarm(alarm("b4", "E1", pb::AlarmKind::Unspecified)).await, Code::InvalidArgument, "kind");
    let mut unknown_device = alarm("b5", "E1", pb::AlarmKind::Fall);
    unknown_device.device_id = "D404".into();
    check(c.alarms.raise_alarm(unknown_device).await, Code::NotFound, "device_id");
    let mut long = alarm("b6", "E1", pb::AlarmKind::Fall);
    long.detail = "x".repeat(2000);
    check(c.alarms.raise_alarm(long).await, Code::InvalidArgument, "detail");
    // A message over the server's size limit is refused before it is decoded.
    let mut huge = alarm("b7", "E1", pb::AlarmKind::Fall);
    huge.detail = "x".repeat(2 * 1024 * 1024);
    let e = c.alarms.raise_alarm(huge).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    // Registry validation.
    let e = c
        .registry
        .upsert_elder(pb::UpsertElderRequest { elder: Some(pb::Elder { id: "E9".into(), ..Default::default() }) })
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "elder.location: is required"));
    let e = c
        .registry
        .upsert_device(pb::UpsertDeviceRequest {
            device: Some(pb::Device {
                id: "D1".into(),
                elder_id: "E404".into(),
                kind: pb::DeviceKind::SosButton as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.dispatch.accept_incident(act("inc-999", "near")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.dispatch.accept_incident(act("nonsense", "near")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("incident_id"));
    let e = c
        .caregivers
        .set_status(pb::SetStatusRequest {
            caregiver_id: "near".into(),
            status: pb::CaregiverStatus::Busy as i32,
            location: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Bad position fixes are counted, good ones applied.
    let fixes = vec![
        pb::LocationUpdate { caregiver_id: "near".into(), location: point(43.87, 125.39), ..Default::default() },
        pb::LocationUpdate { caregiver_id: "near".into(), location: point(200.0, 125.39), ..Default::default() },
        pb::LocationUpdate { caregiver_id: "ghost".into(), location: point(43.87, 125.39), ..Default::default() },
    ];
    let s = c.caregivers.update_location(tokio_stream::iter(fixes)).await.unwrap().into_inner();
    assert_eq!((s.accepted, s.rejected), (1, 2));
    assert!(s.first_error.contains("location.lat"), "{}", s.first_error);
    // Nothing accepted before was lost, and the server still answers.
    let ok = c.alarms.raise_alarm(alarm("good", "E1", pb::AlarmKind::Fall)).await.unwrap().into_inner();
    assert_eq!(ok.incident.unwrap().state, pb::IncidentState::Offered as i32);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_the_registry_and_open_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    let device = pb::Device {
        id: "D1".into(),
        elder_id: "E1".into(),
        kind: pb::DeviceKind::SosButton as i32,
        heartbeat_interval_s: 600,
        ..Default::default()
    };
    c.registry.upsert_device(pb::UpsertDeviceRequest { device: Some(device) }).await.unwrap();
    let open = c
        .alarms
        .raise_alarm(alarm("open", "E1", pb::AlarmKind::SosButton))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    c.dispatch.accept_incident(act(&open.id, "near")).await.unwrap();
    let closed = c
        .alarms
        .raise_alarm(alarm("closed", "E1", pb::AlarmKind::LowBattery))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(closed.assigned_caregiver_id, "far");
    // A position fix while busy is stored with the caregiver's state; the
    // claim it was busy with ends before the restart.
    let fix =
        pb::LocationUpdate { caregiver_id: "far".into(), location: point(43.8910, 125.4210), ..Default::default() };
    let s = c.caregivers.update_location(tokio_stream::iter([fix])).await.unwrap().into_inner();
    assert_eq!(s.accepted, 1);
    c.dispatch
        .cancel_incident(pb::CancelIncidentRequest { incident_id: closed.id.clone(), reason: "battery swapped".into() })
        .await
        .unwrap();
    let (server, mut c) = restart(server, c, dir.path()).await;
    let e = c.registry.get_elder(pb::GetByIdRequest { id: "E1".into() }).await.unwrap().into_inner();
    assert_eq!(e.family_contacts[0].phone, "13900000000");
    let d = c
        .registry
        .list_devices(pb::ListDevicesRequest { elder_id: "E1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.devices.len(), 1);
    let cgs = c.registry.list_caregivers(pb::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(cgs.caregivers.len(), 2);
    let inc = c
        .dispatch
        .get_incident(pb::GetIncidentRequest { incident_id: open.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((inc.state, inc.assigned_caregiver_id.as_str()), (pb::IncidentState::Accepted as i32, "near"));
    let near = c.registry.get_caregiver(pb::GetByIdRequest { id: "near".into() }).await.unwrap().into_inner();
    assert_eq!((near.status, near.active_incident_id.as_str()), (pb::CaregiverStatus::Busy as i32, open.id.as_str()));
    let far = c.registry.get_caregiver(pb::GetByIdRequest { id: "far".into() }).await.unwrap().into_inner();
    assert_eq!(far.status, pb::CaregiverStatus::Available as i32, "duty status survives, the closed claim does not");
    let dup = c.alarms.raise_alarm(alarm("open", "E1", pb::AlarmKind::SosButton)).await.unwrap().into_inner();
    assert!(dup.duplicate);
    assert_eq!(dup.incident.unwrap().id, open.id);
    let by_key = c
        .dispatch
        .get_incident(pb::GetIncidentRequest { idempotency_key: "closed".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_key.state, pb::IncidentState::Cancelled as i32);
    // New incidents continue the numbering and the old one can be finished.
    let fresh =
        c.alarms.raise_alarm(alarm("new", "E1", pb::AlarmKind::Gas)).await.unwrap().into_inner().incident.unwrap();
    assert_ne!(fresh.id, open.id);
    assert_ne!(fresh.id, closed.id);
    c.dispatch.mark_arrived(act(&open.id, "near")).await.unwrap();
    server.shutdown().await.unwrap();
}

/// An elder whose care needs a skill (the registry's `required_skill`) is
/// offered to a caregiver who holds it, though another is nearer (within the
/// default slack of 180 s); the incident carries the skill, also read back
/// after a restart, and a restarted server still knows who holds it.
#[tokio::test]
async fn an_elder_needing_a_skill_is_offered_to_a_holder_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    let e = pb::Elder {
        id: "E2".into(),
        location: point(43.8650, 125.3860),
        categories: vec![pb::ElderCategory::Disabled as i32],
        required_skill: "nursing".into(),
        ..Default::default()
    };
    c.registry.upsert_elder(pb::UpsertElderRequest { elder: Some(e) }).await.unwrap();
    // 500 m north of the elder: 195 s by bike against 53 s for "near".
    let nurse = pb::Caregiver {
        id: "nurse".into(),
        home: point(43.8695, 125.3860),
        mode: pb::TravelMode::Bike as i32,
        skills: vec!["nursing".into()],
        ..Default::default()
    };
    c.registry.upsert_caregiver(pb::UpsertCaregiverRequest { caregiver: Some(nurse) }).await.unwrap();
    duty(&mut c, "nurse", pb::CaregiverStatus::Available).await;
    let raise = |key: &str| alarm(key, "E2", pb::AlarmKind::Inactivity);
    let first = c.alarms.raise_alarm(raise("s1")).await.unwrap().into_inner().incident.unwrap();
    assert_eq!((first.assigned_caregiver_id.as_str(), first.required_skill.as_str()), ("nurse", "nursing"));
    c.dispatch
        .cancel_incident(pb::CancelIncidentRequest { incident_id: first.id.clone(), reason: "false alarm".into() })
        .await
        .unwrap();
    let (server, mut c) = restart(server, c, dir.path()).await;
    let stored = c
        .dispatch
        .get_incident(pb::GetIncidentRequest { incident_id: first.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.required_skill, "nursing");
    let again = c.alarms.raise_alarm(raise("s2")).await.unwrap().into_inner().incident.unwrap();
    assert_eq!(again.assigned_caregiver_id, "nurse");
    server.shutdown().await.unwrap();
}

/// A caregiver taken off a visit for a critical alarm goes back to the visit
/// when declining, also after a restart: the incident, stored, names them.
#[tokio::test]
async fn a_caregiver_taken_off_a_visit_goes_back_to_it_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    district(&mut c).await;
    duty(&mut c, "near", pb::CaregiverStatus::OnVisit).await;
    let sos = c.alarms.raise_alarm(alarm("v1", "E1", pb::AlarmKind::SosButton)).await.unwrap().into_inner();
    let inc = sos.incident.unwrap();
    assert_eq!(
        (inc.offered_to.as_slice(), inc.preempted.as_slice()),
        (&["near".into(), "far".into()][..], &["near".into()][..])
    );
    let (server, mut c) = restart(server, c, dir.path()).await;
    assert_eq!(status_of(&mut c, "near").await, pb::CaregiverStatus::Busy as i32);
    let declined = c.dispatch.decline_incident(act(&inc.id, "near")).await.unwrap().into_inner();
    assert!(declined.preempted.is_empty());
    assert_eq!(status_of(&mut c, "near").await, pb::CaregiverStatus::OnVisit as i32, "back on the visit");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (server, c) = boot(dir.path()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(c.channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest { service: "anxin.v1.AlarmService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(c.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = next(&mut resp).await;
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in ["AlarmService", "DispatchService", "CaregiverService", "RegistryService", "SchedulingService"] {
        assert!(names.contains(&format!("anxin.v1.{s}")), "{s} missing from {names:?}");
    }
    assert!(names.contains(&"grpc.health.v1.Health".to_string()));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn offer_timeout_redispatches_without_anyone_acting() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot_with(dir.path(), |config| {
        config.tick_ms = 20;
        config.dispatch.offer_timeout_ms = 200;
    })
    .await;
    district(&mut c).await;
    let mut console = c.dispatch.watch_incidents(pb::WatchIncidentsRequest::default()).await.unwrap().into_inner();
    let inc =
        c.alarms.raise_alarm(alarm("t", "E1", pb::AlarmKind::Wandering)).await.unwrap().into_inner().incident.unwrap();
    assert_eq!(inc.assigned_caregiver_id, "near");
    let mut kinds = Vec::new();
    while kinds.last() != Some(&(pb::IncidentEventKind::Escalated as i32)) {
        kinds.push(next(&mut console).await.kind);
    }
    use pb::IncidentEventKind as K;
    assert_eq!(
        kinds,
        [K::Created, K::Offered, K::OfferExpired, K::Offered, K::OfferExpired, K::Escalated].map(|k| k as i32).to_vec()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_device_silent_for_three_intervals_raises_device_offline_until_heard_again() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot(dir.path()).await;
    elder(&mut c, "E1", 43.8650, 125.3860).await;
    let device = |id: &str, interval: u32| pb::Device {
        id: id.into(),
        elder_id: "E1".into(),
        kind: pb::DeviceKind::SosButton as i32,
        heartbeat_interval_s: interval,
        ..Default::default()
    };
    for d in [device("sos-1", 1), device("unsupervised", 0)] {
        c.registry.upsert_device(pb::UpsertDeviceRequest { device: Some(d) }).await.unwrap();
    }
    // Wait (bounded) for the supervisor: three missed 1 s heartbeats.
    let mut offline = Vec::new();
    for _ in 0..100 {
        let list = pb::ListIncidentsRequest { elder_id: "E1".into(), ..Default::default() };
        offline = c.dispatch.list_incidents(list).await.unwrap().into_inner().incidents;
        if !offline.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(offline.len(), 1, "only the supervised device is reported: {offline:?}");
    let inc = &offline[0];
    assert_eq!((inc.kind, inc.device_id.as_str()), (pb::AlarmKind::DeviceOffline as i32, "sos-1"));
    assert!(inc.idempotency_key.starts_with("supervision:sos-1:"), "{}", inc.idempotency_key);
    let get = |id: &str| pb::GetByIdRequest { id: id.into() };
    assert!(!c.registry.get_device(get("sos-1")).await.unwrap().into_inner().online);
    // Reported once per silence, and online again at the next heartbeat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let list = pb::ListIncidentsRequest { elder_id: "E1".into(), ..Default::default() };
    assert_eq!(c.dispatch.list_incidents(list).await.unwrap().into_inner().incidents.len(), 1);
    let beat = pb::DeviceHeartbeat { device_id: "sos-1".into(), at_unix_ms: 0, battery_pct: 80 };
    let summary = c.registry.heartbeat(tokio_stream::iter(vec![beat])).await.unwrap().into_inner();
    assert_eq!(summary.accepted, 1);
    let d = c.registry.get_device(get("sos-1")).await.unwrap().into_inner();
    assert!(d.online && d.battery_pct == 80);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn closed_incidents_leave_memory_and_are_read_back_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = boot_with(dir.path(), |config| {
        config.tick_ms = 20;
        config.dispatch.retain_closed_ms = 0;
    })
    .await;
    elder(&mut c, "E1", 43.8650, 125.3860).await;
    let inc = c.alarms.raise_alarm(alarm("gone", "E1", pb::AlarmKind::Inactivity)).await.unwrap().into_inner();
    let id = inc.incident.unwrap().id;
    let cancel = pb::CancelIncidentRequest { incident_id: id.clone(), reason: "false alarm, elder called back".into() };
    c.dispatch.cancel_incident(cancel).await.unwrap();
    let mut listed = 1;
    for _ in 0..100 {
        let list = pb::ListIncidentsRequest::default();
        listed = c.dispatch.list_incidents(list).await.unwrap().into_inner().incidents.len();
        if listed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed, 0, "closed incidents leave the in-memory list");
    let by_id = pb::GetIncidentRequest { incident_id: id.clone(), idempotency_key: String::new() };
    let back = c.dispatch.get_incident(by_id).await.unwrap().into_inner();
    assert_eq!(
        (back.state, back.resolution_note.as_str()),
        (pb::IncidentState::Cancelled as i32, "false alarm, elder called back")
    );
    let by_key = pb::GetIncidentRequest { incident_id: String::new(), idempotency_key: "gone".into() };
    assert_eq!(c.dispatch.get_incident(by_key).await.unwrap().into_inner().id, id);
    let k = c.dispatch.get_kpis(pb::GetKpisRequest {}).await.unwrap().into_inner();
    assert_eq!(k.incidents_by_state.get("INCIDENT_STATE_CANCELLED"), Some(&1));
    server.shutdown().await.unwrap();
}
