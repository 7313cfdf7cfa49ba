//! Conversions between the protocol (`proto::v1`) and the dispatch core, with
//! validation that names the offending field. The only place the two meet.

use dispatch_core as core;
use proto::v1 as pb;

use crate::error::{ApiError, ApiResult};

pub const MAX_DETAIL_BYTES: usize = 1024;
pub const MAX_TEXT_BYTES: usize = 512;
pub const MAX_NOTES_BYTES: usize = 4096;
pub const MAX_LIST_ITEMS: usize = 32;

pub fn text(field: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.len() > max {
        return Err(ApiError::invalid(field, format!("is {} bytes long; at most {max} allowed", s.len())));
    }
    Ok(())
}

pub fn geo(field: &str, p: Option<&pb::GeoPoint>) -> ApiResult<core::GeoPoint> {
    let p = p.ok_or_else(|| ApiError::invalid(field, "is required"))?;
    Ok(core::GeoPoint::new(field, p.lat, p.lon)?)
}

pub fn geo_opt(field: &str, p: Option<&pb::GeoPoint>) -> ApiResult<Option<core::GeoPoint>> {
    p.map(|p| core::GeoPoint::new(field, p.lat, p.lon)).transpose().map_err(Into::into)
}

pub fn to_pb_point(p: &core::GeoPoint) -> pb::GeoPoint {
    pb::GeoPoint { lat: p.lat(), lon: p.lon() }
}

/// An enum field that must be set to a known, non-zero value.
pub fn known_enum<E: TryFrom<i32>>(field: &str, raw: i32, name: &str) -> ApiResult<E> {
    if raw == 0 {
        return Err(ApiError::invalid(field, format!("{name} must be set")));
    }
    E::try_from(raw).map_err(|_| ApiError::invalid(field, format!("{raw} is not a known {name}")))
}

pub fn alarm_kind(k: pb::AlarmKind) -> Option<core::AlarmKind> {
    use core::AlarmKind as C;
    use pb::AlarmKind as P;
    Some(match k {
        P::Unspecified => return None,
        P::SosButton => C::SosButton,
        P::Fall => C::Fall,
        P::Inactivity => C::Inactivity,
        P::Smoke => C::Smoke,
        P::Gas => C::Gas,
        P::Wandering => C::Wandering,
        P::AbnormalVitals => C::AbnormalVitals,
        P::DeviceOffline => C::DeviceOffline,
        P::LowBattery => C::LowBattery,
    })
}

pub fn pb_alarm_kind(k: core::AlarmKind) -> pb::AlarmKind {
    use core::AlarmKind as C;
    use pb::AlarmKind as P;
    match k {
        C::SosButton => P::SosButton,
        C::Fall => P::Fall,
        C::Inactivity => P::Inactivity,
        C::Smoke => P::Smoke,
        C::Gas => P::Gas,
        C::Wandering => P::Wandering,
        C::AbnormalVitals => P::AbnormalVitals,
        C::DeviceOffline => P::DeviceOffline,
        C::LowBattery => P::LowBattery,
    }
}

pub fn pb_severity(s: core::Severity) -> pb::Severity {
    match s {
        core::Severity::Routine => pb::Severity::Routine,
        core::Severity::Urgent => pb::Severity::Urgent,
        core::Severity::Critical => pb::Severity::Critical,
    }
}

pub fn pb_state(s: core::IncidentState) -> pb::IncidentState {
    use core::IncidentState as C;
    use pb::IncidentState as P;
    match s {
        C::Pending => P::Pending,
        C::Offered => P::Offered,
        C::Accepted => P::Accepted,
        C::OnScene => P::OnScene,
        C::Resolved => P::Resolved,
        C::Cancelled => P::Cancelled,
        C::Escalated => P::Escalated,
        C::Deferred => P::Deferred,
    }
}

