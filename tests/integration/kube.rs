//! The project's Kubernetes examples played as pods by `podman kube play` (podman 5, in a root of
//! its own: common/podman5.rs), with only their images and names changed: each pod is taken down
//! by `podman kube down`, which sends SIGTERM and waits the pod's
//! `terminationGracePeriodSeconds`, as the kubelet does, so crik checkpoints. The Pod and the
//! init-container recipe are played again on the same claim, three times, and the count carries
//! on; the Deployment hands its state to the next pod through object storage, a surge pod
//! waiting on the lease.

use std::io::Read;
use std::path::Path;
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
/// takes the pod down ([`taken_down`]).
fn play_three_times(p: &Played, container: &str, grace: &str, check: impl Fn(u32, &str)) {
    let mut last = 0;
    for round in 0..3 {
        p.podman.ok(&["kube", "play", &p.file]);
        let err = counting_after(p.podman, container, last);
        assert!(err.contains("(/opt/crik/bin/criu)"), "the bundle's CRIU: {err}");
        assert_eq!(p.podman.ok(&["inspect", container, "--format", "{{.Config.StopTimeout}}"]), grace);
        check(round, &err);
        if round == 2 {
            break;
        }
        last = taken_down(p, container);
    }
}

/// (stdout, stderr) of the container so far: the app's output and crik's log.
fn logs(podman: &Podman5, container: &str) -> (String, String) {
    let out = podman.run(&["logs", container]);
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn counts(out: &str) -> Vec<u64> {
    out.lines().filter_map(count_of).collect()
}

/// Waits until the container's app counts past `last` + 2; after a checkpoint (`last` > 0) its
/// count must carry on from `last`, restored. crik's log so far.
fn counting_after(podman: &Podman5, container: &str, last: u64) -> String {
    let going = eventually(LONG, || counts(&logs(podman, container).0).last().is_some_and(|n| *n >= last + 3));
    assert!(going, "{container}: no count past {last}: {:?}", logs(podman, container));
    let (out, err) = logs(podman, container);
    if last > 0 {
        assert_eq!(counts(&out)[0], last + 1, "{container}: the count carries on\n{err}");
        assert!(err.contains("restore_finished"), "{err}");
    }
    err
}

/// Takes the pod down with `podman kube down`: crik's log, read to the container's end, must
/// show the final checkpoint (podman 4.3's `kube down`, which kills at once, fails here). The
/// last count before it.
fn taken_down(p: &Played, container: &str) -> u64 {
    // `kube down` removes the container and its log: the log file is held open meanwhile.
    let mut log = p.podman.open(&p.podman.ok(&["inspect", container, "--format", "{{.HostConfig.LogConfig.Path}}"]));
    p.podman.ok(&["kube", "down", &p.file]);
    let (out, err) = k8s_file_log(&mut log);
    assert!(err.contains("checkpoint_finished"), "{container}: kube down must let crik checkpoint: {err}");
    *counts(&out).last().unwrap()
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
    let claim = format!("crik-it-kube-{}", std::process::id());
    let yaml = renamed(
        &example("counter-init-container.yaml"),
        &[
            ("image: crik:0.1.0", format!("image: {crik}")),
            ("image: debian:bullseye-slim", format!("image: {app}")),
            ("claimName: counter-crik-images", format!("claimName: {claim}")),
            ("name: counter\n", format!("name: {claim}\n")),
            ("name: counter-crik\n", format!("name: {claim}-config\n")),
        ],
    );
    let file = podman.write("pod.yaml", &yaml);
    let volumes = vec![claim.clone(), format!("{claim}-config")];
    let played = Played { podman: &podman, file, volumes, secret: None };
    play_three_times(&played, &format!("{claim}-app"), "60", |_, _| {});
}

/// examples/NAME as shipped.
fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)).unwrap()
}

/// `text` with each `(from, to)` replaced, every `from` found (an example that changed under the
/// test fails here, not in podman).
fn renamed(text: &str, swaps: &[(&str, String)]) -> String {
    swaps.iter().fold(text.to_string(), |t, (from, to)| {
        assert!(t.contains(from), "{from:?} is not in:\n{t}");
        t.replace(from, to)
    })
}

/// The counter's image built from Dockerfile.example as written, but for its two base images
/// (no registry here): the test's crik image and Debian root. Taken into podman 5.
fn example_image(s: &Scratch, images: &mut Images, podman: &Podman5) -> String {
    let crik = crik_image(s, images);
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
    app
}

