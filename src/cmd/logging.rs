//! crik's own log lines, on stderr (stdout belongs to the app): text for people, or one JSON
//! object per line (`logFormat: json`) for cluster log pipelines. Key events carry structured
//! fields (`event`, durations, sizes) that the JSON format emits as keys.

use std::io::Write;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Crates whose debug and trace lines would carry secrets.
const QUIET_AT_INFO: [&str; 4] = ["ureq", "ureq_proto", "rustls", "webpki"];

/// Installs the logger; the level comes from RUST_LOG (default info).
pub fn init(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // The HTTP and TLS stacks log requests, headers and bodies at debug and trace: the storage
    // credentials (Authorization, X-Amz-Security-Token) and STS's answer with its secret key.
    // Whatever RUST_LOG says, they say no more than info.
    for module in QUIET_AT_INFO {
        b.filter_module(module, log::LevelFilter::Info);
    }
    b.target(env_logger::Target::Stderr);
    match format {
        LogFormat::Text => {
            b.format(|buf, r| writeln!(buf, "{} crik {}: {}", buf.timestamp_seconds(), r.level(), r.args()));
        }
        LogFormat::Json => {
            b.format(|buf, r| {
                let mut obj = serde_json::Map::new();
                obj.insert("time".into(), buf.timestamp_millis().to_string().into());
                obj.insert("level".into(), r.level().as_str().to_lowercase().into());
                obj.insert("logger".into(), "crik".into());
                obj.insert("msg".into(), r.args().to_string().into());
                let mut fields = Fields(&mut obj);
                let _ = r.key_values().visit(&mut fields);
                writeln!(buf, "{}", serde_json::Value::Object(obj))
            });
        }
    }
    // A second init (tests) is harmless.
    let _ = b.try_init();
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_string(), v);
        Ok(())
    }
}
