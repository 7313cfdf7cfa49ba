//! Alarms as accepted at intake, incidents, and the events that change them.

use std::sync::Arc;

use crate::geo::GeoPoint;
use crate::lifecycle::IncidentState;
use crate::types::{
    AlarmKind, CaregiverId, DeviceId, ElderId, EscalationReason, IdempotencyKey, IncidentId, Outcome, Severity,
};

/// A validated alarm, ready for intake.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub key: IdempotencyKey,
    pub elder: ElderId,
    pub device: Option<DeviceId>,
    pub kind: AlarmKind,
    /// Where help is needed (the elder's home unless the device reported a position).
    pub location: GeoPoint,
    pub occurred_ms: i64,
    pub detail: String,
    /// The skill the elder's care needs (the registry's `required_skill`):
    /// dispatch prefers a caregiver who holds it (see
    /// `DispatchConfig::skill_slack_s`).
    pub required_skill: Option<Arc<str>>,
}

/// An incident: one alarm (plus merged repeats) followed to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: IncidentId,
    pub key: IdempotencyKey,
    pub elder: ElderId,
    pub device: Option<DeviceId>,
    pub kind: AlarmKind,
    pub severity: Severity,
    pub state: IncidentState,
    pub location: GeoPoint,
    pub detail: String,
    /// The skill the elder's care needs, from the alarm.
    pub required_skill: Option<Arc<str>>,
    /// The caregiver holding the incident (offered, accepted or on scene).
    pub assigned: Option<CaregiverId>,
    pub declined_by: Vec<CaregiverId>,
    /// A second live offer and its ETA: critical alarms are offered to the two
    /// nearest at once, and the first to accept takes the incident.
    pub co_offer: Option<(CaregiverId, f64)>,
    /// Holders (of the offer or the co-offer) who were taken off a scheduled
    /// visit for this incident and have not accepted it: released, they go
    /// back to the visit. Kept here so that a restart, or the undo of a
    /// change the journal refused, knows it too.
    pub preempted: Vec<CaregiverId>,
    pub dispatch_attempts: u32,
    pub assigned_eta_s: f64,
    pub occurred_ms: i64,
    pub received_ms: i64,
    /// First offer of the incident (KPI: receipt to first offer).
    pub first_offered_ms: Option<i64>,
    /// Latest offer and its deadline.
    pub offered_ms: Option<i64>,
    pub offer_deadline_ms: Option<i64>,
    pub accepted_ms: Option<i64>,
    pub arrived_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    pub outcome: Option<Outcome>,
    pub resolution_note: String,
    pub escalation: Option<EscalationReason>,
    pub escalation_note: String,
    /// When the incident was escalated (the ladder's clock).
    pub escalated_ms: Option<i64>,
    /// When the ladder reached the elder's family contact and the district
    /// supervisor queue (or a dispatcher escalated to the family by hand).
    pub family_notified_ms: Option<i64>,
    pub repeat_count: u32,
    pub last_alarm_ms: i64,
    pub arrival_overdue: bool,
    /// The last console alert about the holder taking too long (arrival
    /// overdue, or a long stay on scene); the next is due an interval later.
    pub last_alert_ms: Option<i64>,
    pub updated_ms: i64,
    pub deferred_reason: Option<String>,
}

impl Incident {
    pub(crate) fn open(id: IncidentId, alarm: Alarm, now_ms: i64) -> Self {
        Incident {
            id,
            key: alarm.key,
            elder: alarm.elder,
            device: alarm.device,
            kind: alarm.kind,
            severity: alarm.kind.severity(),
            state: IncidentState::Pending,
            location: alarm.location,
            detail: alarm.detail,
            required_skill: alarm.required_skill,
            assigned: None,
            declined_by: Vec::new(),
            co_offer: None,
            preempted: Vec::new(),
            dispatch_attempts: 0,
            assigned_eta_s: 0.0,
            occurred_ms: alarm.occurred_ms,
            received_ms: now_ms,
            first_offered_ms: None,
            offered_ms: None,
            offer_deadline_ms: None,
            accepted_ms: None,
            arrived_ms: None,
            closed_ms: None,
            outcome: None,
            resolution_note: String::new(),
            escalation: None,
            escalation_note: String::new(),
            escalated_ms: None,
            family_notified_ms: None,
            repeat_count: 0,
            last_alarm_ms: now_ms,
            arrival_overdue: false,
            last_alert_ms: None,
            updated_ms: now_ms,
            deferred_reason: None,
        }
    }

    /// Moves the incident to state `to`. Every change of state goes through
    /// here, checked against the life cycle's one table
    /// ([`IncidentState::can_transition_to`]); callers check a transition a
    /// client asks for before they change anything, so a failure here is a
    /// bug in the dispatcher.
    pub(crate) fn set_state(&mut self, to: IncidentState) {
        debug_assert!(self.state.can_transition_to(to), "{} cannot go from {:?} to {to:?}", self.id, self.state);
        self.state = to;
    }
}

/// What happened to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Offered,
    Accepted,
    Declined,
    OfferExpired,
    Arrived,
    Resolved,
    Cancelled,
    Escalated,
    Reassigned,
    Merged,
    /// The caregiver has not arrived in time (repeated while it lasts).
    ArrivalOverdue,
    Deferred,
    OfferWithdrawn,
    /// The escalation ladder's second rung: the elder's family contact and
    /// the district supervisor queue are notified (once per incident, after
    /// the ESCALATED event of an automatic escalation).
    FamilyNotified,
    /// A console alert: the caregiver has been on scene longer than
    /// `on_scene_alert_ms` (repeated every `on_scene_realert_ms` until closed).
    OnSceneOverdue,
    /// The caregiver offered (or reassigned) the incident was taken off a
    /// scheduled visit: the scheduler re-plans the visit. Follows the offer.
    Preempted,
}

/// One change of one incident: journaled before it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentEvent {
    pub kind: EventKind,
    pub at_ms: i64,
    /// The incident after the event.
    pub incident: Incident,
    /// The caregiver the event concerns (offered to, declined by, released...).
    pub caregiver: Option<CaregiverId>,
    /// The alarm that caused the event, for Created and Merged (its key is
    /// recorded so a retry of it is recognised after a restart).
    pub alarm_key: Option<IdempotencyKey>,
    pub note: String,
}
