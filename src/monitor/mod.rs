//! Monitoring: repository status (`pitr status`), integrity checks
//! (`pitr verify`) and the Prometheus `/metrics` + `/healthz` endpoint.

pub mod metrics;
pub mod status;
pub mod verify;
