//! crik's node-state server: watches Node objects and tells crik, over HTTP, whether a node is
//! going away (`GET /v1/nodes/<name>` → `{"name": "...", "state": "shutting-down" | "unknown"}`),
//! plus `/healthz`, `/readyz` and Prometheus `/metrics`.

pub mod server;
pub mod state;
