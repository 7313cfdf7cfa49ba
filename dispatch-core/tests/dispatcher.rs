//! Behaviour of the dispatcher as a dispatch centre sees it: the life cycle,
//! dedup and merge, timers on a manual clock, journal failures, and a
//! concurrency stress test of the one-incident-per-caregiver invariant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dispatch_core::*;

#[derive(Default)]
struct MemJournal {
    events: Mutex<Vec<IncidentEvent>>,
    fail: AtomicBool,
    appends: AtomicUsize,
}

impl Journal for MemJournal {
    fn append(&self, events: &[IncidentEvent]) -> Result<(), String> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("disk full".into());
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }

    fn load(&self, id: IncidentId) -> Option<Incident> {
        self.events.lock().unwrap().iter().rev().find(|e| e.incident.id == id).map(|e| e.incident.clone())
    }
}

struct Rig {
    d: Dispatcher,
    journal: Arc<MemJournal>,
    clock: Arc<ManualClock>,
}

fn p(lat: f64, lon: f64) -> GeoPoint {
    GeoPoint::new("p", lat, lon).unwrap()
}

fn cg(id: &str) -> CaregiverId {
    CaregiverId::parse("caregiver_id", id).unwrap()
}

fn rig(caregivers: &[(&str, f64, f64)]) -> Rig {
    rig_with(DispatchConfig::default(), caregivers)
}

fn rig_with(config: DispatchConfig, caregivers: &[(&str, f64, f64)]) -> Rig {
    let journal = Arc::new(MemJournal::default());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let d = Dispatcher::new(config, journal.clone(), Arc::new(NoSink), clock.clone());
    for (id, lat, lon) in caregivers {
        d.upsert_caregiver(CaregiverProfile {
            id: cg(id),
            skills: vec![],
            home: p(*lat, *lon),
            mode: TravelMode::Bike,
        });
        d.set_status(&cg(id), CaregiverStatus::Available, None).unwrap();
    }
    Rig { d, journal, clock }
}

fn alarm(key: &str, kind: AlarmKind, lat: f64, lon: f64) -> Alarm {
    Alarm {
        key: IdempotencyKey::parse("idempotency_key", key).unwrap(),
        elder: ElderId::parse("elder_id", &format!("E-{key}")).unwrap(),
        device: None,
        kind,
        location: p(lat, lon),
        occurred_ms: 0,
        detail: String::new(),
        required_skill: None,
    }
}

/// Checks the events of each incident, in journal order: the first is
/// CREATED in PENDING, and every change of state between consecutive events
/// is one the life cycle's table allows (events that change no state, such
/// as MERGED, are not transitions). Returns the transitions seen and each
/// incident's last state.
fn assert_life_cycles(
    events: &[IncidentEvent],
) -> (HashSet<(IncidentState, IncidentState)>, HashMap<IncidentId, IncidentState>) {
    let mut seen = HashSet::new();
    let mut last = HashMap::new();
    for e in events {
        let to = e.incident.state;
        match last.insert(e.incident.id, to) {
            None => assert_eq!((e.kind, to), (EventKind::Created, IncidentState::Pending), "{}", e.incident.id),
            Some(from) if from != to => {
                assert!(from.can_transition_to(to), "{}: {from:?} -> {to:?} by {:?}", e.incident.id, e.kind);
                seen.insert((from, to));
            }
            Some(_) => {}
        }
    }
    (seen, last)
}

#[test]
fn raise_accept_arrive_resolve_frees_the_caregiver() {
    let r = rig(&[("near", 43.880, 125.370), ("far", 43.900, 125.400)]);
    let out = r.d.raise(alarm("a1", AlarmKind::Inactivity, 43.881, 125.371)).unwrap();
    let inc = out.incident;
    assert_eq!(inc.state, IncidentState::Offered);
    assert_eq!(inc.assigned, Some(cg("near")));
    assert_eq!(r.d.caregiver(&cg("near")).unwrap().status, CaregiverStatus::Busy);
    assert!(r.d.accept(inc.id, &cg("far")).is_err(), "only the holder may accept");
    assert_eq!(r.d.accept(inc.id, &cg("near")).unwrap().state, IncidentState::Accepted);
    assert_eq!(r.d.arrive(inc.id, &cg("near")).unwrap().state, IncidentState::OnScene);
    let done = r.d.resolve(inc.id, Some(&cg("near")), Outcome::Assisted, "helped up").unwrap();
    assert_eq!(done.state, IncidentState::Resolved);
    assert_eq!(r.d.caregiver(&cg("near")).unwrap().status, CaregiverStatus::Available);
    assert!(r.d.open_incidents().is_empty());
    let kinds: Vec<EventKind> = r.journal.events.lock().unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Created, EventKind::Offered, EventKind::Accepted, EventKind::Arrived, EventKind::Resolved]
    );
    assert!(r.d.resolve(inc.id, None, Outcome::Other, "").is_err(), "resolved is terminal");
}

/// A varied day (offers, declines, expiries, two live offers, accept,
/// arrive, resolve, reassign, cancel, deferral, escalation and hand-off):
/// every change of state the journal records is one the life cycle allows,
/// and every incident ends resolved, cancelled or escalated.
#[test]
fn every_change_of_state_in_the_journal_is_an_allowed_transition() {
    use IncidentState::*;
    let config = DispatchConfig { routine_lane: 0, ..Default::default() };
    let r = rig_with(config, &[("a", 43.880, 125.370), ("b", 43.885, 125.370), ("c", 43.890, 125.370)]);
    let (a, b, c) = (cg("a"), cg("b"), cg("c"));
    let at = |key: &str, kind| alarm(key, kind, 43.880, 125.370);
    // Declined, expired, accepted with a repeat merged in, arrived, resolved.
    let i1 = r.d.raise(at("i1", AlarmKind::Inactivity)).unwrap().incident;
    r.d.decline(i1.id, &a, "").unwrap();
    r.clock.advance(61_000);
    r.d.tick();
    assert_eq!(r.d.incident(i1.id).unwrap().assigned, Some(c.clone()));
    r.d.accept(i1.id, &c).unwrap();
    assert!(
        r.d.raise(Alarm { key: IdempotencyKey::parse("k", "i1-again").unwrap(), ..at("i1", AlarmKind::Inactivity) })
            .unwrap()
            .merged
    );
    r.d.arrive(i1.id, &c).unwrap();
    r.d.resolve(i1.id, Some(&c), Outcome::Assisted, "").unwrap();
    // Two live offers, the first accept wins; reassigned by a dispatcher; cancelled.
    let i2 = r.d.raise(at("i2", AlarmKind::Fall)).unwrap().incident;
    r.d.accept(i2.id, &b).unwrap();
    r.d.reassign(i2.id, &c, "c is closer now").unwrap();
    r.d.cancel(i2.id, "the elder got up").unwrap();
    // Deferred, dispatched by a tick, declined by all, reassigned, on scene, escalated by hand, resolved.
    let i3 = r.d.raise(at("i3", AlarmKind::LowBattery)).unwrap().incident;
    assert_eq!(i3.state, Deferred);
    r.d.tick();
    for _ in 0..3 {
        let holder = r.d.incident(i3.id).unwrap().assigned.unwrap();
        r.d.decline(i3.id, &holder, "").unwrap();
    }
    assert_eq!(r.d.incident(i3.id).unwrap().state, Escalated);
    r.d.reassign(i3.id, &a, "").unwrap();
    r.d.accept(i3.id, &a).unwrap();
    r.d.arrive(i3.id, &a).unwrap();
    r.d.escalate(i3.id, EscalationReason::Manual, "needs a nurse").unwrap();
    r.d.resolve(i3.id, None, Outcome::HospitalTransfer, "").unwrap();
    // Everyone busy: nobody for i6, handed off to 119, then cancelled; i5 overdue and
    // closed by a dispatcher; i4's two offers expire and it is escalated.
    let i4 = r.d.raise(at("i4", AlarmKind::Gas)).unwrap().incident;
    let i5 = r.d.raise(at("i5", AlarmKind::Wandering)).unwrap().incident;
    let i6 = r.d.raise(at("i6", AlarmKind::Smoke)).unwrap().incident;
    assert_eq!((i4.state, i5.state, i6.state), (Offered, Offered, Escalated));
    r.d.accept(i5.id, &i5.assigned.clone().unwrap()).unwrap();
    r.clock.advance(r.d.config().handoff_critical_ms);
    r.d.tick();
    assert_eq!(r.d.incident(i6.id).unwrap().escalation, Some(EscalationReason::EmergencyServices));
    r.d.cancel(i6.id, "119 attended").unwrap();
    r.clock.advance(3_600_000);
    r.d.tick();
    assert!(r.d.incident(i5.id).unwrap().arrival_overdue);
    r.d.resolve(i5.id, None, Outcome::FamilyHandled, "").unwrap();

    let (seen, last) = assert_life_cycles(&r.journal.events.lock().unwrap());
    for t in [
        (Pending, Offered),
        (Offered, Pending),
        (Offered, Accepted),
        (Accepted, OnScene),
        (OnScene, Resolved),
        (Accepted, Offered),
        (Offered, Cancelled),
        (Pending, Deferred),
        (Deferred, Offered),
        (Pending, Escalated),
        (Escalated, Offered),
        (OnScene, Escalated),
        (Escalated, Resolved),
        (Escalated, Cancelled),
        (Accepted, Resolved),
    ] {
        assert!(seen.contains(&t), "the scenario never went {:?} -> {:?}", t.0, t.1);
    }
    assert_eq!(last.len(), 6);
    for (id, state) in last {
        assert!(matches!(state, Resolved | Cancelled | Escalated), "{id} left {state:?}");
    }
}

