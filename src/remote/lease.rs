//! One writer per prefix: the lease.
//!
//! Two cricks writing one prefix destroy each other's checkpoints (each one's garbage
//! collection deletes chunks the other's manifest is about to name) or clone the app (the second
//! restores the first one's newest checkpoint while the first still runs it). So a crik writes a
//! prefix (publishes, retires, quarantines, collects garbage) only while it holds the prefix's
//! lease, the object [`LEASE`]:
//!
//! - **acquired** with a conditional write, `If-None-Match: *` when there is none, else
//!   `If-Match: <its ETag>` once it is released or expired: of two cricks racing for it, exactly
//!   one wins (S3's conditional writes are atomic);
//! - **renewed** every third of its ttl with `If-Match` (each renewal changes the object, so
//!   its ETag), on a thread of its own, so that a long dump does not let it lapse;
//! - **released** when crik exits (marked `released`, conditionally): the next start on the
//!   prefix proceeds at once, typically a pod replacing this one that waited for its final
//!   checkpoint;
//! - **expired** when not renewed for its ttl: its holder died. Judged by the server's clock
//!   alone (the answer's `Date` minus the lease's `Last-Modified`), so the nodes' clocks do not
//!   matter; by this crik seeing one ETag unchanged for a ttl when the server does not say.
//!
//! The holder fences itself: it writes only while its last renewal that got through was sent
//! less than 4/5 of the ttl ago (by the server's clock that renewal happened later still, so the
//! lease cannot have expired yet), and it renews once more right before it puts a manifest. A
//! renewal refused (its ETag changed: the holder was cut off for longer than the ttl and another
//! crik took over) means the lease is lost for good: this crik never writes the prefix again.
//! After taking over an expired lease, garbage collection waits for a ttl plus two requests:
//! an upload of the previous holder cannot still be landing chunks its manifest will name.
//!
//! The lease also records the newest generation written to (or restored from) the prefix,
//! MAC'd with the key when there is one, and each holder carries it over from the last: a
//! start refuses a checkpoint older than that (see [`crate::store::generation`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{LeaseConfig, WhenHeld};
use crate::remote::s3::{Bucket, Condition, Conflict, Object, S3Error};
use crate::seal::Keys;
use crate::store::generation;

/// The largest lease object read (a lease is a few hundred bytes).
const MAX_LEASE: usize = 64 << 10;
/// A lease's ttl as read from storage is capped: a forged one cannot make a start wait longer.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// Of the ttl, the share after the last renewal during which the holder still writes.
const FENCE: (u32, u32) = (4, 5);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    S3(#[from] S3Error),
    /// Another crik holds the prefix (and `whenHeld` or `maxWait` says not to wait longer).
    #[error("{url} is in use by {holder}: {why}")]
    Held { url: String, holder: String, why: String },
    /// A signal stopped crik while it waited for the lease.
    #[error("stopped while waiting for the lease on {url}: {why}")]
    Interrupted { url: String, why: String },
    /// The server ignores conditional writes: the lease cannot keep a second crik out.
    #[error(
        "{url}: the server ignores conditional writes (If-None-Match), so one writer per prefix cannot be \
         enforced; set storage.lease.enabled: false to go on without (nothing then stops two cricks on this prefix)"
    )]
    Unsupported { url: String },
    /// This crik may not write the prefix (now).
    #[error("this crik does not hold the lease on {url}: {why}")]
    NotHolder { url: String, why: String },
}

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// A random id of the crik run holding it.
    holder: String,
    /// Its host name (a pod's name).
    host: String,
    /// When it acquired the lease, RFC 3339 (for people).
    since: String,
    ttl_ms: u64,
    /// Counts renewals: each one writes different bytes, hence a new ETag.
    #[serde(default)]
    renewals: u64,
    #[serde(default)]
    released: bool,
    /// The newest generation written to or restored from the prefix.
    #[serde(default)]
    generation: u64,
    /// Its MAC (with a key), bound to the prefix's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation_mac: Option<String>,
}

