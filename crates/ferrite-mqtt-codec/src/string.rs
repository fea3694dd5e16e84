//! UTF-8 strings as the specification defines them, kept as slices of the input, and the rules for topic names and
//! topic filters.

use std::fmt;

use bytes::Bytes;

use crate::error::DecodeError;
use crate::wire::MAX_BINARY_LEN;

/// A UTF-8 encoded string of the MQTT wire: valid UTF-8, no U+0000, at most 65,535 bytes; backed by `Bytes`, so a
/// decoded string is a slice of the received frame and cloning it is a reference-count increment.
///
/// The codec rejects what the specification says a receiver MUST reject (ill-formed UTF-8, which includes the
/// surrogates U+D800..U+DFFF, and U+0000); control characters and non-characters, which it only says SHOULD NOT
/// appear, are accepted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttStr(Bytes);

impl MqttStr {
    /// Validates `bytes` as an MQTT string without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        check_str(&bytes)?;
        Ok(Self(bytes))
    }

    /// A string from a `&'static str` (no copy); panics if it is not a valid MQTT string, like a bad literal would.
    pub fn from_static(s: &'static str) -> Self {
        check_str(s.as_bytes()).expect("a static MQTT string literal contains no U+0000 and fits in 65,535 bytes");
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// The string. Its bytes were validated as UTF-8 when it was built, so this re-check cannot fail; it is there
    /// because the crate forbids `unsafe` (and runs at several GB/s on the short strings of MQTT).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated as UTF-8 on construction")
    }

    /// The encoded bytes (without the length prefix).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The backing `Bytes` (a slice of the received frame when decoded).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<&str> for MqttStr {
    type Error = DecodeError;

    /// Copies `s` into a new string.
    fn try_from(s: &str) -> Result<Self, DecodeError> {
        check_str(s.as_bytes())?;
        Ok(Self(Bytes::copy_from_slice(s.as_bytes())))
    }
}

impl TryFrom<String> for MqttStr {
    type Error = DecodeError;

    fn try_from(s: String) -> Result<Self, DecodeError> {
        check_str(s.as_bytes())?;
        Ok(Self(Bytes::from(s)))
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for MqttStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

fn check_str(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > MAX_BINARY_LEN {
        return Err(DecodeError::StringTooLong(bytes.len()));
    }
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if bytes.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name (PUBLISH, Will): no wildcard characters. An empty name is checked by the caller, since in
/// MQTT 5 it is allowed together with a topic alias.
pub(crate) fn check_topic_name(topic: &[u8]) -> Result<(), DecodeError> {
    // '+' (0x2B) and '#' (0x23) differ only in bit 3. A fold without early exit vectorises (16 or 32 bytes per
    // step); `any` stops at the first hit but tests one byte at a time, which profiled as most of a small
    // PUBLISH's encode.
    let wildcard = topic.iter().fold(false, |found, &b| found | (b & !0x08 == b'#'));
    if wildcard {
        return Err(DecodeError::WildcardInTopicName);
    }
    Ok(())
}

/// The prefix of a shared subscription's filter (`$share/{ShareName}/{filter}`).
pub const SHARED_PREFIX: &str = "$share/";

/// Checks a topic filter (SUBSCRIBE, UNSUBSCRIBE): not empty, `#` only alone as the last level, `+` only alone in
/// its level, and for `$share/{ShareName}/{filter}` a share name of at least one character without `/`, `+` or `#`
/// followed by a valid non-empty filter. Returns whether the filter is a shared subscription.
///
/// `$share/` is given its MQTT 5 meaning in both versions, because the broker offers shared subscriptions to
/// 3.1.1 clients too.
pub fn check_topic_filter(filter: &[u8]) -> Result<bool, DecodeError> {
    if let Some(rest) = filter.strip_prefix(SHARED_PREFIX.as_bytes()) {
        let slash = rest.iter().position(|&b| b == b'/').ok_or(DecodeError::InvalidTopicFilter)?;
        let (name, inner) = (&rest[..slash], &rest[slash + 1..]);
        if name.is_empty() || name.iter().any(|&b| b == b'+' || b == b'#') {
            return Err(DecodeError::InvalidTopicFilter);
        }
        check_plain_filter(inner)?;
        return Ok(true);
    }
    check_plain_filter(filter)?;
    Ok(false)
}

fn check_plain_filter(filter: &[u8]) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::InvalidTopicFilter);
    }
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let valid = match level {
            b"#" => last,
            b"+" => true,
            _ => !level.iter().any(|&b| b == b'+' || b == b'#'),
        };
        if !valid {
            return Err(DecodeError::InvalidTopicFilter);
        }
    }
    Ok(())
}