/// The Secret `name` holding `file` as kubectl makes it (`kubectl create secret generic NAME
/// --from-file=FILE`: base64 `data`), as a manifest podman 5 plays.
fn secret_manifest(podman: &Podman5, name: &str, file: &str, contents: &[u8]) -> String {
    let scratch = podman.in_tmp(&format!("{name}.raw"));
    std::fs::write(&scratch, contents).unwrap();
    let b64 = Command::new("base64").args(["-w", "0"]).arg(&scratch).output().unwrap();
    std::fs::remove_file(&scratch).unwrap();
    assert!(b64.status.success());
    let data = String::from_utf8(b64.stdout).unwrap();
    podman.write(
        &format!("{name}.yaml"),
        &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\ndata:\n  {file}: {data}\n"),
    )
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
    let app = example_image(&s, &mut images, &podman);

    let name = format!("crik-it-pod-{}", std::process::id());
    let yaml = renamed(
        &example("counter-pod.yaml"),
        &[
            ("image: crik-counter:0.1.0", format!("image: {app}")),
            ("claimName: counter-crik-images", format!("claimName: {name}")),
            ("secretName: counter-crik-key", format!("secretName: {name}-key")),
            ("metadata:\n  name: counter\n", format!("metadata:\n  name: {name}\n")),
            ("name: counter-crik\n", format!("name: {name}-config\n")),
        ],
    );
    let file = podman.write("pod.yaml", &yaml);
    // The key, as `crik keygen > key; kubectl create secret generic NAME --from-file=key` makes it.
    let key = Command::new(CRIK).arg("keygen").output().unwrap();
    assert!(key.status.success());
    let secret = secret_manifest(&podman, &format!("{name}-key"), "key", &key.stdout);
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

/// `podman kube play` of examples/counter-deployment.yaml (image, bucket, endpoint and names
/// changed; the S3 keys in a Secret as the example says to make it), checkpoints in a real S3
/// server, both rollout strategies:
/// - RollingUpdate with a surge: a second copy of the Deployment (the new ReplicaSet's pod),
///   played while the first runs, waits on the prefix's lease and runs nothing; `podman kube
///   down` takes the first down with its grace period, its final checkpoint goes to storage, and
///   the second restores it: the count carries on;
/// - Recreate: the second is taken down and the Deployment played anew: it carries on again.
#[test]
fn the_deployment_example_hands_its_state_to_the_next_pod_through_object_storage() {
    use crate::common::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
    let podman = Podman5::start();
    let s = Scratch::new("kube-deployment");
    let s3 = S3Server::start_for_containers(&s.path("s3"));
    let mut images = Images(Vec::new());
    let app = example_image(&s, &mut images, &podman);

    let name = format!("crik-it-deploy-{}", std::process::id());
    let storage = format!(
        "url: s3://{BUCKET}/{name}\n      region: us-east-1\n      endpoint: http://host.containers.internal:{}\n      allowPlainHttp: true\n",
        s3.port
    );
    let yaml = renamed(
        &example("counter-deployment.yaml"),
        &[
            ("image: crik-counter:0.1.0", format!("image: {app}")),
            ("url: s3://my-bucket/counter\n      region: eu-west-1\n", storage),
            ("secretName: counter-crik-s3\n", format!("secretName: {name}-s3\n")),
            ("name: counter-crik-s3\n", format!("name: {name}-config\n")),
            (
                "kind: Deployment\nmetadata:\n  name: counter\n",
                format!("kind: Deployment\nmetadata:\n  name: {name}\n"),
            ),
        ],
    );
    // The new ReplicaSet's pod: the same template under another name. (podman names an
    // emptyDir's volume after it, so two pods of one template would share it: not so in
    // Kubernetes, where each pod gets its own.)
    let surge = renamed(
        &yaml,
        &[
            (
                &format!("kind: Deployment\nmetadata:\n  name: {name}\n"),
                format!("kind: Deployment\nmetadata:\n  name: {name}-next\n"),
            ),
            ("name: crik-images\n", "name: crik-images-next\n".to_string()),
        ],
    );
    let credentials = format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n");
    let secret = secret_manifest(&podman, &format!("{name}-s3"), "credentials", credentials.as_bytes());
    podman.ok(&["kube", "play", &secret]);
    let volumes = vec![format!("{name}-config"), format!("{name}-s3")];
    let first = Played { podman: &podman, file: podman.write("first.yaml", &yaml), volumes, secret: Some(secret) };
    let next = Played { podman: &podman, file: podman.write("next.yaml", &surge), volumes: vec![], secret: None };
    let (old, new) = (format!("{name}-pod-counter"), format!("{name}-next-pod-counter"));
    podman.ok(&["kube", "play", &first.file]);
    counting_after(&podman, &old, 0);
    assert_eq!(podman.ok(&["inspect", &old, "--format", "{{.Config.StopTimeout}}"]), "120");
    // The surge: the new pod waits on the lease, its app not started.
    podman.ok(&["kube", "play", &next.file]);
    let waiting = || logs(&podman, &new);
    assert!(eventually(LONG, || waiting().1.contains("lease_waiting")), "{:?}", waiting());
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(counts(&waiting().0).is_empty(), "the new pod ran the app beside the old one: {:?}", waiting());
    let last = taken_down(&first, &old);
    assert!(!s3.objects(&format!("{name}/checkpoints")).is_empty(), "the final checkpoint is in the bucket");
    counting_after(&podman, &new, last);
    // Recreate: the old pod gone first, then the new one played.
    let last = taken_down(&next, &new);
    podman.ok(&["kube", "play", &first.file]);
    counting_after(&podman, &old, last);
}
