//! SchedulingService end to end: the real server on a loopback port and a real
//! SQLite store, planning a small district, serving routes, recording visits,
//! re-planning, and keeping all of it across a restart.

use std::path::Path;
use std::time::Duration;

use proto::v1 as pb;
use server::app::{start, RunningServer};
use server::config::{Config, RawConfig};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

type Scheduling = pb::scheduling_service_client::SchedulingServiceClient<Channel>;
type Registry = pb::registry_service_client::RegistryServiceClient<Channel>;

async fn boot(dir: &Path) -> (RunningServer, Scheduling, Registry) {
    let raw = RawConfig { data_dir: Some(dir.to_owned()), ..Default::default() };
    let config = Config::from_raw(&raw).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = start(&config, listener).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    (server, Scheduling::new(channel.clone()), Registry::new(channel))
}

const ELDERS: &str = "id,name,lat,lon,category,visits_per_month,service_min,days,window,skill,preferred_caregiver
E1,王秀英,43.8650,125.3860,living_alone,2,30,Mon-Fri,09:00-11:00,,C1
E2,李桂兰,43.8700,125.3900,empty_nest;disabled,1,45,,,nursing,
E3,张淑珍,43.8600,125.3800,left_behind,2,30,Mon;Wed;Fri,,,
E4,刘凤英,43.8680,125.3950,special_family,1,30,,14:00-16:00,,
E5,陈玉兰,43.8620,125.3880,other,3,20,,,,
";

const CAREGIVERS: &str = "id,name,lat,lon,days,shift,max_visits_per_day,skills,mode
C1,赵护理,43.8655,125.3865,Mon-Fri,08:00-17:00,4,,bike
C2,孙护理,43.8640,125.3870,Mon-Sat,08:30-16:30,3,nursing,walk
";

fn submit(elders: &str, caregivers: &str) -> pb::SubmitPlanRequest {
    pb::SubmitPlanRequest {
        month: "2026-12".into(),
        holidays: vec!["2026-12-25".into()],
        time_limit_s: 5.0,
        threads: 1,
        seed: 7,
        detour_factor: 0.0,
        elders_csv: elders.as_bytes().to_vec(),
        caregivers_csv: caregivers.as_bytes().to_vec(),
    }
}

/// Follows a job to its end and returns every progress message.
async fn watch(s: &mut Scheduling, job: &str) -> Vec<pb::PlanProgress> {
    let mut stream = s.watch_plan(pb::WatchPlanRequest { job_id: job.into() }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(p) = stream.next().await {
            seen.push(p.unwrap());
        }
    })
    .await;
    assert!(end.is_ok(), "WatchPlan did not end: {seen:?}");
    seen
}

