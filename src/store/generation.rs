//! Generations: how crik tells an old checkpoint put back (a rollback) from the newest one.
//!
//! Every checkpoint's manifest carries a generation, one more than the newest this app has
//! written or restored, and no less than the time in milliseconds (see
//! [`crate::store::Store::next_generation`]). With a key, crik keeps the newest generation where nobody without the
//! key can forge it: in the image dir ([`GENERATION_FILE`], MAC'd) and in the prefix's lease
//! (see [`crate::remote::lease`]). A start refuses a checkpoint older than the newest such
//! record: someone put an older checkpoint back, or held the newest one back. Where there is no
//! record (a new node without a volume, the lease deleted), `encryption.maxAge` bounds how old a
//! checkpoint may be instead.
//!
//! Without a key nothing is checked (anyone who can write the checkpoints can write the
//! record too); generations are still counted, so turning a key on later starts from them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::layout::GENERATION_FILE;
use crate::seal::{Keys, SealError};

/// What a generation is MAC'd as (with the identity it belongs to).
const DOMAIN: &str = "crik generation v1";
/// The record is a few dozen bytes.
const MAX_RECORD: u64 = 4 << 10;

/// The MAC of generation `g` for `identity` (the writer key's).
pub fn mac(keys: &Keys, identity: &str, g: u64) -> String {
    keys.writer().mac(DOMAIN, &[identity.as_bytes(), &g.to_le_bytes()])
}

/// Whether `mac` is [`mac`] of `g` for `identity` under one of the keys.
pub fn check(keys: &Keys, identity: &str, g: u64, mac: &str) -> Result<(), SealError> {
    keys.check_mac(DOMAIN, &[identity.as_bytes(), &g.to_le_bytes()], mac)
}

/// The image dir's record: the newest generation written or restored through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The image dir's record as found (`None`: there is none; `Err`: it does not read).
pub fn read(root: &Path) -> Result<Option<Record>, String> {
    use std::io::Read;
    let p = root.join(GENERATION_FILE);
    let mut text = Vec::new();
    match std::fs::File::open(&p) {
        Ok(f) => f.take(MAX_RECORD + 1).read_to_end(&mut text).map_err(|e| format!("cannot read it: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    if text.len() as u64 > MAX_RECORD {
        return Err("larger than a record is".into());
    }
    serde_json::from_slice(&text).map(Some).map_err(|e| format!("does not parse: {e}"))
}

/// What a start knows of the newest generation, and whether it can be trusted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Newest {
    /// The newest generation seen: the next checkpoint gets one more.
    pub generation: u64,
    /// Whether an authentic record of it exists (a key is configured and a record's MAC, or
    /// a checkpoint crik wrote or restored with the key, vouches for it).
    pub trusted: bool,
}

/// Why a checkpoint is refused as stale.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Stale {
    #[error(
        "generation {found} is older than the newest this app has written or restored, {newest}: an older \
         checkpoint was put back, or the newest one held back (a rollback)"
    )]
    Older { found: u64, newest: u64 },
    #[error(
        "it was taken {created} ({} ago), more than encryption.maxAge ({} s) before now, and there is no \
         trusted record of the newest generation to vouch for it",
        humantime::format_duration(Duration::from_secs(age.as_secs())), max_age.as_secs()
    )]
    TooOld { created: String, age: Duration, max_age: Duration },
    #[error("its creation time {0:?} does not read")]
    BadTime(String),
}

/// Whether a checkpoint of generation `found`, taken at `created` (RFC 3339), may be restored
/// given what is known of the newest (only called with a key: the manifest is authentic).
pub fn check_fresh(newest: Newest, found: u64, created: &str, max_age: Option<Duration>) -> Result<(), Stale> {
    if newest.trusted {
        return if found < newest.generation { Err(Stale::Older { found, newest: newest.generation }) } else { Ok(()) };
    }
    let Some(max_age) = max_age else { return Ok(()) };
    let taken = humantime::parse_rfc3339(created).map_err(|_| Stale::BadTime(created.into()))?;
    let age = SystemTime::now().duration_since(taken).unwrap_or_default();
    if age > max_age {
        return Err(Stale::TooOld { created: created.into(), age, max_age });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_record_refuses_older_generations_and_max_age_applies_without_one() {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let old = humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(7200)).to_string();
        let trusted = Newest { generation: 5, trusted: true };
        assert_eq!(check_fresh(trusted, 5, &old, None), Ok(()), "the newest itself");
        assert_eq!(check_fresh(trusted, 9, &old, Some(Duration::from_secs(1))), Ok(()), "the record vouches");
        assert_eq!(check_fresh(trusted, 4, &now, None), Err(Stale::Older { found: 4, newest: 5 }));
        let none = Newest { generation: 5, trusted: false };
        assert_eq!(check_fresh(none, 1, &old, None), Ok(()), "nothing to check against");
        assert_eq!(check_fresh(none, 1, &now, Some(Duration::from_secs(3600))), Ok(()));
        let e = check_fresh(none, 1, &old, Some(Duration::from_secs(3600))).unwrap_err();
        assert!(matches!(e, Stale::TooOld { .. }) && e.to_string().contains("maxAge (3600 s)"), "{e}");
        assert_eq!(
            check_fresh(none, 1, "yesterday", Some(Duration::from_secs(1))),
            Err(Stale::BadTime("yesterday".into()))
        );
    }

    #[test]
    fn generation_macs_bind_the_identity_and_the_number() {
        let keys = Keys::new(vec![crate::seal::Key::parse(&crate::seal::Key::generate().unwrap()).unwrap()]).unwrap();
        let m = mac(&keys, "s3://b/app", 7);
        check(&keys, "s3://b/app", 7, &m).unwrap();
        assert_eq!(check(&keys, "s3://b/app", 8, &m), Err(SealError::Altered));
        assert_eq!(check(&keys, "s3://b/other", 7, &m), Err(SealError::Altered));
    }
}
