//! Real apps as crik's ENTRYPOINT in podman containers, each with its state checked across two
//! checkpoint/restore cycles (each restore in a new container): memcached, nginx, a Node.js
//! server with timers, a JVM HTTP server with several threads. (Headless Chromium:
//! tests/podman.rs.)

use crate::common::podman::{image, Container, Pod, DEFAULTS_PLUS, RUNTIMES};
use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(60);

/// A pod of `app`'s image with the runtime's default capabilities plus crik's three (an app
/// needs some of the defaults itself: nginx binds port 80, PostgreSQL runs as its own user), and
/// `port` published on 127.0.0.1.
fn app_pod(s: &Scratch, app: &str, runtime: &str, port: u16, container_port: u16, config: &str) -> Pod {
    let mut pod = Pod::new(&image(app), runtime, &s.dir, config);
    pod.run_args = DEFAULTS_PLUS.map(String::from).to_vec();
    pod.run_args.extend(["-p".into(), format!("127.0.0.1:{port}:{container_port}")]);
    pod
}

/// The body of `GET path` on 127.0.0.1:port, retried until the server answers (at most `LONG`).
fn http_get(port: u16, path: &str) -> String {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no HTTP answer"))?;
            if !head.starts_with("HTTP/1.") {
                return Err(std::io::Error::other(format!("not HTTP: {head}")));
            }
            Ok(body.to_string())
        })();
        match attempt {
            Ok(body) => return body,
            Err(e) if std::time::Instant::now() > deadline => panic!("GET {path} on port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The first number after `word` in `text` ("count 12 last 3" → 12 for "count").
fn number_after(text: &str, word: &str) -> u64 {
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == word {
            return it
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no number after {word} in {text:?}"));
        }
    }
    panic!("no {word} in {text:?}")
}

/// Two cycles of `podman stop` → `podman rm` → a new `podman run` (restore); `check` runs after
/// each restore, given the container and the cycle.
fn two_cycles(
    pod: &Pod,
    cmd: &[&str],
    mut before_stop: impl FnMut(&Container),
    mut check: impl FnMut(&Container, u32),
) {
    let mut c = pod.start(cmd);
    for cycle in 1..=2 {
        before_stop(&c);
        assert_eq!(c.stop(GRACE), 0, "cycle {cycle}: {}", c.logs().1);
        c.expect_event("checkpoint_finished");
        drop(c);
        c = pod.start(cmd);
        c.expect_event_eventually_in(LONG, "restore_finished");
        check(&c, cycle);
    }
}

/// An HTTP server whose counter lives in memory: after each restore the counter has not gone
/// back and keeps counting.
fn counting_http_server(app: &str, runtime: &str, cmd: &[&str], word: &str) -> Vec<String> {
    let s = Scratch::new(&format!("app-{app}"));
    let port = free_port();
    let pod = app_pod(&s, app, runtime, port, 8080, "");
    let last = std::cell::Cell::new(0);
    let mut bodies = Vec::new();
    two_cycles(
        &pod,
        cmd,
        |_| {
            assert!(
                eventually(LONG, || number_after(&http_get(port, "/"), word) >= last.get() + 5),
                "the counter runs"
            );
            last.set(number_after(&http_get(port, "/"), word));
        },
        |c, cycle| {
            let body = http_get(port, "/");
            let (n, last) = (number_after(&body, word), last.get());
            assert!(n >= last, "cycle {cycle}: the counter went back from {last} to {n}\n{}", c.logs().1);
            assert!(n < last + 100, "cycle {cycle}: {n} after {last}: not the same counter");
            bodies.push(body);
        },
    );
    bodies
}

#[test]
fn nodejs_server_with_timers_keeps_counting_across_two_cycles() {
    let bodies = counting_http_server("node", RUNTIMES[0], &["run", "--", "node", "/workloads/timers.js"], "count");
    // The second timer ran after the restore too.
    assert!(bodies.iter().all(|b| number_after(b, "last") > 0), "{bodies:?}");
}

#[test]
fn jvm_http_server_with_several_threads_keeps_its_state_across_two_cycles() {
    let bodies = counting_http_server(
        "jvm",
        RUNTIMES[1],
        &["run", "--", "java", "-XX:-UsePerfData", "/workloads/Server.java"],
        "ticks",
    );
    // The request pool and the ticker thread are all back.
    assert!(bodies.iter().all(|b| number_after(b, "threads") >= 3), "{bodies:?}");
}

/// memcached: 200 keys set before the first checkpoint are all there after each restore.
#[test]
fn memcached_keeps_its_keys_across_two_cycles() {
    let s = Scratch::new("app-memcached");
    let port = free_port();
    let pod = app_pod(&s, "memcached", RUNTIMES[0], port, 11211, "");
    let cmd = ["run", "--", "memcached", "-u", "root", "-m", "64", "-p", "11211", "-t", "4"];
    // Sends `req`, reads until the answer holds `until` `times` times.
    let ask = |req: &str, until: &str, times: usize| -> String {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                if s.write_all(req.as_bytes()).is_ok() {
                    let mut out = Vec::new();
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&out);
                        if text.ends_with(until) && text.matches(until).count() >= times {
                            return text.into_owned();
                        }
                    }
                }
            }
            assert!(std::time::Instant::now() < deadline, "memcached does not answer {req:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut set = String::new();
    for i in 0..200 {
        let v = format!("value-{}", i * 13);
        set.push_str(&format!("set key{i} 0 0 {}\r\n{v}\r\n", v.len()));
    }
    let keys: Vec<String> = (0..200).map(|i| format!("key{i}")).collect();
    let get = format!("get {}\r\n", keys.join(" "));
    let mut stored = false;
    two_cycles(
        &pod,
        &cmd,
        |_| {
            if !stored {
                let answer = ask(&set, "STORED\r\n", 200);
                assert_eq!(answer.matches("STORED").count(), 200, "{answer}");
                stored = true;
            }
        },
        |c, cycle| {
            let answer = ask(&get, "END\r\n", 1);
            for i in (0..200).step_by(17) {
                assert!(
                    answer.contains(&format!("value-{}\r\n", i * 13)),
                    "cycle {cycle}: key{i} lost\n{}",
                    c.logs().1
                );
            }
            assert_eq!(answer.matches("VALUE ").count(), 200, "cycle {cycle}: every key is there");
        },
    );
}