#[test]
fn decline_redispatches_to_the_next_nearest_then_escalates() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.885, 125.375)]);
    let inc = r.d.raise(alarm("k", AlarmKind::SosButton, 43.880, 125.370)).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("a")));
    let inc = r.d.decline(inc.id, &cg("a"), "stuck in traffic").unwrap();
    assert_eq!(inc.state, IncidentState::Offered);
    assert_eq!(inc.assigned, Some(cg("b")));
    assert_eq!(r.d.caregiver(&cg("a")).unwrap().status, CaregiverStatus::Available);
    let inc = r.d.decline(inc.id, &cg("b"), "").unwrap();
    assert_eq!(inc.state, IncidentState::Escalated);
    assert_eq!(inc.escalation, Some(EscalationReason::AllDeclined));
    assert!(inc.assigned.is_none());
    // A dispatcher can still hand it to someone by name.
    let inc = r.d.reassign(inc.id, &cg("a"), "please go").unwrap();
    assert_eq!((inc.state, inc.assigned.clone()), (IncidentState::Offered, Some(cg("a"))));
}

/// A rig with one caregiver 111 m from the alarm point and two nurses
/// (skill "nursing") 556 m and 1.1 km away, all on bikes: ETAs of 43 s,
/// 217 s and 434 s.
fn nurses(config: DispatchConfig) -> Rig {
    let r = rig_with(config, &[("near", 43.881, 125.370), ("nurse1", 43.885, 125.370), ("nurse2", 43.890, 125.370)]);
    for (id, lat) in [("nurse1", 43.885), ("nurse2", 43.890)] {
        let profile = CaregiverProfile {
            id: cg(id),
            skills: vec!["nursing".into()],
            home: p(lat, 125.370),
            mode: TravelMode::Bike,
        };
        r.d.upsert_caregiver(profile);
    }
    r
}

fn needing(key: &str, kind: AlarmKind, skill: Option<&str>) -> Alarm {
    Alarm { required_skill: skill.map(Into::into), ..alarm(key, kind, 43.880, 125.370) }
}

/// The note of the latest offer of `id` to `to`.
fn offer_note(r: &Rig, id: IncidentId, to: &str) -> String {
    let events = r.journal.events.lock().unwrap();
    let offer = events
        .iter()
        .rev()
        .find(|e| e.incident.id == id && e.kind == EventKind::Offered && e.caregiver.as_ref() == Some(&cg(to)));
    offer.unwrap_or_else(|| panic!("no offer of {id} to {to}")).note.clone()
}

#[test]
fn an_elder_needing_a_skill_gets_a_holder_unless_another_is_much_nearer() {
    // Within the default slack (180 s) the nurse 174 s further goes first.
    let r = nurses(DispatchConfig::default());
    let inc = r.d.raise(needing("k1", AlarmKind::Inactivity, Some("nursing"))).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("nurse1")));
    assert_eq!(inc.required_skill.as_deref(), Some("nursing"));
    assert_eq!(offer_note(&r, inc.id, "nurse1"), "holds the elder's required skill nursing");
    // Declined: the other nurse would be 391 s later than "near", beyond the slack.
    let inc = r.d.decline(inc.id, &cg("nurse1"), "").unwrap();
    assert_eq!(inc.assigned, Some(cg("near")));
    let note = offer_note(&r, inc.id, "near");
    assert!(
        note.starts_with("nobody free with the elder's required skill nursing could arrive within 180 s"),
        "{note}"
    );
    r.d.cancel(inc.id, "test").unwrap();

    // No skill needed: the nearest. A skill nobody has: the nearest, and the console is told.
    let inc = r.d.raise(needing("k2", AlarmKind::Inactivity, None)).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("near")));
    assert_eq!(offer_note(&r, inc.id, "near"), "");
    r.d.cancel(inc.id, "test").unwrap();
    let inc = r.d.raise(needing("k3", AlarmKind::Inactivity, Some("dementia"))).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("near")));
    assert_eq!(offer_note(&r, inc.id, "near"), "no caregiver is registered with the elder's required skill dementia");
    r.d.cancel(inc.id, "test").unwrap();

    // A critical alarm: the nurse and the nearest, at once.
    let inc = r.d.raise(needing("k4", AlarmKind::Fall, Some("nursing"))).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("nurse1")));
    assert_eq!(inc.co_offer.as_ref().map(|c| c.0.clone()), Some(cg("near")));
    let note = offer_note(&r, inc.id, "near");
    assert!(note.starts_with("critical alarm: offered to two at once") && note.contains("nobody free with"), "{note}");

    // A smaller slack than the nurse's 174 s: the nearest goes first.
    let r = nurses(DispatchConfig { skill_slack_s: 170.0, ..Default::default() });
    let inc = r.d.raise(needing("k5", AlarmKind::Inactivity, Some("nursing"))).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("near")));
}

#[test]
fn nobody_available_escalates_and_is_never_dropped() {
    let r = rig(&[]);
    let inc = r.d.raise(alarm("k", AlarmKind::Smoke, 43.88, 125.37)).unwrap().incident;
    assert_eq!(inc.state, IncidentState::Escalated);
    assert_eq!(inc.escalation, Some(EscalationReason::NoCaregiverAvailable));
    assert_eq!(r.d.open_incidents().len(), 1);
}

#[test]
fn duplicate_key_returns_the_original_and_repeats_merge() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.881, 125.371)]);
    let first = r.d.raise(alarm("same", AlarmKind::Fall, 43.88, 125.37)).unwrap();
    let again = r.d.raise(alarm("same", AlarmKind::Fall, 43.88, 125.37)).unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(again.incident.id, first.incident.id);
    // Same elder and kind, new key, within the window: merged.
    let mut rep = alarm("other", AlarmKind::Fall, 43.88, 125.37);
    rep.elder = first.incident.elder.clone();
    let merged = r.d.raise(rep.clone()).unwrap();
    assert!(merged.merged);
    assert_eq!(merged.incident.id, first.incident.id);
    assert_eq!(merged.incident.repeat_count, 1);
    // After the window, a new incident.
    r.clock.advance(121_000);
    rep.key = IdempotencyKey::parse("k", "third").unwrap();
    let third = r.d.raise(rep).unwrap();
    assert!(!third.merged && third.incident.id != first.incident.id);
    assert_eq!(r.d.incidents(|_| true).len(), 2);
}

#[test]
fn a_batch_is_journalled_per_run_and_answered_in_order() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.881, 125.371), ("c", 43.882, 125.372)]);
    let first = alarm("k1", AlarmKind::Inactivity, 43.88, 125.37);
    let repeat = |key: &str| {
        let mut a = first.clone();
        a.key = IdempotencyKey::parse("k", key).unwrap();
        a
    };
    let batch = vec![
        first.clone(),
        alarm("k2", AlarmKind::Wandering, 43.88, 125.37),
        first.clone(), // a retry inside the batch: waits for the first to be durable
        repeat("r1"),  // a repeat of the first: merged (in the second run, which locks the incident)
        repeat("r2"),  // and again: merged into the incident that run already holds
    ];
    let out: Vec<RaiseOutcome> = r.d.raise_batch(batch).into_iter().map(Result::unwrap).collect();
    let id = out[0].incident.id;
    assert!(!out[0].duplicate && !out[0].merged && !out[1].duplicate && out[1].incident.id != id);
    assert!(out[2].duplicate && out[2].incident.id == id);
    // Each answer holds the incident as its run left it.
    assert!(out[3].merged && out[3].incident.id == id && out[3].incident.repeat_count == 2);
    assert!(out[4].merged && out[4].incident.id == id && out[4].incident.repeat_count == 2);
    assert_eq!(r.journal.appends.load(Ordering::SeqCst), 2, "runs: [k1 k2], [r1 r2]");
    assert_eq!(r.d.incident(id).unwrap().repeat_count, 2);
    // A plain batch of new alarms is one append.
    let fresh: Vec<Alarm> = (0..50).map(|i| alarm(&format!("n{i}"), AlarmKind::LowBattery, 43.9, 125.4)).collect();
    assert!(r.d.raise_batch(fresh).iter().all(|o| o.as_ref().is_ok_and(|o| !o.duplicate && !o.merged)));
    assert_eq!(r.journal.appends.load(Ordering::SeqCst), 3);
}

/// Critical always goes first: a batch is taken in by severity, so a
/// routine and an urgent alarm ahead of a critical one in the same batch do
/// not take the one free caregiver from it; answers keep the batch's order.
#[test]
fn a_batch_takes_critical_alarms_in_first_and_answers_in_order() {
    let r = rig(&[("only", 43.880, 125.370)]);
    let batch = vec![
        alarm("routine", AlarmKind::LowBattery, 43.880, 125.370),
        alarm("urgent", AlarmKind::Inactivity, 43.880, 125.370),
        alarm("critical", AlarmKind::Fall, 43.881, 125.371),
        alarm("urgent2", AlarmKind::Wandering, 43.880, 125.370),
    ];
    let out: Vec<Incident> = r.d.raise_batch(batch).into_iter().map(|o| o.unwrap().incident).collect();
    let keys: Vec<&str> = out.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["routine", "urgent", "critical", "urgent2"], "answers in the caller's order");
    assert_eq!((out[2].state, out[2].assigned.clone()), (IncidentState::Offered, Some(cg("only"))));
    for i in [&out[0], &out[1], &out[3]] {
        assert_eq!(i.state, IncidentState::Escalated, "{} found nobody left", i.key.as_str());
    }
    // Arrival order within a severity: the first urgent alarm was opened before the second.
    assert!(out[1].id < out[3].id && out[2].id < out[1].id && out[3].id < out[0].id, "{out:?}");
}

