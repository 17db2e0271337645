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
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let mut s = S3Server { root: root.to_path_buf(), port: super::free_port(), child: None };
        s.resume();
        s
    }

    /// (Re)starts the server on the same port and data.
    pub fn resume(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
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

    /// The `storage:` block of a crik config for prefix `prefix`.
    pub fn config(&self, prefix: &str) -> String {
        format!(
            "storage:\n  url: s3://{BUCKET}/{prefix}\n  endpoint: http://127.0.0.1:{}\n  region: us-east-1\n  requestTimeout: 5\n",
            self.port
        )
    }

    /// Credentials as crik reads them.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()), ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into())]
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
