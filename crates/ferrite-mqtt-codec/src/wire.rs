//! Primitive wire types of both versions: variable byte integers, two- and four-byte integers, length-prefixed
//! strings and binary data, read from a frozen frame (`Bytes`) so that every string and binary value is a slice of
//! the input rather than a copy.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::string::MqttStr;

/// The largest value a variable byte integer can carry (four bytes of seven bits): also the largest remaining length.
pub const MAX_VARINT: u32 = 268_435_455;

/// The longest string or binary value: its length is a two-byte integer.
pub const MAX_BINARY_LEN: usize = u16::MAX as usize;

/// How many bytes `value` takes as a variable byte integer (1..=4); callers keep `value <= MAX_VARINT`.
pub(crate) const fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`MAX_VARINT`]) as a variable byte integer.
pub(crate) fn put_varint(buf: &mut impl BufMut, value: usize) {
    debug_assert!(value <= MAX_VARINT as usize);
    let mut value = value;
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes `value` as a variable byte integer into `out`, returning how many bytes it took (for inline headers).
pub(crate) fn varint_into(out: &mut [u8], value: usize) -> usize {
    let mut slice = &mut out[..];
    let before = slice.len();
    put_varint(&mut slice, value);
    before - slice.len()
}

/// The outcome of reading a variable byte integer from a prefix of the input.
pub(crate) enum VarInt {
    /// The value and how many bytes it took.
    Value(u32, usize),
    /// The input ends before the integer does.
    Incomplete,
}

/// Reads a variable byte integer from the start of `bytes`; more than four bytes is malformed.
pub(crate) fn read_varint(bytes: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A non-minimal encoding (a trailing 0x00 after a continuation) is tolerated, as the specification only
            // says the minimal number of bytes SHOULD be used by the sender.
            return Ok(VarInt::Value(value, i + 1));
        }
    }
    if bytes.len() >= 4 { Err(DecodeError::MalformedVarInt) } else { Ok(VarInt::Incomplete) }
}

/// A cursor over one complete frame: every read is bounds-checked against the packet, and strings and binary
/// values come back as slices of the frame.
pub(crate) struct Reader {
    frame: Bytes,
    pos: usize,
    end: usize,
}

impl Reader {
    /// Reads `frame[start..end]`.
    pub(crate) fn new(frame: Bytes, start: usize, end: usize) -> Self {
        Self { frame, pos: start, end }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// A reader over the next `len` bytes, which this one skips.
    pub(crate) fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let sub = Reader { frame: self.frame.clone(), pos: self.pos, end: self.pos + len };
        self.pos += len;
        Ok(sub)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.is_empty() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let byte = self.frame[self.pos];
        self.pos += 1;
        Ok(byte)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.frame[self.pos..self.end])? {
            VarInt::Value(value, len) => {
                self.pos += len;
                Ok(value)
            }
            VarInt::Incomplete => Err(DecodeError::UnexpectedEnd),
        }
    }

    fn take(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let start = self.pos;
        self.pos += len;
        Ok(&self.frame[start..self.pos])
    }

    /// The next `len` bytes as a slice of the frame.
    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.frame.slice(start..self.pos))
    }

    /// The rest of this reader as a slice of the frame (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        let rest = self.frame.slice(self.pos..self.end);
        self.pos = self.end;
        rest
    }

    /// Two-byte length-prefixed binary data.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// A two-byte length-prefixed UTF-8 string, validated.
    pub(crate) fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary()?;
        MqttStr::from_bytes(bytes)
    }
}

/// Writes two-byte length-prefixed data; callers have checked the length against [`MAX_BINARY_LEN`].
pub(crate) fn put_binary(buf: &mut BytesMut, bytes: &[u8]) {
    debug_assert!(bytes.len() <= MAX_BINARY_LEN);
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}
