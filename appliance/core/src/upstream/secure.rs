//! The secure channel between a relay and a collector: a Noise `NNpsk0` session keyed by a
//! pre-shared key per relay, sans-IO, for both ends.
//!
//! Why Noise through `snow`: a well-kept, widely used implementation of a small, analysed
//! protocol that builds `no_std` + alloc for `x86_64-unknown-none`, with only the primitives we
//! name compiled in (X25519, ChaCha20-Poly1305, BLAKE2s; RustCrypto and dalek crates). TLS 1.3
//! (rustls) would need a certificate infrastructure, a `std` or a much larger image for the same
//! guarantees between two parties that already share a secret.
//!
//! Wire (every length big-endian, as Noise frames them):
//!
//! ```text
//! relay -> collector: id_len: u8 (1..=64) | key id (ASCII [A-Za-z0-9._-])   in clear
//! relay -> collector: len: u16 | handshake message 1 (-> psk, e: 48 bytes)
//! collector -> relay: len: u16 | handshake message 2 (<- e, ee: 48 bytes)
//! then both ways:     len: u16 | transport message (ciphertext of up to 65519 bytes + 16-byte tag)
//! ```
//!
//! The key id is bound into the handshake through the prologue ([`PROLOGUE`] then the id
//! prefix as sent), so a man in the middle cannot swap it. The collector looks the key up by
//! id and, because `psk0` authenticates the first message, knows at message 1 whether the peer
//! holds the key: a wrong key or unknown id is refused before anything else is read. The plain
//! record stream ([`super::record`]) then runs inside the transport messages, chunked at any
//! byte boundary.
//!
//! What it gives: mutual authentication by the PSK, confidentiality and integrity of the
//! stream, forward secrecy through the ephemeral X25519 keys (as long as the ephemeral
//! randomness is secret; see [`ChannelRng`]), replay of old sessions fails (fresh ephemerals
//! each side). What it does not: hide the key id, or stop anyone from opening TCP connections.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use core::fmt;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, TransportState};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bytes of a pre-shared key.
pub const KEY_LEN: usize = 32;
/// Longest key id.
pub const MAX_KEY_ID: usize = 64;
/// Prologue prefix; the id prefix as sent follows it.
pub const PROLOGUE: &[u8] = b"netoops relay session v1";
/// AEAD tag per message.
pub const TAG_LEN: usize = 16;
/// Longest Noise message (and so the largest frame body).
pub const MAX_MESSAGE: usize = 65535;
/// Largest plaintext in one transport message.
pub const MAX_PLAIN: usize = MAX_MESSAGE - TAG_LEN;
/// Length of each of the two handshake messages (a 32-byte ephemeral and an empty payload's
/// tag).
pub const HANDSHAKE_LEN: usize = 32 + TAG_LEN;
/// Length prefix per message.
pub const LEN_PREFIX: usize = 2;

/// A pre-shared key (32 bytes). `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub [u8; KEY_LEN]);

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Psk> {
        let s = s.trim();
        if s.len() != 2 * KEY_LEN || !s.is_ascii() {
            return None;
        }
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Psk(k))
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(2 * KEY_LEN);
        for b in self.0 {
            s.push_str(&alloc::format!("{b:02x}"));
        }
        s
    }
}

/// Whether `id` is a valid key id: 1..=64 bytes of `[A-Za-z0-9._-]` (safe to print and to use
/// as a relay name).
pub fn valid_key_id(id: &str) -> bool {
    crate::is_token(id, MAX_KEY_ID)
}

/// A relay's session key: its id and its pre-shared key. Parsed from `ID:HEX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKey {
    /// Key id, sent in clear; the collector's identity for this relay.
    pub id: String,
    /// The pre-shared key.
    pub psk: Psk,
}

impl SessionKey {
    /// Parses `ID:HEX` (64 hex digits).
    pub fn parse(s: &str) -> Result<SessionKey, &'static str> {
        let (id, hex) = s
            .trim()
            .split_once(':')
            .ok_or("expected ID:KEY (64 hex digits)")?;
        if !valid_key_id(id) {
            return Err("key id must be 1-64 characters of A-Z a-z 0-9 . _ -");
        }
        let psk = Psk::from_hex(hex).ok_or("key must be 64 hex digits (32 bytes)")?;
        Ok(SessionKey {
            id: id.to_string(),
            psk,
        })
    }
}

impl fmt::Display for SessionKey {
    /// The id only: the key is secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:<secret>", self.id)
    }
}