/// Repeats of one source inside one batch merge into the incident the first
/// of them opened (one caregiver sent, not three), as they would one by one.
#[test]
fn repeats_within_a_batch_merge_into_the_first() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.881, 125.371)]);
    let of_one =
        |key| Alarm { elder: ElderId::parse("elder_id", "E-1").unwrap(), ..alarm(key, AlarmKind::Fall, 43.88, 125.37) };
    let batch = vec![of_one("r1"), alarm("other", AlarmKind::Gas, 43.88, 125.37), of_one("r2"), of_one("r3")];
    let out: Vec<RaiseOutcome> = r.d.raise_batch(batch).into_iter().map(|o| o.unwrap()).collect();
    assert!(!out[0].merged && !out[1].merged);
    assert!(out[2].merged && out[3].merged);
    assert_eq!(out[2].incident.id, out[0].incident.id);
    assert_eq!(out[3].incident.id, out[0].incident.id);
    assert_eq!(r.d.incident(out[0].incident.id).unwrap().repeat_count, 2);
    // One run, one append: the repeats merge into the incident the run holds,
    // in the order they came, each event carrying its alarm's key.
    assert_eq!(r.journal.appends.load(Ordering::SeqCst), 1);
    let events = r.journal.events.lock().unwrap();
    let of_first: Vec<(EventKind, u32, Option<&str>)> = events
        .iter()
        .filter(|e| e.incident.id == out[0].incident.id)
        .map(|e| (e.kind, e.incident.repeat_count, e.alarm_key.as_ref().map(|k| k.as_str())))
        .collect();
    assert_eq!(
        of_first,
        [
            (EventKind::Created, 0, Some("r1")),
            (EventKind::Offered, 0, None),
            (EventKind::Offered, 0, None), // a fall is critical: offered to two
            (EventKind::Merged, 1, Some("r2")),
            (EventKind::Merged, 2, Some("r3")),
        ]
    );
}

/// A run whose append fails undoes the incident it opened together with the
/// repeats it merged into it: nothing stays claimed or filed, and the same
/// alarms taken again open it afresh.
#[test]
fn a_failed_run_undoes_repeats_merged_into_its_new_incident() {
    let r = rig(&[("a", 43.880, 125.370)]);
    let of_one = |key| Alarm {
        elder: ElderId::parse("elder_id", "E-1").unwrap(),
        ..alarm(key, AlarmKind::Wandering, 43.88, 125.37)
    };
    let batch = || vec![of_one("r1"), of_one("r2"), of_one("r3")];
    r.journal.fail.store(true, Ordering::SeqCst);
    let out = r.d.raise_batch(batch());
    assert!(out.iter().all(|o| matches!(o, Err(DispatchError::Journal(_)))), "{out:?}");
    assert_eq!(r.d.caregiver(&cg("a")).unwrap().status, CaregiverStatus::Available);
    assert!(r.d.incidents(|_| true).is_empty());
    r.journal.fail.store(false, Ordering::SeqCst);
    let out: Vec<RaiseOutcome> = r.d.raise_batch(batch()).into_iter().map(Result::unwrap).collect();
    assert!(!out[0].merged && !out[0].duplicate && out[1].merged && out[2].merged, "{out:?}");
    assert_eq!(r.d.incident(out[0].incident.id).unwrap().repeat_count, 2);
    assert_eq!(r.d.open_incidents().len(), 1);
}

#[test]
fn a_failed_batch_append_undoes_the_whole_run_and_its_keys_can_be_retried() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.885, 125.375)]);
    let batch = || vec![alarm("x", AlarmKind::Fall, 43.88, 125.37), alarm("y", AlarmKind::Wandering, 43.88, 125.37)];
    r.journal.fail.store(true, Ordering::SeqCst);
    let out = r.d.raise_batch(batch());
    assert!(out.iter().all(|o| matches!(o, Err(DispatchError::Journal(_)))), "{out:?}");
    for c in ["a", "b"] {
        assert_eq!(r.d.caregiver(&cg(c)).unwrap().status, CaregiverStatus::Available, "{c}'s claim undone");
    }
    assert!(r.d.incidents(|_| true).is_empty());
    r.journal.fail.store(false, Ordering::SeqCst);
    let out = r.d.raise_batch(batch());
    assert!(out.iter().all(|o| o.as_ref().is_ok_and(|o| !o.duplicate)), "{out:?}");
}

/// A retry of an alarm whose incident the same batch is merging a repeat
/// into: the retry waits for the merge (the run ends first) instead of
/// waiting on the incident its own run holds.
#[test]
fn a_retry_behind_a_merge_into_its_incident_in_one_batch_is_answered() {
    let r = Arc::new(rig(&[("a", 43.880, 125.370)]));
    let first = alarm("k1", AlarmKind::Wandering, 43.88, 125.37);
    let id = r.d.raise(first.clone()).unwrap().incident.id;
    let repeat = Alarm { key: IdempotencyKey::parse("k", "r1").unwrap(), ..first.clone() };
    let (tx, rx) = std::sync::mpsc::channel();
    let rr = r.clone();
    std::thread::spawn(move || tx.send(rr.d.raise_batch(vec![repeat, first])).unwrap());
    let out = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the batch is answered (no self-deadlock)");
    let out: Vec<RaiseOutcome> = out.into_iter().map(Result::unwrap).collect();
    assert!(out[0].merged && out[0].incident.id == id);
    assert!(out[1].duplicate && out[1].incident.id == id);
    assert_eq!(out[1].incident.repeat_count, 1, "the retry sees the merge that came before it");
}

/// A journal that answers when told, as a store's writer thread does after
/// its commit; dropping a waiting answer is a journal losing it.
#[derive(Default)]
struct LaterJournal {
    waiting: Mutex<Vec<AppendDone>>,
}

impl Journal for LaterJournal {
    fn append(&self, _: &[IncidentEvent]) -> Result<(), String> {
        Ok(())
    }

    fn append_then(&self, _: &[IncidentEvent], done: AppendDone) {
        self.waiting.lock().unwrap().push(done);
    }
}

/// Runs wait for their commit without a thread: several are in flight from
/// one thread, each finished with its own outcome in any order; a retry of a
/// key whose run is in flight waits for it; an answer the journal loses
/// undoes its run.
#[test]
fn runs_in_flight_finish_in_any_order_with_their_own_outcome() {
    let journal = Arc::new(LaterJournal::default());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let d = Arc::new(Dispatcher::new(DispatchConfig::default(), journal.clone(), Arc::new(NoSink), clock));
    for (id, lat) in [("a", 43.880), ("b", 43.980), ("c", 44.080)] {
        let home = p(lat, 125.37);
        d.upsert_caregiver(CaregiverProfile { id: cg(id), skills: vec![], home, mode: TravelMode::Bike });
        d.set_status(&cg(id), CaregiverStatus::Available, None).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel::<(usize, JournaledRun)>();
    let mut intakes = Vec::new();
    for (i, lat) in [43.880, 43.980, 44.080].into_iter().enumerate() {
        let mut intake = d.intake(vec![alarm(&format!("k{i}"), AlarmKind::Wandering, lat, 125.37)]);
        let run = d.next_run(&mut intake).expect("a new alarm is staged");
        assert_eq!(run.len(), 1);
        let tx = tx.clone();
        d.journal_run(run, move |j| tx.send((i, j)).unwrap());
        intakes.push(Some(intake));
    }
    assert_eq!(journal.waiting.lock().unwrap().len(), 3, "three runs in flight from one thread");
    let retry = {
        let d = d.clone();
        std::thread::spawn(move || d.raise(alarm("k0", AlarmKind::Wandering, 43.880, 125.37)))
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!retry.is_finished(), "a retry waits while the original is in flight");
    // The journal answers the second run with a failure, loses the first's
    // answer, and commits the third.
    let mut waiting = std::mem::take(&mut *journal.waiting.lock().unwrap());
    let third = waiting.pop().unwrap();
    let second = waiting.pop().unwrap();
    second(Err("disk full".into()));
    drop(waiting);
    third(Ok(()));
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (i, journaled) = rx.recv().unwrap();
        assert_eq!(journaled.is_durable(), i == 2);
        let mut intake = intakes[i].take().unwrap();
        d.finish_run(&mut intake, journaled);
        assert!(d.next_run(&mut intake).is_none());
        answers.push((i, intake.into_answers().pop().unwrap()));
    }
    answers.sort_by_key(|(i, _)| *i);
    assert!(matches!(&answers[0].1, Err(DispatchError::Journal(e)) if e.contains("unanswered")), "{answers:?}");
    assert!(matches!(&answers[1].1, Err(DispatchError::Journal(e)) if e == "disk full"), "{answers:?}");
    let kept = answers[2].1.as_ref().unwrap();
    assert_eq!(kept.incident.assigned, Some(cg("c")));
    for c in ["a", "b"] {
        assert_eq!(d.caregiver(&cg(c)).unwrap().status, CaregiverStatus::Available, "{c}'s claim undone");
    }
    // The retry was of an alarm that was not stored: it hears so, and a
    // later retry starts afresh.
    assert!(matches!(retry.join().unwrap(), Err(DispatchError::Abandoned(_))));
    let mut intake = d.intake(vec![alarm("k0", AlarmKind::Wandering, 43.880, 125.37)]);
    let run = d.next_run(&mut intake).expect("taken in afresh");
    let (tx, rx) = std::sync::mpsc::channel();
    d.journal_run(run, move |j| tx.send(j).unwrap());
    journal.waiting.lock().unwrap().pop().unwrap()(Ok(()));
    d.finish_run(&mut intake, rx.recv().unwrap());
    let out = intake.into_answers().pop().unwrap().unwrap();
    assert!(!out.duplicate);
    assert_eq!(out.incident.assigned, Some(cg("a")));
}