impl Record {
    fn parse(body: &[u8]) -> Result<Record, String> {
        if body.len() > MAX_LEASE {
            return Err(format!("larger than {} KiB", MAX_LEASE >> 10));
        }
        serde_json::from_slice(body).map_err(|e| format!("does not parse: {e}"))
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms).min(MAX_TTL)
    }

    /// "crik 1a2b3c4d on web-7f9c (since ...)" for messages.
    fn describe(&self) -> String {
        let short: String = self.holder.chars().take(8).collect();
        format!("crik {short} on {} (holding it since {})", self.host, self.since)
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease serializes")
    }

    /// The generation this record vouches for: with keys, only when its MAC checks. (0: none
    /// was recorded.)
    fn vouched(&self, seal: &Sealing) -> Option<u64> {
        if self.generation == 0 {
            return None;
        }
        let Some(keys) = &seal.keys else { return Some(self.generation) };
        match self.generation_mac.as_deref().map(|m| generation::check(keys, &seal.identity, self.generation, m)) {
            Some(Ok(())) => Some(self.generation),
            Some(Err(e)) => {
                log::error!(
                    "the lease's record of the newest generation ({}) is {e}: ignored (rollback is then checked by \
                     the image dir's record, or encryption.maxAge)",
                    self.generation
                );
                None
            }
            None => {
                log::warn!("the lease's record of the newest generation was written without a key: ignored");
                None
            }
        }
    }

    /// Sets the generation, with its MAC.
    fn set_generation(&mut self, g: u64, seal: &Sealing) {
        self.generation = g;
        self.generation_mac = seal.keys.as_ref().map(|k| generation::mac(k, &seal.identity, g));
    }
}

/// What the generation in the lease is MAC'd with: the keys (none: not MAC'd) and the
/// identity it belongs to.
#[derive(Clone)]
pub struct Sealing {
    pub keys: Option<Arc<Keys>>,
    pub identity: String,
}

/// A lease this crik holds.
pub struct Lease {
    bucket: Arc<Bucket>,
    key: String,
    url: String,
    ttl: Duration,
    request_timeout: Duration,
    state: Mutex<State>,
    /// Serializes renewals (the renewer's and one before a manifest), so each uses the newest ETag.
    renewing: Mutex<()>,
    /// When it was acquired, and whether from a holder that died (not released).
    acquired: Instant,
    took_over_expired: bool,
    stop: (Mutex<bool>, Condvar),
    seal: Sealing,
}