/// Why the secure channel failed; the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum SecureError {
    /// The clear key id prefix is malformed.
    BadKeyId,
    /// No key is known for the id (collector side).
    UnknownKey,
    /// A handshake message did not authenticate: the peer lacks the key (or is not speaking
    /// this protocol).
    #[strum(serialize = "bad_key")]
    Handshake,
    /// A transport message did not decrypt: tampering or a broken stream.
    #[strum(serialize = "decrypt_failed")]
    Decrypt,
    /// A message longer than this end accepts.
    #[strum(serialize = "message_too_long")]
    TooLong,
}

impl SecureError {
    /// Short name for counters and logs.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The randomness for ephemeral keys: ChaCha20's keystream under a secret 32-byte seed and a
/// per-handshake nonce. The caller supplies the seed (the OS's randomness on the hosted
/// relay and the collector, RDRAND/TSC mixing on the appliance); each handshake takes a fresh
/// nonce, so no two handshakes share an ephemeral.
pub struct ChannelRng(ChaCha20);

impl ChannelRng {
    /// The generator for handshake number `counter` under `seed`.
    pub fn new(seed: &[u8; 32], counter: u64) -> Self {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&counter.to_le_bytes());
        ChannelRng(ChaCha20::new(seed.into(), &nonce.into()))
    }
}

impl Random for ChannelRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        dest.fill(0);
        self.0.apply_keystream(dest);
        Ok(())
    }
}

/// snow's resolver with only the three primitives [`NOISE_PARAMS`] names and our
/// randomness. snow's default resolver would link every primitive its features enable
/// (BLAKE2b, XChaCha, ...) since the choice is made at run time; these wrappers follow its
/// own (`snow/src/resolvers/default.rs`) over the same RustCrypto and dalek crates.
struct Resolver {
    rng: core::cell::Cell<Option<ChannelRng>>,
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.rng.take().map(|r| Box::new(r) as Box<dyn Random>)
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        matches!(choice, DHChoice::Curve25519).then(|| Box::new(X25519::default()) as Box<dyn Dh>)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        matches!(choice, HashChoice::Blake2s)
            .then(|| Box::new(Blake2s(blake2::Blake2s256::default())) as Box<dyn Hash>)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        matches!(choice, CipherChoice::ChaChaPoly)
            .then(|| Box::new(ChaChaPoly([0; 32])) as Box<dyn Cipher>)
    }
}

#[derive(Default)]
struct X25519 {
    private: [u8; 32],
    public: [u8; 32],
}

impl X25519 {
    fn derive_public(&mut self) {
        self.public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(self.private).to_bytes();
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        let n = privkey.len().min(32);
        self.private = [0; 32];
        self.private[..n].copy_from_slice(&privkey[..n]);
        self.derive_public();
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.private)?;
        self.derive_public();
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let (Some(theirs), Some(out)) = (pubkey.get(..32), out.get_mut(..32)) else {
            return Err(snow::Error::Dh);
        };
        let mut point = [0u8; 32];
        point.copy_from_slice(theirs);
        let shared = curve25519_dalek::MontgomeryPoint(point).mul_clamped(self.private);
        out.copy_from_slice(&shared.to_bytes());
        Ok(())
    }
}

struct ChaChaPoly([u8; 32]);

impl ChaChaPoly {
    fn nonce(n: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        nonce
    }
}

impl Cipher for ChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }
    fn set(&mut self, key: &[u8; 32]) {
        self.0 = *key;
    }
    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit};
        let n = plaintext.len();
        out[..n].copy_from_slice(plaintext);
        let Ok(tag) = ChaCha20Poly1305::new(&self.0.into()).encrypt_in_place_detached(
            &Self::nonce(nonce).into(),
            authtext,
            &mut out[..n],
        ) else {
            return 0;
        };
        out[n..n + TAG_LEN].copy_from_slice(&tag);
        n + TAG_LEN
    }
    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, KeyInit};
        let n = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        let out = out.get_mut(..n).ok_or(snow::Error::Decrypt)?;
        out.copy_from_slice(&ciphertext[..n]);
        ChaCha20Poly1305::new(&self.0.into())
            .decrypt_in_place_detached(
                &Self::nonce(nonce).into(),
                authtext,
                out,
                ciphertext[n..].into(),
            )
            .map_err(|_| snow::Error::Decrypt)?;
        Ok(n)
    }
}

struct Blake2s(blake2::Blake2s256);

