//! The project's Kubernetes examples played as pods by `podman kube play` (podman 5, in a root of
//! its own: common/podman5.rs), with only their images and names changed: each pod is taken down
//! by `podman kube down`, which sends SIGTERM and waits the pod's
//! `terminationGracePeriodSeconds`, as the kubelet does, so crik checkpoints; then it is played
//! again on the same claim, three times, and the count carries on.

use std::io::Read;
use std::process::Command;

use crate::bundle::{crik_image, podman_ok, tag, Images};
use crate::common::podman5::Podman5;
use crate::common::*;

/// A pod played by podman 5; on drop it is taken down, and the volumes it made (its claim's,
/// and those it makes of a ConfigMap or Secret) and the Secret it was given removed.
struct Played<'a> {
    podman: &'a Podman5,
    /// The pod's manifest, as podman 5 sees it.
    file: String,
    volumes: Vec<String>,
    /// A Secret's manifest played before the pod.
    secret: Option<String>,
}

impl Drop for Played<'_> {
    fn drop(&mut self) {
        self.podman.run(&["kube", "down", &self.file]);
        let mut rm = vec!["volume", "rm", "-f"];
        rm.extend(self.volumes.iter().map(String::as_str));
        self.podman.run(&rm);
        if let Some(secret) = &self.secret {
            self.podman.run(&["kube", "down", secret]);
        }
    }
}

/// Plays the pod three times. Each time its app counts, the count carrying on from the last
/// play's (restored), crik ran the bundle's CRIU, the container's stop timeout is the pod's
/// grace period (`grace`), and `check(round, crik's log)` holds. Between plays `podman kube down`
/// takes the pod down: crik's log, read to the container's end, must show the final
/// checkpoint (podman 4.3's `kube down`, which kills at once, fails here).
fn play_three_times(p: &Played, container: &str, grace: &str, check: impl Fn(u32, &str)) {
    let logs = || {
        let out = p.podman.run(&["logs", container]);
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let counts = |out: &str| out.lines().filter_map(count_of).collect::<Vec<u64>>();
    let mut last = 0;
    for round in 0..3 {
        p.podman.ok(&["kube", "play", &p.file]);
        assert!(
            eventually(LONG, || counts(&logs().0).last().is_some_and(|n| *n >= last + 3)),
            "round {round}: {:?}",
            logs()
        );
        let err = logs().1;
        assert!(err.contains("(/opt/crik/bin/criu)"), "the bundle's CRIU: {err}");
        if round > 0 {
            assert_eq!(counts(&logs().0)[0], last + 1, "round {round}: the count carries on\n{err}");
            assert!(err.contains("restore_finished"), "{err}");
        }
        assert_eq!(p.podman.ok(&["inspect", container, "--format", "{{.Config.StopTimeout}}"]), grace);
        check(round, &err);
        if round == 2 {
            break;
        }
        // `kube down` removes the container and its log: the log file is held open meanwhile.
        let mut log =
            p.podman.open(&p.podman.ok(&["inspect", container, "--format", "{{.HostConfig.LogConfig.Path}}"]));
        p.podman.ok(&["kube", "down", &p.file]);
        let (out, err) = k8s_file_log(&mut log);
        assert!(err.contains("checkpoint_finished"), "round {round}: kube down must let crik checkpoint: {err}");
        last = *counts(&out).last().unwrap();
    }
}

/// (stdout, stderr) of a container's log in podman's k8s-file format (`TIME STREAM TAG TEXT`).
fn k8s_file_log(file: &mut std::fs::File) -> (String, String) {
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (stream, tag, body) = (fields.nth(1), fields.next(), fields.next().unwrap_or(""));
        let to = if stream == Some("stderr") { &mut err } else { &mut out };
        to.push_str(body);
        // A partial line (`P`) goes on in the next record.
        if tag != Some("P") {
            to.push('\n');
        }
    }
    (out, err)
}

/// `podman kube play` of examples/counter-init-container.yaml, only its images renamed: the init
/// container copies the bundle into an emptyDir, the app's image (bullseye: no CRIU) runs crik
/// from there; taken down by `podman kube down`, played again on the same volume, the count
/// carries on.
#[test]
fn the_init_container_recipe_restores_under_podman_kube_play() {
    let podman = Podman5::start();
    let s = Scratch::new("kube-init");
    let mut images = Images(Vec::new());
    let crik = crik_image(&s, &mut images);
    let app = crate::common::podman::image("bullseye");
    podman.take(&crik);
    podman.take(&app);
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counter-init-container.yaml")).unwrap();
    let claim = format!("crik-it-kube-{}", std::process::id());
    let yaml = example
        .replace("image: crik:0.1.0", &format!("image: {crik}"))
        .replace("image: debian:bullseye-slim", &format!("image: {app}"))
        .replace("claimName: counter-crik-images", &format!("claimName: {claim}"))
        .replace("name: counter\n", &format!("name: {claim}\n"))
        .replace("name: counter-crik\n", &format!("name: {claim}-config\n"));
    assert_ne!(yaml, example);
    let file = podman.write("pod.yaml", &yaml);
    let volumes = vec![claim.clone(), format!("{claim}-config")];
    let played = Played { podman: &podman, file, volumes, secret: None };
    play_three_times(&played, &format!("{claim}-app"), "60", |_, _| {});
}