/// A run that may not wait (an async worker's) gives up instead of waiting
/// on a key or incident a run in flight holds, keeping the alarm first in
/// its batch; once that run is finished it goes on with the answers a
/// waiting run would have got.
#[test]
fn try_next_run_gives_up_where_next_run_would_wait() {
    let journal = Arc::new(LaterJournal::default());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let d = Dispatcher::new(DispatchConfig::default(), journal.clone(), Arc::new(NoSink), clock);
    d.upsert_caregiver(CaregiverProfile {
        id: cg("a"),
        skills: vec![],
        home: p(43.88, 125.37),
        mode: TravelMode::Bike,
    });
    d.set_status(&cg("a"), CaregiverStatus::Available, None).unwrap();
    // Stages, journals and (once the journal is told to answer) finishes one run.
    let run_in_flight = |intake: &mut Intake| {
        let run = d.try_next_run(intake).expect("nothing to wait on").expect("staged");
        let (tx, rx) = std::sync::mpsc::channel();
        d.journal_run(run, move |j| tx.send(j).unwrap());
        rx
    };
    let commit = |intake: &mut Intake, rx: std::sync::mpsc::Receiver<JournaledRun>| {
        journal.waiting.lock().unwrap().pop().unwrap()(Ok(()));
        d.finish_run(intake, rx.recv().unwrap());
    };
    let mut first = d.intake(vec![alarm("k0", AlarmKind::Wandering, 43.880, 125.37)]);
    let in_flight = run_in_flight(&mut first);
    // A retry of k0 while its key is held.
    let mut retry = d.intake(vec![alarm("k0", AlarmKind::Wandering, 43.880, 125.37)]);
    assert!(matches!(d.try_next_run(&mut retry), Err(WouldWait)));
    assert!(matches!(d.try_next_run(&mut retry), Err(WouldWait)), "the alarm is kept, not dropped");
    assert!(!retry.is_done());
    commit(&mut first, in_flight);
    let id = first.into_answers().pop().unwrap().unwrap().incident.id;
    assert!(matches!(d.try_next_run(&mut retry), Ok(None)), "a retry of a durable key is answered at once");
    assert!(retry.is_done());
    let dup = retry.into_answers().pop().unwrap().unwrap();
    assert!(dup.duplicate && dup.incident.id == id);
    // A repeat while another repeat's run holds the incident.
    let repeat = |key: &str| Alarm {
        elder: ElderId::parse("e", "E-k0").unwrap(),
        ..alarm(key, AlarmKind::Wandering, 43.880, 125.37)
    };
    let mut second = d.intake(vec![repeat("k1")]);
    let in_flight = run_in_flight(&mut second);
    let mut third = d.intake(vec![repeat("k2"), alarm("k3", AlarmKind::Inactivity, 43.880, 125.37)]);
    assert!(matches!(d.try_next_run(&mut third), Err(WouldWait)));
    commit(&mut second, in_flight);
    let run = run_in_flight(&mut third);
    commit(&mut third, run);
    assert!(third.is_done());
    let out: Vec<_> = third.into_answers().into_iter().map(|r| r.unwrap()).collect();
    assert!(out[0].merged && out[0].incident.id == id && out[0].incident.repeat_count == 2, "{out:?}");
    assert!(!out[1].merged && out[1].incident.id != id, "the next alarm went in the same run");
}

/// Batches from several threads share keys and sources: no deadlock, and
/// every key leads to exactly one incident whatever thread answered it.
#[test]
fn concurrent_batches_with_shared_keys_agree_on_every_key() {
    let r = Arc::new(rig(&[("a", 43.880, 125.370), ("b", 43.881, 125.371), ("c", 43.882, 125.372)]));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for b in 0..40u64 {
                    let batch: Vec<Alarm> = (0..32u64)
                        .map(|i| {
                            let n = (t * 7 + b * 13 + i * 5) % 97; // keys shared across threads
                            let mut a = alarm(&format!("k{n}"), AlarmKind::ALL[(n % 9) as usize], 43.88, 125.37);
                            a.elder = ElderId::parse("e", &format!("E{}", n % 11)).unwrap(); // repeats merge
                            a
                        })
                        .collect();
                    let keys: Vec<String> = batch.iter().map(|a| a.key.to_string()).collect();
                    for (k, o) in keys.into_iter().zip(r.d.raise_batch(batch)) {
                        seen.push((k, o.unwrap().incident.id));
                    }
                }
                seen
            })
        })
        .collect();
    let mut by_key = std::collections::HashMap::new();
    for t in threads {
        for (k, id) in t.join().unwrap() {
            assert_eq!(*by_key.entry(k.clone()).or_insert(id), id, "key {k} answered with two incidents");
        }
    }
    assert_eq!(by_key.len(), 97);
    for (k, id) in by_key {
        assert_eq!(r.d.incident_by_key(&IdempotencyKey::parse("k", &k).unwrap()).unwrap().id, id);
    }
}

#[test]
fn offer_timeout_moves_on_and_arrival_overdue_is_flagged() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.885, 125.375)]);
    let inc = r.d.raise(alarm("k", AlarmKind::Wandering, 43.880, 125.370)).unwrap().incident;
    r.clock.advance(59_000);
    r.d.tick();
    assert_eq!(r.d.incident(inc.id).unwrap().assigned, Some(cg("a")));
    r.clock.advance(2_000);
    r.d.tick();
    let now = r.d.incident(inc.id).unwrap();
    assert_eq!(now.assigned, Some(cg("b")));
    assert_eq!(now.declined_by, vec![cg("a")]);
    r.d.accept(inc.id, &cg("b")).unwrap();
    r.clock.advance(3_600_000);
    r.d.tick();
    assert!(r.d.incident(inc.id).unwrap().arrival_overdue);
    let overdue = r.journal.events.lock().unwrap().iter().filter(|e| e.kind == EventKind::ArrivalOverdue).count();
    assert_eq!(overdue, 1);
    r.d.tick();
    let overdue = r.journal.events.lock().unwrap().iter().filter(|e| e.kind == EventKind::ArrivalOverdue).count();
    assert_eq!(overdue, 1, "flagged once");
}

/// Never silently stuck, accepted: an overdue arrival is alerted, alerted
/// again every `arrival_realert_ms`, and `arrival_escalate_ms` after it
/// became overdue escalated to the supervisor queue (the caregiver released),
/// where the ladder goes on to the hand-off.
#[test]
fn an_overdue_arrival_is_alerted_again_then_escalated_to_the_supervisor() {
    let r = rig(&[("a", 43.880, 125.370)]);
    let config = r.d.config().clone();
    let inc = r.d.raise(alarm("k", AlarmKind::Wandering, 43.881, 125.371)).unwrap().incident;
    let accepted = r.d.accept(inc.id, &cg("a")).unwrap();
    let overdue = accepted.accepted_ms.unwrap()
        + (accepted.assigned_eta_s * 1000.0 * config.arrival_overdue_factor) as i64
        + config.arrival_overdue_slack_ms;
    let alerts =
        |r: &Rig| r.journal.events.lock().unwrap().iter().filter(|e| e.kind == EventKind::ArrivalOverdue).count();
    let step_to = |r: &Rig, at: i64| {
        r.clock.advance(at - r.clock.now_ms());
        r.d.tick();
        r.d.incident(inc.id).unwrap()
    };
    assert!(!step_to(&r, overdue - 1).arrival_overdue);
    assert!(step_to(&r, overdue).arrival_overdue);
    assert_eq!(alerts(&r), 1);
    step_to(&r, overdue + config.arrival_realert_ms - 1);
    assert_eq!(alerts(&r), 1, "not re-alerted early");
    step_to(&r, overdue + config.arrival_realert_ms);
    assert_eq!(alerts(&r), 2, "re-alerted");
    assert_eq!(step_to(&r, overdue + config.arrival_escalate_ms - 1).state, IncidentState::Accepted);
    let escalated = step_to(&r, overdue + config.arrival_escalate_ms);
    assert_eq!(alerts(&r), (config.arrival_escalate_ms / config.arrival_realert_ms) as usize);
    assert_eq!(
        (escalated.state, escalated.escalation),
        (IncidentState::Escalated, Some(EscalationReason::ArrivalOverdue))
    );
    assert!(escalated.escalation_note.contains("has not arrived"), "{}", escalated.escalation_note);
    assert_eq!(r.d.caregiver(&cg("a")).unwrap().status, CaregiverStatus::Available);
    let handed = step_to(&r, overdue + config.arrival_escalate_ms + config.handoff_urgent_ms);
    assert_eq!(handed.escalation, Some(EscalationReason::EmergencyServices));
    let (_, last) = assert_life_cycles(&r.journal.events.lock().unwrap());
    assert_eq!(last[&inc.id], IncidentState::Escalated);
}