impl Hash for Blake2s {
    fn name(&self) -> &'static str {
        "BLAKE2s"
    }
    fn block_len(&self) -> usize {
        64
    }
    fn hash_len(&self) -> usize {
        32
    }
    fn reset(&mut self) {
        self.0 = blake2::Blake2s256::default();
    }
    fn input(&mut self, data: &[u8]) {
        blake2::Digest::update(&mut self.0, data);
    }
    fn result(&mut self, out: &mut [u8]) {
        let hash = blake2::Digest::finalize_reset(&mut self.0);
        out[..32].copy_from_slice(&hash);
    }
}

/// The clear prefix naming the key: `id_len | id`.
pub fn key_id_prefix(id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + id.len());
    v.push(id.len().min(255) as u8);
    v.extend_from_slice(id.as_bytes());
    v
}

fn build(
    psk: &Psk,
    id_prefix: &[u8],
    rng: ChannelRng,
    initiator: bool,
) -> Result<HandshakeState, SecureError> {
    let params = NOISE_PARAMS.parse().map_err(|_| SecureError::Handshake)?;
    let mut prologue = Vec::with_capacity(PROLOGUE.len() + id_prefix.len());
    prologue.extend_from_slice(PROLOGUE);
    prologue.extend_from_slice(id_prefix);
    let resolver = Resolver {
        rng: core::cell::Cell::new(Some(rng)),
    };
    let builder = snow::Builder::with_resolver(params, Box::new(resolver))
        .prologue(&prologue)
        .and_then(|b| b.psk(0, &psk.0))
        .map_err(|_| SecureError::Handshake)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(|_| SecureError::Handshake)
}

/// Encrypts and decrypts transport messages after a handshake (either end).
pub struct Transport {
    state: TransportState,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport(..)")
    }
}

impl Transport {
    /// Seals `plain` (at most [`MAX_PLAIN`] bytes) into `out` as one framed message
    /// (length prefix included); returns the bytes written. `out` needs
    /// `plain.len() + TAG_LEN + LEN_PREFIX` bytes.
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SecureError> {
        if plain.len() > MAX_PLAIN || out.len() < plain.len() + TAG_LEN + LEN_PREFIX {
            return Err(SecureError::TooLong);
        }
        let n = self
            .state
            .write_message(plain, &mut out[LEN_PREFIX..])
            .map_err(|_| SecureError::TooLong)?;
        out[..LEN_PREFIX].copy_from_slice(&(n as u16).to_be_bytes());
        Ok(LEN_PREFIX + n)
    }

    /// Opens one message body (without its length prefix) into `out`; returns the plaintext
    /// length.
    pub fn open(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, SecureError> {
        self.state
            .read_message(message, out)
            .map_err(|_| SecureError::Decrypt)
    }
}

/// The collector's side of the handshake: given the key id read from the clear prefix, the
/// candidate keys for it (several during a rotation) and handshake message 1, finds the key
/// that authenticates it and answers with message 2 (framed, to write back). Nothing is
/// decided before message 1 authenticates, so a refused peer changes no state.
pub fn accept(
    id: &str,
    keys: &[Psk],
    message1: &[u8],
    seed: &[u8; 32],
) -> Result<(Transport, Vec<u8>, usize), SecureError> {
    if keys.is_empty() {
        return Err(SecureError::UnknownKey);
    }
    if message1.len() > MAX_MESSAGE {
        return Err(SecureError::TooLong);
    }
    let prefix = key_id_prefix(id);
    for (i, psk) in keys.iter().enumerate() {
        let mut hs = build(psk, &prefix, ChannelRng::new(seed, i as u64), false)?;
        let mut scratch = [0u8; 64];
        if hs.read_message(message1, &mut scratch).is_err() {
            continue;
        }
        let mut out = vec![0u8; LEN_PREFIX + HANDSHAKE_LEN + 16];
        let n = hs
            .write_message(&[], &mut out[LEN_PREFIX..])
            .map_err(|_| SecureError::Handshake)?;
        out[..LEN_PREFIX].copy_from_slice(&(n as u16).to_be_bytes());
        out.truncate(LEN_PREFIX + n);
        let state = hs
            .into_transport_mode()
            .map_err(|_| SecureError::Handshake)?;
        return Ok((Transport { state }, out, i));
    }
    Err(SecureError::Handshake)
}

/// Incremental reader of length-prefixed messages, bounded by `max`.
#[derive(Debug)]
struct MessageReader {
    buf: Vec<u8>,
    have: usize,
    max: usize,
}

impl MessageReader {
    fn new(max: usize) -> Self {
        MessageReader {
            buf: vec![0u8; LEN_PREFIX + max],
            have: 0,
            max,
        }
    }

