//! Telecare KPIs kept as the incidents change, in HDR histograms and
//! counters, so reading them costs the same after a million incidents as
//! after ten, and closed incidents can leave memory: time from receipt to
//! first offer, the share of alarms accepted within 60 s and 180 s, time from
//! receipt to arrival (and from acceptance to arrival), escalations by reason,
//! incidents by state.
//!
//! An alarm, for these measures, is one that opened an incident: a retry of
//! a known key and a repeat merged into an open incident are not separate
//! alarms (they are counted as `duplicates` and `merged`), and an alarm
//! refused under overload was never taken in.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::incident::{EventKind, Incident, IncidentEvent};
use crate::lifecycle::IncidentState;
use crate::types::EscalationReason;

const REASONS: [EscalationReason; 6] = [
    EscalationReason::NoCaregiverAvailable,
    EscalationReason::AllDeclined,
    EscalationReason::ArrivalOverdue,
    EscalationReason::Manual,
    EscalationReason::FamilyContact,
    EscalationReason::EmergencyServices,
];

/// Percentiles of one latency, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The KPIs at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KpiSnapshot {
    pub alarms_received: u64,
    pub duplicates: u64,
    pub merged: u64,
    /// Open incidents by state (from memory) and closed ones (counted).
    pub incidents_by_state: Vec<(IncidentState, u64)>,
    pub receipt_to_first_offer: Latency,
    /// Time to arrival, the telecare measure: from receipt of the alarm to
    /// the caregiver's arrival.
    pub receipt_to_arrival: Latency,
    /// The caregiver's part of it: from acceptance to arrival.
    pub acceptance_to_arrival: Latency,
    /// Alarms that opened an incident (see the module's note): the
    /// denominator of the acceptance shares, so an alarm escalated without
    /// any offer counts as not accepted in time.
    pub incidents_opened: u64,
    /// Incidents offered at least once.
    pub offered: u64,
    /// Incidents accepted within 60 s (180 s) of receipt.
    pub accepted_within_60s: u64,
    pub accepted_within_180s: u64,
    /// Every escalation and ladder step, by reason: each escalation event
    /// counts, so an incident escalated twice for one reason counts twice.
    pub escalations: Vec<(EscalationReason, u64)>,
}

impl KpiSnapshot {
    /// Share of alarms accepted within 60 s of receipt.
    pub fn accepted_within_60s_ratio(&self) -> f64 {
        ratio(self.accepted_within_60s, self.incidents_opened)
    }

    /// Share of alarms accepted within 180 s of receipt.
    pub fn accepted_within_180s_ratio(&self) -> f64 {
        ratio(self.accepted_within_180s, self.incidents_opened)
    }

