//! Whether a Node object says the node is going away. Pure logic, no I/O.

use k8s_openapi::api::core::v1::Node;

/// Taints that mean "this node is being drained, preempted or deleted".
pub const GOING_AWAY_TAINTS: [&str; 9] = [
    // Kubernetes: a node declared out of service (non-graceful shutdown).
    "node.kubernetes.io/out-of-service",
    // kubectl drain / cordon.
    "node.kubernetes.io/unschedulable",
    // Karpenter v1 (disrupted) and v0.3x (disruption=disrupting).
    "karpenter.sh/disrupted",
    "karpenter.sh/disruption",
    // cluster-autoscaler scale-down.
    "ToBeDeletedByClusterAutoscaler",
    // AWS node termination handler.
    "aws-node-termination-handler/spot-itn",
    "aws-node-termination-handler/asg-lifecycle-termination",
    "aws-node-termination-handler/scheduled-maintenance",
    // GKE preemption / spot termination.
    "cloud.google.com/impending-node-termination",
];

/// What the kubelet writes into the Ready condition during a graceful node shutdown.
const KUBELET_SHUTTING_DOWN: &str = "node is shutting down";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Going away, with the evidence.
    ShuttingDown(String),
    Running,
}

impl NodeState {
    /// The word the API answers (compatible with the Go original's server and clients).
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::ShuttingDown(_) => "shutting-down",
            NodeState::Running => "unknown",
        }
    }
}

pub fn node_state(node: &Node) -> NodeState {
    let spec_taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    if let Some(t) = spec_taints.into_iter().flatten().find(|t| GOING_AWAY_TAINTS.contains(&t.key.as_str())) {
        return NodeState::ShuttingDown(format!("taint {}", t.key));
    }
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    if let Some(c) = conditions.into_iter().flatten().find(|c| c.type_ == "Ready") {
        let msg = c.message.as_deref().unwrap_or("");
        if c.status != "True" && msg.contains(KUBELET_SHUTTING_DOWN) {
            return NodeState::ShuttingDown(format!("kubelet: {msg}"));
        }
    }
    NodeState::Running
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn ready_node_is_running() {
        let n = node(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}]}
        }));
        assert_eq!(node_state(&n), NodeState::Running);
        assert_eq!(node_state(&node(serde_json::json!({"metadata": {"name": "bare"}}))), NodeState::Running);
    }

    #[test]
    fn graceful_shutdown_is_read_from_the_ready_condition() {
        let n = node(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "node is shutting down"}]}
        }));
        assert!(matches!(node_state(&n), NodeState::ShuttingDown(_)));
        // NotReady for another reason is not a shutdown.
        let n = node(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime is down"}]}
        }));
        assert_eq!(node_state(&n), NodeState::Running);
    }

    #[test]
    fn drain_and_preemption_taints() {
        for key in GOING_AWAY_TAINTS {
            let n = node(serde_json::json!({
                "metadata": {"name": "a"},
                "spec": {"taints": [{"key": "unrelated", "effect": "NoSchedule"}, {"key": key, "effect": "NoSchedule"}]}
            }));
            assert_eq!(node_state(&n), NodeState::ShuttingDown(format!("taint {key}")), "{key}");
            assert_eq!(node_state(&n).as_str(), "shutting-down");
        }
        let n = node(
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(node_state(&n), NodeState::Running);
        assert_eq!(NodeState::Running.as_str(), "unknown");
    }
}