    fn reset(&mut self) {
        self.have = 0;
    }

    /// Takes bytes until one message is whole; returns bytes consumed and whether it is.
    fn push(&mut self, bytes: &[u8]) -> Result<(usize, bool), SecureError> {
        let mut used = 0;
        if self.have < LEN_PREFIX {
            let k = (LEN_PREFIX - self.have).min(bytes.len());
            self.buf[self.have..self.have + k].copy_from_slice(&bytes[..k]);
            self.have += k;
            used += k;
            if self.have < LEN_PREFIX {
                return Ok((used, false));
            }
        }
        let len = self.len();
        if len > self.max {
            return Err(SecureError::TooLong);
        }
        let want = LEN_PREFIX + len - self.have;
        let k = want.min(bytes.len() - used);
        self.buf[self.have..self.have + k].copy_from_slice(&bytes[used..used + k]);
        self.have += k;
        used += k;
        Ok((used, self.have == LEN_PREFIX + len))
    }

    fn len(&self) -> usize {
        u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize
    }

    fn message(&self) -> &[u8] {
        &self.buf[LEN_PREFIX..LEN_PREFIX + self.len()]
    }
}

enum Phase {
    Handshake(Box<HandshakeState>),
    Transport(Transport),
    Failed,
}

/// The relay's end of a session: writes the key id and message 1 on start, reads message 2,
/// then seals the link's plain stream and opens the collector's replies. Buffers are
/// allocated once per session: one outgoing message and one incoming.
pub struct Initiator {
    phase: Phase,
    reader: MessageReader,
    plain_in: Vec<u8>,
    plain_out: Vec<u8>,
    out: Vec<u8>,
    out_len: usize,
    out_pos: usize,
    chunk: usize,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("established", &self.is_established())
            .field("pending", &(self.out_len - self.out_pos))
            .finish()
    }
}

impl Initiator {
    /// Starts a session with `key`; `rng` gives the ephemeral. `chunk` is the largest
    /// plaintext per outgoing message (at most [`MAX_PLAIN`]); `max_in` the largest incoming
    /// message accepted.
    pub fn new(
        key: &SessionKey,
        rng: ChannelRng,
        chunk: usize,
        max_in: usize,
    ) -> Result<Self, SecureError> {
        if !valid_key_id(&key.id) {
            return Err(SecureError::BadKeyId);
        }
        let prefix = key_id_prefix(&key.id);
        let mut hs = build(&key.psk, &prefix, rng, true)?;
        let chunk = chunk.clamp(1, MAX_PLAIN);
        let mut out = vec![0u8; (LEN_PREFIX + chunk + TAG_LEN).max(prefix.len() + 128)];
        out[..prefix.len()].copy_from_slice(&prefix);
        let at = prefix.len();
        let n = hs
            .write_message(&[], &mut out[at + LEN_PREFIX..])
            .map_err(|_| SecureError::Handshake)?;
        out[at..at + LEN_PREFIX].copy_from_slice(&(n as u16).to_be_bytes());
        let max_in = max_in.clamp(HANDSHAKE_LEN, MAX_MESSAGE);
        Ok(Initiator {
            phase: Phase::Handshake(Box::new(hs)),
            reader: MessageReader::new(max_in),
            plain_in: vec![0u8; max_in],
            plain_out: vec![0u8; chunk],
            out,
            out_len: at + LEN_PREFIX + n,
            out_pos: 0,
            chunk,
        })
    }

