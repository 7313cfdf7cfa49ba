//! Fan-out of durable incident events to dispatch consoles and caregiver apps
//! through bounded broadcast channels. A slow console never slows dispatch: it
//! lags, and is told to resync.

use std::sync::Arc;

use dashmap::DashMap;
use dispatch_core::{EventKind, IncidentEvent};
use parking_lot::Mutex;
use proto::v1 as pb;
use tokio::sync::broadcast;

use crate::convert::{event_kind_pb, incident_pb};
use crate::registry::Registry;

/// Events buffered per console before it lags.
pub const CONSOLE_BUFFER: usize = 8192;
/// Events buffered per caregiver app before it lags.
pub const CAREGIVER_BUFFER: usize = 64;

pub struct Fanout {
    registry: Arc<Registry>,
    /// Sequence numbers are assigned under this lock so they are increasing in channel order.
    console: Mutex<(u64, broadcast::Sender<Arc<pb::IncidentEvent>>)>,
    caregivers: DashMap<String, broadcast::Sender<pb::AssignmentEvent>>,
}

impl Fanout {
    pub fn new(registry: Arc<Registry>) -> Self {
        let (tx, _) = broadcast::channel(CONSOLE_BUFFER);
        Fanout { registry, console: Mutex::new((0, tx)), caregivers: DashMap::new() }
    }

    pub fn subscribe_console(&self) -> broadcast::Receiver<Arc<pb::IncidentEvent>> {
        self.console.lock().1.subscribe()
    }

    pub fn subscribe_caregiver(&self, id: &str) -> broadcast::Receiver<pb::AssignmentEvent> {
        self.caregivers.entry(id.to_owned()).or_insert_with(|| broadcast::channel(CAREGIVER_BUFFER).0).subscribe()
    }

    /// The assignment event for `incident` as seen by caregiver `cg`.
    pub fn assignment(&self, kind: pb::AssignmentEventKind, incident: pb::Incident) -> pb::AssignmentEvent {
        let elder = self.registry.elders.get(&incident.elder_id).map(|e| e.clone());
        pb::AssignmentEvent {
            kind: kind as i32,
            eta_s: incident.assigned_eta_s,
            respond_by_unix_ms: incident.offer_deadline_unix_ms,
            incident: Some(incident),
            elder,
        }
    }

    /// `note` followed by the elder's family contacts from the registry, for
    /// the console to call (the core knows the elder only by id).
    fn with_family_contacts(&self, note: &str, elder: &str) -> String {
        use std::fmt::Write;
        let mut out = note.to_owned();
        match self.registry.elders.get(elder) {
            Some(e) if !e.family_contacts.is_empty() => {
                out.push_str("; family contacts:");
                for (i, c) in e.family_contacts.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    let _ = write!(out, "{sep}{} ({}) {}", c.name, c.relation, c.phone);
                }
            }
            _ => out.push_str("; no family contact registered"),
        }
        out
    }

    fn to_caregiver(
        &self,
        cg: &str,
        tx: &broadcast::Sender<pb::AssignmentEvent>,
        kind: pb::AssignmentEventKind,
        incident: &pb::Incident,
    ) {
        if tx.send(self.assignment(kind, incident.clone())).is_err() {
            // Nobody listens any more; forget the channel unless someone re-subscribed.
            self.caregivers.remove_if(cg, |_, t| t.receiver_count() == 0);
        }
    }
}

impl dispatch_core::EventSink for Fanout {
    /// Converts each event only for the listeners it has; the console lock is
    /// taken once per batch of events.
    fn publish(&self, events: &[IncidentEvent]) {
        use pb::AssignmentEventKind as A;
        let mut console = self.console.lock();
        let consoles = console.1.receiver_count() > 0;
        for e in events {
            let mut incident = None;
            let cg = e.caregiver.as_ref().map(|c| c.as_str());
            if let Some(cg) = cg {
                let kind = match e.kind {
                    EventKind::Offered | EventKind::Reassigned => Some(A::Offer),
                    EventKind::Declined | EventKind::OfferExpired | EventKind::OfferWithdrawn => Some(A::Withdrawn),
                    EventKind::Resolved | EventKind::Cancelled | EventKind::Escalated => Some(A::Closed),
                    EventKind::Merged
                    | EventKind::ArrivalOverdue
                    | EventKind::OnSceneOverdue
                    | EventKind::Accepted
                    | EventKind::Arrived => Some(A::Updated),
                    // The caregiver's app hears of a pre-emption through the offer itself.
                    EventKind::Created | EventKind::Deferred | EventKind::FamilyNotified | EventKind::Preempted => None,
                };
                // Converted only if the caregiver's app is listening.
                if let Some((kind, tx)) = kind.and_then(|k| Some((k, self.caregivers.get(cg)?.clone()))) {
                    self.to_caregiver(cg, &tx, kind, incident.get_or_insert_with(|| incident_pb(&e.incident)));
                }
            }
            // Sequence numbers count every event, listened to or not.
            console.0 += 1;
            if !consoles {
                continue; // no console listening is fine: events are durable in the store
            }
            let note = match e.kind {
                EventKind::FamilyNotified => self.with_family_contacts(&e.note, e.incident.elder.as_str()),
                _ => e.note.clone(),
            };
            let ev = pb::IncidentEvent {
                seq: console.0,
                at_unix_ms: e.at_ms,
                kind: event_kind_pb(e.kind) as i32,
                incident: Some(incident.unwrap_or_else(|| incident_pb(&e.incident))),
                caregiver_id: cg.unwrap_or_default().to_owned(),
                note,
            };
            let _ = console.1.send(Arc::new(ev));
        }
    }
}
