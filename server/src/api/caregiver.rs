//! CaregiverService: position fixes, duty status and the assignment feed of
//! the caregiver app.

use std::sync::Arc;

use dispatch_core as core;
use proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{blocking, forward, on_dispatcher, ResponseStream};
use crate::app::AppState;
use crate::convert::{core_status, geo, geo_opt, incident_pb, pb_status};
use crate::error::{ApiError, ApiResult};
use crate::store::WriteOp;

/// A position is written to the store at most this often per caregiver.
const PERSIST_POSITION_EVERY_MS: i64 = 30_000;

pub struct CaregiverApi {
    pub state: Arc<AppState>,
}

/// The registered caregiver with its live state.
pub fn caregiver_pb(state: &AppState, id: &core::CaregiverId) -> ApiResult<pb::Caregiver> {
    let mut c = state
        .registry
        .caregivers
        .get(id.as_str())
        .map(|c| c.clone())
        .ok_or_else(|| ApiError::NotFound { what: "caregiver", id: id.to_string() })?;
    if let Some(v) = state.dispatcher.caregiver(id) {
        c.status = pb_status(v.status) as i32;
        c.last_location = Some(pb::GeoPoint { lat: v.position.0, lon: v.position.1 });
        c.last_seen_unix_ms = v.last_seen_ms;
        c.active_incident_id = v.active_incident.map(|i| i.to_string()).unwrap_or_default();
    }
    Ok(c)
}

fn apply_fix(state: &AppState, u: &pb::LocationUpdate, now: i64) -> ApiResult<()> {
    let id = core::CaregiverId::parse("caregiver_id", &u.caregiver_id)?;
    let p = geo("location", u.location.as_ref())?;
    let at = if u.at_unix_ms == 0 { now } else { u.at_unix_ms };
    state.dispatcher.update_location(&id, p, at)?;
    let persist = {
        let mut last = state.position_persisted.entry(u.caregiver_id.clone()).or_insert(0);
        let due = now - *last >= PERSIST_POSITION_EVERY_MS;
        if due {
            *last = now;
        }
        due
    };
    if persist {
        if let Some(v) = state.dispatcher.caregiver(&id) {
            state.store.write_later(WriteOp::CaregiverState {
                id: u.caregiver_id.clone(),
                status: pb_status(crate::app::duty_status(v.status)) as i32,
                lat: p.lat(),
                lon: p.lon(),
                seen_ms: at,
            });
        }
    }
    Ok(())
}

type AssignmentStream = ResponseStream<pb::AssignmentEvent>;

#[tonic::async_trait]
impl pb::caregiver_service_server::CaregiverService for CaregiverApi {
    #[tracing::instrument(skip(self, request))]
    async fn update_location(
        &self,
        request: Request<Streaming<pb::LocationUpdate>>,
    ) -> Result<Response<pb::LocationSummary>, Status> {
        let mut input = request.into_inner();
        let mut summary = pb::LocationSummary::default();
        let mut n = 0u64;
        while let Some(msg) = input.next().await {
            let u = msg?;
            match apply_fix(&self.state, &u, super::now_ms()) {
                Ok(()) => summary.accepted += 1,
                Err(e) => {
                    summary.rejected += 1;
                    if summary.first_error.is_empty() {
                        summary.first_error = format!("update {n}: {e}");
                    }
                }
            }
            n += 1;
        }
        Ok(Response::new(summary))
    }

    #[tracing::instrument(skip(self, request), fields(caregiver = %request.get_ref().caregiver_id))]
    async fn set_status(&self, request: Request<pb::SetStatusRequest>) -> Result<Response<pb::Caregiver>, Status> {
        let req = request.into_inner();
        let id = core::CaregiverId::parse("caregiver_id", &req.caregiver_id).map_err(ApiError::from)?;
        let status = pb::CaregiverStatus::try_from(req.status)
            .ok()
            .and_then(core_status)
            .filter(|s| *s != core::CaregiverStatus::Busy)
            .ok_or_else(|| ApiError::invalid("status", "must be OFF_DUTY, AVAILABLE or ON_VISIT"))?;
        let at = geo_opt("location", req.location.as_ref())?;
        let state = self.state.clone();
        let c = blocking(move || {
            let v = state.dispatcher.set_status(&id, status, at)?;
            state
                .store
                .write(WriteOp::CaregiverState {
                    id: id.to_string(),
                    status: pb_status(status) as i32,
                    lat: v.position.0,
                    lon: v.position.1,
                    seen_ms: v.last_seen_ms,
                })
                .map_err(ApiError::Unavailable)?;
            caregiver_pb(&state, &id)
        })
        .await?;
        Ok(Response::new(c))
    }

    type WatchAssignmentsStream = AssignmentStream;

    #[tracing::instrument(skip(self, request), fields(caregiver = %request.get_ref().caregiver_id))]
    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let req = request.into_inner();
        let id = core::CaregiverId::parse("caregiver_id", &req.caregiver_id).map_err(ApiError::from)?;
        let view = self
            .state
            .dispatcher
            .caregiver(&id)
            .ok_or_else(|| ApiError::NotFound { what: "caregiver", id: id.to_string() })?;
        let events = self.state.fanout.subscribe_caregiver(id.as_str());
        // What the caregiver holds now is sent first, so a reconnecting app misses nothing.
        let held = match view.active_incident {
            Some(i) => on_dispatcher(&self.state, move |d| Ok(d.incident(i))).await?,
            None => None,
        };
        let first = held.map(|inc| {
            let kind = if inc.state == core::IncidentState::Offered {
                pb::AssignmentEventKind::Offer
            } else {
                pb::AssignmentEventKind::Updated
            };
            self.state.fanout.assignment(kind, incident_pb(&inc))
        });
        let lagged =
            |_| pb::AssignmentEvent { kind: pb::AssignmentEventKind::ResyncRequired as i32, ..Default::default() };
        Ok(Response::new(forward(&self.state, first.into_iter().collect(), events, Some, lagged, 64)))
    }
}