/// `podman kube play` of examples/counter-pod.yaml (the StatefulSet's pod as a Pod: podman cannot
/// play a StatefulSet), only its image and names changed: the image built from Dockerfile.example
/// (its two FROM lines pointed at the test's crik image and Debian root), checkpoints sealed with
/// a key from a Secret volume (the Secret played as `kubectl create secret generic
/// --from-file=key` makes it), an emptyDir, the pod's infra container owning the network
/// namespace the app joins (as a pause container does). Taken down with its grace period, played
/// again on the same claim, three times: the count carries on, restored from sealed checkpoints.
#[test]
fn the_pod_example_restores_under_podman_kube_play_with_its_secret_key() {
    let podman = Podman5::start();
    let s = Scratch::new("kube-pod");
    let mut images = Images(Vec::new());
    let crik = crik_image(&s, &mut images);
    // Dockerfile.example as written, but for its two base images (no registry here).
    let context = s.path("example-context");
    std::fs::create_dir_all(context.join("examples/counter")).unwrap();
    let counter = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counter/counter.sh");
    std::fs::copy(counter, context.join("examples/counter/counter.sh")).unwrap();
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile.example")).unwrap();
    let ours = dockerfile
        .replace("FROM crik:0.1.0 AS crik", &format!("FROM {crik} AS crik"))
        .replace("FROM debian:bookworm-slim", &format!("FROM {}", crate::common::podman::image("base")));
    assert_eq!(ours.matches("FROM localhost/").count(), 2, "{ours}");
    std::fs::write(context.join("Dockerfile"), ours).unwrap();
    let app = tag("counter");
    podman_ok(&["build", "-q", "-t", &app, context.to_str().unwrap()]);
    images.0.push(app.clone());
    podman.take(&app);

    let name = format!("crik-it-pod-{}", std::process::id());
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counter-pod.yaml")).unwrap();
    let yaml = example
        .replace("image: crik-counter:0.1.0", &format!("image: {app}"))
        .replace("claimName: counter-crik-images", &format!("claimName: {name}"))
        .replace("secretName: counter-crik-key", &format!("secretName: {name}-key"))
        .replace("metadata:\n  name: counter\n", &format!("metadata:\n  name: {name}\n"))
        .replace("name: counter-crik\n", &format!("name: {name}-config\n"));
    assert_eq!(yaml.matches(&name).count(), 5, "the pod, its claim, Secret and ConfigMap renamed: {yaml}");
    let file = podman.write("pod.yaml", &yaml);
    // The Secret, as `crik keygen > key; kubectl create secret generic NAME --from-file=key` makes it.
    let key = Command::new(CRIK).arg("keygen").output().unwrap();
    assert!(key.status.success());
    std::fs::write(s.path("key"), &key.stdout).unwrap();
    let b64 = Command::new("base64").args(["-w", "0"]).arg(s.path("key")).output().unwrap();
    let secret = podman.write(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-key\ntype: Opaque\ndata:\n  key: {}\n",
            String::from_utf8(b64.stdout).unwrap()
        ),
    );
    let volumes = vec![name.clone(), format!("{name}-config"), format!("{name}-key")];
    let played = Played { podman: &podman, file, volumes, secret: Some(secret.clone()) };
    podman.ok(&["kube", "play", &secret]);
    play_three_times(&played, &format!("{name}-counter"), "120", |_, err| {
        // The pod's infra container holds the network namespace; the app joined it.
        let infra = podman.ok(&["pod", "inspect", &name, "--format", "{{.InfraContainerID}}"]);
        assert!(!infra.is_empty(), "no infra container");
        let mode = podman.ok(&["inspect", &format!("{name}-counter"), "--format", "{{.HostConfig.NetworkMode}}"]);
        assert_eq!(mode, format!("container:{infra}"));
        assert!(!err.contains("neither encrypted nor authenticated"), "sealed with the Secret's key: {err}");
    });
}
