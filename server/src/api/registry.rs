//! RegistryService: elders, caregivers, devices, and device heartbeats.

use std::sync::Arc;

use dispatch_core as core;
use proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::blocking;
use crate::api::caregiver::caregiver_pb;
use crate::app::AppState;
use crate::convert::{caregiver_profile, validate_caregiver, validate_device, validate_elder};
use crate::error::{ApiError, ApiResult};
use crate::registry::page;
use crate::store::WriteOp;

pub struct RegistryApi {
    pub state: Arc<AppState>,
}

/// Stores and registers an elder. Shared with the demo's loader.
pub fn upsert_elder(state: &AppState, elder: Option<&pb::Elder>) -> ApiResult<(pb::Elder, bool)> {
    let e = validate_elder(elder.ok_or_else(|| ApiError::invalid("elder", "is required"))?)
        .map_err(|e| e.within("elder"))?;
    state.store.write(WriteOp::Elder(e.clone())).map_err(ApiError::Unavailable)?;
    let created = state.registry.elders.insert(e.id.clone(), e.clone()).is_none();
    Ok((e, created))
}

pub fn upsert_caregiver(state: &AppState, c: Option<&pb::Caregiver>) -> ApiResult<(pb::Caregiver, bool)> {
    let c = validate_caregiver(c.ok_or_else(|| ApiError::invalid("caregiver", "is required"))?)
        .map_err(|e| e.within("caregiver"))?;
    let profile = caregiver_profile(&c).map_err(|e| e.within("caregiver"))?;
    state.store.write(WriteOp::Caregiver(c.clone())).map_err(ApiError::Unavailable)?;
    state.registry.caregivers.insert(c.id.clone(), c.clone());
    let created = state.dispatcher.upsert_caregiver(profile);
    let id = core::CaregiverId::parse("id", &c.id)?;
    Ok((caregiver_pb(state, &id)?, created))
}

pub fn upsert_device(state: &AppState, d: Option<&pb::Device>) -> ApiResult<(pb::Device, bool)> {
    let mut d = validate_device(d.ok_or_else(|| ApiError::invalid("device", "is required"))?)
        .map_err(|e| e.within("device"))?;
    if !state.registry.elders.contains_key(&d.elder_id) {
        return Err(ApiError::NotFound { what: "device.elder_id: elder", id: d.elder_id.clone() });
    }
    // Live state survives a re-registration.
    let previous = state.registry.devices.get(&d.id).map(|p| p.clone());
    if let Some(p) = &previous {
        (d.last_heartbeat_unix_ms, d.online, d.battery_pct) = (p.last_heartbeat_unix_ms, p.online, p.battery_pct);
    }
    state.store.write(WriteOp::Device(d.clone())).map_err(ApiError::Unavailable)?;
    state.registry.devices.insert(d.id.clone(), d.clone());
    // Supervision (re)starts at registration.
    crate::supervision::watch(state, &d, d.last_heartbeat_unix_ms.max(super::now_ms()));
    Ok((d, previous.is_none()))
}

