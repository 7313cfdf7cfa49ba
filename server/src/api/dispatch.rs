//! DispatchService: the console's view of incidents and the actions on them.

use std::sync::Arc;

use dispatch_core as core;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{forward, on_dispatcher, ResponseStream};
use crate::app::AppState;
use crate::convert::{core_escalation, core_outcome, core_state, incident_pb, pb_escalation, pb_state, text};
use crate::error::{ApiError, ApiResult};
use crate::registry::{DEFAULT_PAGE, MAX_PAGE};

pub struct DispatchApi {
    pub state: Arc<AppState>,
}

fn incident_id(s: &str) -> ApiResult<core::IncidentId> {
    Ok(core::IncidentId::parse("incident_id", s)?)
}

fn caregiver_id(s: &str) -> ApiResult<core::CaregiverId> {
    Ok(core::CaregiverId::parse("caregiver_id", s)?)
}

fn latency(l: &core::Latency) -> pb::LatencySummary {
    pb::LatencySummary { count: l.count, p50_ms: l.p50_ms, p90_ms: l.p90_ms, p99_ms: l.p99_ms, max_ms: l.max_ms }
}

async fn act(
    state: &Arc<AppState>,
    f: impl FnOnce(&core::Dispatcher) -> core::Result<core::Incident> + Send + 'static,
) -> Result<Response<pb::Incident>, Status> {
    let inc = on_dispatcher(state, move |d| Ok(f(d)?)).await?;
    Ok(Response::new(incident_pb(&inc)))
}

type EventStream = ResponseStream<pb::IncidentEvent>;

#[tonic::async_trait]
impl pb::dispatch_service_server::DispatchService for DispatchApi {
    type WatchIncidentsStream = EventStream;

