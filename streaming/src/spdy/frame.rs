//! SPDY/3.1 frame layout: parsing and serialising DATA frames and the control frames
//! (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE).
//!
//! Header blocks stay compressed here; [`super::headers`] owns the zlib contexts that turn
//! them into name/value pairs, because those contexts live as long as the connection.
//! Runs in cairnd (its streaming server).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only protocol version this implementation speaks.
pub const VERSION: u16 = 3;
/// Size of every frame header (control and data).
pub const HEADER_LEN: usize = 8;
/// Largest payload the 24-bit length field can describe.
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;

/// FIN: the sender will send nothing more on this stream (DATA, SYN_STREAM, SYN_REPLY, HEADERS).
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL (SYN_STREAM only): the receiver may not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// Control frame type numbers.
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids this implementation looks at.
pub mod setting {
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

/// Mask of the 31-bit stream ids and window deltas.
const ID_MASK: u32 = 0x7fff_ffff;

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24-bit setting id.
    pub id: u32,
    pub value: u32,
}

/// A decoded frame. Header blocks are the compressed bytes as found on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_id: u32,
        /// 3-bit priority, 0 is the highest.
        priority: u8,
        slot: u8,
        flags: u8,
        header_block: Bytes,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame type SPDY/3.1 does not use (NOOP, CREDENTIAL, extensions): ignored.
    Unknown {
        kind: u16,
        flags: u8,
        payload: Bytes,
    },
}

/// Why bytes on the wire are not a valid SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0} in a control frame")]
    UnsupportedVersion(u16),
    #[error("{kind} frame has an invalid length of {len} bytes")]
    InvalidLength { kind: &'static str, len: usize },
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
}

impl Frame {
    /// Decodes the first frame of `buf`, removing its bytes. Returns `Ok(None)` (and
    /// leaves `buf` alone) while the frame is incomplete. Frames whose payload is larger
    /// than `max_payload` are refused before they are buffered.
    pub fn decode(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > max_payload {
            return Err(FrameError::TooLarge {
                len,
                limit: max_payload,
            });
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let mut head = buf.split_to(HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        let word = head.get_u32();
        let flags = head.get_u8();
        if word & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: word & ID_MASK,
                flags,
                data: payload,
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        decode_control((word & 0xffff) as u16, flags, payload).map(Some)
    }

    /// Appends the wire form of the frame to `out`. Payloads must fit the 24-bit length
    /// field; callers split DATA into smaller frames.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                out.put_u32(stream_id & ID_MASK);
                put_flags_len(out, *flags, data.len());
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                flags,
                header_block,
            } => {
                put_control(out, kind::SYN_STREAM, *flags, 10 + header_block.len());
                out.put_u32(stream_id & ID_MASK);
                out.put_u32(associated_id & ID_MASK);
                out.put_u8((priority & 0x07) << 5);
                out.put_u8(*slot);
                out.put_slice(header_block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                header_block,
            } => {
                put_control(out, kind::SYN_REPLY, *flags, 4 + header_block.len());
                out.put_u32(stream_id & ID_MASK);
                out.put_slice(header_block);
            }
            Frame::RstStream { stream_id, status } => {
                put_control(out, kind::RST_STREAM, 0, 8);
                out.put_u32(stream_id & ID_MASK);
                out.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                put_control(out, kind::SETTINGS, *flags, 4 + 8 * entries.len());
                out.put_u32(entries.len() as u32);
                for entry in entries {
                    out.put_u32((u32::from(entry.flags) << 24) | (entry.id & 0x00ff_ffff));
                    out.put_u32(entry.value);
                }
            }
            Frame::Ping { id } => {
                put_control(out, kind::PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                put_control(out, kind::GOAWAY, 0, 8);
                out.put_u32(last_good_stream_id & ID_MASK);
                out.put_u32(*status);
            }
            Frame::Headers {
                stream_id,
                flags,
                header_block,
            } => {
                put_control(out, kind::HEADERS, *flags, 4 + header_block.len());
                out.put_u32(stream_id & ID_MASK);
                out.put_slice(header_block);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                put_control(out, kind::WINDOW_UPDATE, 0, 8);
                out.put_u32(stream_id & ID_MASK);
                out.put_u32(delta & ID_MASK);
            }
            Frame::Unknown {
                kind,
                flags,
                payload,
            } => {
                put_control(out, *kind, *flags, payload.len());
                out.put_slice(payload);
            }
        }
    }

    /// The stream a frame belongs to, if any.
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Frame::Data { stream_id, .. }
            | Frame::SynStream { stream_id, .. }
            | Frame::SynReply { stream_id, .. }
            | Frame::RstStream { stream_id, .. }
            | Frame::Headers { stream_id, .. } => Some(*stream_id),
            Frame::WindowUpdate { stream_id, .. } if *stream_id != 0 => Some(*stream_id),
            _ => None,
        }
    }
}

