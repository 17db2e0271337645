//! The real server binary against a fake Kubernetes API (node list and watch JSON served from
//! 127.0.0.1), with node events flipping its answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Serves `GET /api/v1/nodes` (list) and `?watch=true` (a stream fed by `push`).
struct FakeApi {
    url: String,
    watchers: Arc<Mutex<Vec<TcpStream>>>,
    list_open: Arc<Mutex<bool>>,
}

impl FakeApi {
    fn start(nodes: Vec<Value>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let watchers = Arc::new(Mutex::new(Vec::new()));
        let list_open = Arc::new(Mutex::new(false));
        let (w, open) = (watchers.clone(), list_open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = r.read_line(&mut first);
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                if !path.starts_with("/api/v1/nodes") {
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                if path.contains("watch=true") {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n");
                    w.lock().unwrap().push(conn);
                    continue;
                }
                if !*open.lock().unwrap() {
                    // The API is "slow": the server must not claim readiness before its list.
                    let _ = conn.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let body = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "10"}, "items": nodes}).to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeApi { url, watchers, list_open }
    }

    fn open_list(&self) {
        *self.list_open.lock().unwrap() = true;
    }

    /// Sends a watch event to every open watch.
    fn push(&self, kind: &str, node: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": node}));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ws = self.watchers.lock().unwrap();
            if !ws.is_empty() {
                ws.retain_mut(|s| s.write_all(line.as_bytes()).is_ok());
                return;
            }
            drop(ws);
            assert!(Instant::now() < deadline, "the server never opened a watch");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn node(name: &str, rv: u32, taints: Value, ready_msg: Option<&str>) -> Value {
    let ready = match ready_msg {
        None => {
            json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"})
        }
        Some(m) => json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": m}),
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv.to_string()},
        "spec": {"taints": taints},
        "status": {"conditions": [ready]}
    })
}

struct Server {
    child: Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_server(api: &FakeApi) -> Server {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("crik-nss-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: u\n  user:\n    token: t\n\
             contexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\ncurrent-context: c\n",
            api.url
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_crik-node-state-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Server { child, base: format!("127.0.0.1:{port}"), _dir: TempDir(dir) }
}

/// A plain HTTP GET: (status, body), or None while nothing listens.
fn get(base: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(base).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {base}\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Some((status, body))
}

fn state_of(base: &str, name: &str) -> Option<String> {
    let (status, body) = get(base, &format!("/v1/nodes/{name}"))?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["name"], name);
    Some(v["state"].as_str()?.to_string())
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn node_events_flip_the_answer() {
    let api = FakeApi::start(vec![node("node-a", 1, json!([]), None), node("node-b", 2, json!([]), None)]);
    let srv = start_server(&api);
    let b = srv.base.clone();

    wait_for("the server to listen", || get(&b, "/healthz").is_some());
    assert_eq!(get(&b, "/healthz").unwrap(), (200, "ok\n".into()));
    // Before the node list is loaded: not ready, and no guess about any node.
    assert_eq!(get(&b, "/readyz").unwrap().0, 503);
    assert_eq!(get(&b, "/v1/nodes/node-a").unwrap().0, 503);

    api.open_list();
    wait_for("readiness", || get(&b, "/readyz").map(|r| r.0) == Some(200));
    assert_eq!(state_of(&b, "node-a").as_deref(), Some("unknown"));
    assert_eq!(state_of(&b, "node-b").as_deref(), Some("unknown"));
    assert_eq!(state_of(&b, "never-seen").as_deref(), Some("unknown"));

    // cluster-autoscaler marks node-a for deletion.
    api.push(
        "MODIFIED",
        node(
            "node-a",
            3,
            json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]),
            None,
        ),
    );
    wait_for("node-a shutting-down", || state_of(&b, "node-a").as_deref() == Some("shutting-down"));
    assert_eq!(state_of(&b, "node-b").as_deref(), Some("unknown"));

    // node-b's kubelet starts a graceful shutdown.
    api.push("MODIFIED", node("node-b", 4, json!([]), Some("node is shutting down")));
    wait_for("node-b shutting-down", || state_of(&b, "node-b").as_deref() == Some("shutting-down"));

    // The scale-down of node-a is cancelled.
    api.push("MODIFIED", node("node-a", 5, json!([]), None));
    wait_for("node-a back to unknown", || state_of(&b, "node-a").as_deref() == Some("unknown"));

    // A new node appears, already being drained.
    api.push(
        "ADDED",
        node("node-c", 6, json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]), None),
    );
    wait_for("node-c shutting-down", || state_of(&b, "node-c").as_deref() == Some("shutting-down"));

    let (status, metrics) = get(&b, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("crik_node_state_nodes{state=\"shutting-down\"} 2"), "{metrics}");
    assert!(metrics.contains("crik_node_state_nodes{state=\"unknown\"} 1"), "{metrics}");
    assert!(metrics.contains("crik_node_state_ready 1"), "{metrics}");
    assert!(metrics.contains("crik_node_state_answers_total{state=\"shutting-down\"}"), "{metrics}");
}

#[test]
fn unreachable_api_is_not_ready_and_says_so() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = FakeApi {
        url: format!("http://127.0.0.1:{port}"),
        watchers: Default::default(),
        list_open: Default::default(),
    };
    let srv = start_server(&api);
    let b = srv.base.clone();
    wait_for("the server to listen", || get(&b, "/healthz").is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&b, "/readyz").unwrap().0, 503);
    assert_eq!(get(&b, "/v1/nodes/node-a").unwrap().0, 503, "never answer from an empty cache");
    let (_, metrics) = get(&b, "/metrics").unwrap();
    assert!(!metrics.contains("crik_node_state_watch_errors_total 0"), "{metrics}");
}