    #[tracing::instrument(skip(self, request))]
    async fn watch_incidents(
        &self,
        request: Request<pb::WatchIncidentsRequest>,
    ) -> Result<Response<Self::WatchIncidentsStream>, Status> {
        let req = request.into_inner();
        let min = pb::Severity::try_from(req.min_severity)
            .map_err(|_| ApiError::invalid("min_severity", format!("{} is not a severity", req.min_severity)))?;
        // Subscribe before the snapshot so nothing falls between the two.
        let events = self.state.fanout.subscribe_console();
        let snapshot = if req.include_open_snapshot {
            on_dispatcher(&self.state, |d| Ok(d.open_incidents())).await?
        } else {
            Vec::new()
        };
        let keep = move |i: &pb::Incident| i.severity >= min as i32;
        let first: Vec<pb::IncidentEvent> = snapshot
            .iter()
            .map(incident_pb)
            .filter(|inc| keep(inc))
            .map(|inc| pb::IncidentEvent {
                seq: 0,
                at_unix_ms: inc.updated_unix_ms,
                kind: pb::IncidentEventKind::Created as i32,
                incident: Some(inc),
                caregiver_id: String::new(),
                note: "snapshot".into(),
            })
            .collect();
        let lagged = |n: u64| pb::IncidentEvent {
            kind: pb::IncidentEventKind::ResyncRequired as i32,
            at_unix_ms: super::now_ms(),
            note: format!("console fell behind and missed {n} events; re-read with ListIncidents"),
            ..Default::default()
        };
        let keep_event =
            move |ev: Arc<pb::IncidentEvent>| ev.incident.as_ref().is_some_and(&keep).then(|| (*ev).clone());
        Ok(Response::new(forward(&self.state, first, events, keep_event, lagged, 256)))
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id))]
    async fn get_incident(&self, request: Request<pb::GetIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let state = &self.state;
        // A closed incident may have left memory: it is then read from the store.
        let found = if !req.incident_id.is_empty() {
            let id = incident_id(&req.incident_id)?;
            on_dispatcher(state, move |d| {
                d.incident(id).ok_or_else(|| ApiError::NotFound { what: "incident", id: id.to_string() })
            })
            .await?
        } else if !req.idempotency_key.is_empty() {
            let key = core::IdempotencyKey::parse("idempotency_key", &req.idempotency_key).map_err(ApiError::from)?;
            on_dispatcher(state, move |d| {
                d.incident_by_key(&key)
                    .ok_or_else(|| ApiError::NotFound { what: "alarm with idempotency_key", id: key.to_string() })
            })
            .await?
        } else {
            return Err(ApiError::invalid("incident_id", "set incident_id or idempotency_key").into());
        };
        Ok(Response::new(incident_pb(&found)))
    }

    #[tracing::instrument(skip(self, request))]
    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let req = request.into_inner();
        let mut states = Vec::new();
        for (i, s) in req.states.iter().enumerate() {
            let st = pb::IncidentState::try_from(*s)
                .ok()
                .and_then(core_state)
                .ok_or_else(|| ApiError::invalid(format!("states[{i}]"), format!("{s} is not an incident state")))?;
            states.push(st);
        }
        let after = if req.page_token.is_empty() {
            0
        } else {
            incident_id(&req.page_token).map_err(|e| e.within("page_token"))?.0
        };
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (elder_id, caregiver_id) = (req.elder_id, req.caregiver_id);
        let mut found = on_dispatcher(&self.state, move |d| {
            Ok(d.incidents(|i| {
                i.id.0 > after
                    && (states.is_empty() || states.contains(&i.state))
                    && (elder_id.is_empty() || i.elder.as_str() == elder_id)
                    && (caregiver_id.is_empty()
                        || i.assigned.as_ref().is_some_and(|c| c.as_str() == caregiver_id)
                        || i.declined_by.iter().any(|c| c.as_str() == caregiver_id))
            }))
        })
        .await?;
        let more = found.len() > size;
        found.truncate(size);
        let next_page_token =
            if more { found.last().map(|i| i.id.to_string()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: found.iter().map(incident_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id, caregiver = %request.get_ref().caregiver_id))]
    async fn accept_incident(
        &self,
        request: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let (id, cg) = (incident_id(&req.incident_id)?, caregiver_id(&req.caregiver_id)?);
        act(&self.state, move |d| d.accept(id, &cg)).await
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id, caregiver = %request.get_ref().caregiver_id))]
    async fn decline_incident(
        &self,
        request: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let (id, cg) = (incident_id(&req.incident_id)?, caregiver_id(&req.caregiver_id)?);
        text("note", &req.note, crate::convert::MAX_NOTES_BYTES)?;
        act(&self.state, move |d| d.decline(id, &cg, &req.note)).await
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id, caregiver = %request.get_ref().caregiver_id))]
    async fn mark_arrived(
        &self,
        request: Request<pb::IncidentActionRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let (id, cg) = (incident_id(&req.incident_id)?, caregiver_id(&req.caregiver_id)?);
        act(&self.state, move |d| d.arrive(id, &cg)).await
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id))]
    async fn resolve_incident(
        &self,
        request: Request<pb::ResolveIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let id = incident_id(&req.incident_id)?;
        let by = if req.caregiver_id.is_empty() { None } else { Some(caregiver_id(&req.caregiver_id)?) };
        let outcome = pb::ResolutionOutcome::try_from(req.outcome)
            .ok()
            .and_then(core_outcome)
            .ok_or_else(|| ApiError::invalid("outcome", "a resolution outcome must be set"))?;
        text("note", &req.note, crate::convert::MAX_NOTES_BYTES)?;
        act(&self.state, move |d| d.resolve(id, by.as_ref(), outcome, &req.note)).await
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id))]
    async fn escalate_incident(
        &self,
        request: Request<pb::EscalateIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let id = incident_id(&req.incident_id)?;
        let reason = match pb::EscalationReason::try_from(req.reason) {
            Ok(r) => core_escalation(r).unwrap_or(core::EscalationReason::Manual),
            Err(_) => {
                return Err(ApiError::invalid("reason", format!("{} is not an escalation reason", req.reason)).into())
            }
        };
        text("note", &req.note, crate::convert::MAX_NOTES_BYTES)?;
        act(&self.state, move |d| d.escalate(id, reason, &req.note)).await
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id, caregiver = %request.get_ref().caregiver_id))]
    async fn reassign_incident(
        &self,
        request: Request<pb::ReassignIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let (id, cg) = (incident_id(&req.incident_id)?, caregiver_id(&req.caregiver_id)?);
        text("note", &req.note, crate::convert::MAX_NOTES_BYTES)?;
        act(&self.state, move |d| d.reassign(id, &cg, &req.note)).await
    }

    #[tracing::instrument(skip(self, request), fields(incident = %request.get_ref().incident_id))]
    async fn cancel_incident(
        &self,
        request: Request<pb::CancelIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let id = incident_id(&req.incident_id)?;
        text("reason", &req.reason, crate::convert::MAX_NOTES_BYTES)?;
        act(&self.state, move |d| d.cancel(id, &req.reason)).await
    }

    #[tracing::instrument(skip(self, _request))]
    async fn get_kpis(&self, _request: Request<pb::GetKpisRequest>) -> Result<Response<pb::Kpis>, Status> {
        let k = on_dispatcher(&self.state, |d| Ok(d.kpis())).await?;
        Ok(Response::new(pb::Kpis {
            alarms_received: k.alarms_received,
            duplicates: k.duplicates,
            merged: k.merged,
            incidents_open: k.open(),
            accepted_within_60s_ratio: k.accepted_within_60s_ratio(),
            accepted_within_180s_ratio: k.accepted_within_180s_ratio(),
            receipt_to_first_offer: Some(latency(&k.receipt_to_first_offer)),
            time_to_arrival: Some(latency(&k.receipt_to_arrival)),
            acceptance_to_arrival: Some(latency(&k.acceptance_to_arrival)),
            escalations: k
                .escalations
                .iter()
                .map(|(r, n)| pb::EscalationCount { reason: pb_escalation(*r) as i32, count: *n })
                .collect(),
            incidents_by_state: k
                .incidents_by_state
                .iter()
                .map(|(s, n)| (pb_state(*s).as_str_name().to_owned(), *n))
                .collect(),
        }))
    }
}
