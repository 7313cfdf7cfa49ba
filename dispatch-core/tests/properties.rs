//! Property tests on a simulated clock (no sleeps): intake deduplication and
//! merging against a model (one alarm at a time, and in batches with
//! incidents closing in between), and the timer ladder (offer expiry -> next
//! caregiver -> escalation; arrival overdue) against the deadlines it owes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dispatch_core::*;
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000;

fn p(lat: f64, lon: f64) -> GeoPoint {
    GeoPoint::new("p", lat, lon).unwrap()
}

fn rig(n_caregivers: usize) -> (Dispatcher, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let d = Dispatcher::new(DispatchConfig::default(), Arc::new(NoJournal), Arc::new(NoSink), clock.clone());
    for i in 0..n_caregivers {
        let id = CaregiverId::parse("id", &format!("C{i}")).unwrap();
        let home = p(43.86 + 0.002 * i as f64, 125.38);
        d.upsert_caregiver(CaregiverProfile { id: id.clone(), skills: vec![], home, mode: TravelMode::Bike });
        d.set_status(&id, CaregiverStatus::Available, None).unwrap();
    }
    (d, clock)
}

#[derive(Debug, Clone)]
struct Raise {
    key: u8,
    device: u8,
    kind: u8,
    advance_s: u16,
}

fn raises() -> impl Strategy<Value = Vec<Raise>> {
    proptest::collection::vec(
        (0u8..12, 0u8..4, 0u8..3, 0u16..200).prop_map(|(key, device, kind, advance_s)| Raise {
            key,
            device,
            kind,
            advance_s,
        }),
        1..60,
    )
}

const KINDS: [AlarmKind; 3] = [AlarmKind::SosButton, AlarmKind::Inactivity, AlarmKind::LowBattery];

/// A journal that keeps each incident's last snapshot, so closed incidents
/// evicted from memory are still found by a retry of their key.
#[derive(Default)]
struct LastJournal(Mutex<HashMap<IncidentId, Incident>>);

impl Journal for LastJournal {
    fn append(&self, events: &[IncidentEvent]) -> Result<(), String> {
        let mut last = self.0.lock().unwrap();
        for e in events {
            last.insert(e.incident.id, e.incident.clone());
        }
        Ok(())
    }

    fn load(&self, id: IncidentId) -> Option<Incident> {
        self.0.lock().unwrap().get(&id).cloned()
    }
}

/// One alarm of a property test: key, device, kind (each a small number, so
/// they collide).
type Al = (u8, u8, u8);