    /// The handshake is complete: plaintext may flow.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Transport(_))
    }

    /// Sealed bytes already produced and not yet handed out.
    pub fn pending(&self) -> usize {
        self.out_len - self.out_pos
    }

    /// Fills `buf` with bytes for the socket: what is pending first, then (once established)
    /// one message sealed from what `fill` writes into the plaintext slice it is given
    /// (`fill` returns how many bytes it wrote; 0 means nothing to send). Returns bytes
    /// written to `buf`.
    pub fn poll_transmit(
        &mut self,
        buf: &mut [u8],
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<usize, SecureError> {
        let mut n = self.drain(buf);
        while n < buf.len() {
            let Phase::Transport(t) = &mut self.phase else {
                break;
            };
            // Size the message to the room left when there is enough, so sealed bytes are
            // not held here needlessly; never below a small floor (overhead).
            let room = (buf.len() - n).saturating_sub(LEN_PREFIX + TAG_LEN);
            let want = room.clamp(256.min(self.chunk), self.chunk);
            let got = fill(&mut self.plain_out[..want]).min(want);
            let sealed = if got == 0 {
                0
            } else {
                t.seal(&self.plain_out[..got], &mut self.out)?
            };
            if sealed == 0 {
                break;
            }
            self.out_len = sealed;
            self.out_pos = 0;
            n += self.drain(&mut buf[n..]);
        }
        Ok(n)
    }

    fn drain(&mut self, buf: &mut [u8]) -> usize {
        let k = (self.out_len - self.out_pos).min(buf.len());
        buf[..k].copy_from_slice(&self.out[self.out_pos..self.out_pos + k]);
        self.out_pos += k;
        if self.out_pos == self.out_len {
            self.out_pos = 0;
            self.out_len = 0;
        }
        k
    }

    /// Takes bytes from the socket; returns bytes consumed and, when a transport message
    /// completed, its plaintext. Call again with the rest until everything is consumed.
    pub fn read<'a>(&'a mut self, bytes: &[u8]) -> Result<(usize, Option<&'a [u8]>), SecureError> {
        if matches!(self.phase, Phase::Failed) {
            return Err(SecureError::Decrypt);
        }
        let (used, whole) = self.reader.push(bytes).inspect_err(|_| {
            self.phase = Phase::Failed;
        })?;
        // Message 2 has a fixed length: anything else is refused before waiting for it.
        if matches!(self.phase, Phase::Handshake(_))
            && self.reader.have >= LEN_PREFIX
            && self.reader.len() != HANDSHAKE_LEN
        {
            self.phase = Phase::Failed;
            return Err(SecureError::Handshake);
        }
        if !whole {
            return Ok((used, None));
        }
        match core::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Handshake(mut hs) => {
                let mut scratch = [0u8; 64];
                hs.read_message(self.reader.message(), &mut scratch)
                    .map_err(|_| SecureError::Handshake)?;
                let state = hs
                    .into_transport_mode()
                    .map_err(|_| SecureError::Handshake)?;
                self.phase = Phase::Transport(Transport { state });
                self.reader.reset();
                Ok((used, None))
            }
            Phase::Transport(mut t) => {
                let res = t.open(self.reader.message(), &mut self.plain_in);
                self.phase = Phase::Transport(t);
                self.reader.reset();
                let n = res.inspect_err(|_| self.phase = Phase::Failed)?;
                Ok((used, Some(&self.plain_in[..n])))
            }
            Phase::Failed => Err(SecureError::Decrypt),
        }
    }
}

/// What [`Responder::read`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Nothing yet (a message is incomplete).
    Nothing,
    /// The handshake completed with the key at this index of those the lookup returned;
    /// write `reply` (message 2) to the peer. The peer is authenticated as [`Responder::id`].
    Established {
        /// Framed handshake message 2.
        reply: Vec<u8>,
        /// Which of the id's keys matched.
        key_index: usize,
    },
    /// Plaintext of one transport message.
    Plain(&'a [u8]),
}

enum Step {
    Nothing,
    Established { reply: Vec<u8>, key_index: usize },
    Plain(usize),
}

/// The collector's end of a session, sans-IO: reads the key id and message 1, looks the keys
/// up, answers, then opens transport messages. Bounded: an id of at most [`MAX_KEY_ID`] bytes,
/// messages of at most `max_in` bytes.
pub struct Responder {
    id: Vec<u8>,
    id_len: Option<usize>,
    reader: MessageReader,
    transport: Option<Transport>,
    failed: bool,
    plain: Vec<u8>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("established", &self.transport.is_some())
            .finish()
    }
}

impl Responder {
    /// A new connection's responder accepting messages of up to `max_in` bytes after the
    /// handshake.
    pub fn new(max_in: usize) -> Self {
        Responder {
            id: Vec::with_capacity(MAX_KEY_ID),
            id_len: None,
            // Until the handshake only message 1 (48 bytes) is accepted.
            reader: MessageReader::new(max_in.clamp(HANDSHAKE_LEN, MAX_MESSAGE)),
            transport: None,
            failed: false,
            plain: Vec::new(),
        }
    }

    /// The authenticated key id, once established.
    pub fn id(&self) -> Option<&str> {
        self.transport.as_ref()?;
        core::str::from_utf8(&self.id).ok()
    }

    /// The key id the peer claims (clear prefix read), authenticated or not.
    pub fn claimed_id(&self) -> Option<&str> {
        (self.id_len == Some(self.id.len()))
            .then(|| core::str::from_utf8(&self.id).ok())
            .flatten()
    }

