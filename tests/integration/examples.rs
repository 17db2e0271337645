//! The shipped examples stay true: the crik configuration embedded in the Kubernetes example
//! and every configuration sample in the README and docs/ parse with crik's own parser
//! (schemas are checked by scripts/images/check_shipping.py).

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

/// Every ```yaml block of the README and docs/ is crik configuration, whole or a part of one (a
/// part is parsed dedented, beside an imageDir when it names none).
#[test]
fn configuration_samples_in_the_docs_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for dir in [root.join("docs"), root.join("docs/design")] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "md") {
                pages.push(e.path());
            }
        }
    }
    let mut checked = 0;
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for block in text.split("```yaml\n").skip(1) {
            let block = block.split("```").next().unwrap();
            let indent = block.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min();
            let mut cfg: String =
                block.lines().map(|l| format!("{}\n", l.get(indent.unwrap_or(0)..).unwrap_or(""))).collect();
            if !cfg.lines().any(|l| l.starts_with("imageDir:")) {
                cfg.insert_str(0, "imageDir: /var/lib/crik\n");
            }
            crik::config::parse(&cfg)
                .unwrap_or_else(|e| panic!("{}: a sample does not parse: {e}\n{cfg}", page.display()));
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} samples found");
}

/// The Deployment example's crik configuration parses, keeps its checkpoints in object storage
/// (its pods have no volume of their own) and reads the keys from where the Secret is mounted.
#[test]
fn configmap_in_the_deployment_example_is_a_valid_crik_config() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counter-deployment.yaml")).unwrap();
    let docs: Vec<serde_yaml_ng::Value> =
        serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde_yaml_ng::Value::deserialize(d).unwrap()).collect();
    let map = docs.iter().find(|v| v["kind"] == "ConfigMap").expect("a ConfigMap");
    let cfg = map["data"]["config.yaml"].as_str().expect("config.yaml in the ConfigMap");
    let c = crik::config::parse(cfg).unwrap_or_else(|e| panic!("example config is invalid: {e}"));
    let storage = c.storage.expect("the example keeps its checkpoints in object storage");
    let credentials = storage.credentials_file.expect("credentialsFile");
    let deployment = docs.iter().find(|v| v["kind"] == "Deployment").expect("a Deployment");
    let mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].as_sequence().unwrap();
    let secret_mount = mounts.iter().find(|m| m["name"] == "crik-s3").expect("the Secret's mount");
    assert!(credentials.as_path().starts_with(secret_mount["mountPath"].as_str().unwrap()));
}