struct State {
    record: Record,
    etag: String,
    /// When the newest renewal that got through was sent.
    renewed: Instant,
    /// Set once another crik took the lease over: never cleared.
    lost: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a start is told while it waits: `Err` stops the wait (a signal came).
pub type Wait<'a> = &'a mut dyn FnMut(Duration) -> Result<(), String>;

/// What the lease object says, as [`acquire`] sees it.
enum Seen {
    Free(Condition, &'static str),
    Held(String, Duration),
}

/// Acquires the lease at `key`, waiting for its holder as `cfg` says.
pub fn acquire(
    bucket: Arc<Bucket>,
    key: String,
    url: &str,
    cfg: &LeaseConfig,
    request_timeout: Duration,
    wait: Wait,
    seal: Sealing,
) -> Result<Arc<Lease>, LeaseError> {
    let soon = || Instant::now() + request_timeout * 2;
    let started = Instant::now();
    // The ETag last seen and since when: a lease whose server gives no times expires when it
    // stays the same for a ttl.
    let mut seen: Option<(Option<String>, Instant)> = None;
    let mut told: Option<Instant> = None;
    let mut me = Record {
        holder: random_id(),
        host: host_name(),
        since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        ttl_ms: cfg.ttl.as_millis() as u64,
        renewals: 0,
        released: false,
        generation: 0,
        generation_mac: None,
    };
    loop {
        let current = bucket.get_object(&key, soon())?;
        let what = match &current {
            None => Seen::Free(Condition::Absent, "none held it"),
            Some(o) => judge(o, &mut seen, cfg.ttl),
        };
        let (condition, how) = match what {
            Seen::Free(c, how) => (c, how),
            Seen::Held(holder, ttl) => {
                let waited = started.elapsed();
                let why = match cfg.when_held {
                    WhenHeld::Fail => Some("storage.lease.whenHeld is fail".to_string()),
                    WhenHeld::Wait if waited >= cfg.max_wait => {
                        Some(format!("waited {} s (storage.lease.maxWait)", waited.as_secs()))
                    }
                    WhenHeld::Wait => None,
                };
                if let Some(why) = why {
                    return Err(LeaseError::Held { url: url.into(), holder, why });
                }
                if told.map_or(true, |t| t.elapsed() >= Duration::from_secs(30)) {
                    log::warn!(event = "lease_waiting";
                        "{url} is in use by {holder}: waiting until it is released or expires (storage.lease.whenHeld: \
                         wait; at most {} s more)", cfg.max_wait.saturating_sub(waited).as_secs());
                    told = Some(Instant::now());
                }
                let pause = (ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(2));
                wait(pause).map_err(|why| LeaseError::Interrupted { url: url.into(), why })?;
                continue;
            }
        };
        // The newest generation carries over from holder to holder.
        let vouched = current.as_ref().and_then(|o| Record::parse(&o.body).ok()).and_then(|r| r.vouched(&seal));
        me.set_generation(vouched.unwrap_or(0), &seal);
        let sent = Instant::now();
        // Refused: another crik won the race.
        let Ok(etag) = put_record(&bucket, &key, &me, &condition, soon())? else { continue };
        // A server that ignores conditions would let the next crik overwrite this lease:
        // asked once, on this crik's own lease (the same bytes again, so nothing changes).
        if bucket.put_if(&key, &me.bytes(), &Condition::Absent, soon())?.is_ok() {
            let released = Record { released: true, ..me.clone() };
            let _ = bucket.put(&key, &released.bytes(), soon());
            return Err(LeaseError::Unsupported { url: url.into() });
        }
        log::info!(event = "lease_acquired"; "this crik holds the lease on {url} ({how}); it writes there alone");
        return Ok(Arc::new(Lease {
            bucket,
            key,
            url: url.into(),
            ttl: cfg.ttl,
            request_timeout,
            state: Mutex::new(State { record: me, etag, renewed: sent, lost: None }),
            renewing: Mutex::new(()),
            acquired: Instant::now(),
            took_over_expired: how.starts_with("expired"),
            stop: (Mutex::new(false), Condvar::new()),
            seal,
        }));
    }
}

/// Whether a lease found in storage is free to take, and on what condition.
fn judge(o: &Object, seen: &mut Option<(Option<String>, Instant)>, own_ttl: Duration) -> Seen {
    let Some(etag) = o.etag.clone() else {
        // Without an ETag nothing can be taken over conditionally: held, as far as crik can tell.
        return Seen::Held("an unknown holder (the lease has no ETag)".into(), own_ttl);
    };
    let record = Record::parse(&o.body);
    let ttl = record.as_ref().map_or(own_ttl, Record::ttl);
    let since = match seen {
        Some((e, t)) if e.as_deref() == Some(etag.as_str()) => *t,
        _ => seen.insert((Some(etag.clone()), Instant::now())).1,
    };
    // Last-Modified has a resolution of a second.
    let expired = o.age.is_some_and(|a| a > ttl + Duration::from_secs(1)) || since.elapsed() > ttl;
    match record {
        Ok(r) if r.released => Seen::Free(Condition::Unchanged(etag), "released by its holder"),
        _ if expired => Seen::Free(Condition::Unchanged(etag), "expired: its holder stopped renewing it"),
        parsed => Seen::Held(holder_of(&parsed), ttl),
    }
}

/// Who a lease object (as [`Record::parse`] read it) names, for messages.
fn holder_of(parsed: &Result<Record, String>) -> String {
    match parsed {
        Ok(r) => r.describe(),
        Err(why) => format!("an unknown holder (the lease {why})"),
    }
}

/// Writes `record` at `key` if `condition` holds. Refused, but what is stored is `record`
/// itself (the PUT was tried twice and its first try got through): written all the same.
/// `Err(found)`: refused, and what is there instead (nothing: deleted).
fn put_record(
    bucket: &Bucket,
    key: &str,
    record: &Record,
    condition: &Condition,
    deadline: Instant,
) -> Result<Result<String, Option<Object>>, S3Error> {
    let bytes = record.bytes();
    match bucket.put_if(key, &bytes, condition, deadline)? {
        Ok(etag) => Ok(Ok(etag)),
        Err(Conflict) => match bucket.get_object(key, deadline)? {
            Some(o) if o.body == bytes => Ok(Ok(o.etag.unwrap_or_default())),
            other => Ok(Err(other)),
        },
    }
}

impl Lease {
    /// Whether this crik may write the prefix now (see the module's doc).
    pub fn check(&self) -> Result<(), LeaseError> {
        let st = lock(&self.state);
        if let Some(by) = &st.lost {
            return Err(self.not_holder(format!("it was taken over by {by}")));
        }
        let since = st.renewed.elapsed();
        if since > self.ttl * FENCE.0 / FENCE.1 {
            return Err(self.not_holder(format!(
                "its last renewal was {} s ago (storage unreachable?): writes wait for the next one",
                since.as_secs()
            )));
        }
        Ok(())
    }

