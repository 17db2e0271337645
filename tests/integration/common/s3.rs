//! A real S3 server for the storage tests: s3s-fs (filesystem-backed, SigV4-checking) on
//! 127.0.0.1, installed by scripts/setup.sh. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ACCESS_KEY: &str = "crik-test-access";
pub const SECRET_KEY: &str = "crik-test-secret-key";
pub const BUCKET: &str = "crik-test";

pub struct S3Server {
    pub root: PathBuf,
    pub port: u16,
    /// The address it listens on: 127.0.0.1, or every address for containers on a bridge.
    host: &'static str,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = Path::new(&home).join(".cargo/bin/s3s-fs");
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

impl S3Server {
    /// Serves `root` (a bucket dir `crik-test` is created in it).
    pub fn start(root: &Path) -> S3Server {
        Self::start_on(root, "127.0.0.1")
    }

    /// Also reachable from podman containers on their bridge network, as
    /// `host.containers.internal` (see [`S3Server::container_config`]).
    pub fn start_for_containers(root: &Path) -> S3Server {
        Self::start_on(root, "0.0.0.0")
    }

    fn start_on(root: &Path, host: &'static str) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let mut s = S3Server { root: root.to_path_buf(), port: super::free_port(), host, child: None };
        s.resume();
        s
    }

    /// (Re)starts the server on the same port and data.
    pub fn resume(&mut self) {
        let child = Command::new(binary())
            .args(["--host", self.host, "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let up = super::eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(up, "s3s-fs did not listen on port {}", self.port);
    }

    /// Stops the server (the data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `storage:` block of a crik config for prefix `prefix`. Its lease lives 5 s (30 by
    /// default): a test that kills a crik starts the next one on the prefix within seconds.
    pub fn config(&self, prefix: &str) -> String {
        format!(
            "storage:\n  url: s3://{BUCKET}/{prefix}\n  endpoint: http://127.0.0.1:{}\n  region: us-east-1\n  requestTimeout: 5\n  lease:\n    ttl: 5\n",
            self.port
        )
    }

    /// The `storage:` block for crik in a podman container on the bridge network (plain http
    /// to another host: allowed explicitly).
    pub fn container_config(&self, prefix: &str) -> String {
        format!("{}  allowPlainHttp: true\n", self.config(prefix).replace("127.0.0.1", "host.containers.internal"))
    }

    /// Credentials as crik reads them.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()), ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into())]
    }

    /// `crik inspect --json` with `cfg` and this server's keys (it must succeed).
    pub fn inspect_json(&self, cfg: &Path) -> serde_json::Value {
        let out = Command::new(super::CRIK)
            .args(["inspect", "--json", "--config", cfg.to_str().unwrap()])
            .envs(self.env())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Where s3s-fs keeps the object `key` of the test bucket.
    pub fn object(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// Names of the objects under `dir` (`prefix/checkpoints`), sorted.
    pub fn objects(&self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.object(dir))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.retain(|n| !n.starts_with('.'));
        v.sort();
        v
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A stand-in for AWS STS's `AssumeRoleWithWebIdentity` on 127.0.0.1 (no real STS can run on
/// these machines): it checks the form crik posts and answers as STS documents it, with the S3
/// server's keys as the "temporary" ones and a session token, or with STS's error for a token
/// it does not know. Stops on drop.
pub struct Sts {
    pub port: u16,
    /// The forms received, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _server: FakeHttp,
}

pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/crik-test";

impl Sts {
    pub fn start(token: &str) -> Sts {
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, token) = (requests.clone(), token.to_string());
        let server = FakeHttp::start(move |_request_line, body| {
            let form = String::from_utf8_lossy(body).into_owned();
            seen.lock().unwrap().push(form.clone());
            let field = |k: &str| {
                form.split('&').find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap_or_default().to_string()
            };
            let ok = field("Action") == "AssumeRoleWithWebIdentity"
                && field("Version") == "2011-06-15"
                && field("RoleArn") == ROLE_ARN.replace(':', "%3A").replace('/', "%2F")
                && field("WebIdentityToken") == token;
            let expires = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600));
            if ok {
                Answer::xml(
                    "200 OK",
                    format!(
                        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                     <AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{ACCESS_KEY}</AccessKeyId>\
                     <SecretAccessKey>{SECRET_KEY}</SecretAccessKey><SessionToken>FwoGZXIvYXdzEXAMPLE</SessionToken>\
                     <Expiration>{expires}</Expiration></Credentials></AssumeRoleWithWebIdentityResult>\
                     </AssumeRoleWithWebIdentityResponse>"
                    ),
                )
            } else {
                Answer::xml(
                    "403 Forbidden",
                    "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
                     <Message>Couldn't retrieve verification key from your identity provider</Message></Error>\
                     </ErrorResponse>"
                        .to_string(),
                )
            }
        });
        Sts { port: server.port, requests, _server: server }
    }

    /// The variables EKS sets for IRSA, pointing at this STS and `token_file`.
    pub fn env(&self, token_file: &Path) -> Vec<(String, String)> {
        vec![
            ("AWS_WEB_IDENTITY_TOKEN_FILE".into(), token_file.display().to_string()),
            ("AWS_ROLE_ARN".into(), ROLE_ARN.into()),
            ("AWS_ENDPOINT_URL_STS".into(), format!("http://127.0.0.1:{}", self.port)),
        ]
    }
}

/// What a [`FakeHttp`] handler answers: a status line's tail, headers, a body.
pub struct Answer {
    pub status: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn xml(status: &'static str, body: String) -> Answer {
        Answer { status, headers: vec![("content-type", "text/xml".into())], body }
    }

    /// S3's listing of an empty bucket.
    pub fn empty_listing() -> Answer {
        let xml = "<?xml version=\"1.0\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                   <Name>crik-test</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>";
        Answer::xml("200 OK", xml.into())
    }

    /// S3's answer to a GET of an object that is not there.
    pub fn no_such_key() -> Answer {
        Answer::xml("404 Not Found", "<Error><Code>NoSuchKey</Code><Message>none</Message></Error>".into())
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for the servers this machine cannot run or that must
/// misbehave: every request (its request line and body) goes to `handler`; one request a
/// connection. Stopped on drop.
pub struct FakeHttp {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeHttp {
    pub fn start(handler: impl Fn(&str, &[u8]) -> Answer + Send + 'static) -> FakeHttp {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(conn);
                let (mut len, mut request_line, mut line) = (0, String::new(), String::new());
                let _ = r.read_line(&mut request_line);
                while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let answer = handler(request_line.trim_end(), &body);
                let mut conn = r.into_inner();
                let mut head = format!("HTTP/1.1 {}\r\n", answer.status);
                for (k, v) in &answer.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                let _ = write!(
                    conn,
                    "{head}content-length: {}\r\nconnection: close\r\n\r\n{}",
                    answer.body.len(),
                    answer.body
                );
                let _ = conn.flush();
            }
        });
        FakeHttp { port, stop }
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
