//! SchedulingService. The protocol is fixed; the planner is wired in by the
//! scheduler work. Until then every call answers UNIMPLEMENTED with a clear
//! message rather than a made-up plan.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::app::AppState;

pub struct SchedulingApi {
    pub state: Arc<AppState>,
}

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc}: visit planning is not available on this server version yet"))
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::PlanProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::scheduling_service_server::SchedulingService for SchedulingApi {
    async fn submit_plan(&self, _: Request<pb::SubmitPlanRequest>) -> Result<Response<pb::SubmitPlanResponse>, Status> {
        Err(not_yet("SubmitPlan"))
    }

    type WatchPlanStream = ProgressStream;

    async fn watch_plan(&self, _: Request<pb::WatchPlanRequest>) -> Result<Response<Self::WatchPlanStream>, Status> {
        Err(not_yet("WatchPlan"))
    }

    async fn get_plan(&self, _: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        Err(not_yet("GetPlan"))
    }

    async fn get_route(&self, _: Request<pb::GetRouteRequest>) -> Result<Response<pb::Route>, Status> {
        Err(not_yet("GetRoute"))
    }

    async fn record_visit(
        &self,
        _: Request<pb::RecordVisitRequest>,
    ) -> Result<Response<pb::RecordVisitResponse>, Status> {
        Err(not_yet("RecordVisit"))
    }

    async fn get_coverage(&self, _: Request<pb::GetCoverageRequest>) -> Result<Response<pb::Coverage>, Status> {
        Err(not_yet("GetCoverage"))
    }

    async fn replan(&self, _: Request<pb::ReplanRequest>) -> Result<Response<pb::SubmitPlanResponse>, Status> {
        Err(not_yet("Replan"))
    }
}
