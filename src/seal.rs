//! Keys, and what is sealed with them: the construction of
//! `docs/design/authenticated-checkpoints.md`, for what crik stores in object storage.
//!
//! ```text
//! key file     crik-key-v1:<64 hex digits>\n                     (crik keygen)
//! key id       blake3::derive_key("crik 2026-12 key id", K)[..8]  (16 hex digits)
//! chunk name   blake3::keyed_hash(derive_key("crik 2026-12 chunk id", K), plaintext)
//! chunk        "CK1" | key id (8) | nonce (12) | AES-256-GCM(zstd(plaintext)) | tag (16)
//!              nonce = keyed_hash(derive_key("crik 2026-12 chunk nonce", K), name)[..12]
//!              associated data = "crik chunk v1" | key id | name
//! manifest     "crik-sealed-v1\n" | key id (8) | nonce (12, random) | AES-256-GCM(json) | tag
//!              associated data = "crik manifest v1" | key id | len | identity | len | checkpoint id
//! MAC          crik-mac-v1:<key id hex>:<blake3::keyed_hash(derive_key("crik 2026-12 local mac", K),
//!              len | domain | (len | part)...) hex>: what crik keeps in the image dir (a
//!              checkpoint's manifest, the newest generation) and the generation in the lease
//! ```
//!
//! The chunk's nonce is a keyed hash of its name, itself a keyed hash of its plaintext (one pass
//! over the data, not two): one plaintext always seals to the same bytes (what deduplication
//! needs), and two plaintexts share a nonce only on a collision of keyed hashes. The name in the associated data binds a body to its object; the identity (the
//! bucket and prefix) and the id bind a manifest to where and what it is.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const KEY_PREFIX: &str = "crik-key-v1:";
const CHUNK_MAGIC: &[u8] = b"CK1";
pub const MANIFEST_MAGIC: &[u8] = b"crik-sealed-v1\n";
const TAG_LEN: usize = 16;
const MAC_PREFIX: &str = "crik-mac-v1:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A key file that is not one: never shows its content (it is a secret).
    #[error("not a crik key (a line `crik-key-v1:` and 64 hex digits, made by `crik keygen`): {0}")]
    BadKey(String),
    /// Sealed with a key none of the configured ones is.
    #[error("sealed with key {0}, which is not among encryption.keyFiles")]
    UnknownKey(String),
    /// The seal does not open: altered, or sealed for another name, place or key.
    #[error("altered, or sealed with another key or for another place")]
    Altered,
    #[error("not sealed (written without a key, or altered)")]
    NotSealed,
    #[error("{0}")]
    Content(String),
}

/// One key and its subkeys.
pub struct Key {
    id: [u8; 8],
    pub id_hex: String,
    name_key: [u8; 32],
    nonce_key: [u8; 32],
    mac_key: [u8; 32],
    aead: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id_hex) // never the key itself
    }
}

impl Key {
    /// A key file's text for a new random key (`crik keygen`).
    pub fn generate() -> Result<String, SealError> {
        let k: [u8; 32] = random().ok_or_else(|| SealError::BadKey("the system's random source failed".into()))?;
        Ok(format!("{KEY_PREFIX}{}\n", hex::encode(k)))
    }