pub fn core_state(s: pb::IncidentState) -> Option<core::IncidentState> {
    core::IncidentState::ALL.into_iter().find(|c| pb_state(*c) == s)
}

pub fn pb_escalation(r: core::EscalationReason) -> pb::EscalationReason {
    use core::EscalationReason as C;
    use pb::EscalationReason as P;
    match r {
        C::NoCaregiverAvailable => P::NoCaregiverAvailable,
        C::AllDeclined => P::AllDeclined,
        C::ArrivalOverdue => P::ArrivalOverdue,
        C::Manual => P::Manual,
        C::FamilyContact => P::FamilyContact,
        C::EmergencyServices => P::EmergencyServices,
    }
}

pub fn core_escalation(r: pb::EscalationReason) -> Option<core::EscalationReason> {
    use core::EscalationReason as C;
    use pb::EscalationReason as P;
    Some(match r {
        P::Unspecified => return None,
        P::NoCaregiverAvailable => C::NoCaregiverAvailable,
        P::AllDeclined => C::AllDeclined,
        P::ArrivalOverdue => C::ArrivalOverdue,
        P::Manual => C::Manual,
        P::FamilyContact => C::FamilyContact,
        P::EmergencyServices => C::EmergencyServices,
    })
}

pub fn pb_outcome(o: core::Outcome) -> pb::ResolutionOutcome {
    use core::Outcome as C;
    use pb::ResolutionOutcome as P;
    match o {
        C::Assisted => P::Assisted,
        C::FalseAlarm => P::FalseAlarm,
        C::HospitalTransfer => P::HospitalTransfer,
        C::EmergencyServices => P::EmergencyServices,
        C::FamilyHandled => P::FamilyHandled,
        C::DeviceFixed => P::DeviceFixed,
        C::Other => P::Other,
    }
}

pub fn core_outcome(o: pb::ResolutionOutcome) -> Option<core::Outcome> {
    use core::Outcome as C;
    use pb::ResolutionOutcome as P;
    Some(match o {
        P::Unspecified => return None,
        P::Assisted => C::Assisted,
        P::FalseAlarm => C::FalseAlarm,
        P::HospitalTransfer => C::HospitalTransfer,
        P::EmergencyServices => C::EmergencyServices,
        P::FamilyHandled => C::FamilyHandled,
        P::DeviceFixed => C::DeviceFixed,
        P::Other => C::Other,
    })
}

pub fn pb_status(s: core::CaregiverStatus) -> pb::CaregiverStatus {
    match s {
        core::CaregiverStatus::OffDuty => pb::CaregiverStatus::OffDuty,
        core::CaregiverStatus::Available => pb::CaregiverStatus::Available,
        core::CaregiverStatus::Busy => pb::CaregiverStatus::Busy,
        core::CaregiverStatus::OnVisit => pb::CaregiverStatus::OnVisit,
    }
}

pub fn core_status(s: pb::CaregiverStatus) -> Option<core::CaregiverStatus> {
    Some(match s {
        pb::CaregiverStatus::Unspecified => return None,
        pb::CaregiverStatus::OffDuty => core::CaregiverStatus::OffDuty,
        pb::CaregiverStatus::Available => core::CaregiverStatus::Available,
        pb::CaregiverStatus::Busy => core::CaregiverStatus::Busy,
        pb::CaregiverStatus::OnVisit => core::CaregiverStatus::OnVisit,
    })
}

pub fn core_mode(m: pb::TravelMode) -> core::TravelMode {
    match m {
        pb::TravelMode::Unspecified | pb::TravelMode::Walk => core::TravelMode::Walk,
        pb::TravelMode::Bike => core::TravelMode::Bike,
        pb::TravelMode::Car => core::TravelMode::Car,
    }
}

fn opt_ms(v: Option<i64>) -> i64 {
    v.unwrap_or(0)
}