/// Never silently stuck, on scene: an incident open on scene past the limit
/// alerts the console, and again every interval until it is closed.
#[test]
fn a_long_stay_on_scene_alerts_the_console_until_it_is_closed() {
    let config = DispatchConfig { on_scene_alert_ms: 3_600_000, on_scene_realert_ms: 600_000, ..Default::default() };
    let r = rig_with(config, &[("a", 43.880, 125.370)]);
    let inc = r.d.raise(alarm("k", AlarmKind::Fall, 43.880, 125.370)).unwrap().incident;
    r.d.accept(inc.id, &cg("a")).unwrap();
    r.clock.advance(60_000);
    let arrived = r.d.arrive(inc.id, &cg("a")).unwrap().arrived_ms.unwrap();
    let alerts = |r: &Rig| {
        r.journal
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == EventKind::OnSceneOverdue)
            .cloned()
            .collect::<Vec<_>>()
    };
    let step_to = |r: &Rig, at: i64| {
        r.clock.advance(at - r.clock.now_ms());
        r.d.tick();
    };
    step_to(&r, arrived + 3_600_000 - 1);
    assert!(alerts(&r).is_empty(), "not before the limit");
    step_to(&r, arrived + 3_600_000);
    let first = alerts(&r);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].caregiver, Some(cg("a")));
    assert!(first[0].note.contains("on scene for 1 h 00 min"), "{}", first[0].note);
    assert_eq!(first[0].incident.state, IncidentState::OnScene, "an alert changes no state");
    step_to(&r, arrived + 3_600_000 + 600_000 - 1);
    assert_eq!(alerts(&r).len(), 1);
    step_to(&r, arrived + 3_600_000 + 600_000);
    step_to(&r, arrived + 3_600_000 + 1_200_000);
    assert_eq!(alerts(&r).len(), 3, "repeated every interval");
    r.d.resolve(inc.id, Some(&cg("a")), Outcome::Assisted, "").unwrap();
    step_to(&r, arrived + 24 * 3_600_000);
    assert_eq!(alerts(&r).len(), 3, "silent once closed");
}

#[test]
fn a_failed_journal_write_changes_nothing_and_the_key_can_be_retried() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.885, 125.375)]);
    r.journal.fail.store(true, Ordering::SeqCst);
    assert!(matches!(r.d.raise(alarm("k", AlarmKind::Fall, 43.88, 125.37)), Err(DispatchError::Journal(_))));
    assert_eq!(r.d.caregiver(&cg("a")).unwrap().status, CaregiverStatus::Available, "claim undone");
    assert_eq!(r.d.caregiver(&cg("b")).unwrap().status, CaregiverStatus::Available, "second offer's claim undone");
    r.journal.fail.store(false, Ordering::SeqCst);
    let inc = r.d.raise(alarm("k", AlarmKind::AbnormalVitals, 43.88, 125.37)).unwrap();
    assert!(!inc.duplicate);
    r.journal.fail.store(true, Ordering::SeqCst);
    assert!(r.d.decline(inc.incident.id, &cg("a"), "").is_err());
    assert_eq!(r.d.caregiver(&cg("a")).unwrap().active_incident, Some(inc.incident.id), "a still holds it");
    assert_eq!(r.d.caregiver(&cg("b")).unwrap().status, CaregiverStatus::Available, "b's claim undone");
}

#[test]
fn critical_alarms_go_to_the_two_nearest_and_the_first_accept_wins() {
    let r = rig(&[("a", 43.880, 125.370), ("b", 43.881, 125.371), ("c", 43.95, 125.45)]);
    let inc = r.d.raise(alarm("k", AlarmKind::Fall, 43.880, 125.370)).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("a")));
    assert_eq!(inc.co_offer.as_ref().map(|c| c.0.clone()), Some(cg("b")));
    for who in ["a", "b"] {
        assert_eq!(r.d.caregiver(&cg(who)).unwrap().active_incident, Some(inc.id));
    }
    assert!(r.d.accept(inc.id, &cg("c")).is_err(), "c holds no offer");
    // b answers first: b takes it, a's offer is withdrawn and a is free again.
    let won = r.d.accept(inc.id, &cg("b")).unwrap();
    assert_eq!((won.state, won.assigned.clone(), won.co_offer.clone()), (IncidentState::Accepted, Some(cg("b")), None));
    assert_eq!(r.d.caregiver(&cg("a")).unwrap().status, CaregiverStatus::Available);
    assert!(r.d.accept(inc.id, &cg("a")).is_err(), "too late");
    let withdrawn: Vec<_> = r
        .journal
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::OfferWithdrawn)
        .map(|e| e.caregiver.clone())
        .collect();
    assert_eq!(withdrawn, vec![Some(cg("a"))]);

    // A decline by one of two leaves the other's offer standing; both silent: both move on.
    let inc = r.d.raise(alarm("k2", AlarmKind::Smoke, 43.880, 125.370)).unwrap().incident;
    assert_eq!((inc.assigned.clone(), inc.co_offer.as_ref().map(|c| c.0.clone())), (Some(cg("a")), Some(cg("c"))));
    let after = r.d.decline(inc.id, &cg("a"), "busy").unwrap();
    assert_eq!(
        (after.state, after.assigned.clone(), after.co_offer.clone()),
        (IncidentState::Offered, Some(cg("c")), None)
    );
    r.clock.advance(61_000);
    r.d.tick();
    let moved = r.d.incident(inc.id).unwrap();
    assert_eq!(moved.declined_by, vec![cg("a"), cg("c")]);
    assert_eq!(moved.state, IncidentState::Escalated, "b is busy with the first incident");
}

/// A caregiver on a scheduled visit taken for a critical alarm (or by a
/// dispatcher's reassignment) is a PREEMPTED event naming the caregiver, for
/// the scheduler; a caregiver who was free is not, and urgent alarms leave
/// visits alone.
#[test]
fn preempting_a_scheduled_visit_is_an_event_naming_the_caregiver() {
    let r = rig(&[("visit", 43.880, 125.370), ("free", 43.885, 125.370), ("later", 43.95, 125.45)]);
    r.d.set_status(&cg("visit"), CaregiverStatus::OnVisit, None).unwrap();
    let urgent = r.d.raise(alarm("u", AlarmKind::Inactivity, 43.880, 125.370)).unwrap().incident;
    assert_eq!(urgent.assigned, Some(cg("free")), "an urgent alarm does not pre-empt a visit");
    r.d.cancel(urgent.id, "").unwrap();
    let fall = r.d.raise(alarm("f", AlarmKind::Fall, 43.880, 125.370)).unwrap().incident;
    assert_eq!(fall.assigned, Some(cg("visit")));
    assert_eq!(fall.co_offer.as_ref().map(|c| c.0.clone()), Some(cg("free")));
    let of = |r: &Rig, id: IncidentId| -> Vec<(EventKind, Option<CaregiverId>)> {
        let events = r.journal.events.lock().unwrap();
        events.iter().filter(|e| e.incident.id == id).map(|e| (e.kind, e.caregiver.clone())).collect()
    };
    assert_eq!(
        of(&r, fall.id),
        [
            (EventKind::Created, None),
            (EventKind::Offered, Some(cg("visit"))),
            (EventKind::Preempted, Some(cg("visit"))),
            (EventKind::Offered, Some(cg("free"))),
        ]
    );
    // A dispatcher reassigning to a caregiver on a visit pre-empts it too.
    r.d.set_status(&cg("later"), CaregiverStatus::OnVisit, None).unwrap();
    let lost = r.d.raise(alarm("w", AlarmKind::Wandering, 43.95, 125.45)).unwrap().incident;
    assert_eq!(lost.state, IncidentState::Escalated);
    r.d.reassign(lost.id, &cg("later"), "nearest").unwrap();
    assert_eq!(of(&r, lost.id).last(), Some(&(EventKind::Preempted, Some(cg("later")))));
    let preemptions = r.journal.events.lock().unwrap().iter().filter(|e| e.kind == EventKind::Preempted).count();
    assert_eq!(preemptions, 2);
}

/// "visit", on a scheduled visit at the alarm point, and "free" 556 m away.
fn visit_rig() -> Rig {
    let r = rig(&[("visit", 43.880, 125.370), ("free", 43.885, 125.370)]);
    r.d.set_status(&cg("visit"), CaregiverStatus::OnVisit, None).unwrap();
    r
}

fn status(r: &Rig, c: &str) -> CaregiverStatus {
    r.d.caregiver(&cg(c)).unwrap().status
}

/// A fall at the alarm point while "visit" is on the visit: offered to
/// "visit" (taken off the visit) and to "free".
fn fall_on_visit(r: &Rig, key: &str) -> Incident {
    let inc = r.d.raise(alarm(key, AlarmKind::Fall, 43.880, 125.370)).unwrap().incident;
    assert_eq!((inc.assigned.clone(), inc.preempted.clone()), (Some(cg("visit")), vec![cg("visit")]), "{key}");
    inc
}

/// A caregiver taken off a visit who never takes the incident on (declines,
/// lets the offer expire, loses it to the other offer, or it is cancelled)
/// is back on the visit, not free for routine work; one who accepted has
/// left the visit and is free once the incident is closed.
#[test]
fn a_caregiver_preempted_but_not_accepting_goes_back_to_the_visit() {
    let r = visit_rig();
    // Declined.
    let inc = fall_on_visit(&r, "f1");
    r.d.decline(inc.id, &cg("visit"), "with a bedridden elder").unwrap();
    assert_eq!(status(&r, "visit"), CaregiverStatus::OnVisit);
    r.d.cancel(inc.id, "").unwrap();
    // The other offer accepted first: withdrawn.
    let inc = fall_on_visit(&r, "f2");
    r.d.accept(inc.id, &cg("free")).unwrap();
    assert_eq!(status(&r, "visit"), CaregiverStatus::OnVisit);
    r.d.cancel(inc.id, "").unwrap();
    assert_eq!(status(&r, "free"), CaregiverStatus::Available);
    // Expired.
    let inc = fall_on_visit(&r, "f3");
    r.d.decline(inc.id, &cg("free"), "").unwrap();
    r.clock.advance(DispatchConfig::default().offer_timeout_ms + 1);
    r.d.tick();
    assert_eq!(status(&r, "visit"), CaregiverStatus::OnVisit);
    let after = r.d.incident(inc.id).unwrap();
    assert_eq!(after.declined_by, vec![cg("free"), cg("visit")]);
    // Cancelled before anyone accepted.
    let inc = fall_on_visit(&r, "f4");
    r.d.cancel(inc.id, "the elder pressed cancel").unwrap();
    assert_eq!((status(&r, "visit"), status(&r, "free")), (CaregiverStatus::OnVisit, CaregiverStatus::Available));
    // Accepted: the visit is left behind, and the caregiver is free at the end.
    let inc = fall_on_visit(&r, "f5");
    r.d.accept(inc.id, &cg("visit")).unwrap();
    assert_eq!(status(&r, "free"), CaregiverStatus::Available, "the other offer withdrawn");
    r.d.arrive(inc.id, &cg("visit")).unwrap();
    r.d.resolve(inc.id, Some(&cg("visit")), Outcome::Assisted, "").unwrap();
    assert_eq!(status(&r, "visit"), CaregiverStatus::Available);
}