/// nginx: the master and its workers are the same processes after each restore (not started
/// anew), and they answer new connections. Its workers normally run as www-data, which CRIU can
/// dump only with CAP_SYS_PTRACE and CAP_SYS_RESOURCE; this machine's root never has the latter,
/// so here the workers run as root, and the checkpoint of www-data workers is shown to fail
/// before the dump, naming what is missing.
#[test]
fn nginx_master_and_workers_come_back_and_serve_across_two_cycles() {
    let s = Scratch::new("app-nginx");
    let port = free_port();
    let pod = app_pod(&s, "nginx", RUNTIMES[1], port, 80, "");
    let cmd = ["run", "--", "nginx", "-c", "/workloads/nginx.conf", "-g", "daemon off;"];
    // (pid, title) of nginx's master and workers, from ps in the container.
    let pids = |c: &Container| -> Vec<String> {
        let ps = c.exec_ok(&["ps", "-eo", "pid=,args="]);
        let v: Vec<String> = ps
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(" nginx: master") || l.contains(" nginx: worker"))
            .map(String::from)
            .collect();
        assert_eq!(v.len(), 3, "a master and two workers: {ps}");
        v
    };
    {
        let mut no_ptrace = pod.clone();
        no_ptrace.run_args = ["--cap-add", "SYS_ADMIN,NET_ADMIN,SYS_TIME", "--security-opt", "seccomp=unconfined"]
            .iter()
            .map(|a| a.to_string())
            .chain(pod.run_args.iter().skip(4).cloned())
            .collect();
        let c = no_ptrace.start(&["run", "--", "nginx", "-g", "daemon off;"]);
        assert!(http_get(port, "/").contains("nginx"));
        assert_eq!(c.stop(GRACE), 1, "the app shut down on SIGTERM after the checkpoint failed\n{}", c.logs().1);
        let msg = c.expect_event("checkpoint_failed")["msg"].as_str().unwrap().to_string();
        assert!(msg.contains("runs as uid 33") && msg.contains("crik lacks CAP_SYS_PTRACE"), "{msg}");
    }
    let before = std::cell::RefCell::new(Vec::new());
    two_cycles(
        &pod,
        &cmd,
        |c| {
            assert!(http_get(port, "/").contains("nginx"), "nginx serves its page");
            *before.borrow_mut() = pids(c);
        },
        |c, cycle| {
            assert!(http_get(port, "/").contains("nginx"), "cycle {cycle}: a new connection is served");
            assert_eq!(pids(c), *before.borrow(), "cycle {cycle}: the same master and workers\n{}", c.logs().1);
        },
    );
}
