//! Is the node really going away? Asked on SIGTERM, so that a rollout or a scale-down shuts the
//! app down normally and only a dying node gets a checkpoint.
//!
//! Sources: crik's node-state server (compatible with the Go original's), and the clouds' own
//! preemption notices (AWS spot interruption, GCP preemption, Azure Scheduled Events), so no
//! controller is needed there. The HTTP client is built only when a SIGTERM needs it, and is
//! blocking (ureq): PID 1 carries no async runtime.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Config, HttpUrl, NodeStateSource};

/// Environment variable holding the node's name (set from the downward API).
pub const NODE_NAME_ENV: &str = "KUBERNETES_NODE_NAME";

/// Where and how to ask, resolved and checked at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub source: NodeStateSource,
    /// The URL asked (for the server: `<url>/v1/nodes/<name>`).
    pub endpoint: String,
    /// AWS only: where the IMDSv2 session token comes from.
    pub token_endpoint: Option<String>,
    pub node_name: Option<String>,
    pub timeout: Duration,
}

/// What the source said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    ShuttingDown(String),
    Staying(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{url}: {source}")]
    Http { url: String, source: Box<ureq::Error> },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: unexpected answer {body:?}: {why}")]
    Answer { url: String, body: String, why: String },
}

const AWS_DEFAULT: &str = "http://169.254.169.254/";
const GCP_DEFAULT: &str = "http://169.254.169.254/";
const AZURE_DEFAULT: &str = "http://169.254.169.254/";

impl Query {
    /// Resolves the configuration; `Ok(None)` when no source is configured. A missing node name
    /// is found here, at start, not at SIGTERM.
    pub fn from_config(config: &Config, node_name: Option<String>) -> Result<Option<Query>, String> {
        let (source, endpoint, timeout) = match (&config.node_state, &config.node_state_server_url) {
            (None, None) => return Ok(None),
            (None, Some(url)) => (NodeStateSource::Server, Some(url.clone()), Duration::from_secs(3)),
            // The long form's endpoint, or the short form's URL for a server (config::parse
            // refused the combinations that make no sense).
            (Some(ns), short) => (ns.source, ns.endpoint.clone().or_else(|| short.clone()), ns.timeout),
        };
        let base = |default: &str| -> HttpUrl {
            endpoint.clone().unwrap_or_else(|| HttpUrl::parse(default).expect("valid default"))
        };
        let node_name = node_name.filter(|n| !n.is_empty());
        let token_endpoint =
            (source == NodeStateSource::Aws).then(|| base(AWS_DEFAULT).join(&["latest", "api", "token"]));
        let endpoint = match source {
            NodeStateSource::Server => {
                let Some(url) = &endpoint else {
                    return Err("nodeState.source: server needs nodeState.endpoint or nodeStateServerURL".into());
                };
                let Some(name) = &node_name else {
                    return Err(format!(
                        "the node-state server needs the node's name in ${NODE_NAME_ENV} (set it from the downward API: spec.nodeName)"
                    ));
                };
                url.join(&["v1", "nodes", name])
            }
            NodeStateSource::Aws => base(AWS_DEFAULT).join(&["latest", "meta-data", "spot", "instance-action"]),
            NodeStateSource::Gcp => base(GCP_DEFAULT).join(&["computeMetadata", "v1", "instance", "preempted"]),
            NodeStateSource::Azure => {
                base(AZURE_DEFAULT).join(&["metadata", "scheduledevents"]) + "?api-version=2020-07-01"
            }
        };
        Ok(Some(Query { source, endpoint, token_endpoint, node_name, timeout }))
    }