fn put_control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    put_flags_len(out, flags, len);
}

fn put_flags_len(out: &mut BytesMut, flags: u8, len: usize) {
    debug_assert!(len <= MAX_PAYLOAD, "SPDY frame payload of {len} bytes");
    out.put_u32((u32::from(flags) << 24) | (len as u32 & 0x00ff_ffff));
}

fn decode_control(kind: u16, flags: u8, mut p: Bytes) -> Result<Frame, FrameError> {
    let len = p.len();
    let invalid = |name| FrameError::InvalidLength { kind: name, len };
    let frame = match kind {
        kind::SYN_STREAM => {
            if len < 10 {
                return Err(invalid("SYN_STREAM"));
            }
            let stream_id = p.get_u32() & ID_MASK;
            let associated_id = p.get_u32() & ID_MASK;
            let priority = p.get_u8() >> 5;
            let slot = p.get_u8();
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                flags,
                header_block: p,
            }
        }
        kind::SYN_REPLY => {
            if len < 4 {
                return Err(invalid("SYN_REPLY"));
            }
            let stream_id = p.get_u32() & ID_MASK;
            Frame::SynReply {
                stream_id,
                flags,
                header_block: p,
            }
        }
        kind::RST_STREAM => {
            if len != 8 {
                return Err(invalid("RST_STREAM"));
            }
            Frame::RstStream {
                stream_id: p.get_u32() & ID_MASK,
                status: p.get_u32(),
            }
        }
        kind::SETTINGS => decode_settings(flags, p)?,
        kind::PING => {
            if len != 4 {
                return Err(invalid("PING"));
            }
            Frame::Ping { id: p.get_u32() }
        }
        kind::GOAWAY => {
            // SPDY/3 added the status word; tolerate its absence.
            if len != 8 && len != 4 {
                return Err(invalid("GOAWAY"));
            }
            let last_good_stream_id = p.get_u32() & ID_MASK;
            let status = if p.remaining() >= 4 { p.get_u32() } else { 0 };
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }
        kind::HEADERS => {
            if len < 4 {
                return Err(invalid("HEADERS"));
            }
            let stream_id = p.get_u32() & ID_MASK;
            Frame::Headers {
                stream_id,
                flags,
                header_block: p,
            }
        }
        kind::WINDOW_UPDATE => {
            if len != 8 {
                return Err(invalid("WINDOW_UPDATE"));
            }
            Frame::WindowUpdate {
                stream_id: p.get_u32() & ID_MASK,
                delta: p.get_u32() & ID_MASK,
            }
        }
        other => Frame::Unknown {
            kind: other,
            flags,
            payload: p,
        },
    };
    Ok(frame)
}

