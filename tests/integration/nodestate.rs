//! Deciding when to checkpoint: local HTTP servers stand in for the node-state server and the
//! clouds' metadata endpoints, and drive crik's real SIGTERM handling end to end.

use crate::common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply { status, body: body.into(), delay: Duration::ZERO }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 answering with `handler`; it stops with the test process.
struct FakeHttp {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeHttp {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + 'static) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                let mut parts = first.split_whitespace();
                let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                let mut headers = Vec::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = l.trim_end().split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let req = Seen { method, path, headers };
                log.lock().unwrap().push(req.clone());
                let rep = handler(&req);
                std::thread::sleep(rep.delay);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    rep.status,
                    rep.body.len(),
                    rep.body
                );
            }
        });
        FakeHttp { url, seen }
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An app that exits 7 on SIGTERM, so a forwarded SIGTERM is told apart from a checkpoint.
const APP: &str = "import signal, sys, time\n\
def term(*_):\n    print('got SIGTERM', flush=True)\n    sys.exit(7)\n\
signal.signal(signal.SIGTERM, term)\n\
i = 0\n\
while True:\n    i += 1\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n";

enum Outcome {
    Checkpointed,
    Forwarded,
}

/// Starts the app under crik with `yaml`, sends SIGTERM, and checks the outcome.
fn sigterm_with(name: &str, yaml: &str, node: Option<&str>, expect: Outcome) -> (Container, Scratch) {
    let s = Scratch::new(name);
    let cfg = s.config(yaml);
    let mut spec = Spec::run(Some(&cfg), &[PYTHON, "-c", APP]);
    if let Some(n) = node {
        spec.env.push(("KUBERNETES_NODE_NAME".into(), n.into()));
    }
    let mut c = Container::start(spec);
    c.expect_line(SHORT, "tick 2", |l| l == "tick 2");
    let t = Instant::now();
    c.signal(libc::SIGTERM);
    match expect {
        Outcome::Checkpointed => {
            assert_eq!(c.wait_code(LONG), 0, "{}", c.stderr());
            assert_eq!(s.checkpoints().len(), 1, "{}", c.stderr());
            assert!(!c.stdout_seen.iter().any(|l| l == "got SIGTERM"), "app must not see SIGTERM");
        }
        Outcome::Forwarded => {
            assert_eq!(c.wait_code(LONG), 7, "{}", c.stderr());
            assert!(s.checkpoints().is_empty(), "no checkpoint expected\n{}", c.stderr());
            assert!(c.stdout_seen.iter().any(|l| l == "got SIGTERM"));
        }
    }
    assert!(t.elapsed() < Duration::from_secs(8), "SIGTERM handling took {:?}", t.elapsed());
    (c, s)
}

fn server_answering(status: u16, body: &'static str) -> FakeHttp {
    FakeHttp::start(move |_| reply(status, body))
}

#[test]
fn server_says_shutting_down_so_crik_checkpoints() {
    let fake = server_answering(200, r#"{"name":"node-a","state":"shutting-down"}"#);
    let (c, _s) =
        sigterm_with("ns-down", &format!("nodeStateServerURL: {}\n", fake.url), Some("node-a"), Outcome::Checkpointed);
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("GET", "/v1/nodes/node-a"));
    c.expect_event("node_state", &[("answer", "shutting-down")]);
}

