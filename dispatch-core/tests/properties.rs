//! Property tests on a simulated clock (no sleeps): intake deduplication and
//! merging against a model, and the timer ladder (offer expiry -> next
//! caregiver -> escalation; arrival overdue) against the deadlines it owes.

use std::collections::HashMap;
use std::sync::Arc;

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