#[tokio::test]
async fn plan_route_visit_replan_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut s, _) = boot(dir.path()).await;

    let job = s.submit_plan(submit(ELDERS, CAREGIVERS)).await.unwrap().into_inner().job_id;
    let progress = watch(&mut s, &job).await;
    let last = progress.last().unwrap();
    assert_eq!(last.phase, pb::PlanPhase::Done as i32, "{progress:?}");
    assert_eq!((last.coverage_rate, last.uncovered_elders), (1.0, 0));

    let plan = s.get_plan(pb::GetPlanRequest { job_id: job.clone(), month: String::new() }).await.unwrap().into_inner();
    let cov = plan.coverage.clone().unwrap();
    assert_eq!((cov.elders, cov.fully_covered, cov.required_visits, cov.scheduled_visits), (5, 5, 9, 9));
    assert_eq!(cov.status, pb::CoverageStatus::Full as i32);
    assert!(plan.total_travel_min > 0.0);
    let by_month = s.get_plan(pb::GetPlanRequest { job_id: String::new(), month: "2026-12".into() }).await.unwrap();
    assert_eq!(by_month.into_inner().job_id, job);
    // Rule checks on what the app receives: E2 needs nursing (only C2 has it), E4 is seen 14:00-16:00.
    for r in &plan.routes {
        for stop in &r.stops {
            if stop.elder_id == "E2" {
                assert_eq!(r.caregiver_id, "C2");
            }
            if stop.elder_id == "E4" {
                assert!(stop.start_min >= 14.0 * 60.0 && stop.end_min <= 16.0 * 60.0 + 1e-9, "{stop:?}");
            }
        }
        assert_ne!(r.date, "2026-12-25", "holiday");
    }

    // The caregiver app's pull.
    let first = plan.routes[0].clone();
    let route = s
        .get_route(pb::GetRouteRequest { caregiver_id: first.caregiver_id.clone(), date: first.date.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route, first);
    let free_day = s
        .get_route(pb::GetRouteRequest { caregiver_id: "C1".into(), date: "2026-12-25".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(free_day.stops.is_empty());
    let err = s.get_route(pb::GetRouteRequest { caregiver_id: "C9".into(), date: "2026-12-01".into() }).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);
    let err = s.get_route(pb::GetRouteRequest { caregiver_id: "C1".into(), date: "2026-13-01".into() }).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("date:"), "{}", err.message());

    // Record the first stop as done: realised coverage counts it.
    let stop = first.stops[0].clone();
    let visit = pb::RecordVisitRequest {
        elder_id: stop.elder_id.clone(),
        caregiver_id: first.caregiver_id.clone(),
        date: first.date.clone(),
        outcome: pb::VisitOutcome::Done as i32,
        at_unix_ms: 0,
        note: "血压正常".into(),
    };
    assert!(s.record_visit(visit.clone()).await.unwrap().into_inner().recorded);
    let cov = s.get_coverage(pb::GetCoverageRequest { month: "2026-12".into() }).await.unwrap().into_inner();
    assert_eq!((cov.realised_visits, cov.rate), (1, 1.0));
    let bad = pb::RecordVisitRequest { outcome: 0, ..visit.clone() };
    assert_eq!(s.record_visit(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let unknown = pb::RecordVisitRequest { elder_id: "E404".into(), ..visit.clone() };
    assert_eq!(s.record_visit(unknown).await.unwrap_err().code(), Code::NotFound);

    // C1 is sick on one of its later working days: the repaired plan moves those visits and keeps 100%.
    let sick_day = plan
        .routes
        .iter()
        .filter(|r| r.caregiver_id == "C1" && r.date.as_str() > first.date.as_str())
        .map(|r| r.date.clone())
        .next()
        .expect("C1 works again after the first route");
    let replan = pb::ReplanRequest {
        month: "2026-12".into(),
        events: vec![pb::ReplanEvent {
            event: Some(pb::replan_event::Event::Absence(pb::CaregiverAbsence {
                caregiver_id: "C1".into(),
                date: sick_day.clone(),
            })),
        }],
        time_limit_s: 5.0,
        seed: 7,
        from_date: "2026-12-01".into(),
        threads: 1,
    };
    let job2 = s.replan(replan.clone()).await.unwrap().into_inner().job_id;
    assert_ne!(job2, job);
    let last = watch(&mut s, &job2).await.pop().unwrap();
    assert_eq!(last.phase, pb::PlanPhase::Done as i32, "{last:?}");
    let repaired = s.get_plan(pb::GetPlanRequest { job_id: String::new(), month: "2026-12".into() }).await.unwrap();
    let repaired = repaired.into_inner();
    assert_eq!(repaired.job_id, job2, "the repaired plan is the month's latest");
    assert_eq!(repaired.coverage.as_ref().unwrap().rate, 1.0);
    assert!(!repaired.routes.iter().any(|r| r.caregiver_id == "C1" && r.date == sick_day));
    let mut bad = replan.clone();
    bad.events[0].event = Some(pb::replan_event::Event::Absence(pb::CaregiverAbsence {
        caregiver_id: "C7".into(),
        date: sick_day.clone(),
    }));
    let err = s.replan(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("events[0].absence.caregiver_id"), "{}", err.message());

    // Everything survives a restart.
    server.shutdown().await.unwrap();
    let (server, mut s, _) = boot(dir.path()).await;
    let again = s.get_plan(pb::GetPlanRequest { job_id: String::new(), month: "2026-12".into() }).await.unwrap();
    assert_eq!(again.into_inner(), repaired);
    let old = s.get_plan(pb::GetPlanRequest { job_id: job.clone(), month: String::new() }).await.unwrap();
    assert_eq!(old.into_inner().routes, plan.routes);
    let progress = watch(&mut s, &job2).await;
    assert_eq!(progress.len(), 1, "a finished job reports its end at once");
    let cov = s.get_coverage(pb::GetCoverageRequest { month: "2026-12".into() }).await.unwrap().into_inner();
    assert_eq!(cov.realised_visits, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_spreadsheets_are_refused_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut s, _) = boot(dir.path()).await;
    let bad = ELDERS.replace("E3,张淑珍,43.8600", "E3,张淑珍,93.8600");
    let err = s.submit_plan(submit(&bad, CAREGIVERS)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("elders_csv:"), "{}", err.message());
    assert!(err.message().contains(":4:") && err.message().contains("lat"), "{}", err.message());
    let err = s.submit_plan(submit(ELDERS, "")).await.unwrap_err();
    assert!(err.message().starts_with("caregivers_csv:"), "{}", err.message());
    let mut r = submit(ELDERS, CAREGIVERS);
    r.month = "2026-13".into();
    assert!(s.submit_plan(r).await.unwrap_err().message().starts_with("month:"));
    let mut r = submit(ELDERS, CAREGIVERS);
    r.holidays = vec!["2027-01-01".into()];
    assert!(s.submit_plan(r).await.unwrap_err().message().starts_with("holidays[0]:"));
    let mut r = submit(ELDERS, CAREGIVERS);
    r.time_limit_s = f64::NAN;
    assert!(s.submit_plan(r).await.unwrap_err().message().starts_with("time_limit_s:"));
    let err = s.get_plan(pb::GetPlanRequest { job_id: "plan-0".into(), month: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = s.get_coverage(pb::GetCoverageRequest { month: "2026-11".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn impossible_coverage_is_explained_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut s, _) = boot(dir.path()).await;
    // Nobody has the 'dementia' skill that E6 needs.
    let elders = format!("{ELDERS}E6,周桂芝,43.8660,125.3870,disabled,1,30,,,dementia,\n");
    let job = s.submit_plan(submit(&elders, CAREGIVERS)).await.unwrap().into_inner().job_id;
    let last = watch(&mut s, &job).await.pop().unwrap();
    assert_eq!((last.phase, last.uncovered_elders), (pb::PlanPhase::Done as i32, 1));
    let cov = s.get_coverage(pb::GetCoverageRequest { month: "2026-12".into() }).await.unwrap().into_inner();
    assert_eq!(cov.status, pb::CoverageStatus::ProvedImpossible as i32);
    assert_eq!(cov.uncovered.len(), 1);
    assert_eq!(cov.uncovered[0].elder_id, "E6");
    assert!(cov.uncovered[0].reason.contains("skill"), "{}", cov.uncovered[0].reason);
    assert_eq!(cov.fully_covered, 5, "everyone else is still covered");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_registry_is_planned_when_no_spreadsheet_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut s, mut reg) = boot(dir.path()).await;
    for (i, (lat, lon)) in [(43.865, 125.386), (43.870, 125.390), (43.860, 125.380)].into_iter().enumerate() {
        let e = pb::Elder {
            id: format!("E{i}"),
            name: "老人".into(),
            location: Some(pb::GeoPoint { lat, lon }),
            categories: vec![pb::ElderCategory::LivingAlone as i32],
            visits_per_month: 2,
            ..Default::default()
        };
        reg.upsert_elder(pb::UpsertElderRequest { elder: Some(e) }).await.unwrap();
    }
    let shift = pb::Shift { start_min: 8 * 60, end_min: 17 * 60, days: (1..=5).collect() };
    let cg = |id: &str, shift: Option<pb::Shift>| pb::Caregiver {
        id: id.into(),
        name: "护理员".into(),
        home: Some(pb::GeoPoint { lat: 43.866, lon: 125.387 }),
        shift,
        mode: pb::TravelMode::Bike as i32,
        ..Default::default()
    };
    // C-ALARM has no shift: it answers alarms only and gets no visits.
    for c in [cg("C-VISIT", Some(shift)), cg("C-ALARM", None)] {
        reg.upsert_caregiver(pb::UpsertCaregiverRequest { caregiver: Some(c) }).await.unwrap();
    }
    let req = pb::SubmitPlanRequest { month: "2026-12".into(), time_limit_s: 3.0, threads: 1, ..Default::default() };
    let job = s.submit_plan(req).await.unwrap().into_inner().job_id;
    let last = watch(&mut s, &job).await.pop().unwrap();
    assert_eq!(last.phase, pb::PlanPhase::Done as i32, "{last:?}");
    let plan = s.get_plan(pb::GetPlanRequest { job_id: job, month: String::new() }).await.unwrap().into_inner();
    let cov = plan.coverage.unwrap();
    assert_eq!((cov.elders, cov.scheduled_visits, cov.rate), (3, 6, 1.0));
    assert!(plan.routes.iter().all(|r| r.caregiver_id == "C-VISIT"));
    server.shutdown().await.unwrap();
}