    /// Renews now and checks: right before a manifest is put.
    pub fn fence(&self) -> Result<(), LeaseError> {
        self.renew()?;
        self.check()
    }

    /// Whether garbage collection may run: not within a ttl and two requests of taking the
    /// lease over from a crik that died (its last upload may still be landing).
    pub fn may_collect(&self) -> bool {
        !self.took_over_expired || self.acquired.elapsed() > self.ttl + self.request_timeout * 2
    }

    /// The newest generation the lease records now: carried over from the last holder when its
    /// record vouched for one (see [`Record::vouched`]; else 0), or recorded by this crik.
    pub fn generation(&self) -> u64 {
        lock(&self.state).record.generation
    }

    /// Records `g` as the newest generation of the prefix (if it is newer), renewing now.
    pub fn record_generation(&self, g: u64) -> Result<(), LeaseError> {
        {
            let mut st = lock(&self.state);
            if st.record.generation >= g {
                return Ok(());
            }
            st.record.set_generation(g, &self.seal);
        }
        self.renew()
    }

    fn not_holder(&self, why: String) -> LeaseError {
        LeaseError::NotHolder { url: self.url.clone(), why }
    }

    fn renew(&self) -> Result<(), LeaseError> {
        let _one = lock(&self.renewing);
        let (next, etag) = {
            let st = lock(&self.state);
            if st.lost.is_some() {
                drop(st);
                return self.check();
            }
            (Record { renewals: st.record.renewals + 1, ..st.record.clone() }, st.etag.clone())
        };
        let deadline = Instant::now() + self.request_timeout;
        let sent = Instant::now();
        let etag = match put_record(&self.bucket, &self.key, &next, &Condition::Unchanged(etag), deadline)? {
            Ok(etag) => etag,
            Err(found) => {
                let by = found.map_or_else(
                    || "nobody: the lease object was deleted".into(),
                    |o| holder_of(&Record::parse(&o.body)),
                );
                log::error!(event = "lease_lost";
                    "the lease on {} was taken over by {by}: this crik no longer writes there (its checkpoints \
                     stay in the image dir)", self.url);
                lock(&self.state).lost = Some(by);
                return self.check();
            }
        };
        let mut st = lock(&self.state);
        (st.record, st.etag, st.renewed) = (next, etag, sent);
        Ok(())
    }

