//! The shipped examples stay true: the crik configuration embedded in the Kubernetes example
//! parses with crik's own parser (schemas are checked by scripts/images/check_shipping.py).

use serde::Deserialize;

#[test]
fn configmap_in_the_statefulset_example_is_a_valid_crik_config() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counter-statefulset.yaml")).unwrap();
    let mut found = 0;
    let mut budget = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_yaml_ng::Value::deserialize(doc).unwrap();
        if v["kind"] == "ConfigMap" {
            let cfg = v["data"]["config.yaml"].as_str().expect("config.yaml in the ConfigMap");
            let c = crik::config::parse(cfg).unwrap_or_else(|e| panic!("example config is invalid: {e}"));
            assert!(c.image_dir.is_some());
            // The StatefulSet mounts the image dir's volume where imageDir points.
            assert!(c.image_dir.unwrap().as_path().starts_with("/var/lib/crik"));
            budget = c.checkpoint_budget.map(|b| b.as_secs()).expect("the example sets checkpointBudget");
            found += 1;
        }
        if v["kind"] == "StatefulSet" {
            let grace = v["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(grace >= 90 + 3, "grace period must cover checkpointTimeout plus the node-state query");
            assert!(
                budget > 0 && grace >= budget + 3 + 10,
                "checkpointBudget leaves a margin for the query and the exit"
            );
        }
    }
    assert_eq!(found, 1);
}