    /// Asks the source, within the configured timeout.
    pub fn ask(&self) -> Result<Answer, AskError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("crik/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        match self.source {
            NodeStateSource::Server => self.ask_server(&agent),
            NodeStateSource::Aws => self.ask_aws(&agent),
            NodeStateSource::Gcp => self.ask_gcp(&agent),
            NodeStateSource::Azure => self.ask_azure(&agent),
        }
    }

    fn ask_server(&self, agent: &ureq::Agent) -> Result<Answer, AskError> {
        #[derive(Deserialize)]
        struct NodeState {
            state: String,
        }
        let url = self.endpoint.as_str();
        let body = expect_ok(url, agent.get(url).header("Accept", "application/json").call())?;
        let s: NodeState = serde_json::from_str(&body).map_err(|e| AskError::Answer {
            url: url.into(),
            body: clip(&body),
            why: e.to_string(),
        })?;
        Ok(if s.state == "shutting-down" {
            Answer::ShuttingDown(format!("node {} is shutting-down", self.node_name.as_deref().unwrap_or("?")))
        } else {
            Answer::Staying(format!("node {} is {}", self.node_name.as_deref().unwrap_or("?"), s.state))
        })
    }

    /// IMDSv2: a session token by PUT, then the spot instance-action (404: no interruption).
    fn ask_aws(&self, agent: &ureq::Agent) -> Result<Answer, AskError> {
        let token_url = self.token_endpoint.as_ref().expect("set for aws").as_str();
        let token = expect_ok(
            token_url,
            agent.put(token_url).header("X-aws-ec2-metadata-token-ttl-seconds", "60").send_empty(),
        )?;
        let url = self.endpoint.as_str();
        let resp = agent.get(url).header("X-aws-ec2-metadata-token", token.trim()).call();
        let (status, body) = read(url, resp)?;
        match status {
            404 => Ok(Answer::Staying("no spot interruption notice".into())),
            200 => {
                #[derive(Deserialize)]
                struct Action {
                    action: String,
                    #[serde(default)]
                    time: String,
                }
                let a: Action = serde_json::from_str(&body).map_err(|e| AskError::Answer {
                    url: url.into(),
                    body: clip(&body),
                    why: e.to_string(),
                })?;
                Ok(Answer::ShuttingDown(format!("spot interruption: {} at {}", a.action, a.time)))
            }
            s => Err(AskError::Status { url: url.into(), status: s }),
        }
    }

    fn ask_gcp(&self, agent: &ureq::Agent) -> Result<Answer, AskError> {
        let url = self.endpoint.as_str();
        let body = expect_ok(url, agent.get(url).header("Metadata-Flavor", "Google").call())?;
        match body.trim() {
            "TRUE" => Ok(Answer::ShuttingDown("instance is preempted".into())),
            "FALSE" => Ok(Answer::Staying("instance is not preempted".into())),
            _ => Err(AskError::Answer { url: url.into(), body: clip(&body), why: "expected TRUE or FALSE".into() }),
        }
    }

    fn ask_azure(&self, agent: &ureq::Agent) -> Result<Answer, AskError> {
        #[derive(Deserialize)]
        struct Events {
            #[serde(rename = "Events")]
            events: Vec<Event>,
        }
        #[derive(Deserialize)]
        struct Event {
            #[serde(rename = "EventType")]
            event_type: String,
            #[serde(rename = "NotBefore", default)]
            not_before: String,
        }
        let url = self.endpoint.as_str();
        let body = expect_ok(url, agent.get(url).header("Metadata", "true").call())?;
        let ev: Events = serde_json::from_str(&body).map_err(|e| AskError::Answer {
            url: url.into(),
            body: clip(&body),
            why: e.to_string(),
        })?;
        Ok(match ev.events.iter().find(|e| e.event_type == "Preempt") {
            Some(e) => Answer::ShuttingDown(format!("Preempt event scheduled (not before {})", e.not_before)),
            None => Answer::Staying(format!("{} scheduled event(s), none is Preempt", ev.events.len())),
        })
    }
}

fn read(url: &str, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, String), AskError> {
    let mut resp = resp.map_err(|e| AskError::Http { url: url.into(), source: Box::new(e) })?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .map_err(|e| AskError::Http { url: url.into(), source: Box::new(e) })?;
    Ok((status, body))
}

fn expect_ok(url: &str, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<String, AskError> {
    match read(url, resp)? {
        (200, body) => Ok(body),
        (status, _) => Err(AskError::Status { url: url.into(), status }),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn query(yaml: &str, node: Option<&str>) -> Result<Option<Query>, String> {
        Query::from_config(&parse(yaml)?, node.map(String::from))
    }

    #[test]
    fn server_short_form_builds_the_v1_path() {
        let q = query("nodeStateServerURL: http://ns.kube-system:9376\n", Some("node-a")).unwrap().unwrap();
        assert_eq!(q.endpoint.as_str(), "http://ns.kube-system:9376/v1/nodes/node-a");
        assert_eq!(q.timeout, Duration::from_secs(3));
        let q = query("nodeStateServerURL: http://ns/prefix/\n", Some("n")).unwrap().unwrap();
        assert_eq!(q.endpoint.as_str(), "http://ns/prefix/v1/nodes/n");
        // The long form can add a timeout to the short form's URL.
        let q = query("nodeStateServerURL: http://ns/\nnodeState: {source: server, timeout: 1}\n", Some("n"))
            .unwrap()
            .unwrap();
        assert_eq!(q.timeout, Duration::from_secs(1));
    }

    #[test]
    fn misconfiguration_is_found_at_start() {
        assert!(query("nodeStateServerURL: http://ns/\n", None).unwrap_err().contains("KUBERNETES_NODE_NAME"));
        assert!(query("nodeStateServerURL: http://ns/\n", Some("")).unwrap_err().contains("KUBERNETES_NODE_NAME"));
        assert!(query("nodeState: {source: server}\n", Some("n")).unwrap_err().contains("needs nodeState.endpoint"));
        assert!(query("nodeStateServerURL: http://a/\nnodeState: {source: server, endpoint: http://b/}\n", Some("n"))
            .unwrap_err()
            .contains("not both"));
        assert!(query("nodeStateServerURL: http://a/\nnodeState: {source: aws}\n", None).is_err());
        assert_eq!(query("imageDir: /x\n", None).unwrap(), None);
    }

    #[test]
    fn cloud_sources_have_default_endpoints_and_overrides() {
        let q = query("nodeState: {source: aws}\n", None).unwrap().unwrap();
        assert_eq!(q.endpoint.as_str(), "http://169.254.169.254/latest/meta-data/spot/instance-action");
        assert_eq!(q.token_endpoint.unwrap().as_str(), "http://169.254.169.254/latest/api/token");
        let q = query("nodeState: {source: aws, endpoint: 'http://proxy:1/imds/'}\n", None).unwrap().unwrap();
        assert_eq!(q.token_endpoint.unwrap().as_str(), "http://proxy:1/imds/latest/api/token");
        let q = query("nodeState: {source: gcp, endpoint: 'http://127.0.0.1:8080'}\n", None).unwrap().unwrap();
        assert_eq!(q.endpoint.as_str(), "http://127.0.0.1:8080/computeMetadata/v1/instance/preempted");
        let q = query("nodeState: {source: azure}\n", None).unwrap().unwrap();
        assert_eq!(q.endpoint.as_str(), "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01");
    }
}