#[derive(Debug, Clone)]
enum Op {
    /// One alarm goes through `raise`, several through one `raise_batch`.
    Raise(Vec<Al>),
    /// A dispatcher closes the open incident of (device, kind), if any:
    /// resolved or cancelled.
    Close(u8, u8, bool),
    /// The clock moves on (seconds), and timers fire if asked.
    Advance(u16, bool),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let al = (0u8..14, 0u8..3, 0u8..3);
    let op = prop_oneof![
        4 => proptest::collection::vec(al, 1..8).prop_map(Op::Raise),
        1 => (0u8..3, 0u8..3, any::<bool>()).prop_map(|(d, k, r)| Op::Close(d, k, r)),
        2 => (0u16..200, any::<bool>()).prop_map(|(s, t)| Op::Advance(s, t)),
    ];
    proptest::collection::vec(op, 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Intake: a known key returns its original incident (whatever the new
    /// content); a new key from a device with an open incident of the same
    /// kind, last alarmed within the merge window, merges into it; anything
    /// else opens a new incident.
    #[test]
    fn intake_dedups_keys_and_merges_repeats_within_the_window(ops in raises()) {
        let (d, clock) = rig(0); // nobody free: incidents stay open (escalated)
        let window = d.config().merge_window_ms;
        let mut by_key: HashMap<u8, IncidentId> = HashMap::new();
        // (device, kind) -> (incident, last alarm time)
        let mut open: HashMap<(u8, u8), (IncidentId, i64)> = HashMap::new();
        let mut incidents = 0usize;
        for op in ops {
            clock.advance(op.advance_s as i64 * 1000);
            let now = clock.now_ms();
            let alarm = Alarm {
                key: IdempotencyKey::parse("k", &format!("key-{}", op.key)).unwrap(),
                elder: ElderId::parse("e", "E1").unwrap(),
                device: Some(DeviceId::parse("d", &format!("dev-{}", op.device)).unwrap()),
                kind: KINDS[op.kind as usize],
                location: p(43.86, 125.38),
                occurred_ms: now,
                detail: String::new(),
                required_skill: None,
            };
            let out = d.raise(alarm).unwrap();
            if let Some(&id) = by_key.get(&op.key) {
                prop_assert!(out.duplicate);
                prop_assert_eq!(out.incident.id, id);
                continue;
            }
            prop_assert!(!out.duplicate);
            match open.get(&(op.device, op.kind)) {
                Some(&(id, last)) if now - last <= window => {
                    prop_assert!(out.merged, "a repeat within the window merges");
                    prop_assert_eq!(out.incident.id, id);
                    open.insert((op.device, op.kind), (id, now));
                }
                _ => {
                    prop_assert!(!out.merged);
                    incidents += 1;
                    open.insert((op.device, op.kind), (out.incident.id, now));
                }
            }
            by_key.insert(op.key, out.incident.id);
        }
        prop_assert_eq!(d.incidents(|_| true).len(), incidents);
    }

    /// Intake with incidents that close: alarms one by one and in batches
    /// (a batch is taken in critical first, arrival order within a severity,
    /// all at one instant), against a model. A known key returns its
    /// incident, open or closed; a new key of a source whose incident is open
    /// and last alarmed within the window merges into it, also within one
    /// batch; after the incident closed, or past the window, the source opens
    /// a new incident; every repeat is counted on its incident.
    #[test]
    fn intake_merges_into_open_incidents_and_reopens_after_close(ops in ops()) {
        let clock = Arc::new(ManualClock::new(T0));
        let d = Dispatcher::new(DispatchConfig::default(), Arc::new(LastJournal::default()), Arc::new(NoSink), clock.clone());
        for i in 0..2 {
            // Two caregivers: some incidents are offered, the rest escalated; all open.
            let id = CaregiverId::parse("id", &format!("C{i}")).unwrap();
            d.upsert_caregiver(CaregiverProfile { id: id.clone(), skills: vec![], home: p(43.86, 125.38), mode: TravelMode::Bike });
            d.set_status(&id, CaregiverStatus::Available, None).unwrap();
        }
        let window = d.config().merge_window_ms;
        let mut by_key: HashMap<u8, IncidentId> = HashMap::new();
        // (device, kind) -> (open incident, its last alarm)
        let mut open: HashMap<(u8, u8), (IncidentId, i64)> = HashMap::new();
        let mut repeats: HashMap<IncidentId, u32> = HashMap::new();
        let mut closed: Vec<IncidentId> = Vec::new();
        for op in ops {
            match op {
                Op::Advance(s, tick) => {
                    clock.advance(s as i64 * 1000);
                    if tick {
                        d.tick();
                    }
                }
                Op::Close(dev, kind, resolve) => {
                    let Some((id, _)) = open.remove(&(dev, kind)) else { continue };
                    let done = if resolve {
                        d.resolve(id, None, Outcome::FalseAlarm, "").unwrap()
                    } else {
                        d.cancel(id, "test").unwrap()
                    };
                    prop_assert!(!done.state.is_open());
                    closed.push(id);
                }
                Op::Raise(alarms) => {
                    let now = clock.now_ms();
                    let batch: Vec<Alarm> = alarms
                        .iter()
                        .map(|&(key, dev, kind)| Alarm {
                            key: IdempotencyKey::parse("k", &format!("key-{key}")).unwrap(),
                            elder: ElderId::parse("e", "E1").unwrap(),
                            device: Some(DeviceId::parse("d", &format!("dev-{dev}")).unwrap()),
                            kind: KINDS[kind as usize],
                            location: p(43.86, 125.38),
                            occurred_ms: now,
                            detail: String::new(),
                            required_skill: None,
                        })
                        .collect();
                    let out: Vec<RaiseOutcome> = if batch.len() == 1 {
                        vec![d.raise(batch.into_iter().next().unwrap()).unwrap()]
                    } else {
                        d.raise_batch(batch).into_iter().map(|o| o.unwrap()).collect()
                    };
                    // The model takes the batch in as intake does: by severity, then arrival.
                    let mut order: Vec<usize> = (0..alarms.len()).collect();
                    order.sort_by_key(|&i| std::cmp::Reverse(KINDS[alarms[i].2 as usize].severity()));
                    for i in order {
                        let (key, dev, kind) = alarms[i];
                        let got = &out[i];
                        if let Some(&id) = by_key.get(&key) {
                            prop_assert!(got.duplicate && !got.merged, "key-{} is a retry: {:?}", key, got);
                            prop_assert_eq!(got.incident.id, id);
                            continue;
                        }
                        prop_assert!(!got.duplicate, "key-{} is new", key);
                        match open.get(&(dev, kind)) {
                            Some(&(id, last)) if now - last <= window => {
                                prop_assert!(got.merged, "key-{} repeats an open incident within the window", key);
                                prop_assert_eq!(got.incident.id, id);
                                *repeats.entry(id).or_default() += 1;
                                open.insert((dev, kind), (id, now));
                            }
                            _ => {
                                prop_assert!(!got.merged, "key-{} opens an incident", key);
                                prop_assert!(got.incident.state.is_open());
                                prop_assert!(!by_key.values().any(|id| *id == got.incident.id), "a new incident");
                                open.insert((dev, kind), (got.incident.id, now));
                            }
                        }
                        by_key.insert(key, got.incident.id);
                    }
                }
            }
        }
        let mut ids: Vec<IncidentId> = by_key.values().copied().collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            let inc = d.incident(id).unwrap();
            prop_assert_eq!(inc.repeat_count, repeats.get(&id).copied().unwrap_or(0), "{}", id);
            prop_assert_eq!(inc.state.is_open(), !closed.contains(&id), "{} in {:?}", id, inc.state);
        }
    }

    /// Timers: whatever the order of ticks and clock steps, an offer is
    /// never expired before its deadline, is moved on at the first tick after
    /// it, and after `max_offers` unanswered offers (or nobody left) the
    /// incident is ESCALATED — never left OFFERED past its deadline or PENDING.
    #[test]
    fn the_timer_ladder_moves_every_unanswered_offer_on(
        caregivers in 0usize..8,
        alarms in 1usize..6,
        steps in proptest::collection::vec(0i64..90_000, 1..40),
    ) {
        let (d, clock) = rig(caregivers);
        let timeout = d.config().offer_timeout_ms;
        for a in 0..alarms {
            let alarm = Alarm {
                key: IdempotencyKey::parse("k", &format!("a{a}")).unwrap(),
                elder: ElderId::parse("e", &format!("E{a}")).unwrap(),
                device: None,
                kind: AlarmKind::Fall,
                location: p(43.86, 125.38),
                occurred_ms: T0,
                detail: String::new(),
                required_skill: None,
            };
            d.raise(alarm).unwrap();
        }
        for step in steps {
            let before = d.open_incidents();
            clock.advance(step);
            d.tick();
            let now = clock.now_ms();
            for inc in d.open_incidents() {
                prop_assert!(inc.state != IncidentState::Pending, "{} left pending", inc.id);
                if inc.state == IncidentState::Offered {
                    let deadline = inc.offer_deadline_ms.unwrap();
                    prop_assert!(deadline > now, "{} offered past its deadline", inc.id);
                    prop_assert_eq!(deadline, inc.offered_ms.unwrap() + timeout);
                    prop_assert!(inc.dispatch_attempts <= d.config().max_offers);
                }
                let was = before.iter().find(|b| b.id == inc.id).unwrap();
                if was.state == IncidentState::Offered && was.offer_deadline_ms.unwrap() > now {
                    prop_assert_eq!(&inc.assigned, &was.assigned, "{} expired before its deadline", inc.id);
                }
            }
        }
        // Long after every deadline, nothing is left waiting on a caregiver who never answers.
        for _ in 0..=d.config().max_offers {
            clock.advance(timeout);
            d.tick();
        }
        for inc in d.open_incidents() {
            prop_assert_eq!(inc.state, IncidentState::Escalated);
        }
        for i in 0..caregivers {
            let v = d.caregiver(&CaregiverId::parse("id", &format!("C{i}")).unwrap()).unwrap();
            prop_assert_eq!(v.active_incident, None, "C{} still held", i);
        }
    }
}