#[test]
fn server_says_unknown_so_sigterm_is_forwarded() {
    let fake = server_answering(200, r#"{"name":"node-a","state":"unknown"}"#);
    let (c, _s) =
        sigterm_with("ns-unknown", &format!("nodeStateServerURL: {}\n", fake.url), Some("node-a"), Outcome::Forwarded);
    c.expect_event("node_state", &[("answer", "staying")]);
    assert!(c.stderr().contains("not going away"), "{}", c.stderr());
}

#[test]
fn slow_server_past_the_timeout_checkpoints_by_default_or_forwards_with_skip() {
    let slow = || FakeHttp::start(|_| Reply { delay: Duration::from_secs(6), ..reply(200, r#"{"state":"unknown"}"#) });
    let fake = slow();
    let yaml = format!("nodeState: {{source: server, endpoint: '{}', timeout: 0.5}}\n", fake.url);
    let (c, _s) = sigterm_with("ns-slow", &yaml, Some("n"), Outcome::Checkpointed);
    c.expect_event("node_state", &[("answer", "error")]);
    let fake = slow();
    let yaml =
        format!("nodeState: {{source: server, endpoint: '{}', timeout: 0.5}}\nonNodeStateError: skip\n", fake.url);
    sigterm_with("ns-slow-skip", &yaml, Some("n"), Outcome::Forwarded);
}

#[test]
fn http_500_applies_on_node_state_error() {
    let fake = server_answering(500, "oops");
    sigterm_with("ns-500", &format!("nodeStateServerURL: {}\n", fake.url), Some("n"), Outcome::Checkpointed);
    let (c, _s) = sigterm_with(
        "ns-500-skip",
        &format!("nodeStateServerURL: {}\nonNodeStateError: skip\n", fake.url),
        Some("n"),
        Outcome::Forwarded,
    );
    assert!(c.stderr().contains("HTTP 500"), "{}", c.stderr());
}

#[test]
fn garbage_answer_applies_on_node_state_error() {
    let fake = server_answering(200, "<html>not json</html>");
    let (c, _s) =
        sigterm_with("ns-garbage", &format!("nodeStateServerURL: {}\n", fake.url), Some("n"), Outcome::Checkpointed);
    assert!(c.stderr().contains("unexpected answer"), "{}", c.stderr());
    sigterm_with(
        "ns-garbage-skip",
        &format!("nodeStateServerURL: {}\nonNodeStateError: skip\n", fake.url),
        Some("n"),
        Outcome::Forwarded,
    );
}

#[test]
fn unreachable_server_checkpoints() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    sigterm_with(
        "ns-refused",
        &format!("nodeStateServerURL: http://127.0.0.1:{port}\n"),
        Some("n"),
        Outcome::Checkpointed,
    );
}

#[test]
fn server_source_without_node_name_fails_at_start() {
    let s = Scratch::new("ns-noname");
    let cfg = s.config("nodeStateServerURL: http://127.0.0.1:9\n");
    let (code, log) = refused_at_start(&cfg, &[]);
    assert_eq!(code, 2);
    assert!(log.contains("KUBERNETES_NODE_NAME"), "{log}");
}

/// AWS IMDSv2: PUT for a token, then GET the spot instance-action with it (404: none).
fn fake_aws(interrupted: bool) -> FakeHttp {
    FakeHttp::start(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("PUT", "/latest/api/token") if r.header("X-aws-ec2-metadata-token-ttl-seconds").is_some() => {
            reply(200, "tok-123")
        }
        ("GET", "/latest/meta-data/spot/instance-action")
            if r.header("X-aws-ec2-metadata-token") == Some("tok-123") =>
        {
            if interrupted {
                reply(200, r#"{"action": "terminate", "time": "2026-11-25T16:00:00Z"}"#)
            } else {
                reply(404, "")
            }
        }
        ("GET", _) => reply(401, ""),
        _ => reply(400, ""),
    })
}

#[test]
fn aws_spot_interruption_notice() {
    let fake = fake_aws(true);
    let (c, _s) = sigterm_with(
        "aws-yes",
        &format!("nodeState: {{source: aws, endpoint: '{}'}}\n", fake.url),
        None,
        Outcome::Checkpointed,
    );
    assert!(c.stderr().contains("spot interruption: terminate"), "{}", c.stderr());
    assert_eq!(fake.seen().len(), 2);
    let fake = fake_aws(false);
    sigterm_with(
        "aws-no",
        &format!("nodeState: {{source: aws, endpoint: '{}'}}\n", fake.url),
        None,
        Outcome::Forwarded,
    );
}

fn fake_gcp(preempted: &'static str) -> FakeHttp {
    FakeHttp::start(move |r| match r.path.as_str() {
        "/computeMetadata/v1/instance/preempted" if r.header("Metadata-Flavor") == Some("Google") => {
            reply(200, preempted)
        }
        _ => reply(403, ""),
    })
}

#[test]
fn gcp_preemption_flag() {
    let fake = fake_gcp("TRUE");
    sigterm_with(
        "gcp-yes",
        &format!("nodeState: {{source: gcp, endpoint: '{}'}}\n", fake.url),
        None,
        Outcome::Checkpointed,
    );
    let fake = fake_gcp("FALSE");
    sigterm_with(
        "gcp-no",
        &format!("nodeState: {{source: gcp, endpoint: '{}'}}\n", fake.url),
        None,
        Outcome::Forwarded,
    );
}

fn fake_azure(events: &'static str) -> FakeHttp {
    FakeHttp::start(move |r| match r.path.as_str() {
        "/metadata/scheduledevents?api-version=2020-07-01" if r.header("Metadata") == Some("true") => {
            reply(200, events)
        }
        _ => reply(400, ""),
    })
}

#[test]
fn azure_scheduled_preempt_event() {
    let fake = fake_azure(
        r#"{"DocumentIncarnation": 2, "Events": [{"EventId": "A", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["vm1"], "EventStatus": "Scheduled", "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT"}]}"#,
    );
    sigterm_with(
        "azure-yes",
        &format!("nodeState: {{source: azure, endpoint: '{}'}}\n", fake.url),
        None,
        Outcome::Checkpointed,
    );
    let fake = fake_azure(r#"{"DocumentIncarnation": 1, "Events": [{"EventId": "B", "EventType": "Reboot"}]}"#);
    sigterm_with(
        "azure-no",
        &format!("nodeState: {{source: azure, endpoint: '{}'}}\n", fake.url),
        None,
        Outcome::Forwarded,
    );
}