    pub fn open(&self) -> u64 {
        self.incidents_by_state.iter().filter(|(s, _)| s.is_open()).map(|(_, n)| n).sum()
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

pub(crate) struct Kpis {
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub merged: AtomicU64,
    opened: AtomicU64,
    offered: AtomicU64,
    accepted_60: AtomicU64,
    accepted_180: AtomicU64,
    escalations: [AtomicU64; REASONS.len()],
    resolved: AtomicU64,
    cancelled: AtomicU64,
    to_first_offer: Mutex<Histogram<u64>>,
    to_arrival: Mutex<Histogram<u64>>,
    accepted_to_arrival: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 ms .. 1 day at 3 significant digits.
    Histogram::new_with_bounds(1, 86_400_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn record(h: &Mutex<Histogram<u64>>, ms: i64) {
    h.lock().saturating_record(ms.max(1) as u64);
}

fn latency(h: &Mutex<Histogram<u64>>) -> Latency {
    let h = h.lock();
    if h.is_empty() {
        return Latency::default();
    }
    let q = |p: f64| h.value_at_quantile(p) as f64;
    Latency { count: h.len(), p50_ms: q(0.5), p90_ms: q(0.9), p99_ms: q(0.99), max_ms: h.max() as f64 }
}

impl Default for Kpis {
    fn default() -> Self {
        Kpis {
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            offered: AtomicU64::new(0),
            accepted_60: AtomicU64::new(0),
            accepted_180: AtomicU64::new(0),
            escalations: Default::default(),
            resolved: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            to_first_offer: Mutex::new(histogram()),
            to_arrival: Mutex::new(histogram()),
            accepted_to_arrival: Mutex::new(histogram()),
        }
    }
}

impl Kpis {
    /// Counts what changed from `before` (None: a new incident) to `after`.
    /// Escalations are counted from the events: see [`Kpis::count_escalations`].
    pub fn observe(&self, before: Option<&Incident>, after: &Incident) {
        if let Some(ms) = self.count(before, after) {
            record(&self.to_first_offer, ms);
        }
    }

    /// Counts an incident read back after a restart (its events are not
    /// replayed: its latest escalation reason is counted once, and the family
    /// rung if it was reached).
    pub fn observe_restored(&self, inc: &Incident) {
        self.observe(None, inc);
        if let Some(r) = inc.escalation {
            self.escalated(r);
        }
        if inc.family_notified_ms.is_some() && inc.escalation != Some(EscalationReason::FamilyContact) {
            self.escalated(EscalationReason::FamilyContact);
        }
    }

    /// Counts every escalation event and ladder step of `events` (durable
    /// ones only): an ESCALATED event by the reason it recorded, the family
    /// rung (FAMILY_NOTIFIED) as `FamilyContact`.
    pub fn count_escalations(&self, events: &[IncidentEvent]) {
        for e in events {
            match e.kind {
                EventKind::Escalated => {
                    if let Some(r) = e.incident.escalation {
                        self.escalated(r);
                    }
                }
                EventKind::FamilyNotified => self.escalated(EscalationReason::FamilyContact),
                _ => {}
            }
        }
    }

    fn escalated(&self, r: EscalationReason) {
        if let Some(i) = REASONS.iter().position(|x| *x == r) {
            self.escalations[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a new incident as `observe(None, ..)` does, but leaves its
    /// receipt-to-first-offer time (returned) for [`Kpis::record_first_offers`],
    /// so a batch takes the histogram's lock once.
    pub fn observe_new(&self, inc: &Incident) -> Option<i64> {
        self.count(None, inc)
    }

    pub fn record_first_offers(&self, ms: &[i64]) {
        if !ms.is_empty() {
            let mut h = self.to_first_offer.lock();
            for t in ms {
                h.saturating_record((*t).max(1) as u64);
            }
        }
    }

    /// Counts the change, except the receipt-to-first-offer time of an
    /// incident offered for the first time, which it returns.
    fn count(&self, before: Option<&Incident>, after: &Incident) -> Option<i64> {
        let newly = |f: fn(&Incident) -> Option<i64>| f(after).filter(|_| before.and_then(f).is_none());
        if before.is_none() {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        let first_offer = newly(|i| i.first_offered_ms).map(|t| {
            self.offered.fetch_add(1, Ordering::Relaxed);
            t - after.received_ms
        });
        if let Some(t) = newly(|i| i.accepted_ms) {
            let waited = t - after.received_ms;
            if waited <= 60_000 {
                self.accepted_60.fetch_add(1, Ordering::Relaxed);
            }
            if waited <= 180_000 {
                self.accepted_180.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(t) = newly(|i| i.arrived_ms) {
            record(&self.to_arrival, t - after.received_ms);
            if let Some(a) = after.accepted_ms {
                record(&self.accepted_to_arrival, t - a);
            }
        }
        if before.map(|b| b.state) != Some(after.state) {
            match after.state {
                IncidentState::Resolved => self.resolved.fetch_add(1, Ordering::Relaxed),
                IncidentState::Cancelled => self.cancelled.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        first_offer
    }

    /// A snapshot; `open` counts the open incidents by state.
    pub fn snapshot(&self, open: impl Iterator<Item = IncidentState>) -> KpiSnapshot {
        let mut by_state: Vec<(IncidentState, u64)> = IncidentState::ALL.iter().map(|s| (*s, 0)).collect();
        for s in open {
            if let Some(e) = by_state.iter_mut().find(|(x, _)| *x == s) {
                e.1 += 1;
            }
        }
        for (s, n) in &mut by_state {
            match s {
                IncidentState::Resolved => *n = self.resolved.load(Ordering::Relaxed),
                IncidentState::Cancelled => *n = self.cancelled.load(Ordering::Relaxed),
                _ => {}
            }
        }
        KpiSnapshot {
            alarms_received: self.received.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            merged: self.merged.load(Ordering::Relaxed),
            incidents_by_state: by_state,
            receipt_to_first_offer: latency(&self.to_first_offer),
            receipt_to_arrival: latency(&self.to_arrival),
            acceptance_to_arrival: latency(&self.accepted_to_arrival),
            incidents_opened: self.opened.load(Ordering::Relaxed),
            offered: self.offered.load(Ordering::Relaxed),
            accepted_within_60s: self.accepted_60.load(Ordering::Relaxed),
            accepted_within_180s: self.accepted_180.load(Ordering::Relaxed),
            escalations: REASONS
                .iter()
                .zip(&self.escalations)
                .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}