/// Where a held caregiver goes when released is kept on the incident too, so
/// a change the journal refuses (its claims undone) and a restart (its claims
/// restored) still send one taken off a visit back to it.
#[test]
fn a_preempted_caregiver_goes_back_to_the_visit_after_a_refused_write_or_a_restart() {
    let r = visit_rig();
    let refused = |r: &Rig, action: &dyn Fn() -> Result<Incident, DispatchError>| {
        r.journal.fail.store(true, Ordering::SeqCst);
        assert!(matches!(action(), Err(DispatchError::Journal(_))));
        r.journal.fail.store(false, Ordering::SeqCst);
    };
    // An accept the journal refused changed nothing: declining later still
    // sends the caregiver back to the visit.
    let inc = fall_on_visit(&r, "f1");
    refused(&r, &|| r.d.accept(inc.id, &cg("visit")));
    assert_eq!(r.d.incident(inc.id).unwrap().preempted, [cg("visit")]);
    r.d.decline(inc.id, &cg("visit"), "").unwrap();
    assert_eq!(status(&r, "visit"), CaregiverStatus::OnVisit);
    r.d.cancel(inc.id, "").unwrap();
    // A refused decline gives the claim back as it was.
    let inc = fall_on_visit(&r, "f2");
    refused(&r, &|| r.d.decline(inc.id, &cg("visit"), ""));
    assert_eq!(status(&r, "visit"), CaregiverStatus::Busy);
    r.d.decline(inc.id, &cg("visit"), "").unwrap();
    assert_eq!(status(&r, "visit"), CaregiverStatus::OnVisit);
    assert!(r.d.incident(inc.id).unwrap().preempted.is_empty(), "released");
    r.d.cancel(inc.id, "").unwrap();
    // After a restart (both caregivers registered free, as a registry read
    // back might have them), the restored claim remembers the visit...
    let inc = fall_on_visit(&r, "f3");
    let last = r.journal.load(inc.id).unwrap();
    r.d.cancel(inc.id, "").unwrap();
    let fresh = rig(&[("visit", 43.880, 125.370), ("free", 43.885, 125.370)]);
    fresh.d.restore(vec![last], vec![(inc.key.clone(), inc.id)]);
    assert_eq!(status(&fresh, "visit"), CaregiverStatus::Busy);
    fresh.d.decline(inc.id, &cg("visit"), "").unwrap();
    assert_eq!(status(&fresh, "visit"), CaregiverStatus::OnVisit);
    // ...and the co-offer's, who came from no visit, is free when withdrawn.
    fresh.d.cancel(inc.id, "").unwrap();
    assert_eq!(status(&fresh, "free"), CaregiverStatus::Available);
    // Accepted, the visit is left: the mark goes with it.
    let inc = fall_on_visit(&r, "f4");
    assert!(r.d.accept(inc.id, &cg("visit")).unwrap().preempted.is_empty());
}

#[test]
fn the_escalation_ladder_widens_then_queues_then_hands_off_to_120_or_119() {
    // 'far' is 45 km away: beyond the usual 30 km, within the wide 60 km.
    let r = rig(&[("far", 44.285, 125.370)]);
    let inc = r.d.raise(alarm("w", AlarmKind::Inactivity, 43.880, 125.370)).unwrap().incident;
    assert_eq!(inc.assigned, Some(cg("far")));
    let offered = r.journal.events.lock().unwrap().iter().find(|e| e.kind == EventKind::Offered).cloned().unwrap();
    assert!(offered.note.contains("widened"), "{}", offered.note);
    // Nobody left: escalated to the supervisor queue, then 120 after the critical hand-off time.
    let fall = r.d.raise(alarm("f", AlarmKind::Fall, 43.880, 125.370)).unwrap().incident;
    let smoke = r.d.raise(alarm("s", AlarmKind::Smoke, 43.880, 125.370)).unwrap().incident;
    let battery = r.d.raise(alarm("b", AlarmKind::LowBattery, 43.880, 125.370)).unwrap().incident;
    for i in [&fall, &smoke, &battery] {
        assert_eq!(i.state, IncidentState::Escalated);
        assert!(i.escalation_note.contains("supervisor queue"), "{}", i.escalation_note);
    }
    r.clock.advance(r.d.config().handoff_critical_ms - 1);
    r.d.tick();
    assert_eq!(r.d.incident(fall.id).unwrap().escalation, Some(EscalationReason::NoCaregiverAvailable));
    r.clock.advance(1);
    r.d.tick();
    let fall = r.d.incident(fall.id).unwrap();
    assert_eq!(fall.escalation, Some(EscalationReason::EmergencyServices));
    assert!(fall.escalation_note.starts_with("hand-off to 120"), "{}", fall.escalation_note);
    let smoke = r.d.incident(smoke.id).unwrap();
    assert!(smoke.escalation_note.starts_with("hand-off to 119"), "{}", smoke.escalation_note);
    // Routine alarms stay with the supervisor; nothing is handed off twice.
    r.clock.advance(24 * 3_600_000);
    r.d.tick();
    assert_eq!(r.d.incident(battery.id).unwrap().escalation, Some(EscalationReason::NoCaregiverAvailable));
    // The urgent 'w' offer expired unanswered, was escalated and, after its own time, handed off too.
    let mut handed: Vec<IncidentId> = r
        .journal
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.note.starts_with("hand-off"))
        .map(|e| e.incident.id)
        .collect();
    handed.sort();
    assert_eq!(handed, vec![inc.id, fall.id, smoke.id]);
    // A dispatcher still closes it.
    assert_eq!(
        r.d.resolve(fall.id, None, Outcome::HospitalTransfer, "120 took her").unwrap().state,
        IncidentState::Resolved
    );
}

/// The ladder's second rung is recorded, not just written in a note: an
/// incident the ladder escalates keeps its reason, and a FAMILY_NOTIFIED
/// event (once per incident) records that the elder's family contact and the
/// supervisor queue were notified; the KPIs count it by reason. A dispatcher
/// escalating by hand decides on the family himself.
#[test]
fn the_ladder_notifies_the_family_contact_and_supervisor_queue_once() {
    let r = rig(&[]);
    let inc = r.d.raise(alarm("f", AlarmKind::Fall, 43.880, 125.370)).unwrap().incident;
    assert_eq!((inc.state, inc.escalation), (IncidentState::Escalated, Some(EscalationReason::NoCaregiverAvailable)));
    assert_eq!(inc.family_notified_ms, Some(r.clock.now_ms()));
    assert!(inc.escalation_note.ends_with("in the district supervisor queue, family contact notified"));
    let of = |r: &Rig, id: IncidentId| -> Vec<(EventKind, Option<EscalationReason>)> {
        let events = r.journal.events.lock().unwrap();
        events.iter().filter(|e| e.incident.id == id).map(|e| (e.kind, e.incident.escalation)).collect()
    };
    let reason = Some(EscalationReason::NoCaregiverAvailable);
    assert_eq!(
        of(&r, inc.id),
        [(EventKind::Created, None), (EventKind::Escalated, reason), (EventKind::FamilyNotified, reason)]
    );
    // Handed to a caregiver who declines: escalated again, the family is not called twice.
    r.d.upsert_caregiver(CaregiverProfile {
        id: cg("a"),
        skills: vec![],
        home: p(43.88, 125.37),
        mode: TravelMode::Bike,
    });
    r.d.set_status(&cg("a"), CaregiverStatus::Available, None).unwrap();
    r.d.reassign(inc.id, &cg("a"), "").unwrap();
    let again = r.d.decline(inc.id, &cg("a"), "").unwrap();
    assert_eq!(again.escalation, Some(EscalationReason::AllDeclined));
    assert!(again.escalation_note.ends_with("family contact notified earlier"), "{}", again.escalation_note);
    assert_eq!(of(&r, inc.id).iter().filter(|(k, _)| *k == EventKind::FamilyNotified).count(), 1);
    // A dispatcher's own escalation takes no rung.
    let other = r.d.raise(alarm("w", AlarmKind::Wandering, 43.880, 125.370)).unwrap().incident;
    let by_hand = r.d.escalate(other.id, EscalationReason::Manual, "odd readings").unwrap();
    assert_eq!(by_hand.family_notified_ms, None);
    assert!(!of(&r, other.id).iter().any(|(k, _)| *k == EventKind::FamilyNotified));
    let k = r.d.kpis();
    let count = |reason| k.escalations.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n);
    assert_eq!(count(EscalationReason::NoCaregiverAvailable), 1);
    assert_eq!(count(EscalationReason::AllDeclined), 1);
    assert_eq!(count(EscalationReason::Manual), 1);
    assert_eq!(count(EscalationReason::FamilyContact), 1);
}

