//! A small S3 client: the five calls the remote store needs (PUT, GET, DELETE, list, and
//! STS's AssumeRoleWithWebIdentity for credentials), SigV4-signed, blocking, every request
//! bounded in time. Works with AWS S3 and the S3 interoperability of GCS, R2, MinIO, Ceph.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::remote::sigv4::{self, Keys};

/// Largest response body read (a manifest or a chunk is far smaller).
const MAX_BODY: u64 = 64 << 20;
/// How often a request that failed for a passing reason (connection, 5xx, 429) is tried.
const TRIES: u32 = 3;
/// Temporary credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{op} {url}: {source}")]
    Http { op: &'static str, url: String, source: Box<ureq::Error> },
    #[error("{op} {url}: HTTP {status}{}", code_and_message(.code, .message))]
    Status { op: &'static str, url: String, status: u16, code: String, message: String },
    #[error("{op} {url}: no time left (deadline passed)")]
    Deadline { op: &'static str, url: String },
    #[error("credentials: {0}")]
    Credentials(String),
    /// An answer larger than any object crik stores (a manifest or a chunk): not read.
    #[error("{op} {url}: the answer is larger than {} MiB", MAX_BODY >> 20)]
    TooLarge { op: &'static str, url: String },
    /// A 2xx answer that is not what S3 answers: whatever the endpoint is, it is not storing
    /// anything for crik.
    #[error("{op} {url}: not an S3 answer: {why}")]
    NotS3 { op: &'static str, url: String, why: String },
    /// A setting from the environment that cannot be used (a region that is not a name).
    #[error("{0}")]
    Setting(String),
    /// The request could not even be built (a value no HTTP header can carry): never sent.
    #[error("{op} {url}: cannot build the request: {why}")]
    Request { op: &'static str, url: String, why: String },
}

fn code_and_message(code: &str, message: &str) -> String {
    match (code.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(" {code}"),
        (true, false) => format!(": {message}"),
        (false, false) => format!(" {code}: {message}"),
    }
}

impl S3Error {
    /// An answer that says storage cannot be used as configured (wrong keys or region, no such
    /// bucket, a bad request, an endpoint that is not S3): trying again later cannot help.
    pub fn is_definitive(&self) -> bool {
        match self {
            S3Error::Status { status, .. } => (400..500).contains(status) && *status != 408 && *status != 429,
            S3Error::NotS3 { .. }
            | S3Error::TooLarge { .. }
            | S3Error::Credentials(_)
            | S3Error::Setting(_)
            | S3Error::Request { .. } => true,
            S3Error::Http { .. } | S3Error::Deadline { .. } => false,
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            S3Error::Http { .. } => true,
            S3Error::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

/// A 2xx answer: its body, and the headers crik reads.
struct Answered {
    body: Vec<u8>,
    etag: Option<String>,
    date: Option<SystemTime>,
    last_modified: Option<SystemTime>,
}

/// An object as read with [`Bucket::get_object`].
pub struct Object {
    pub body: Vec<u8>,
    pub etag: Option<String>,
    /// How long ago it was last written, by the server's clock (its `Date` minus the object's
    /// `Last-Modified`); `None` when the server did not say.
    pub age: Option<Duration>,
}

/// What a conditional write requires.
pub enum Condition {
    /// No object at the key (`If-None-Match: *`).
    Absent,
    /// The object still has this ETag (`If-Match`).
    Unchanged(String),
}

/// A conditional write's condition did not hold: nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

/// Where the keys come from: the environment, or a web-identity token exchanged with STS
/// (EKS IRSA and EKS Pod Identity's token file, or any OIDC token AWS trusts).
enum KeySource {
    Static(Keys),
    /// An AWS shared-credentials file only crik reads (its `[default]` profile), re-read when it
    /// changes (a rotated Secret).
    File(std::path::PathBuf),
    WebIdentity {
        token_file: String,
        role_arn: String,
        session_name: String,
        sts_url: String,
    },
}

struct Cached {
    keys: Keys,
    expires: Option<SystemTime>,
    /// The credentials file's modification time when it was read.
    file_modified: Option<SystemTime>,
}

/// A bucket at an endpoint, with credentials.
pub struct Bucket {
    /// `scheme://host[:port]`.
    origin: String,
    host: String,
    /// Path prefix of every object: `/bucket` (path style) or empty (virtual-hosted).
    base_path: String,
    region: String,
    agent: ureq::Agent,
    source: KeySource,
    cached: Mutex<Option<Cached>>,
    request_timeout: Duration,
}

impl Bucket {
    /// `endpoint` given: path-style requests to it (`http://127.0.0.1:9000/bucket/key`); else
    /// AWS's virtual-hosted form (`https://bucket.s3.region.amazonaws.com/key`).
    pub fn new(
        bucket: &str,
        endpoint: Option<&str>,
        region: &str,
        request_timeout: Duration,
        allow_plain_http: bool,
        credentials_file: Option<&std::path::Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Bucket, S3Error> {
        let (origin, base_path) = match endpoint {
            Some(e) => (e.trim_end_matches('/').to_string(), format!("/{bucket}")),
            None => (format!("https://{bucket}.s3.{region}.amazonaws.com"), String::new()),
        };
        let host = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h).to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(request_timeout))
            .build()
            .into();
        Ok(Bucket {
            origin,
            host,
            base_path,
            region: region.to_string(),
            agent,
            source: key_source(region, allow_plain_http, credentials_file, env)?,
            // A credentials file is read now: a missing or unusable one stops crik at start,
            // not at the first upload (and is not read twice).
            cached: Mutex::new(credentials_file.map(read_credentials_file).transpose()?),
            request_timeout,
        })
    }

    fn object_path(&self, key: &str) -> String {
        format!("{}/{key}", self.base_path)
    }

    /// Stores `body` at `key` (overwriting).
    pub fn put(&self, key: &str, body: &[u8], deadline: Instant) -> Result<(), S3Error> {
        self.call("PUT", key, &[], &[], Some(body), deadline).map(|_| ())
    }

    /// Stores `body` at `key` only if `condition` holds when the server writes it (S3's
    /// conditional writes: atomic on AWS S3, GCS, MinIO). `Ok(Err(Conflict))`: it did not hold
    /// (412, or 409 for a concurrent conditional write), nothing was written. `Ok(Ok(etag))`:
    /// written, with this ETag.
    pub fn put_if(
        &self,
        key: &str,
        body: &[u8],
        condition: &Condition,
        deadline: Instant,
    ) -> Result<Result<String, Conflict>, S3Error> {
        let header = match condition {
            Condition::Absent => ("if-none-match", "*"),
            Condition::Unchanged(etag) => ("if-match", etag.as_str()),
        };
        match self.call("PUT", key, &[], &[header], Some(body), deadline) {
            Ok(a) => Ok(Ok(a.etag.unwrap_or_default())),
            // If-Match on an object that is gone: 412 (MinIO, s3s) or 404 (AWS).
            Err(S3Error::Status { status: 412 | 409, .. }) => Ok(Err(Conflict)),
            Err(S3Error::Status { status: 404, .. }) if matches!(condition, Condition::Unchanged(_)) => {
                Ok(Err(Conflict))
            }
            Err(e) => Err(e),
        }
    }

    /// The object at `key`, or `None` when there is none.
    pub fn get(&self, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, S3Error> {
        Ok(self.get_object(key, deadline)?.map(|o| o.body))
    }

    /// The object at `key` with what the server says of it (ETag, age), or `None`.
    pub fn get_object(&self, key: &str, deadline: Instant) -> Result<Option<Object>, S3Error> {
        match self.call("GET", key, &[], &[], None, deadline) {
            Ok(a) => {
                // Both times are the server's clock: their difference is safe from any skew
                // between this node's clock and the server's.
                let age = match (a.date, a.last_modified) {
                    (Some(now), Some(modified)) => Some(now.duration_since(modified).unwrap_or_default()),
                    _ => None,
                };
                Ok(Some(Object { body: a.body, etag: a.etag, age }))
            }
            // No such key; a bucket that is not there is an error, not an empty answer.
            Err(S3Error::Status { status: 404, code, .. }) if code != "NoSuchBucket" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes `key` (no error when it is already gone).
    pub fn delete(&self, key: &str, deadline: Instant) -> Result<(), S3Error> {
        match self.call("DELETE", key, &[], &[], None, deadline) {
            Err(S3Error::Status { status: 404, .. }) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// The key of every object whose key starts with `prefix` (ListObjectsV2, page by page).
    pub fn list(&self, prefix: &str, deadline: Instant) -> Result<Vec<String>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            }
            let body = self.call("LIST", "", &q, &[], None, deadline)?.body;
            let text = String::from_utf8_lossy(&body);
            // An empty listing is still a ListBucketResult: anything else (an HTML page answered
            // with 200) must never read as "no checkpoint here".
            if xml_elements(&text, "ListBucketResult").next().is_none() && !text.contains("<ListBucketResult ") {
                let url = format!("{}{}/?prefix={prefix}", self.origin, self.base_path);
                return Err(S3Error::NotS3 { op: "LIST", url, why: "no ListBucketResult in the answer".into() });
            }
            out.extend(xml_elements(&text, "Contents").filter_map(|c| xml_value(c, "Key")));
            match xml_value(&text, "NextContinuationToken") {
                Some(t) if xml_value(&text, "IsTruncated").as_deref() == Some("true") => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// One request, tried again on a passing failure while the deadline allows.
    fn call(
        &self,
        op: &'static str,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<Answered, S3Error> {
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.call_once(op, key, query, extra, body, deadline) {
                Err(e) if e.is_transient() && tries < TRIES && Instant::now() + delay < deadline => {
                    log::debug!("{e}; trying again in {} ms", delay.as_millis());
                    std::thread::sleep(delay);
                    delay *= 4;
                }
                r => return r,
            }
        }
    }

    fn call_once(
        &self,
        op: &'static str,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<Answered, S3Error> {
        let path = if op == "LIST" { format!("{}/", self.base_path) } else { self.object_path(key) };
        let method = if op == "LIST" { "GET" } else { op };
        let mut url = format!("{}{}", self.origin, sigv4::encode(&path, false));
        if !query.is_empty() {
            let q: Vec<String> =
                query.iter().map(|(k, v)| format!("{}={}", sigv4::encode(k, true), sigv4::encode(v, true))).collect();
            url = format!("{url}?{}", q.join("&"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(S3Error::Deadline { op, url });
        }
        let keys = self.keys()?;
        // A PUT's body carries its CRC-32, which the server checks (and signs into the request).
        let crc = (method == "PUT").then(|| sigv4::checksum_crc32(body.unwrap_or(&[])));
        let checksum: Vec<(&str, &str)> = crc.iter().map(|c| ("x-amz-checksum-crc32", c.as_str())).collect();
        let req =
            sigv4::Request { method, path: &path, query, headers: &checksum, payload_sha256: sigv4::UNSIGNED_PAYLOAD };
        let headers = sigv4::sign(&req, &self.host, &keys, &self.region, "s3", &sigv4::amz_date(SystemTime::now()));
        let mut b = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            b = b.header(k, v);
        }
        // Conditions (If-Match, If-None-Match) are not signed: S3 does not require it.
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let request =
            b.body(body.unwrap_or(&[])).map_err(|e| S3Error::Request { op, url: url.clone(), why: e.to_string() })?;
        let timeout = left.min(self.request_timeout);
        let agent = self.agent.configure_request(request).timeout_global(Some(timeout)).build();
        let http = |e| S3Error::Http { op, url: url.clone(), source: Box::new(e) };
        let mut resp = self.agent.run(agent).map_err(http)?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (etag, date, last_modified) = (header("etag"), header("date"), header("last-modified"));
        let bytes = match resp.body_mut().with_config().limit(MAX_BODY).read_to_vec() {
            Err(ureq::Error::BodyExceedsLimit(_)) => return Err(S3Error::TooLarge { op, url }),
            r => r.map_err(http)?,
        };
        if (200..300).contains(&status) {
            // S3 answers every object stored or read with its ETag: a 200 without one is not S3
            // (a proxy's page, a misrouted endpoint), and stored nothing.
            if (op == "PUT" || op == "GET") && etag.is_none() {
                return Err(S3Error::NotS3 { op, url, why: format!("a {op} answered without an ETag") });
            }
            let time = |v: Option<String>| v.and_then(|v| httpdate::parse_http_date(&v).ok());
            return Ok(Answered { body: bytes, etag, date: time(date), last_modified: time(last_modified) });
        }
        let text = String::from_utf8_lossy(&bytes);
        Err(S3Error::Status {
            op,
            url,
            status,
            code: xml_value(&text, "Code").unwrap_or_default(),
            message: xml_value(&text, "Message").unwrap_or_default(),
        })
    }

    /// Current keys; temporary ones are renewed shortly before they expire.
    fn keys(&self) -> Result<Keys, S3Error> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref() {
            let mut fresh = c.expires.map_or(true, |t| SystemTime::now() + RENEW_BEFORE < t);
            if let KeySource::File(path) = &self.source {
                fresh &= std::fs::metadata(path).and_then(|m| m.modified()).ok() == c.file_modified;
            }
            if fresh {
                return Ok(c.keys.clone());
            }
        }
        let fetched = match &self.source {
            KeySource::Static(k) => Cached { keys: k.clone(), expires: None, file_modified: None },
            KeySource::File(path) => read_credentials_file(path)?,
            KeySource::WebIdentity { token_file, role_arn, session_name, sts_url } => {
                let token = std::fs::read_to_string(token_file)
                    .map_err(|e| S3Error::Credentials(format!("cannot read web identity token {token_file}: {e}")))?;
                assume_role_with_web_identity(&self.agent, sts_url, role_arn, session_name, token.trim())?
            }
        };
        let keys = fetched.keys.clone();
        *cached = Some(fetched);
        Ok(keys)
    }
}

/// Keys from the environment: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
/// `AWS_SESSION_TOKEN`), else `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (+
/// `AWS_ROLE_SESSION_NAME`, `AWS_ENDPOINT_URL_STS`), the variables EKS sets for IRSA.
fn key_source(
    region: &str,
    allow_plain_http: bool,
    credentials_file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KeySource, S3Error> {
    if let Some(path) = credentials_file {
        return Ok(KeySource::File(path.to_path_buf()));
    }
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    // A Secret made from a file often ends in a newline: trimmed. Anything else a header cannot
    // carry is refused here, at start, naming the variable (never its value).
    let key = |k: &str| var(k).map(|v| header_value(&v).map_err(|why| S3Error::Credentials(format!("{k} {why}"))));
    if let (Some(access_key), Some(secret_key)) = (key("AWS_ACCESS_KEY_ID"), key("AWS_SECRET_ACCESS_KEY")) {
        let session_token = key("AWS_SESSION_TOKEN").transpose()?;
        return Ok(KeySource::Static(Keys { access_key: access_key?, secret_key: secret_key?, session_token }));
    }
    if let (Some(token_file), Some(role_arn)) = (var("AWS_WEB_IDENTITY_TOKEN_FILE"), var("AWS_ROLE_ARN")) {
        let sts_url = var("AWS_ENDPOINT_URL_STS").unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        // STS answers with secret keys: never over the network in the clear unless allowed.
        if crate::config::is_in_the_clear(&sts_url) && !allow_plain_http {
            return Err(S3Error::Credentials(format!(
                "AWS_ENDPOINT_URL_STS {sts_url} is plain http:// to another host: the temporary keys would cross the \
                 network in the clear; use https://, or set storage.allowPlainHttp: true"
            )));
        }
        let session_name = var("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "crik".into());
        return Ok(KeySource::WebIdentity { token_file, role_arn, session_name, sts_url });
    }
    Err(S3Error::Credentials(
        "none found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN"
            .into(),
    ))
}

/// Exchanges a web-identity token for temporary keys (STS needs no signature for this call).
fn assume_role_with_web_identity(
    agent: &ureq::Agent,
    sts_url: &str,
    role_arn: &str,
    session_name: &str,
    token: &str,
) -> Result<Cached, S3Error> {
    let url = format!("{}/", sts_url.trim_end_matches('/'));
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
        ("WebIdentityToken", token),
    ];
    let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", sigv4::encode(v, true))).collect();
    let http = |e| S3Error::Http { op: "AssumeRoleWithWebIdentity", url: url.clone(), source: Box::new(e) };
    let mut resp = agent
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .send(body.join("&"))
        .map_err(http)?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().with_config().limit(1 << 20).read_to_string().map_err(http)?;
    if status != 200 {
        return Err(S3Error::Credentials(format!(
            "STS {url} refused the web identity token: HTTP {status}{}",
            code_and_message(
                &xml_value(&text, "Code").unwrap_or_default(),
                &xml_value(&text, "Message").unwrap_or_default()
            )
        )));
    }
    parse_sts_credentials(&text).map_err(|why| S3Error::Credentials(format!("STS {url}: {why}")))
}

fn parse_sts_credentials(xml: &str) -> Result<Cached, String> {
    let creds = xml_elements(xml, "Credentials").next().ok_or("no credentials in its answer")?;
    let field = |tag: &str| -> Result<Option<String>, String> {
        xml_value(creds, tag).map(|v| header_value(&v).map_err(|why| format!("its {tag} {why}"))).transpose()
    };
    let keys = Keys {
        access_key: field("AccessKeyId")?.ok_or("no AccessKeyId in its answer")?,
        secret_key: field("SecretAccessKey")?.ok_or("no SecretAccessKey in its answer")?,
        session_token: field("SessionToken")?,
    };
    let expires = xml_value(creds, "Expiration").and_then(|e| humantime::parse_rfc3339_weak(&e).ok());
    Ok(Cached { keys, expires, file_modified: None })
}

/// Keys from an AWS shared-credentials file (`[default]` profile, or keys before any section):
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`. Nothing of its content is
/// ever shown in an error.
fn read_credentials_file(path: &std::path::Path) -> Result<Cached, S3Error> {
    let err = |why: String| S3Error::Credentials(format!("storage.credentialsFile {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > 64 << 10 {
        return Err(err("larger than 64 KiB: not a credentials file".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let keys = parse_credentials_file(&text).map_err(err)?;
    Ok(Cached { keys, expires: None, file_modified: meta.modified().ok() })
}

fn parse_credentials_file(text: &str) -> Result<Keys, String> {
    let mut section: Option<String> = None;
    let mut found: std::collections::HashMap<String, String> = Default::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        if section.as_deref().is_some_and(|s| s != "default") {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            found.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut take =
        |k: &str| found.remove(k).map(|v| header_value(&v).map_err(|why| format!("its {k} {why}"))).transpose();
    Ok(Keys {
        access_key: take("aws_access_key_id")?.ok_or("no aws_access_key_id in its [default] profile")?,
        secret_key: take("aws_secret_access_key")?.ok_or("no aws_secret_access_key in its [default] profile")?,
        session_token: take("aws_session_token")?,
    })
}

/// A credential as an HTTP header can carry it: surrounding whitespace trimmed, then visible
/// ASCII only. `Err` says what is wrong without showing the value (it is a secret).
fn header_value(v: &str) -> Result<String, String> {
    let v = v.trim();
    match v.chars().find(|c| !c.is_ascii_graphic()) {
        Some(_) => Err("holds a character an HTTP header cannot carry (not shown: it is a secret)".into()),
        None if v.is_empty() => Err("is empty".into()),
        None => Ok(v.to_string()),
    }
}

/// The bodies of every `<tag>...</tag>` in `xml`. S3's answers are flat and machine-written;
/// finding elements by name is all crik needs from them.
fn xml_elements<'a>(xml: &'a str, tag: &str) -> impl Iterator<Item = &'a str> + 'a {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let body = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(body)
    })
}

/// The text of the first `<tag>`, with XML's five entities decoded.
fn xml_value(xml: &str, tag: &str) -> Option<String> {
    let raw = xml_elements(xml, tag).next()?;
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pages_and_errors_are_read() {
        let page = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true</IsTruncated>\
            <Contents><Key>p/chunks/ab</Key><Size>12</Size></Contents>\
            <Contents><Key>p/a&amp;b</Key><Size>3</Size></Contents>\
            <NextContinuationToken>tok/1</NextContinuationToken></ListBucketResult>";
        let keys: Vec<_> = xml_elements(page, "Contents").map(|c| xml_value(c, "Key").unwrap()).collect();
        assert_eq!(keys, ["p/chunks/ab", "p/a&b"]);
        assert_eq!(xml_value(page, "NextContinuationToken").as_deref(), Some("tok/1"));
        let err = "<Error><Code>InvalidAccessKeyId</Code><Message>no such key</Message></Error>";
        let e = S3Error::Status {
            op: "GET",
            url: "u".into(),
            status: 403,
            code: xml_value(err, "Code").unwrap(),
            message: xml_value(err, "Message").unwrap(),
        };
        assert_eq!(e.to_string(), "GET u: HTTP 403 InvalidAccessKeyId: no such key");
        assert!(e.is_definitive() && !e.is_transient());
        let busy =
            S3Error::Status { op: "GET", url: "u".into(), status: 503, code: "SlowDown".into(), message: "".into() };
        assert!(!busy.is_definitive() && busy.is_transient());
        let html = S3Error::NotS3 { op: "LIST", url: "u".into(), why: "no ListBucketResult in the answer".into() };
        assert!(html.is_definitive() && !html.is_transient());
    }

    #[test]
    fn sts_answer_gives_temporary_keys() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s3cr3t</SecretAccessKey>\
            <SessionToken>tok</SessionToken><Expiration>2026-12-02T20:00:00Z</Expiration>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let c = parse_sts_credentials(xml).unwrap();
        assert_eq!((c.keys.access_key.as_str(), c.keys.session_token.as_deref()), ("ASIA1", Some("tok")));
        assert_eq!(c.expires, Some(humantime::parse_rfc3339("2026-12-02T20:00:00Z").unwrap()));
    }

    #[test]
    fn keys_come_from_the_environment_or_a_token_file() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let s =
            key_source("eu-west-1", false, None, &env(&[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")]))
                .unwrap();
        assert!(matches!(s, KeySource::Static(k) if k.access_key == "AK" && k.session_token.is_none()));
        let s = key_source(
            "eu-west-1",
            false,
            None,
            &env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_ROLE_ARN", "arn:r")]),
        )
        .unwrap();
        assert!(
            matches!(s, KeySource::WebIdentity { sts_url, .. } if sts_url == "https://sts.eu-west-1.amazonaws.com")
        );
        const STS: [(&str, &str); 3] = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:r"),
            ("AWS_ENDPOINT_URL_STS", "http://sts.internal"),
        ];
        let e = key_source("eu-west-1", false, None, &env(&STS)).err().unwrap();
        assert!(e.to_string().contains("in the clear"), "{e}");
        assert!(key_source("eu-west-1", true, None, &env(&STS)).is_ok());
        let e = key_source("eu-west-1", false, None, &env(&[("AWS_ACCESS_KEY_ID", "AK")])).err().unwrap();
        assert!(e.to_string().contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{e}");
    }

    #[test]
    fn a_credentials_file_gives_the_default_profiles_keys() {
        let text = "# made by aws configure\n[other]\naws_access_key_id = NOPE\n\n[default]\n\
                    aws_access_key_id = AK\nAWS_Secret_Access_Key=SK \r\naws_session_token = tok\n[later]\naws_access_key_id = NO\n";
        let k = parse_credentials_file(text).unwrap();
        assert_eq!(
            (k.access_key.as_str(), k.secret_key.as_str(), k.session_token.as_deref()),
            ("AK", "SK", Some("tok"))
        );
        let k = parse_credentials_file("aws_access_key_id=A\naws_secret_access_key=S\n").unwrap();
        assert_eq!((k.access_key.as_str(), k.session_token), ("A", None));
        let e = parse_credentials_file("[default]\naws_access_key_id = A\n").unwrap_err();
        assert!(e.contains("no aws_secret_access_key"), "{e}");
        let e = parse_credentials_file("aws_access_key_id = A\naws_secret_access_key = s3 cr3t\n").unwrap_err();
        assert!(e.contains("aws_secret_access_key holds") && !e.contains("cr3t"), "{e}");
    }

    #[test]
    fn credentials_a_header_cannot_carry_are_refused_by_name_not_shown() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        // A Secret made from a file: the trailing newline is trimmed.
        let s =
            key_source("r", false, None, &env(&[("AWS_ACCESS_KEY_ID", "AK\n"), ("AWS_SECRET_ACCESS_KEY", " SK\r\n")]))
                .unwrap();
        assert!(matches!(s, KeySource::Static(k) if k.access_key == "AK" && k.secret_key == "SK"));
        const BAD: [(&str, &str); 3] =
            [("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK"), ("AWS_SESSION_TOKEN", "to\nk3n")];
        let e = key_source("r", false, None, &env(&BAD)).err().unwrap().to_string();
        assert!(e.contains("AWS_SESSION_TOKEN holds a character") && !e.contains("k3n"), "{e}");
        let e = key_source("r", false, None, &env(&[("AWS_ACCESS_KEY_ID", "A K"), ("AWS_SECRET_ACCESS_KEY", "SK")]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID holds"), "{e}");
        // STS renewing with a token no header can carry: an error, never a panic mid-run.
        let xml = "<Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s3cr3t</SecretAccessKey>\
            <SessionToken>to\u{7f}k</SessionToken></Credentials>";
        let e = parse_sts_credentials(xml).err().unwrap();
        assert!(e.contains("SessionToken holds") && !e.contains("s3cr3t"), "{e}");
    }
}