    /// The handshake completed.
    pub fn is_established(&self) -> bool {
        self.transport.is_some()
    }

    /// Feeds bytes from the socket; returns bytes consumed and what completed. `keys` is
    /// asked once, for the claimed id, when message 1 is whole; `seed` is fresh randomness
    /// for this connection's ephemeral. Any error means: close, store nothing.
    pub fn read<'a>(
        &'a mut self,
        bytes: &[u8],
        keys: &mut dyn FnMut(&str) -> Vec<Psk>,
        seed: &[u8; 32],
    ) -> Result<(usize, Received<'a>), SecureError> {
        if self.failed {
            return Err(SecureError::Decrypt);
        }
        match self.read_inner(bytes, keys, seed) {
            Ok((n, Step::Nothing)) => Ok((n, Received::Nothing)),
            Ok((n, Step::Established { reply, key_index })) => {
                Ok((n, Received::Established { reply, key_index }))
            }
            Ok((n, Step::Plain(len))) => Ok((n, Received::Plain(&self.plain[..len]))),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn read_inner(
        &mut self,
        bytes: &[u8],
        keys: &mut dyn FnMut(&str) -> Vec<Psk>,
        seed: &[u8; 32],
    ) -> Result<(usize, Step), SecureError> {
        let mut used = 0;
        let id_len = match self.id_len {
            Some(l) => l,
            None => {
                let Some(&l) = bytes.first() else {
                    return Ok((0, Step::Nothing));
                };
                let l = l as usize;
                if l == 0 || l > MAX_KEY_ID {
                    return Err(SecureError::BadKeyId);
                }
                self.id_len = Some(l);
                used += 1;
                l
            }
        };
        if self.id.len() < id_len {
            let k = (id_len - self.id.len()).min(bytes.len() - used);
            self.id.extend_from_slice(&bytes[used..used + k]);
            used += k;
            if self.id.len() < id_len {
                return Ok((used, Step::Nothing));
            }
            let valid = core::str::from_utf8(&self.id).is_ok_and(valid_key_id);
            if !valid {
                return Err(SecureError::BadKeyId);
            }
        }
        let (k, whole) = self.reader.push(&bytes[used..])?;
        used += k;
        // Message 1 has a fixed length: refuse anything else before reading it.
        if self.transport.is_none()
            && self.reader.have >= LEN_PREFIX
            && self.reader.len() != HANDSHAKE_LEN
        {
            return Err(SecureError::Handshake);
        }
        if !whole {
            return Ok((used, Step::Nothing));
        }
        match &mut self.transport {
            None => {
                let id = core::str::from_utf8(&self.id).map_err(|_| SecureError::BadKeyId)?;
                let candidates = keys(id);
                let (t, reply, key_index) = accept(id, &candidates, self.reader.message(), seed)?;
                self.transport = Some(t);
                self.reader.reset();
                self.plain = vec![0u8; self.reader.max];
                Ok((used, Step::Established { reply, key_index }))
            }
            Some(t) => {
                let n = t.open(self.reader.message(), &mut self.plain)?;
                self.reader.reset();
                Ok((used, Step::Plain(n)))
            }
        }
    }

    /// Seals `plain` into framed messages appended to `out` (chunked at [`MAX_PLAIN`]).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        let t = self.transport.as_mut().ok_or(SecureError::Handshake)?;
        seal_into(t, plain, out, MAX_PLAIN)
    }
}

#[cfg(test)]
impl Responder {
    /// Reads all of `input`, in pieces of at most `step` bytes: handshake replies are appended
    /// to `replies`, plaintext goes to `plain`. For the tests here and the link's.
    pub(crate) fn read_all(
        &mut self,
        mut input: &[u8],
        step: usize,
        keys: &mut dyn FnMut(&str) -> Vec<Psk>,
        seed: &[u8; 32],
        replies: &mut Vec<u8>,
        mut plain: impl FnMut(&[u8]),
    ) -> Result<(), SecureError> {
        while !input.is_empty() {
            let (k, out) = self.read(&input[..input.len().min(step)], keys, seed)?;
            input = &input[k..];
            match out {
                Received::Nothing => {}
                Received::Established { reply, .. } => replies.extend_from_slice(&reply),
                Received::Plain(p) => plain(p),
            }
        }
        Ok(())
    }
}

