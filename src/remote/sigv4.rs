//! AWS Signature Version 4 for S3 requests (header form): pure functions, no I/O.
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html>

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// What the `x-amz-content-sha256` header says when the body is not hashed with SHA-256: a
/// PUT's body carries `x-amz-checksum-crc32` instead (see [`checksum_crc32`]), which the server
/// verifies at a fraction of the cost (SHA-256 of every chunk halved the upload's throughput
/// on this project's machines); what crik reads back it checks against its own hashes.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The `x-amz-checksum-crc32` of a body: its CRC-32, big-endian, in base64. S3 (and its
/// compatible stores that verify additional checksums) refuse a PUT whose body does not match,
/// so a body damaged on the way is never stored as if it were whole.
pub fn checksum_crc32(body: &[u8]) -> String {
    base64_4(crc32fast::hash(body).to_be_bytes())
}

/// Standard base64 of 4 bytes (8 characters, two of them padding).
fn base64_4(b: [u8; 4]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let n = u32::from_be_bytes(b) as u64;
    let sextets = [(n >> 26) & 63, (n >> 20) & 63, (n >> 14) & 63, (n >> 8) & 63, (n >> 2) & 63, (n << 4) & 63];
    let mut s: String = sextets.iter().map(|&i| ALPHABET[i as usize] as char).collect();
    s.push_str("==");
    s
}

/// Access key, secret and (for temporary credentials) session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys {{ access_key: {:?}, secret_key: <hidden>, .. }}", self.access_key)
    }
}

/// One request to sign. `path` is the absolute, not yet encoded object path (`/bucket/key`).
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign besides the ones `sign` adds; names in lowercase.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

/// The `x-amz-date` form of a time: `20130524T000000Z`.
pub fn amz_date(t: SystemTime) -> String {
    // humantime's RFC 3339 form with the separators dropped: "2013-05-24T00:00:00Z".
    humantime::format_rfc3339_seconds(t).to_string().chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// The headers to send with `req` (host, date, content hash, token, authorization), in order.
pub fn sign(req: &Request, host: &str, keys: &Keys, region: &str, service: &str, date: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = vec![("host".into(), host.into()), ("x-amz-date".into(), date.into())];
    if service == "s3" {
        headers.push(("x-amz-content-sha256".into(), req.payload_sha256.into()));
    }
    if let Some(t) = &keys.session_token {
        headers.push(("x-amz-security-token".into(), t.clone()));
    }
    headers.extend(req.headers.iter().map(|(k, v)| (k.to_string(), v.trim().to_string())));
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();

    let mut query: Vec<(String, String)> = req.query.iter().map(|(k, v)| (encode(k, true), encode(v, true))).collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        encode(req.path, false),
        query.join("&"),
        canonical_headers,
        signed,
        req.payload_sha256
    );
    let day = &date[..8];
    let scope = format!("{day}/{region}/{service}/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
    let mut key = hmac(format!("AWS4{}", keys.secret_key).as_bytes(), day.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            keys.access_key
        ),
    ));
    headers
}

/// URI-encodes as SigV4 wants: unreserved characters kept, everything else `%XX`; `/` kept in
/// paths, encoded in query strings.
pub fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorization(h: &[(String, String)]) -> &str {
        &h.iter().find(|(k, _)| k == "authorization").unwrap().1
    }

    /// Hex SHA-256 of a body (the AWS examples sign theirs).
    fn sha256_hex(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }

    #[test]
    fn crc32_checksums_are_base64_of_the_big_endian_crc() {
        // CRC-32 of "hello world" is 0x0d4a1185 (as S3's documentation examples give it).
        assert_eq!(checksum_crc32(b"hello world"), "DUoRhQ==");
        assert_eq!(checksum_crc32(b""), "AAAAAA==");
    }

    #[test]
    fn aws_test_suite_get_vanilla() {
        // aws-sig-v4-test-suite "get-vanilla": GET / on example.amazonaws.com, service "service".
        let keys = Keys {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let req = Request { method: "GET", path: "/", query: &[], headers: &[], payload_sha256: &sha256_hex(b"") };
        let h = sign(&req, "example.amazonaws.com", &keys, "us-east-1", "service", "20150830T123600Z");
        assert_eq!(
            authorization(&h),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The keys of the S3 documentation's SigV4 examples.
    fn s3_docs_keys() -> Keys {
        Keys {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn s3_documentation_example_get_object() {
        // The GetObject example of the S3 SigV4 documentation (header-based auth).
        let keys = s3_docs_keys();
        let empty = sha256_hex(b"");
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &[("range", "bytes=0-9")],
            payload_sha256: &empty,
        };
        let h = sign(&req, "examplebucket.s3.amazonaws.com", &keys, "us-east-1", "s3", "20130524T000000Z");
        assert!(
            authorization(&h).ends_with("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
            "{h:?}"
        );
    }

    #[test]
    fn s3_documentation_example_list_objects() {
        // The ListObjects example (GET /?max-keys=2&prefix=J) of the same documentation.
        let keys = s3_docs_keys();
        let empty = sha256_hex(b"");
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("prefix", "J"), ("max-keys", "2")],
            headers: &[],
            payload_sha256: &empty,
        };
        let h = sign(&req, "examplebucket.s3.amazonaws.com", &keys, "us-east-1", "s3", "20130524T000000Z");
        assert!(
            authorization(&h).ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
            "{h:?}"
        );
    }

    #[test]
    fn dates_and_encoding() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
        assert_eq!(encode("/b/a key+x/é", false), "/b/a%20key%2Bx/%C3%A9");
        assert_eq!(encode("a/b=c", true), "a%2Fb%3Dc");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let k = Keys { access_key: "AK".into(), secret_key: "very-secret".into(), session_token: Some("tok".into()) };
        assert!(!format!("{k:?}").contains("very-secret"));
    }
}
