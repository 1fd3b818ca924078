//! Framing of regular protocol messages: a type byte and a big-endian i32 length that counts
//! itself but not the type byte. Only headers are parsed here; bodies stay in the caller's buffer.

use thiserror::Error;

/// Bytes in a message header (type byte + length).
pub const HEADER_LEN: usize = 5;

/// A parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Body length in bytes (excluding the header).
    pub body_len: usize,
}

impl Header {
    /// Total frame length: header plus body.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// A header that cannot be valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below its own size.
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// The message is larger than `max_message_size`.
    #[error("message of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
}

/// Parses the header at the start of `buf`, if all five bytes are there.
#[inline]
pub fn peek_header(buf: &[u8], max_body: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let body_len = len as usize - 4;
    if body_len > max_body {
        return Err(FrameError::TooLarge {
            len: body_len,
            max: max_body,
        });
    }
    Ok(Some(Header {
        tag: buf[0],
        body_len,
    }))
}

/// Frontend (client to server) message types pgtier accepts after startup.
#[inline]
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'S' | b'X' | b'F' | b'd' | b'c' | b'f'
    )
}

/// Encodes a message (tests only).
#[cfg(test)]
pub(crate) fn test_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", 100), Ok(None));
    }

    #[test]
    fn header_parses_length() {
        let h = peek_header(b"Q\0\0\0\x09abcd", 100).unwrap().unwrap();
        assert_eq!(h.tag, b'Q');
        assert_eq!(h.body_len, 5);
        assert_eq!(h.frame_len(), 10);
    }

    #[test]
    fn header_rejects_bad_and_large() {
        assert_eq!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength(3))
        );
        assert!(matches!(
            peek_header(b"Q\0\0\x10\0", 100),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