fn ms_opt(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

impl From<&core::Incident> for IncidentPb {
    // Ids are copied as `as_str().to_owned()`: `to_string` on them goes
    // through the formatter, and this runs twice per alarm (the journal's
    // snapshot and the answer).
    fn from(i: &core::Incident) -> Self {
        IncidentPb(pb::Incident {
            id: i.id.to_string(),
            idempotency_key: i.key.as_str().to_owned(),
            elder_id: i.elder.as_str().to_owned(),
            device_id: i.device.as_ref().map(|d| d.as_str().to_owned()).unwrap_or_default(),
            kind: pb_alarm_kind(i.kind) as i32,
            severity: pb_severity(i.severity) as i32,
            state: pb_state(i.state) as i32,
            location: Some(to_pb_point(&i.location)),
            detail: i.detail.clone(),
            assigned_caregiver_id: i.assigned.as_ref().map(|c| c.as_str().to_owned()).unwrap_or_default(),
            declined_by: i.declined_by.iter().map(|c| c.as_str().to_owned()).collect(),
            dispatch_attempts: i.dispatch_attempts,
            assigned_eta_s: i.assigned_eta_s,
            received_unix_ms: i.received_ms,
            offered_unix_ms: opt_ms(i.offered_ms),
            accepted_unix_ms: opt_ms(i.accepted_ms),
            arrived_unix_ms: opt_ms(i.arrived_ms),
            closed_unix_ms: opt_ms(i.closed_ms),
            outcome: i.outcome.map(pb_outcome).unwrap_or(pb::ResolutionOutcome::Unspecified) as i32,
            resolution_note: i.resolution_note.clone(),
            escalation_reason: i.escalation.map(pb_escalation).unwrap_or(pb::EscalationReason::Unspecified) as i32,
            escalation_note: i.escalation_note.clone(),
            repeat_count: i.repeat_count,
            updated_unix_ms: i.updated_ms,
            offered_to: if i.state == core::IncidentState::Offered {
                i.assigned.iter().chain(i.co_offer.as_ref().map(|(c, _)| c)).map(|c| c.as_str().to_owned()).collect()
            } else {
                Vec::new()
            },
            deferred_reason: i.deferred_reason.clone().unwrap_or_default(),
            occurred_unix_ms: i.occurred_ms,
            first_offered_unix_ms: opt_ms(i.first_offered_ms),
            offer_deadline_unix_ms: opt_ms(i.offer_deadline_ms),
            last_alarm_unix_ms: i.last_alarm_ms,
            arrival_overdue: i.arrival_overdue,
            escalated_unix_ms: opt_ms(i.escalated_ms),
            co_offer_eta_s: i.co_offer.as_ref().map(|c| c.1).unwrap_or(0.0),
            last_alert_unix_ms: opt_ms(i.last_alert_ms),
            family_notified_unix_ms: opt_ms(i.family_notified_ms),
            required_skill: i.required_skill.as_deref().unwrap_or_default().to_owned(),
            preempted: i.preempted.iter().map(|c| c.as_str().to_owned()).collect(),
        })
    }
}

/// Newtype so the conversions live here rather than on foreign types.
pub struct IncidentPb(pub pb::Incident);

pub fn incident_pb(i: &core::Incident) -> pb::Incident {
    IncidentPb::from(i).0
}

/// Reads back an incident the server itself stored.
pub fn incident_from_pb(p: &pb::Incident) -> ApiResult<core::Incident> {
    let bad = |what: &str| ApiError::Internal(format!("stored incident {}: bad {what}", p.id));
    let cid = |s: &str| core::CaregiverId::parse("assigned_caregiver_id", s).map_err(|_| bad("caregiver id"));
    let kind = alarm_kind(pb::AlarmKind::try_from(p.kind).map_err(|_| bad("kind"))?).ok_or_else(|| bad("kind"))?;
    let state =
        core_state(pb::IncidentState::try_from(p.state).map_err(|_| bad("state"))?).ok_or_else(|| bad("state"))?;
    let location = p.location.as_ref().ok_or_else(|| bad("location"))?;
    Ok(core::Incident {
        id: core::IncidentId::parse("id", &p.id).map_err(|_| bad("id"))?,
        key: core::IdempotencyKey::parse("idempotency_key", &p.idempotency_key).map_err(|_| bad("key"))?,
        elder: core::ElderId::parse("elder_id", &p.elder_id).map_err(|_| bad("elder"))?,
        device: if p.device_id.is_empty() {
            None
        } else {
            Some(core::DeviceId::parse("device_id", &p.device_id).map_err(|_| bad("device"))?)
        },
        kind,
        severity: kind.severity(),
        state,
        location: core::GeoPoint::new("location", location.lat, location.lon).map_err(|_| bad("location"))?,
        detail: p.detail.clone(),
        required_skill: (!p.required_skill.is_empty()).then(|| p.required_skill.as_str().into()),
        assigned: if p.assigned_caregiver_id.is_empty() { None } else { Some(cid(&p.assigned_caregiver_id)?) },
        declined_by: p.declined_by.iter().map(|s| cid(s)).collect::<ApiResult<_>>()?,
        preempted: p.preempted.iter().map(|s| cid(s)).collect::<ApiResult<_>>()?,
        co_offer: match p.offered_to.get(1) {
            Some(c) if state == core::IncidentState::Offered => Some((cid(c)?, p.co_offer_eta_s)),
            _ => None,
        },
        dispatch_attempts: p.dispatch_attempts,
        assigned_eta_s: p.assigned_eta_s,
        occurred_ms: p.occurred_unix_ms,
        received_ms: p.received_unix_ms,
        first_offered_ms: ms_opt(p.first_offered_unix_ms),
        offered_ms: ms_opt(p.offered_unix_ms),
        offer_deadline_ms: ms_opt(p.offer_deadline_unix_ms),
        accepted_ms: ms_opt(p.accepted_unix_ms),
        arrived_ms: ms_opt(p.arrived_unix_ms),
        closed_ms: ms_opt(p.closed_unix_ms),
        outcome: pb::ResolutionOutcome::try_from(p.outcome).ok().and_then(core_outcome),
        resolution_note: p.resolution_note.clone(),
        escalation: pb::EscalationReason::try_from(p.escalation_reason).ok().and_then(core_escalation),
        escalation_note: p.escalation_note.clone(),
        escalated_ms: ms_opt(p.escalated_unix_ms),
        family_notified_ms: ms_opt(p.family_notified_unix_ms),
        repeat_count: p.repeat_count,
        last_alarm_ms: p.last_alarm_unix_ms,
        arrival_overdue: p.arrival_overdue,
        last_alert_ms: ms_opt(p.last_alert_unix_ms),
        updated_ms: p.updated_unix_ms,
        deferred_reason: (!p.deferred_reason.is_empty()).then(|| p.deferred_reason.clone()),
    })
}

pub fn event_kind_pb(k: core::EventKind) -> pb::IncidentEventKind {
    use core::EventKind as C;
    use pb::IncidentEventKind as P;
    match k {
        C::Created => P::Created,
        C::Offered => P::Offered,
        C::Accepted => P::Accepted,
        C::Declined => P::Declined,
        C::OfferExpired => P::OfferExpired,
        C::Arrived => P::Arrived,
        C::Resolved => P::Resolved,
        C::Cancelled => P::Cancelled,
        C::Escalated => P::Escalated,
        C::Reassigned => P::Reassigned,
        C::Merged => P::Merged,
        C::ArrivalOverdue => P::ArrivalOverdue,
        C::Deferred => P::Deferred,
        C::OfferWithdrawn => P::OfferWithdrawn,
        C::OnSceneOverdue => P::OnSceneOverdue,
        C::FamilyNotified => P::FamilyNotified,
        C::Preempted => P::Preempted,
    }
}

// ------------------------------------------------------------------ registry

/// Validates an elder for UpsertElder; returns it with live/derived fields normalised.
pub fn validate_elder(e: &pb::Elder) -> ApiResult<pb::Elder> {
    core::ElderId::parse("id", &e.id)?;
    text("name", &e.name, MAX_TEXT_BYTES)?;
    text("address", &e.address, MAX_TEXT_BYTES)?;
    text("phone", &e.phone, 64)?;
    text("district", &e.district, MAX_TEXT_BYTES)?;
    text("notes", &e.notes, MAX_NOTES_BYTES)?;
    text("required_skill", &e.required_skill, 64)?;
    geo("location", e.location.as_ref())?;
    if e.family_contacts.len() > MAX_LIST_ITEMS {
        return Err(ApiError::invalid("family_contacts", format!("at most {MAX_LIST_ITEMS} contacts")));
    }
    for (i, c) in e.family_contacts.iter().enumerate() {
        text(&format!("family_contacts[{i}].name"), &c.name, MAX_TEXT_BYTES)?;
        text(&format!("family_contacts[{i}].relation"), &c.relation, 64)?;
        text(&format!("family_contacts[{i}].phone"), &c.phone, 64)?;
        if c.phone.is_empty() {
            return Err(ApiError::invalid(format!("family_contacts[{i}].phone"), "must not be empty"));
        }
    }
    for (i, c) in e.categories.iter().enumerate() {
        known_enum::<pb::ElderCategory>(&format!("categories[{i}]"), *c, "ElderCategory")?;
    }
    if e.visits_per_month > 31 {
        return Err(ApiError::invalid("visits_per_month", format!("{} is more than one a day", e.visits_per_month)));
    }
    Ok(e.clone())
}

fn validate_shift(s: &pb::Shift) -> ApiResult<()> {
    if s.start_min >= 24 * 60 || s.end_min > 24 * 60 || s.start_min >= s.end_min {
        return Err(ApiError::invalid(
            "shift",
            format!("start {} to end {} minutes is not a window inside one day", s.start_min, s.end_min),
        ));
    }
    for (i, d) in s.days.iter().enumerate() {
        known_enum::<pb::Weekday>(&format!("shift.days[{i}]"), *d, "Weekday")?;
    }
    Ok(())
}

/// Validates a caregiver for UpsertCaregiver; live fields are cleared (the
/// server owns them).
pub fn validate_caregiver(c: &pb::Caregiver) -> ApiResult<pb::Caregiver> {
    core::CaregiverId::parse("id", &c.id)?;
    text("name", &c.name, MAX_TEXT_BYTES)?;
    text("phone", &c.phone, 64)?;
    geo("home", c.home.as_ref())?;
    if c.skills.len() > MAX_LIST_ITEMS {
        return Err(ApiError::invalid("skills", format!("at most {MAX_LIST_ITEMS} skills")));
    }
    for (i, s) in c.skills.iter().enumerate() {
        if s.is_empty() || s.len() > 64 {
            return Err(ApiError::invalid(format!("skills[{i}]"), "must be 1 to 64 bytes"));
        }
    }
    if let Some(s) = &c.shift {
        validate_shift(s)?;
    }
    pb::TravelMode::try_from(c.mode)
        .map_err(|_| ApiError::invalid("mode", format!("{} is not a TravelMode", c.mode)))?;
    Ok(pb::Caregiver {
        status: 0,
        last_location: None,
        last_seen_unix_ms: 0,
        active_incident_id: String::new(),
        ..c.clone()
    })
}

pub fn caregiver_profile(c: &pb::Caregiver) -> ApiResult<core::CaregiverProfile> {
    Ok(core::CaregiverProfile {
        id: core::CaregiverId::parse("id", &c.id)?,
        skills: c.skills.clone(),
        home: geo("home", c.home.as_ref())?,
        mode: core_mode(c.mode()),
    })
}

pub fn validate_device(d: &pb::Device) -> ApiResult<pb::Device> {
    core::DeviceId::parse("id", &d.id)?;
    core::ElderId::parse("elder_id", &d.elder_id)?;
    known_enum::<pb::DeviceKind>("kind", d.kind, "DeviceKind")?;
    text("model", &d.model, MAX_TEXT_BYTES)?;
    if d.heartbeat_interval_s > 7 * 24 * 3600 {
        return Err(ApiError::invalid("heartbeat_interval_s", "at most one week"));
    }
    Ok(pb::Device { last_heartbeat_unix_ms: 0, online: false, battery_pct: 0, ..d.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidents_round_trip_through_the_protocol() {
        let alarm = core::Alarm {
            key: core::IdempotencyKey::parse("k", "key-1").unwrap(),
            elder: core::ElderId::parse("e", "E1").unwrap(),
            device: Some(core::DeviceId::parse("d", "D1").unwrap()),
            kind: core::AlarmKind::Gas,
            location: core::GeoPoint::new("l", 43.9, 125.4).unwrap(),
            occurred_ms: 5,
            detail: "kitchen".into(),
            required_skill: Some("nursing".into()),
        };
        let d = core::Dispatcher::new(
            Default::default(),
            std::sync::Arc::new(core::NoJournal),
            std::sync::Arc::new(core::NoSink),
            std::sync::Arc::new(core::ManualClock::new(1000)),
        );
        let escalated = d.raise(alarm.clone()).unwrap().incident;
        assert!(escalated.escalated_ms.is_some());
        // A critical alarm with two caregivers free holds two live offers, one
        // of them taken off a visit.
        let visiting = [core::CaregiverStatus::Available, core::CaregiverStatus::OnVisit];
        for ((id, lat), status) in [("C1", 43.9), ("C2", 43.91)].into_iter().zip(visiting) {
            let cg = core::CaregiverId::parse("id", id).unwrap();
            let home = core::GeoPoint::new("home", lat, 125.4).unwrap();
            d.upsert_caregiver(core::CaregiverProfile {
                id: cg.clone(),
                skills: vec![],
                home,
                mode: core::TravelMode::Bike,
            });
            d.set_status(&cg, status, None).unwrap();
        }
        let dual = d
            .raise(core::Alarm {
                key: core::IdempotencyKey::parse("k", "key-2").unwrap(),
                kind: core::AlarmKind::Fall,
                ..alarm
            })
            .unwrap()
            .incident;
        assert!(dual.co_offer.is_some());
        assert_eq!(dual.preempted, [core::CaregiverId::parse("id", "C2").unwrap()]);
        for inc in [escalated, dual] {
            let back = incident_from_pb(&incident_pb(&inc)).unwrap();
            assert_eq!(back, inc);
        }
    }

    #[test]
    fn elder_validation_names_the_field() {
        let mut e =
            pb::Elder { id: "E1".into(), location: Some(pb::GeoPoint { lat: 43.0, lon: 125.0 }), ..Default::default() };
        assert!(validate_elder(&e).is_ok());
        e.location = Some(pb::GeoPoint { lat: f64::NAN, lon: 125.0 });
        assert_eq!(
            validate_elder(&e).unwrap_err().to_string(),
            "location.lat: latitude NaN is not a finite number in [-90, 90]"
        );
        e.location = None;
        assert_eq!(validate_elder(&e).unwrap_err().to_string(), "location: is required");
        e.location = Some(pb::GeoPoint { lat: 43.0, lon: 125.0 });
        e.family_contacts.push(pb::FamilyContact {
            name: "女儿".into(),
            relation: "daughter".into(),
            phone: String::new(),
        });
        assert_eq!(validate_elder(&e).unwrap_err().to_string(), "family_contacts[0].phone: must not be empty");
        e.family_contacts.clear();
        e.categories.push(42);
        assert!(validate_elder(&e).unwrap_err().to_string().starts_with("categories[0]:"));
    }
}