#[test]
fn overload_defers_routine_refuses_beyond_the_backlog_and_never_sheds_critical() {
    let journal = Arc::new(MemJournal::default());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    // A routine lane with no room: every routine alarm is parked; two may wait.
    let config = DispatchConfig { routine_lane: 0, max_deferred: 2, ..Default::default() };
    let d = Dispatcher::new(config, journal.clone(), Arc::new(NoSink), clock.clone());
    for (id, lat) in [("a", 43.880), ("b", 43.881), ("c", 43.882)] {
        d.upsert_caregiver(CaregiverProfile {
            id: cg(id),
            skills: vec![],
            home: p(lat, 125.37),
            mode: TravelMode::Bike,
        });
        d.set_status(&cg(id), CaregiverStatus::Available, None).unwrap();
    }
    let low1 = d.raise(alarm("low1", AlarmKind::LowBattery, 43.88, 125.37)).unwrap().incident;
    let low2 = d.raise(alarm("low2", AlarmKind::DeviceOffline, 43.88, 125.37)).unwrap().incident;
    for i in [&low1, &low2] {
        assert_eq!(i.state, IncidentState::Deferred);
        assert!(i.deferred_reason.as_deref().unwrap().contains("routine lane full"));
    }
    let refused = d.raise(alarm("low3", AlarmKind::LowBattery, 43.88, 125.37));
    assert!(matches!(refused, Err(DispatchError::Overloaded(_))), "{refused:?}");
    assert!(d.incident_by_key(&IdempotencyKey::parse("k", "low3").unwrap()).is_none(), "nothing of it was kept");
    let sos = d.raise(alarm("sos", AlarmKind::SosButton, 43.88, 125.37)).unwrap().incident;
    assert_eq!(sos.state, IncidentState::Offered, "critical alarms are never shed");
    assert_eq!(d.deferred_count(), 2);
    // Cancelled while parked: skipped. The rest is dispatched by the next tick, oldest first.
    d.cancel(low2.id, "elder replaced the battery").unwrap();
    d.tick();
    assert_eq!(d.deferred_count(), 0);
    let low1 = d.incident(low1.id).unwrap();
    assert_eq!(low1.state, IncidentState::Offered);
    assert_eq!(d.incident(low2.id).unwrap().state, IncidentState::Cancelled);
    let kinds: Vec<EventKind> =
        journal.events.lock().unwrap().iter().filter(|e| e.incident.id == low1.id).map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Created, EventKind::Deferred, EventKind::Offered]);
    // A retry of the refused alarm is accepted once there is room again.
    assert_eq!(
        d.raise(alarm("low3", AlarmKind::LowBattery, 43.88, 125.37)).unwrap().incident.state,
        IncidentState::Deferred
    );
}

#[test]
fn closed_incidents_leave_memory_but_not_the_record_and_kpis_keep_counting() {
    let r = rig(&[("a", 43.880, 125.370)]);
    let inc = r.d.raise(alarm("k", AlarmKind::Inactivity, 43.88, 125.37)).unwrap().incident;
    r.clock.advance(30_000);
    r.d.accept(inc.id, &cg("a")).unwrap();
    r.clock.advance(240_000);
    r.d.arrive(inc.id, &cg("a")).unwrap();
    r.d.resolve(inc.id, Some(&cg("a")), Outcome::Assisted, "").unwrap();
    let retain = r.d.config().retain_closed_ms;
    r.clock.advance(retain - 1);
    r.d.tick();
    assert_eq!(r.d.incidents(|_| true).len(), 1, "still held while recent");
    r.clock.advance(1);
    r.d.tick();
    assert!(r.d.incidents(|_| true).is_empty(), "evicted");
    // Still found by id and by key (read back from the journal), and a retry is still a duplicate.
    assert_eq!(r.d.incident(inc.id).unwrap().state, IncidentState::Resolved);
    assert_eq!(r.d.incident_by_key(&inc.key).unwrap().id, inc.id);
    assert!(r.d.raise(alarm("k", AlarmKind::Inactivity, 43.88, 125.37)).unwrap().duplicate);
    let k = r.d.kpis();
    assert_eq!((k.offered, k.accepted_within_60s, k.accepted_within_180s), (1, 1, 1));
    assert_eq!(k.receipt_to_first_offer.count, 1);
    assert_eq!(k.acceptance_to_arrival.count, 1);
    assert!((k.acceptance_to_arrival.p50_ms - 240_000.0).abs() < 240.0, "{:?}", k.acceptance_to_arrival);
    assert_eq!(k.incidents_by_state.iter().find(|(s, _)| *s == IncidentState::Resolved).unwrap().1, 1);
    assert_eq!(k.open(), 0);
}

/// The answer-time shares are of every alarm: one escalated with no offer
/// at all counts as not accepted in time; a merged repeat is not an alarm of
/// its own, and neither is a retried key.
#[test]
fn acceptance_shares_count_alarms_escalated_without_an_offer_but_not_repeats() {
    let r = rig(&[("a", 43.880, 125.370)]);
    let taken = r.d.raise(alarm("k1", AlarmKind::Inactivity, 43.880, 125.370)).unwrap().incident;
    let missed = r.d.raise(alarm("k2", AlarmKind::Wandering, 43.880, 125.370)).unwrap().incident;
    assert_eq!((missed.state, missed.first_offered_ms), (IncidentState::Escalated, None), "a is busy");
    let repeat = Alarm {
        key: IdempotencyKey::parse("k", "k2-again").unwrap(),
        ..alarm("k2", AlarmKind::Wandering, 43.88, 125.37)
    };
    assert!(r.d.raise(repeat).unwrap().merged);
    assert!(r.d.raise(alarm("k2", AlarmKind::Wandering, 43.880, 125.370)).unwrap().duplicate);
    r.clock.advance(30_000);
    r.d.accept(taken.id, &cg("a")).unwrap();
    let k = r.d.kpis();
    assert_eq!((k.alarms_received, k.merged, k.duplicates), (4, 1, 1));
    assert_eq!((k.incidents_opened, k.offered, k.accepted_within_60s, k.accepted_within_180s), (2, 1, 1, 1));
    assert_eq!((k.accepted_within_60s_ratio(), k.accepted_within_180s_ratio()), (0.5, 0.5));
}

/// Time to arrival is measured from receipt of the alarm (the telecare
/// measure), with the caregiver's part, from acceptance, kept apart.
#[test]
fn time_to_arrival_runs_from_receipt_of_the_alarm() {
    let r = rig(&[("a", 43.880, 125.370)]);
    let inc = r.d.raise(alarm("k", AlarmKind::Fall, 43.880, 125.370)).unwrap().incident;
    r.clock.advance(40_000);
    r.d.accept(inc.id, &cg("a")).unwrap();
    r.clock.advance(200_000);
    r.d.arrive(inc.id, &cg("a")).unwrap();
    let k = r.d.kpis();
    assert_eq!((k.receipt_to_arrival.count, k.acceptance_to_arrival.count), (1, 1));
    assert!((k.receipt_to_arrival.p50_ms - 240_000.0).abs() < 240.0, "{:?}", k.receipt_to_arrival);
    assert!((k.acceptance_to_arrival.p50_ms - 200_000.0).abs() < 200.0, "{:?}", k.acceptance_to_arrival);
}

/// Escalations by reason count every escalation: an incident a dispatcher
/// hands on that is declined again is escalated again, for the same reason.
#[test]
fn every_escalation_counts_even_for_the_same_reason_twice() {
    let r = rig(&[("a", 43.880, 125.370)]);
    let inc = r.d.raise(alarm("k", AlarmKind::Inactivity, 43.880, 125.370)).unwrap().incident;
    let escalations = |r: &Rig| {
        let k = r.d.kpis();
        k.escalations.iter().find(|(e, _)| *e == EscalationReason::AllDeclined).map_or(0, |(_, n)| *n)
    };
    assert_eq!(r.d.decline(inc.id, &cg("a"), "").unwrap().escalation, Some(EscalationReason::AllDeclined));
    assert_eq!(escalations(&r), 1);
    r.d.reassign(inc.id, &cg("a"), "please go after all").unwrap();
    let again = r.d.decline(inc.id, &cg("a"), "still cannot").unwrap();
    assert_eq!((again.state, again.escalation), (IncidentState::Escalated, Some(EscalationReason::AllDeclined)));
    assert_eq!(escalations(&r), 2);
}