fn decode_settings(flags: u8, mut p: Bytes) -> Result<Frame, FrameError> {
    let len = p.len();
    let invalid = FrameError::InvalidLength {
        kind: "SETTINGS",
        len,
    };
    if len < 4 {
        return Err(invalid);
    }
    let count = p.get_u32() as usize;
    if count.checked_mul(8) != Some(len - 4) {
        return Err(invalid);
    }
    let entries = (0..count)
        .map(|_| {
            let word = p.get_u32();
            Setting {
                flags: (word >> 24) as u8,
                id: word & 0x00ff_ffff,
                value: p.get_u32(),
            }
        })
        .collect();
    Ok(Frame::Settings { flags, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let wire = buf.clone();
        let decoded = Frame::decode(&mut buf, MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(decoded, frame, "wire {:02x?}", &wire[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_frame_type_roundtrips() {
        let block = Bytes::from_static(b"\x78\xbb compressed");
        roundtrip(Frame::Data {
            stream_id: 7,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"hello"),
        });
        roundtrip(Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 3,
            slot: 0,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            header_block: block.clone(),
        });
        roundtrip(Frame::SynReply {
            stream_id: 3,
            flags: 0,
            header_block: block.clone(),
        });
        roundtrip(Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        });
        roundtrip(Frame::Settings {
            flags: 1,
            entries: vec![
                Setting {
                    flags: 0,
                    id: setting::INITIAL_WINDOW_SIZE,
                    value: 65536,
                },
                Setting {
                    flags: 1,
                    id: setting::MAX_CONCURRENT_STREAMS,
                    value: 100,
                },
            ],
        });
        roundtrip(Frame::Ping { id: 0xdead_beef });
        roundtrip(Frame::GoAway {
            last_good_stream_id: 9,
            status: goaway::PROTOCOL_ERROR,
        });
        roundtrip(Frame::Headers {
            stream_id: 11,
            flags: FLAG_FIN,
            header_block: block,
        });
        roundtrip(Frame::WindowUpdate {
            stream_id: 0,
            delta: 32768,
        });
        roundtrip(Frame::Unknown {
            kind: 5,
            flags: 0,
            payload: Bytes::new(),
        });
    }

    #[test]
    fn encodes_the_documented_layout() {
        let mut buf = BytesMut::new();
        Frame::Ping { id: 1 }.encode(&mut buf);
        assert_eq!(&buf[..], &[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]);

        buf.clear();
        Frame::Data {
            stream_id: 0x0102_0304,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"ab"),
        }
        .encode(&mut buf);
        assert_eq!(&buf[..], &[1, 2, 3, 4, 1, 0, 0, 2, b'a', b'b']);

        buf.clear();
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 0x8000_0010,
        }
        .encode(&mut buf);
        // The reserved top bit of the delta is never sent.
        assert_eq!(
            &buf[..],
            &[0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0x10]
        );

        buf.clear();
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 7,
            slot: 0,
            flags: 0,
            header_block: Bytes::from_static(b"x"),
        }
        .encode(&mut buf);
        assert_eq!(
            &buf[..],
            &[0x80, 3, 0, 1, 0, 0, 0, 11, 0, 0, 0, 1, 0, 0, 0, 0, 0xe0, 0, b'x']
        );
    }

    #[test]
    fn decodes_incrementally() {
        let mut wire = BytesMut::new();
        Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"0123456789"),
        }
        .encode(&mut wire);
        Frame::Ping { id: 3 }.encode(&mut wire);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = Frame::decode(&mut buf, MAX_PAYLOAD).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1], Frame::Ping { id: 3 });
    }

    #[test]
    fn rejects_bad_frames() {
        let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(
            Frame::decode(&mut buf, MAX_PAYLOAD),
            Err(FrameError::UnsupportedVersion(2))
        );
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 3, 0, 0, 1][..]);
        assert!(matches!(
            Frame::decode(&mut buf, MAX_PAYLOAD),
            Err(FrameError::InvalidLength { kind: "PING", .. })
        ));
        // SETTINGS announcing two entries but carrying one.
        let mut buf = BytesMut::from(
            &[
                0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 7, 0, 1, 0, 0,
            ][..],
        );
        assert!(matches!(
            Frame::decode(&mut buf, MAX_PAYLOAD),
            Err(FrameError::InvalidLength {
                kind: "SETTINGS",
                ..
            })
        ));
        // Oversized frames are refused from their header alone.
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0x10, 0, 0][..]);
        assert_eq!(
            Frame::decode(&mut buf, 1024),
            Err(FrameError::TooLarge {
                len: 0x100000,
                limit: 1024
            })
        );
    }
}
