//! The incident life cycle: one state enum and one transition table.
//!
//! ```text
//! Pending ──► Offered ──► Accepted ──► OnScene ──► Resolved
//!   ▲  │        │  ▲         │            │
//!   │  │        ▼  │         ▼            ▼
//!   │  └──────► Escalated ◄──┴────────────┘      (dispatcher reassigns or resolves)
//!   └── Deferred (routine alarms under overload)
//! ```
//! Any non-terminal state may be Cancelled. Resolved and Cancelled are terminal.
//! The dispatcher changes a state only through `Incident::set_state`, which
//! checks it against this table.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncidentState {
    /// Durable, waiting for a caregiver.
    Pending,
    /// A caregiver holds the offer (and is busy); waiting for acknowledgement.
    Offered,
    /// The caregiver acknowledged and is on the way.
    Accepted,
    /// The caregiver is with the elder.
    OnScene,
    Resolved,
    Cancelled,
    /// Nobody could take it; a dispatcher must act. Visible on every console.
    Escalated,
    /// A routine alarm parked under overload; it returns to Pending.
    Deferred,
}

impl IncidentState {
    pub const ALL: [IncidentState; 8] = [
        IncidentState::Pending,
        IncidentState::Offered,
        IncidentState::Accepted,
        IncidentState::OnScene,
        IncidentState::Resolved,
        IncidentState::Cancelled,
        IncidentState::Escalated,
        IncidentState::Deferred,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, IncidentState::Resolved | IncidentState::Cancelled)
    }

    /// Open incidents are the ones a restart must rebuild.
    pub fn is_open(self) -> bool {
        !self.is_terminal()
    }

    /// Whether a caregiver is bound to the incident in this state.
    pub fn holds_caregiver(self) -> bool {
        matches!(self, IncidentState::Offered | IncidentState::Accepted | IncidentState::OnScene)
    }

    /// The single transition table of the life cycle.
    pub fn can_transition_to(self, to: IncidentState) -> bool {
        use IncidentState::*;
        match (self, to) {
            (Resolved | Cancelled, _) => false,
            (_, Cancelled) => true,
            (Pending, Offered | Escalated | Deferred) => true,
            (Deferred, Pending | Offered | Escalated) => true,
            // Offered -> Pending: declined or expired, before the next offer.
            // Offered -> Offered: re-offered to another caregiver in one step.
            (Offered, Pending | Offered | Accepted | Escalated | Resolved) => true,
            // Accepted -> Offered: a dispatcher reassigns.
            (Accepted, OnScene | Escalated | Resolved | Offered) => true,
            (OnScene, Resolved | Escalated) => true,
            (Escalated, Offered | Resolved | Escalated) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IncidentState::{self, *};

    /// Every pair of states, with the expected answer written out by hand.
    #[test]
    fn walks_every_transition() {
        let allowed: &[(IncidentState, &[IncidentState])] = &[
            (Pending, &[Offered, Escalated, Deferred, Cancelled]),
            (Offered, &[Pending, Offered, Accepted, Escalated, Resolved, Cancelled]),
            (Accepted, &[OnScene, Escalated, Resolved, Offered, Cancelled]),
            (OnScene, &[Resolved, Escalated, Cancelled]),
            (Resolved, &[]),
            (Cancelled, &[]),
            (Escalated, &[Offered, Resolved, Escalated, Cancelled]),
            (Deferred, &[Pending, Offered, Escalated, Cancelled]),
        ];
        assert_eq!(allowed.len(), IncidentState::ALL.len());
        for (from, tos) in allowed {
            for to in IncidentState::ALL {
                assert_eq!(from.can_transition_to(to), tos.contains(&to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn every_open_state_can_reach_an_end() {
        for s in IncidentState::ALL.into_iter().filter(|s| s.is_open()) {
            assert!(s.can_transition_to(Cancelled));
            assert!(s.can_transition_to(Escalated) || s.can_transition_to(Pending), "{s:?}");
        }
    }
}
