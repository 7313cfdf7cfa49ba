//! Identifiers and the alarm taxonomy. Ids are validated once, at the edge,
//! and are cheap to clone afterwards.

use std::fmt;
use std::sync::Arc;

use crate::error::{DispatchError, Result};

/// Longest id accepted for elders, caregivers, devices and idempotency keys.
pub const MAX_ID_BYTES: usize = 128;

fn check_id(field: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(DispatchError::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(DispatchError::invalid(
            field,
            format!("is {} bytes long; at most {MAX_ID_BYTES} allowed", s.len()),
        ));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(DispatchError::invalid(field, format!("{s:?} contains whitespace or control characters")));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` (non-empty, at most 128 bytes, no whitespace); `field` names it in errors.
            pub fn parse(field: &str, s: &str) -> Result<Self> {
                check_id(field, s)?;
                Ok($name(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

string_id!(
    /// A registered elder.
    ElderId
);
string_id!(
    /// A registered caregiver.
    CaregiverId
);
string_id!(
    /// A device bound to an elder.
    DeviceId
);
string_id!(
    /// The sender's idempotency key of one alarm.
    IdempotencyKey
);

/// An incident, numbered by the server in order of creation; shown as `inc-N`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct IncidentId(pub u64);

impl IncidentId {
    pub fn parse(field: &str, s: &str) -> Result<Self> {
        s.strip_prefix("inc-")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .map(IncidentId)
            .ok_or_else(|| DispatchError::invalid(field, format!("{s:?} is not an incident id (inc-N)")))
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inc-{}", self.0)
    }
}

/// Severity lanes; the derived order is the dispatch priority (Critical highest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Routine,
    Urgent,
    Critical,
}

/// What raised the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlarmKind {
    /// 一键呼叫
    SosButton,
    Fall,
    /// 人体状态感应: no movement for too long.
    Inactivity,
    Smoke,
    Gas,
    /// 防走失: a locator left its geofence.
    Wandering,
    AbnormalVitals,
    DeviceOffline,
    LowBattery,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 9] = [
        AlarmKind::SosButton,
        AlarmKind::Fall,
        AlarmKind::Inactivity,
        AlarmKind::Smoke,
        AlarmKind::Gas,
        AlarmKind::Wandering,
        AlarmKind::AbnormalVitals,
        AlarmKind::DeviceOffline,
        AlarmKind::LowBattery,
    ];

    pub fn severity(self) -> Severity {
        match self {
            AlarmKind::SosButton | AlarmKind::Fall | AlarmKind::Smoke | AlarmKind::Gas => Severity::Critical,
            AlarmKind::Inactivity | AlarmKind::Wandering | AlarmKind::AbnormalVitals => Severity::Urgent,
            AlarmKind::DeviceOffline | AlarmKind::LowBattery => Severity::Routine,
        }
    }
}

/// Why an incident was escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EscalationReason {
    NoCaregiverAvailable,
    AllDeclined,
    ArrivalOverdue,
    Manual,
    /// A dispatcher escalated to the elder's family by hand. The ladder's own
    /// family rung keeps the reason the incident was escalated for and is
    /// recorded as `Incident::family_notified_ms` and a FAMILY_NOTIFIED event;
    /// the KPIs count both under this reason.
    FamilyContact,
    /// The ladder's last rung: a 120/119 hand-off record.
    EmergencyServices,
}

/// How a resolved incident ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Assisted,
    FalseAlarm,
    HospitalTransfer,
    EmergencyServices,
    FamilyHandled,
    DeviceFixed,
    Other,
}

/// A caregiver's duty status. `Busy` is set by the dispatcher only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CaregiverStatus {
    OffDuty = 0,
    Available = 1,
    Busy = 2,
    OnVisit = 3,
}

impl CaregiverStatus {
    pub(crate) fn from_u8(v: u8) -> CaregiverStatus {
        match v {
            1 => CaregiverStatus::Available,
            2 => CaregiverStatus::Busy,
            3 => CaregiverStatus::OnVisit,
            _ => CaregiverStatus::OffDuty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_with_the_field_name() {
        assert_eq!(ElderId::parse("elder_id", "E001").unwrap().as_str(), "E001");
        let e = ElderId::parse("elder_id", "").unwrap_err();
        assert_eq!(e.to_string(), "elder_id: must not be empty");
        let e = CaregiverId::parse("caregiver_id", &"x".repeat(129)).unwrap_err();
        assert!(e.to_string().contains("at most 128"), "{e}");
        assert!(DeviceId::parse("device_id", "a b").is_err());
    }

    #[test]
    fn incident_ids_round_trip() {
        let id = IncidentId(42);
        assert_eq!(IncidentId::parse("incident_id", &id.to_string()).unwrap(), id);
        assert!(IncidentId::parse("incident_id", "inc-0").is_err());
        assert!(IncidentId::parse("incident_id", "42").is_err());
    }

    #[test]
    fn severity_lanes() {
        assert_eq!(AlarmKind::SosButton.severity(), Severity::Critical);
        assert_eq!(AlarmKind::Wandering.severity(), Severity::Urgent);
        assert_eq!(AlarmKind::LowBattery.severity(), Severity::Routine);
        assert!(Severity::Critical > Severity::Urgent && Severity::Urgent > Severity::Routine);
    }
}