/// Memory stays bounded in a storm: closed incidents beyond the cap leave
/// memory oldest first (still read back by id), and keys are forgotten after
/// their window once their incident is closed, never while it is open.
#[test]
fn closed_incidents_are_capped_and_keys_expire_after_their_window() {
    let config = DispatchConfig { max_closed_in_memory: 2, key_window_ms: 60_000, ..Default::default() };
    let r = rig_with(config, &[("a", 43.880, 125.370)]);
    let open = r.d.raise(alarm("open", AlarmKind::Fall, 43.88, 125.37)).unwrap().incident;
    assert_eq!(open.state, IncidentState::Offered);
    let closed: Vec<Incident> = (0..4)
        .map(|i| {
            let inc = r.d.raise(alarm(&format!("c{i}"), AlarmKind::LowBattery, 43.9, 125.4)).unwrap().incident;
            r.clock.advance(1);
            r.d.cancel(inc.id, "test").unwrap();
            inc
        })
        .collect();
    r.d.tick();
    let held: Vec<IncidentId> = r.d.incidents(|i| !i.state.is_open()).iter().map(|i| i.id).collect();
    assert_eq!(held, [closed[2].id, closed[3].id], "the two most recently closed stay");
    for inc in &closed {
        assert_eq!(r.d.incident(inc.id).unwrap().state, IncidentState::Cancelled, "read back from the journal");
    }
    r.clock.advance(59_000);
    r.d.tick();
    assert!(r.d.raise(alarm("c0", AlarmKind::LowBattery, 43.9, 125.4)).unwrap().duplicate, "within the window");
    r.clock.advance(1_000);
    r.d.tick();
    let again = r.d.raise(alarm("c0", AlarmKind::LowBattery, 43.9, 125.4)).unwrap();
    assert!(!again.duplicate, "past the window a key is a new alarm");
    assert_ne!(again.incident.id, closed[0].id);
    assert!(r.d.raise(alarm("open", AlarmKind::Fall, 43.88, 125.37)).unwrap().duplicate, "open: kept");
    // Restoring skips keys of closed incidents past their window.
    let fresh = rig_with(DispatchConfig { key_window_ms: 60_000, ..Default::default() }, &[]);
    fresh.clock.advance(120_000);
    let last =
        |id| r.journal.events.lock().unwrap().iter().rev().find(|e| e.incident.id == id).unwrap().incident.clone();
    fresh.d.restore(vec![last(closed[1].id), last(open.id)], vec![(closed[1].key.clone(), closed[1].id)]);
    assert!(fresh.d.incident_by_key(&closed[1].key).is_none(), "forgotten (and this journal has no key lookup)");
    assert_eq!(fresh.d.incident_by_key(&open.key).unwrap().id, open.id);
}

#[test]
fn restore_rebuilds_open_incidents_claims_and_keys() {
    let r = rig(&[("a", 43.880, 125.370)]);
    let inc = r.d.raise(alarm("k", AlarmKind::Fall, 43.88, 125.37)).unwrap().incident;
    let journal = r.journal.events.lock().unwrap().clone();
    let last = journal.last().unwrap().incident.clone();
    let fresh = rig(&[("a", 43.880, 125.370)]);
    for _ in 0..2 {
        fresh.d.restore(vec![last.clone()], vec![(inc.key.clone(), inc.id)]);
    }
    assert_eq!(fresh.d.caregiver(&cg("a")).unwrap().active_incident, Some(inc.id));
    let again = fresh.d.raise(alarm("k", AlarmKind::Fall, 43.88, 125.37)).unwrap();
    assert!(again.duplicate);
    let next = fresh.d.raise(alarm("k2", AlarmKind::Gas, 43.88, 125.37)).unwrap().incident;
    assert!(next.id > inc.id, "ids continue after the restored ones");
    fresh.d.accept(inc.id, &cg("a")).unwrap();
}

/// Many threads raise alarms and many act as caregivers on few caregivers:
/// no caregiver ever holds two incidents, and every incident ends in an
/// allowed state with its holder consistent with the roster.
#[test]
fn stress_one_incident_per_caregiver() {
    let caregivers: Vec<(String, f64, f64)> =
        (0..6).map(|i| (format!("c{i}"), 43.88 + i as f64 * 0.001, 125.37)).collect();
    let refs: Vec<(&str, f64, f64)> = caregivers.iter().map(|(s, a, b)| (s.as_str(), *a, *b)).collect();
    let r = Arc::new(rig(&refs));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                for n in 0..300 {
                    let key = format!("t{t}-{n}");
                    let inc = r.d.raise(alarm(&key, AlarmKind::ALL[n % 9], 43.88, 125.37)).unwrap().incident;
                    // Only this thread acts on its incidents, so the caregiver it was
                    // offered to must hold exactly this incident until we act.
                    if let Some(holder) = &inc.assigned {
                        let v = r.d.caregiver(holder).unwrap();
                        assert_eq!((v.status, v.active_incident), (CaregiverStatus::Busy, Some(inc.id)));
                    }
                    if let Some(holder) = inc.assigned.clone() {
                        let _ = match n % 3 {
                            0 => r.d.decline(inc.id, &holder, "busy"),
                            1 => {
                                r.d.accept(inc.id, &holder)
                                    .and_then(|_| r.d.resolve(inc.id, Some(&holder), Outcome::Assisted, ""))
                            }
                            _ => r.d.resolve(inc.id, None, Outcome::FalseAlarm, ""),
                        };
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = r.d.incidents(|_| true);
    assert_eq!(all.len(), 8 * 300 - (r.d.kpis().merged as usize));
    let mut holders = std::collections::HashMap::new();
    for inc in &all {
        assert!(
            matches!(inc.state, IncidentState::Offered | IncidentState::Resolved | IncidentState::Escalated),
            "{:?} in {:?}",
            inc.id,
            inc.state
        );
        if inc.state.holds_caregiver() {
            // The holder, and a critical alarm's second live offer (a decline
            // by a lone holder re-dispatches it to two).
            let co = inc.co_offer.iter().map(|(c, _)| c.clone());
            for h in inc.assigned.clone().into_iter().chain(co) {
                assert!(holders.insert(h.clone(), inc.id).is_none(), "{h} holds two incidents");
                assert_eq!(r.d.caregiver(&h).unwrap().active_incident, Some(inc.id));
            }
        }
    }
    for c in 0..6 {
        let v = r.d.caregiver(&cg(&format!("c{c}"))).unwrap();
        assert_eq!(v.active_incident, holders.get(&v.profile.id).copied());
        assert_eq!(v.status == CaregiverStatus::Busy, v.active_incident.is_some());
    }
}

/// Offer expiry racing the caregivers: worker threads raise alarms and act on
/// each two alarms later (decline, accept and close, or resolve or cancel as a
/// dispatcher, on either of two live offers) while another thread moves the
/// simulated clock on and fires the timers, so offers expire and incidents
/// move on or escalate under their feet. No caregiver is
/// ever claimed while holding an incident (the roster's claim asserts it),
/// every change of state the journal records is an allowed transition, and
/// once the timers have run out every incident is resolved, cancelled or
/// escalated and every caregiver free again.
#[test]
fn stress_offer_expiry_races_accept_and_decline() {
    const WORKERS: usize = 6;
    const ALARMS: usize = 400;
    let caregivers: Vec<(String, f64, f64)> =
        (0..10).map(|i| (format!("c{i}"), 43.88 + i as f64 * 0.001, 125.37)).collect();
    let refs: Vec<(&str, f64, f64)> = caregivers.iter().map(|(s, a, b)| (s.as_str(), *a, *b)).collect();
    // Offers expire after two to four of the ticker's steps.
    let r = Arc::new(rig_with(DispatchConfig { offer_timeout_ms: 20_000, ..Default::default() }, &refs));
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (r, done) = (r.clone(), done.clone());
        std::thread::spawn(move || {
            let mut ticks = 0u64;
            while !done.load(Ordering::SeqCst) {
                r.clock.advance(5_000 + (ticks % 3) as i64 * 2_500);
                r.d.tick();
                ticks += 1;
                std::thread::yield_now();
            }
            ticks
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut waiting = std::collections::VecDeque::new();
                let act = |n: usize, id: IncidentId| {
                    let Some(inc) = r.d.incident(id) else { return };
                    let co = inc.co_offer.as_ref().map(|c| c.0.clone());
                    let Some(holder) =
                        (if n.is_multiple_of(2) { co.or(inc.assigned.clone()) } else { inc.assigned.clone() })
                    else {
                        return;
                    };
                    // Any of these may lose a race with a timer: that is the point.
                    let _ = match n % 5 {
                        0 => r.d.decline(id, &holder, "busy"),
                        1 => {
                            r.d.accept(id, &holder)
                                .and_then(|_| r.d.arrive(id, &holder))
                                .and_then(|_| r.d.resolve(id, Some(&holder), Outcome::Assisted, ""))
                        }
                        2 => r.d.accept(id, &holder).and_then(|_| r.d.resolve(id, None, Outcome::FamilyHandled, "")),
                        3 => r.d.resolve(id, None, Outcome::FalseAlarm, ""),
                        _ => r.d.cancel(id, "elder called back"),
                    };
                };
                for n in 0..ALARMS {
                    let key = format!("t{t}-{n}");
                    let inc = r.d.raise(alarm(&key, AlarmKind::ALL[n % 9], 43.88, 125.37)).unwrap().incident;
                    waiting.push_back((n, inc.id));
                    std::thread::yield_now(); // let the ticker in between raise and action
                    if waiting.len() > 2 {
                        let (n, id) = waiting.pop_front().unwrap();
                        act(n, id);
                    }
                }
                for (n, id) in waiting {
                    act(n, id);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(ticker.join().unwrap() > 0);
    // Let every timer run out: offers expire into escalation, accepted ones become overdue and escalate.
    for _ in 0..40 {
        r.clock.advance(600_000);
        r.d.tick();
    }
    let events = r.journal.events.lock().unwrap().clone();
    let (_, last) = assert_life_cycles(&events);
    assert_eq!(last.len(), WORKERS * ALARMS);
    for &id in last.keys() {
        // Closed ones have left memory by now: read back from the journal.
        let inc = r.d.incident(id).unwrap();
        assert!(
            matches!(inc.state, IncidentState::Resolved | IncidentState::Cancelled | IncidentState::Escalated),
            "{id} left {:?}",
            inc.state
        );
        assert!(inc.assigned.is_none() && inc.co_offer.is_none(), "{id} still holds a caregiver");
    }
    for (c, _, _) in &caregivers {
        let v = r.d.caregiver(&cg(c)).unwrap();
        assert_eq!((v.status, v.active_incident), (CaregiverStatus::Available, None), "{c}");
    }
    for kind in [EventKind::OfferExpired, EventKind::Accepted, EventKind::Declined, EventKind::Resolved] {
        assert!(events.iter().any(|e| e.kind == kind), "no {kind:?} in the run");
    }
}
