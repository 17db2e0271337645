//! The watch loop (a kube-rs reflector over all Nodes) and the HTTP API.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::state::{node_state, NodeState};

/// Shared between the watch loop and the HTTP handlers.
struct Shared {
    nodes: Store<Node>,
    /// The first full list of Nodes has arrived.
    ready: AtomicBool,
    watch_events: AtomicU64,
    watch_errors: AtomicU64,
    /// Answers given, by state.
    answers: Mutex<HashMap<&'static str, u64>>,
}

#[derive(Serialize)]
struct NodeAnswer {
    name: String,
    state: &'static str,
}

/// Serves until `shutdown` completes.
pub async fn run(
    listen: SocketAddr,
    client: Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (nodes, writer) = reflector::store();
    let shared = Arc::new(Shared {
        nodes,
        ready: AtomicBool::new(false),
        watch_events: AtomicU64::new(0),
        watch_errors: AtomicU64::new(0),
        answers: Mutex::new(HashMap::new()),
    });

    let watch = reflector::reflector(writer, watcher::watcher(Api::<Node>::all(client), watcher::Config::default()))
        .default_backoff();
    let w = shared.clone();
    tokio::spawn(async move {
        let mut last: HashMap<String, &'static str> = HashMap::new();
        futures::pin_mut!(watch);
        while let Some(ev) = watch.next().await {
            match ev {
                Ok(ev) => {
                    w.watch_events.fetch_add(1, Ordering::Relaxed);
                    match ev {
                        Event::InitDone => {
                            if !w.ready.swap(true, Ordering::Relaxed) {
                                log::info!("watching {} node(s)", w.nodes.state().len());
                            }
                        }
                        Event::Apply(node) | Event::InitApply(node) => {
                            let st = node_state(&node);
                            let name = node.name_any();
                            if last.get(&name) != Some(&st.as_str()) {
                                match &st {
                                    NodeState::ShuttingDown(why) => log::info!("node {name} is shutting down ({why})"),
                                    NodeState::Running => log::info!("node {name} is running"),
                                }
                                last.insert(name, st.as_str());
                            }
                        }
                        Event::Delete(node) => {
                            log::info!("node {} was deleted", node.name_any());
                            last.remove(&node.name_any());
                        }
                        Event::Init => {}
                    }
                }
                Err(e) => {
                    w.watch_errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!("watching nodes: {e}");
                }
            }
        }
    });

    let app = Router::new()
        .route("/v1/nodes/{name}", get(node))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    log::info!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn node(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Relaxed) {
        // Not knowing yet is an error, not "unknown": crik then applies onNodeStateError.
        return Err((StatusCode::SERVICE_UNAVAILABLE, "node list not loaded yet\n"));
    }
    let state = match s.nodes.get(&ObjectRef::new(&name)) {
        Some(n) => node_state(&n),
        None => NodeState::Running,
    };
    let word = state.as_str();
    *s.answers.lock().unwrap().entry(word).or_default() += 1;
    log::debug!("answered {name}: {word}");
    Ok(Json(NodeAnswer { name, state: word }))
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "node list not loaded yet\n")
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let nodes = s.nodes.state();
    let down = nodes.iter().filter(|n| matches!(node_state(n), NodeState::ShuttingDown(_))).count();
    let mut out = String::new();
    out.push_str(
        "# HELP crik_node_state_nodes Nodes known to the watch, by state.\n# TYPE crik_node_state_nodes gauge\n",
    );
    out.push_str(&format!("crik_node_state_nodes{{state=\"shutting-down\"}} {down}\n"));
    out.push_str(&format!("crik_node_state_nodes{{state=\"unknown\"}} {}\n", nodes.len() - down));
    out.push_str("# HELP crik_node_state_ready Whether the first node list has been loaded.\n# TYPE crik_node_state_ready gauge\n");
    out.push_str(&format!("crik_node_state_ready {}\n", s.ready.load(Ordering::Relaxed) as u8));
    out.push_str("# HELP crik_node_state_answers_total Answers given to crik, by state.\n# TYPE crik_node_state_answers_total counter\n");
    let answers = s.answers.lock().unwrap().clone();
    for word in ["shutting-down", "unknown"] {
        out.push_str(&format!(
            "crik_node_state_answers_total{{state=\"{word}\"}} {}\n",
            answers.get(word).copied().unwrap_or(0)
        ));
    }
    out.push_str("# HELP crik_node_state_watch_events_total Node watch events received.\n# TYPE crik_node_state_watch_events_total counter\n");
    out.push_str(&format!("crik_node_state_watch_events_total {}\n", s.watch_events.load(Ordering::Relaxed)));
    out.push_str("# HELP crik_node_state_watch_errors_total Node watch errors (the watch retries with backoff).\n# TYPE crik_node_state_watch_errors_total counter\n");
    out.push_str(&format!("crik_node_state_watch_errors_total {}\n", s.watch_errors.load(Ordering::Relaxed)));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