    /// A key from a key file's text (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Key, SealError> {
        let hexed =
            text.trim().strip_prefix(KEY_PREFIX).ok_or_else(|| SealError::BadKey("no crik-key-v1: prefix".into()))?;
        let bytes = hex::decode(hexed).map_err(|_| SealError::BadKey("not hex digits".into()))?;
        let k: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey("not 32 bytes".into()))?;
        Ok(Key::from_bytes(&k))
    }

    fn from_bytes(k: &[u8; 32]) -> Key {
        let derive = |context: &str| blake3::derive_key(context, k);
        let mut id = [0u8; 8];
        id.copy_from_slice(&derive("crik 2026-12 key id")[..8]);
        let seal = derive("crik 2026-12 seal");
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &seal).expect("a 32-byte AES-256 key"));
        Key {
            id,
            id_hex: hex::encode(id),
            name_key: derive("crik 2026-12 chunk id"),
            nonce_key: derive("crik 2026-12 chunk nonce"),
            mac_key: derive("crik 2026-12 local mac"),
            aead,
        }
    }

    /// A chunk's name under this key.
    pub fn chunk_name(&self, plaintext: &[u8]) -> String {
        blake3::keyed_hash(&self.name_key, plaintext).to_hex().to_string()
    }

    /// Seals a chunk named `name` ([`Key::chunk_name`] of its plaintext); `compressed` is its
    /// stored form.
    pub fn seal_chunk(&self, name: &str, compressed: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blake3::keyed_hash(&self.nonce_key, name.as_bytes()).as_bytes()[..NONCE_LEN]);
        self.seal(CHUNK_MAGIC, nonce, &chunk_aad(&self.id, name), compressed)
    }

    /// Seals a manifest for `identity` (where it is stored) and checkpoint `id`.
    pub fn seal_manifest(&self, identity: &str, id: &str, json: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = random().ok_or_else(|| SealError::Content("the system's random source failed".into()))?;
        Ok(self.seal(MANIFEST_MAGIC, nonce, &manifest_aad(&self.id, identity, id), json))
    }

    /// A MAC of `parts` for `domain` (what they are), as text: `crik-mac-v1:<key id>:<mac>`.
    pub fn mac(&self, domain: &str, parts: &[&[u8]]) -> String {
        format!("{MAC_PREFIX}{}:{}", self.id_hex, self.raw_mac(domain, parts).to_hex())
    }

    fn raw_mac(&self, domain: &str, parts: &[&[u8]]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        for part in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize()
    }

    /// `magic | key id | nonce | AES-256-GCM(plain) | tag`.
    fn seal(&self, magic: &[u8], nonce: [u8; NONCE_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(magic.len() + 8 + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(magic);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        // What crik seals is at most a chunk or a manifest, far below AES-GCM's 64 GiB.
        let tag = self
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[start..])
            .expect("AES-GCM seals any length below 64 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn open_in_place<'a>(&self, nonce: &[u8], aad: &[u8], sealed: &'a mut [u8]) -> Result<&'a [u8], SealError> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Altered)?;
        self.aead.open_in_place(nonce, Aad::from(aad), sealed).map(|p| &*p).map_err(|_| SealError::Altered)
    }
}

fn manifest_aad(key_id: &[u8], identity: &str, id: &str) -> Vec<u8> {
    let mut aad = b"crik manifest v1".to_vec();
    aad.extend_from_slice(key_id);
    for part in [identity, id] {
        aad.extend_from_slice(&(part.len() as u32).to_le_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

fn chunk_aad(key_id: &[u8], name: &str) -> Vec<u8> {
    [b"crik chunk v1".as_slice(), key_id, name.as_bytes()].concat()
}

/// `N` bytes from the system's random source (`None` if it fails, which Linux's does not).
pub fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok()?;
    Some(b)
}

/// The configured keys: the first seals, every one opens (rotation).
#[derive(Debug)]
pub struct Keys(Vec<Key>);

impl Keys {
    pub fn new(keys: Vec<Key>) -> Option<Keys> {
        (!keys.is_empty()).then_some(Keys(keys))
    }

    /// The key new things are sealed with.
    pub fn writer(&self) -> &Key {
        &self.0[0]
    }

    fn by_id(&self, id: &[u8]) -> Result<&Key, SealError> {
        self.0.iter().find(|k| k.id == id).ok_or_else(|| SealError::UnknownKey(hex::encode(id)))
    }

    /// Whether `stored` is a sealed manifest, and with which key id.
    pub fn sealed_manifest_key(stored: &[u8]) -> Option<String> {
        let rest = stored.strip_prefix(MANIFEST_MAGIC)?;
        Some(hex::encode(rest.get(..8)?))
    }

    /// Opens a sealed manifest stored for `identity` as checkpoint `id`: its JSON.
    pub fn open_manifest(&self, identity: &str, id: &str, stored: &[u8]) -> Result<Vec<u8>, SealError> {
        Ok(self.open(MANIFEST_MAGIC, stored, |key_id| manifest_aad(key_id, identity, id))?.0)
    }

    /// Checks a MAC made by [`Key::mac`] for `domain` and `parts`, with the key it names.
    pub fn check_mac(&self, domain: &str, parts: &[&[u8]], mac: &str) -> Result<(), SealError> {
        let rest = mac.trim().strip_prefix(MAC_PREFIX).ok_or(SealError::NotSealed)?;
        let (key_id, hexed) = rest.split_once(':').ok_or(SealError::Altered)?;
        let id = hex::decode(key_id).map_err(|_| SealError::Altered)?;
        let key = self.by_id(&id)?;
        let want = blake3::Hash::from_hex(hexed).map_err(|_| SealError::Altered)?;
        // blake3::Hash compares in constant time.
        if key.raw_mac(domain, parts) == want {
            Ok(())
        } else {
            Err(SealError::Altered)
        }
    }

    /// Opens a sealed chunk named `name`: its stored (compressed) form, and the key it was
    /// sealed with (whose name for the plaintext must then be `name`).
    pub fn open_chunk(&self, name: &str, stored: &[u8]) -> Result<(Vec<u8>, &Key), SealError> {
        self.open(CHUNK_MAGIC, stored, |key_id| chunk_aad(key_id, name))
    }

    /// Opens what [`Key::seal`] made, with the key it names and the associated data `aad` gives
    /// for that key id.
    fn open(&self, magic: &[u8], stored: &[u8], aad: impl Fn(&[u8]) -> Vec<u8>) -> Result<(Vec<u8>, &Key), SealError> {
        let rest = stored.strip_prefix(magic).ok_or(SealError::NotSealed)?;
        if rest.len() < 8 + NONCE_LEN + TAG_LEN {
            return Err(SealError::Altered);
        }
        let (key_id, rest) = rest.split_at(8);
        let key = self.by_id(key_id)?;
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut buf = sealed.to_vec();
        let plain = key.open_in_place(nonce, &aad(key_id), &mut buf)?.to_vec();
        Ok((plain, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::parse(&format!("{KEY_PREFIX}{}", hex::encode([byte; 32]))).unwrap()
    }

    #[test]
    fn key_files_are_checked_and_never_shown() {
        let text = Key::generate().unwrap();
        assert!(text.starts_with(KEY_PREFIX) && text.ends_with('\n') && text.len() == KEY_PREFIX.len() + 65);
        let k = Key::parse(&text).unwrap();
        assert_eq!(k.id_hex.len(), 16);
        assert_ne!(Key::parse(&Key::generate().unwrap()).unwrap().id_hex, k.id_hex, "random");
        assert_eq!(format!("{k:?}"), format!("Key({})", k.id_hex));
        for bad in ["", "crik-key-v1:zz", "crik-key-v2:00", &format!("{KEY_PREFIX}{}", "ab".repeat(31))] {
            let e = Key::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("not a crik key"), "{e}");
        }
        let e = Key::parse(&format!("{KEY_PREFIX}{}", "s3cr3t!!".repeat(8))).unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn chunks_seal_deterministically_and_open_only_as_themselves() {
        let (k, other) = (key(1), key(2));
        let keys = Keys::new(vec![key(1)]).unwrap();
        let plain = b"the app's memory".to_vec();
        let name = k.chunk_name(&plain);
        assert_ne!(name, other.chunk_name(&plain), "names are keyed");
        assert_ne!(name, blake3::hash(&plain).to_hex().to_string());
        let sealed = k.seal_chunk(&name, b"zstd bytes");
        assert_eq!(sealed, k.seal_chunk(&name, b"zstd bytes"), "deterministic: dedup works");
        assert!(!sealed.windows(10).any(|w| w == b"zstd bytes"), "encrypted");
        let (opened, by) = keys.open_chunk(&name, &sealed).unwrap();
        assert_eq!((opened.as_slice(), by.id_hex.as_str()), (b"zstd bytes".as_slice(), k.id_hex.as_str()));
        // Altered, under another name, or with a key not configured.
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(keys.open_chunk(&name, &bad).unwrap_err(), SealError::Altered);
        assert_eq!(keys.open_chunk(&k.chunk_name(b"x"), &sealed).unwrap_err(), SealError::Altered);
        let foreign = other.seal_chunk(&name, b"zstd bytes");
        assert_eq!(keys.open_chunk(&name, &foreign).unwrap_err(), SealError::UnknownKey(other.id_hex.clone()));
        assert_eq!(keys.open_chunk(&name, b"plain zstd").unwrap_err(), SealError::NotSealed);
        assert_eq!(keys.open_chunk(&name, b"CK1short").unwrap_err(), SealError::Altered);
    }

    #[test]
    fn manifests_open_only_where_and_as_what_they_were_sealed() {
        let keys = Keys::new(vec![key(3), key(1)]).unwrap();
        let old = key(1);
        let sealed = old.seal_manifest("s3://b/app", "20261207T000000.000Z", b"{\"id\":1}").unwrap();
        assert_eq!(Keys::sealed_manifest_key(&sealed), Some(old.id_hex.clone()));
        assert_ne!(
            sealed,
            old.seal_manifest("s3://b/app", "20261207T000000.000Z", b"{\"id\":1}").unwrap(),
            "random nonce"
        );
        // Rotation: the second key still opens what it sealed.
        assert_eq!(keys.open_manifest("s3://b/app", "20261207T000000.000Z", &sealed).unwrap(), b"{\"id\":1}");
        assert_eq!(
            keys.open_manifest("s3://b/other", "20261207T000000.000Z", &sealed).unwrap_err(),
            SealError::Altered
        );
        assert_eq!(keys.open_manifest("s3://b/app", "20261208T000000.000Z", &sealed).unwrap_err(), SealError::Altered);
        assert_eq!(keys.open_manifest("s3://b/app", "x", b"{\"plain\":1}").unwrap_err(), SealError::NotSealed);
        assert_eq!(Keys::sealed_manifest_key(b"{}"), None);
        assert_eq!(keys.writer().id_hex, key(3).id_hex);
    }

    #[test]
    fn macs_check_only_what_they_were_made_for() {
        let keys = Keys::new(vec![key(3), key(1)]).unwrap();
        let mac = key(1).mac("crik test v1", &[b"/var/lib/crik", b"ab"]);
        assert!(mac.starts_with(&format!("crik-mac-v1:{}:", key(1).id_hex)), "{mac}");
        keys.check_mac("crik test v1", &[b"/var/lib/crik", b"ab"], &mac).unwrap();
        keys.check_mac("crik test v1", &[b"/var/lib/crik", b"ab"], &format!("{mac}\n")).unwrap();
        // Parts are length-prefixed: moving a byte between them changes the MAC.
        assert_eq!(keys.check_mac("crik test v1", &[b"/var/lib/crika", b"b"], &mac), Err(SealError::Altered));
        assert_eq!(keys.check_mac("crik other v1", &[b"/var/lib/crik", b"ab"], &mac), Err(SealError::Altered));
        let other = key(2).mac("crik test v1", &[b"/var/lib/crik", b"ab"]);
        assert_eq!(
            keys.check_mac("crik test v1", &[b"/var/lib/crik", b"ab"], &other),
            Err(SealError::UnknownKey(key(2).id_hex))
        );
        for bad in ["", "crik-mac-v1:", "crik-mac-v1:zz:00", &mac[..mac.len() - 1]] {
            assert!(keys.check_mac("crik test v1", &[b"/var/lib/crik", b"ab"], bad).is_err(), "{bad}");
        }
    }
}