fn required_id(id: &str) -> ApiResult<()> {
    if id.is_empty() {
        return Err(ApiError::invalid("id", "must not be empty"));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for RegistryApi {
    #[tracing::instrument(skip(self, request), fields(elder = request.get_ref().elder.as_ref().map(|e| e.id.as_str()).unwrap_or("")))]
    async fn upsert_elder(
        &self,
        request: Request<pb::UpsertElderRequest>,
    ) -> Result<Response<pb::UpsertElderResponse>, Status> {
        let state = self.state.clone();
        let (elder, created) = blocking(move || upsert_elder(&state, request.get_ref().elder.as_ref())).await?;
        Ok(Response::new(pb::UpsertElderResponse { elder: Some(elder), created }))
    }

    #[tracing::instrument(skip(self, request), fields(elder = %request.get_ref().id))]
    async fn get_elder(&self, request: Request<pb::GetByIdRequest>) -> Result<Response<pb::Elder>, Status> {
        let id = &request.get_ref().id;
        required_id(id)?;
        let e = self.state.registry.elders.get(id).map(|e| e.clone());
        Ok(Response::new(e.ok_or_else(|| ApiError::NotFound { what: "elder", id: id.clone() })?))
    }

    #[tracing::instrument(skip(self, request))]
    async fn list_elders(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListEldersResponse>, Status> {
        let req = request.into_inner();
        let (elders, next_page_token) = page(&self.state.registry.elders, |_| true, req.page_size, &req.page_token);
        Ok(Response::new(pb::ListEldersResponse { elders, next_page_token }))
    }

    #[tracing::instrument(skip(self, request), fields(caregiver = request.get_ref().caregiver.as_ref().map(|c| c.id.as_str()).unwrap_or("")))]
    async fn upsert_caregiver(
        &self,
        request: Request<pb::UpsertCaregiverRequest>,
    ) -> Result<Response<pb::UpsertCaregiverResponse>, Status> {
        let state = self.state.clone();
        let (caregiver, created) =
            blocking(move || upsert_caregiver(&state, request.get_ref().caregiver.as_ref())).await?;
        Ok(Response::new(pb::UpsertCaregiverResponse { caregiver: Some(caregiver), created }))
    }

    #[tracing::instrument(skip(self, request), fields(caregiver = %request.get_ref().id))]
    async fn get_caregiver(&self, request: Request<pb::GetByIdRequest>) -> Result<Response<pb::Caregiver>, Status> {
        let id = core::CaregiverId::parse("id", &request.get_ref().id).map_err(ApiError::from)?;
        Ok(Response::new(caregiver_pb(&self.state, &id)?))
    }

    #[tracing::instrument(skip(self, request))]
    async fn list_caregivers(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListCaregiversResponse>, Status> {
        let req = request.into_inner();
        let (found, next_page_token) = page(&self.state.registry.caregivers, |_| true, req.page_size, &req.page_token);
        let caregivers = found
            .iter()
            .map(|c| {
                core::CaregiverId::parse("id", &c.id)
                    .map_err(ApiError::from)
                    .and_then(|id| caregiver_pb(&self.state, &id))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(Response::new(pb::ListCaregiversResponse { caregivers, next_page_token }))
    }

    #[tracing::instrument(skip(self, request), fields(device = request.get_ref().device.as_ref().map(|d| d.id.as_str()).unwrap_or("")))]
    async fn upsert_device(
        &self,
        request: Request<pb::UpsertDeviceRequest>,
    ) -> Result<Response<pb::UpsertDeviceResponse>, Status> {
        let state = self.state.clone();
        let (device, created) = blocking(move || upsert_device(&state, request.get_ref().device.as_ref())).await?;
        Ok(Response::new(pb::UpsertDeviceResponse { device: Some(device), created }))
    }

    #[tracing::instrument(skip(self, request), fields(device = %request.get_ref().id))]
    async fn get_device(&self, request: Request<pb::GetByIdRequest>) -> Result<Response<pb::Device>, Status> {
        let id = &request.get_ref().id;
        required_id(id)?;
        let d = self.state.registry.devices.get(id).map(|d| d.clone());
        Ok(Response::new(d.ok_or_else(|| ApiError::NotFound { what: "device", id: id.clone() })?))
    }

    #[tracing::instrument(skip(self, request))]
    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let req = request.into_inner();
        let (devices, next_page_token) = page(
            &self.state.registry.devices,
            |d| req.elder_id.is_empty() || d.elder_id == req.elder_id,
            req.page_size,
            &req.page_token,
        );
        Ok(Response::new(pb::ListDevicesResponse { devices, next_page_token }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::DeviceHeartbeat>>,
    ) -> Result<Response<pb::HeartbeatSummary>, Status> {
        let mut input = request.into_inner();
        let mut summary = pb::HeartbeatSummary::default();
        let mut n = 0u64;
        while let Some(msg) = input.next().await {
            let hb = msg?;
            let res = (|| -> ApiResult<()> {
                core::DeviceId::parse("device_id", &hb.device_id)?;
                if hb.battery_pct > 100 {
                    return Err(ApiError::invalid("battery_pct", format!("{} is more than 100", hb.battery_pct)));
                }
                let mut d = self
                    .state
                    .registry
                    .devices
                    .get_mut(&hb.device_id)
                    .ok_or_else(|| ApiError::NotFound { what: "device", id: hb.device_id.clone() })?;
                // A device clock ahead of ours must not buy it silence.
                let now = super::now_ms();
                d.last_heartbeat_unix_ms = if hb.at_unix_ms > 0 { hb.at_unix_ms.min(now) } else { now };
                d.online = true;
                if hb.battery_pct > 0 {
                    d.battery_pct = hb.battery_pct;
                }
                let at = d.last_heartbeat_unix_ms;
                drop(d);
                crate::supervision::heard(&self.state, &hb.device_id, at);
                Ok(())
            })();
            match res {
                Ok(()) => summary.accepted += 1,
                Err(e) => {
                    summary.rejected += 1;
                    if summary.first_error.is_empty() {
                        summary.first_error = format!("heartbeat {n}: {e}");
                    }
                }
            }
            n += 1;
        }
        Ok(Response::new(summary))
    }
}