    /// Renews every third of the ttl until [`Lease::release`].
    pub fn keep_renewed(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let lease = self.clone();
        std::thread::spawn(move || {
            let mut failing = false;
            loop {
                let (stopped, cv) = &lease.stop;
                let guard = lock(stopped);
                let (guard, _) =
                    cv.wait_timeout_while(guard, lease.ttl / 3, |s| !*s).unwrap_or_else(|p| p.into_inner());
                if *guard {
                    return;
                }
                drop(guard);
                match lease.renew() {
                    Ok(()) if failing => {
                        log::info!("the lease on {} is renewed again", lease.url);
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(LeaseError::NotHolder { .. }) if lock(&lease.state).lost.is_some() => return,
                    Err(e) => {
                        if !failing {
                            log::warn!("cannot renew the lease on {} (trying again): {e}", lease.url);
                        }
                        failing = true;
                    }
                }
            }
        })
    }

    /// Stops renewing and marks the lease released (unless it was lost): the next start on the
    /// prefix takes it at once.
    pub fn release(&self, renewer: Option<std::thread::JoinHandle<()>>) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(r) = renewer {
            let _ = r.join();
        }
        let _one = lock(&self.renewing);
        let st = lock(&self.state);
        if st.lost.is_some() {
            return;
        }
        let released = Record { released: true, renewals: st.record.renewals + 1, ..st.record.clone() };
        let deadline = Instant::now() + self.request_timeout;
        match put_record(&self.bucket, &self.key, &released, &Condition::Unchanged(st.etag.clone()), deadline) {
            Ok(Ok(_)) => log::info!(event = "lease_released"; "released the lease on {}", self.url),
            Ok(Err(_)) => log::warn!("the lease on {} was no longer this crik's to release", self.url),
            Err(e) => log::warn!(
                "cannot release the lease on {} (the next start waits for it to expire, {} s): {e}",
                self.url,
                self.ttl.as_secs()
            ),
        }
    }
}

/// 128 random bits, hex.
fn random_id() -> String {
    let b: [u8; 16] = crate::seal::random().unwrap_or_else(|| {
        // Never seen on Linux; the time and pid still tell runs apart.
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(t.as_nanos() as u64).to_le_bytes());
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        b
    });
    hex::encode(b)
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.chars().filter(|c| c.is_ascii_graphic()).take(253).collect())
        .unwrap_or_else(|| "an unnamed host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(body: &[u8], etag: Option<&str>, age: Option<u64>) -> Object {
        Object { body: body.to_vec(), etag: etag.map(String::from), age: age.map(Duration::from_secs) }
    }

    fn record(released: bool) -> Vec<u8> {
        record_with_ttl(released, 30_000)
    }

    fn record_with_ttl(released: bool, ttl_ms: u64) -> Vec<u8> {
        Record {
            holder: "0123456789abcdef".into(),
            host: "web-1".into(),
            since: "2026-12-07T07:00:00Z".into(),
            ttl_ms,
            renewals: 3,
            released,
            generation: 0,
            generation_mac: None,
        }
        .bytes()
    }

    #[test]
    fn a_lease_is_free_when_released_or_expired_by_the_servers_clock() {
        let ttl = Duration::from_secs(30);
        let mut seen = None;
        let held = judge(&object(&record(false), Some("\"e1\""), Some(5)), &mut seen, ttl);
        assert!(matches!(&held, Seen::Held(h, t) if h.starts_with("crik 01234567 on web-1") && *t == ttl));
        let released = judge(&object(&record(true), Some("\"e1\""), Some(5)), &mut seen, ttl);
        assert!(matches!(released, Seen::Free(Condition::Unchanged(e), _) if e == "\"e1\""));
        let expired = judge(&object(&record(false), Some("\"e1\""), Some(32)), &mut seen, ttl);
        assert!(matches!(expired, Seen::Free(Condition::Unchanged(_), how) if how.starts_with("expired")));
        // Garbage (or a forged ttl) is held for its ttl, capped, never taken at once.
        let garbage = judge(&object(b"<html>", Some("\"e2\""), Some(5)), &mut seen, ttl);
        assert!(matches!(&garbage, Seen::Held(h, _) if h.contains("does not parse")));
        let long = Record { ttl_ms: u64::MAX, ..Record::parse(&record(false)).unwrap() };
        assert_eq!(long.ttl(), MAX_TTL);
        // No ETag: cannot be taken conditionally.
        assert!(matches!(judge(&object(&record(true), None, Some(99)), &mut seen, ttl), Seen::Held(..)));
    }

    #[test]
    fn without_the_servers_times_a_lease_expires_once_seen_unchanged_for_a_ttl() {
        // The holder's own ttl counts (300 ms), not the reader's (30 s).
        let (ttl, body) = (Duration::from_secs(30), record_with_ttl(false, 300));
        let mut seen = None;
        assert!(matches!(judge(&object(&body, Some("a"), None), &mut seen, ttl), Seen::Held(..)));
        std::thread::sleep(Duration::from_millis(200));
        // Renewed in between: a new ETag starts the count again.
        assert!(matches!(judge(&object(&body, Some("b"), None), &mut seen, ttl), Seen::Held(..)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(judge(&object(&body, Some("b"), None), &mut seen, ttl), Seen::Held(..)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(judge(&object(&body, Some("b"), None), &mut seen, ttl), Seen::Free(..)));
    }
}