/// Seals `plain` in messages of at most `chunk` plaintext bytes, appended to `out`.
pub fn seal_into(
    t: &mut Transport,
    mut plain: &[u8],
    out: &mut Vec<u8>,
    chunk: usize,
) -> Result<(), SecureError> {
    let chunk = chunk.clamp(1, MAX_PLAIN);
    while !plain.is_empty() {
        let k = plain.len().min(chunk);
        let at = out.len();
        out.resize(at + k + TAG_LEN + LEN_PREFIX, 0);
        let n = t.seal(&plain[..k], &mut out[at..])?;
        out.truncate(at + n);
        plain = &plain[k..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, b: u8) -> SessionKey {
        SessionKey {
            id: id.into(),
            psk: Psk([b; KEY_LEN]),
        }
    }

    /// Seals `msg` as the initiator's one message into `buf`; returns the bytes written.
    fn transmit_once(init: &mut Initiator, buf: &mut [u8], msg: &[u8]) -> usize {
        let mut once = Some(msg);
        init.poll_transmit(buf, |p| match once.take() {
            Some(m) => {
                p[..m.len()].copy_from_slice(m);
                m.len()
            }
            None => 0,
        })
        .unwrap()
    }

    /// Runs a whole exchange: relay sends `msg` in `step`-byte pieces, collector answers
    /// `reply`. Returns what each side read, or the collector's error.
    fn exchange(
        relay_key: &SessionKey,
        collector_keys: &[(&str, Psk)],
        msg: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, String), SecureError> {
        let mut init = Initiator::new(relay_key, ChannelRng::new(&[1; 32], 0), 100, 4096)?;
        let mut resp = Responder::new(MAX_MESSAGE);
        let mut to_collector = Vec::new();
        let mut buf = vec![0u8; 1000];
        let mut sent = 0;
        let mut got = Vec::new();
        for _ in 0..1000 {
            let n = init.poll_transmit(&mut buf, |p| {
                let k = p.len().min(msg.len() - sent);
                p[..k].copy_from_slice(&msg[sent..sent + k]);
                sent += k;
                k
            })?;
            to_collector.extend_from_slice(&buf[..n]);
            let mut replies = Vec::new();
            let mut lookup = |id: &str| {
                collector_keys
                    .iter()
                    .filter(|(i, _)| *i == id)
                    .map(|(_, k)| k.clone())
                    .collect()
            };
            resp.read_all(
                &to_collector,
                step,
                &mut lookup,
                &[2; 32],
                &mut replies,
                |p| got.extend_from_slice(p),
            )?;
            to_collector.clear();
            if resp.is_established() && got.len() == msg.len() {
                let mut sealed = Vec::new();
                resp.seal(b"ok", &mut sealed).unwrap();
                replies.extend_from_slice(&sealed);
            }
            let mut input = &replies[..];
            let mut answer = Vec::new();
            while !input.is_empty() {
                let (k, p) = init.read(input)?;
                input = &input[k..];
                if let Some(p) = p {
                    answer.extend_from_slice(p);
                }
            }
            if !answer.is_empty() {
                return Ok((got, String::from_utf8(answer).unwrap()));
            }
        }
        panic!("no progress");
    }

    #[test]
    fn a_session_carries_bytes_both_ways_and_authenticates_the_id() {
        let msg: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        for step in [1, 7, 4096] {
            let (got, answer) = exchange(
                &key("relay-1", 5),
                &[("relay-1", Psk([9; 32])), ("relay-1", Psk([5; 32]))],
                &msg,
                step,
            )
            .unwrap();
            assert_eq!(got, msg);
            assert_eq!(answer, "ok");
        }
    }

    #[test]
    fn a_wrong_key_or_unknown_id_is_refused_at_message_one() {
        let msg = b"Hello";
        let keys = [("relay-1", Psk([5; 32]))];
        assert_eq!(
            exchange(&key("relay-1", 6), &keys, msg, 1000).unwrap_err(),
            SecureError::Handshake
        );
        assert_eq!(
            exchange(&key("relay-2", 5), &keys, msg, 1000).unwrap_err(),
            SecureError::UnknownKey
        );
    }

    #[test]
    fn plaintext_and_garbage_are_refused_before_the_handshake() {
        let mut lookup = |_: &str| alloc::vec![Psk([5; 32])];
        // A clear record frame starts with a 4-byte length: not a key id prefix + 48.
        for input in [
            &[0u8, 0, 0, 40][..],
            &[200u8; 300][..],
            b"\x03abc\x00\x05hello",
        ] {
            let mut resp = Responder::new(MAX_MESSAGE);
            let mut rest = input;
            let mut err = None;
            while !rest.is_empty() {
                match resp.read(rest, &mut lookup, &[0; 32]) {
                    Ok((k, _)) => rest = &rest[k..],
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            assert!(err.is_some(), "{input:?} accepted");
            assert!(!resp.is_established());
        }
    }

    #[test]
    fn tampering_is_detected() {
        let k = key("r", 1);
        let mut init = Initiator::new(&k, ChannelRng::new(&[1; 32], 0), 100, 4096).unwrap();
        let mut resp = Responder::new(MAX_MESSAGE);
        let mut buf = [0u8; 200];
        let n = init.poll_transmit(&mut buf, |_| 0).unwrap();
        let mut lookup = |_: &str| alloc::vec![Psk([1; 32])];
        let (used, out) = resp.read(&buf[..n], &mut lookup, &[3; 32]).unwrap();
        assert_eq!(used, n);
        let Received::Established { reply, .. } = out else {
            panic!("not established");
        };
        init.read(&reply).unwrap();
        let n = transmit_once(&mut init, &mut buf, b"abc");
        assert_eq!(n, LEN_PREFIX + 3 + TAG_LEN);
        buf[n - 1] ^= 1;
        assert_eq!(
            resp.read(&buf[..n], &mut lookup, &[3; 32]).unwrap_err(),
            SecureError::Decrypt
        );
    }

    /// Our resolver's primitives against snow's own default resolver: a handshake and
    /// messages both ways between the two must work, or ours is not the Noise it names.
    #[test]
    fn our_primitives_interoperate_with_snows_default_resolver() {
        let k = key("interop", 4);
        let mut init = Initiator::new(&k, ChannelRng::new(&[6; 32], 1), 100, 4096).unwrap();
        let mut buf = [0u8; 200];
        let n = init.poll_transmit(&mut buf, |_| 0).unwrap();
        let prefix = key_id_prefix("interop");
        let mut prologue = PROLOGUE.to_vec();
        prologue.extend_from_slice(&prefix);
        let mut theirs = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .prologue(&prologue)
            .unwrap()
            .psk(0, &[4; 32])
            .unwrap()
            .build_responder()
            .unwrap();
        let msg1 = &buf[prefix.len() + LEN_PREFIX..n];
        let mut scratch = [0u8; 256];
        theirs.read_message(msg1, &mut scratch).unwrap();
        let mut msg2 = [0u8; 256];
        let m = theirs.write_message(&[], &mut msg2[LEN_PREFIX..]).unwrap();
        msg2[..LEN_PREFIX].copy_from_slice(&(m as u16).to_be_bytes());
        init.read(&msg2[..LEN_PREFIX + m]).unwrap();
        assert!(init.is_established());
        let mut theirs = theirs.into_transport_mode().unwrap();
        let n = transmit_once(&mut init, &mut buf, b"ping");
        let got = theirs
            .read_message(&buf[LEN_PREFIX..n], &mut scratch)
            .unwrap();
        assert_eq!(&scratch[..got], b"ping");
        let m = theirs
            .write_message(b"pong", &mut msg2[LEN_PREFIX..])
            .unwrap();
        msg2[..LEN_PREFIX].copy_from_slice(&(m as u16).to_be_bytes());
        let (_, plain) = init.read(&msg2[..LEN_PREFIX + m]).unwrap();
        assert_eq!(plain, Some(&b"pong"[..]));
    }

    #[test]
    fn a_reply_that_cannot_be_message_two_fails_at_its_length() {
        let k = key("r", 1);
        let mut init = Initiator::new(&k, ChannelRng::new(&[1; 32], 0), 100, 4096).unwrap();
        // A record-layer frame's length prefix read as a Noise one: 4096, not 48.
        assert_eq!(
            init.read(&[0x10, 0, 0, 0]).unwrap_err(),
            SecureError::Handshake
        );
        assert!(init.read(&[0; 48]).is_err());
    }

    #[test]
    fn keys_parse() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let k = SessionKey::parse(&alloc::format!("edge-1:{hex}")).unwrap();
        assert_eq!(k.id, "edge-1");
        assert_eq!(k.psk.to_hex(), hex);
        assert!(SessionKey::parse(hex).is_err());
        assert!(SessionKey::parse(&alloc::format!("bad id:{hex}")).is_err());
        assert!(SessionKey::parse("a:0011").is_err());
        assert!(!alloc::format!("{k} {k:?}").contains("0011"));
    }
}
