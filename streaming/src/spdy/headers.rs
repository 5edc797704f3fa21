//! SPDY/3 name/value header blocks: their uncompressed layout, and the zlib contexts
//! (primed with the SPDY/3 dictionary, one per direction per connection) that compress
//! them. Every block is ended with a sync flush, so each context spans the connection.
//! Runs in cairnd (its streaming server).

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Upper bound on a decompressed header block; real blocks are a few hundred bytes.
pub const MAX_DECOMPRESSED: usize = 256 * 1024;

/// The header names that open the SPDY/3 zlib dictionary, each stored behind its 32-bit
/// big-endian length (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1).
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The raw text that closes the SPDY/3 dictionary (status codes, phrases, dates, types).
const DICTIONARY_TAIL: &[&str] = &[
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
];

/// The SPDY/3 header compression dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut dict = Vec::with_capacity(1423);
        for word in DICTIONARY_WORDS {
            dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
            dict.extend_from_slice(word.as_bytes());
        }
        for piece in DICTIONARY_TAIL {
            dict.extend_from_slice(piece.as_bytes());
        }
        dict
    })
}

/// Why a header block could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("header block is truncated")]
    Truncated,
    #[error("header block has {0} trailing bytes")]
    Trailing(usize),
    #[error("header block decompresses to more than {MAX_DECOMPRESSED} bytes")]
    TooLarge,
    #[error("header block is not valid zlib data: {0}")]
    Zlib(String),
}

/// The name/value pairs of one header block, in wire order. Names are lower case on the
/// wire; a value holding several values separates them with NUL bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds a pair; the name is lower-cased as SPDY requires.
    pub fn push(&mut self, name: &str, value: &str) {
        self.pairs
            .push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// The first value of `name` (compared without regard to case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    /// Every value of `name`, NUL-separated values split apart.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split('\0'))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The uncompressed block: a 32-bit pair count, then length-prefixed names and values.
    pub fn encode_raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.pairs.len() as u32).to_be_bytes());
        for (name, value) in &self.pairs {
            for s in [name, value] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    /// Parses an uncompressed block. Invalid UTF-8 is replaced rather than refused.
    pub fn decode_raw(mut raw: &[u8]) -> Result<Headers, HeaderError> {
        let count = take_u32(&mut raw)? as usize;
        // Each pair needs at least 8 bytes: refuse absurd counts before allocating.
        if count > raw.len() / 8 {
            return Err(HeaderError::Truncated);
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_string(&mut raw)?;
            let value = take_string(&mut raw)?;
            pairs.push((name.to_ascii_lowercase(), value));
        }
        if !raw.is_empty() {
            return Err(HeaderError::Trailing(raw.len()));
        }
        Ok(Headers { pairs })
    }
}

fn take_u32(raw: &mut &[u8]) -> Result<u32, HeaderError> {
    let (head, rest) = raw.split_first_chunk::<4>().ok_or(HeaderError::Truncated)?;
    *raw = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_string(raw: &mut &[u8]) -> Result<String, HeaderError> {
    let len = take_u32(raw)? as usize;
    if raw.len() < len {
        return Err(HeaderError::Truncated);
    }
    let (s, rest) = raw.split_at(len);
    *raw = rest;
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// The sending side's zlib context.
pub struct Compressor {
    zlib: Compress,
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor::new()
    }
}

impl Compressor {
    pub fn new() -> Compressor {
        let mut zlib = Compress::new(Compression::default(), true);
        // Priming a fresh deflate stream cannot fail.
        let _ = zlib.set_dictionary(dictionary());
        Compressor { zlib }
    }

    /// Compresses one header block, ending it with a sync flush.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        let raw = headers.encode_raw();
        let start = self.zlib.total_in();
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.zlib
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            let done = (self.zlib.total_in() - start) as usize == raw.len();
            // A sync flush is complete once zlib stops filling all the room it was given.
            if done && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's zlib context.
pub struct Decompressor {
    zlib: Decompress,
}

impl Default for Decompressor {
    fn default() -> Self {
        Decompressor::new()
    }
}

impl Decompressor {
    pub fn new() -> Decompressor {
        Decompressor {
            zlib: Decompress::new(true),
        }
    }

    /// Decompresses and parses one header block.
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let raw = self.inflate(block)?;
        Headers::decode_raw(&raw)
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let start = self.zlib.total_in();
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_DECOMPRESSED {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve(out.len().max(1024));
            }
            let before_out = out.len();
            let status =
                match self
                    .zlib
                    .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
                {
                    Ok(status) => status,
                    Err(e) if e.needs_dictionary().is_some() => {
                        self.zlib
                            .set_dictionary(dictionary())
                            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                        continue;
                    }
                    Err(e) => return Err(HeaderError::Zlib(e.to_string())),
                };
            let consumed = (self.zlib.total_in() - start) as usize;
            let room_left = out.len() < out.capacity();
            if consumed == block.len() && room_left {
                return Ok(out);
            }
            let progressed = out.len() > before_out || consumed > 0;
            if status == Status::StreamEnd || (!progressed && room_left) {
                return Err(HeaderError::Zlib("header block ends mid-stream".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for byte in data {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_matches_the_spdy3_one() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        // The DICTID zlib puts in every SPDY/3 header stream (also seen in the block below).
        assert_eq!(adler32(dict), 0xe3c6_a7c2);
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn decompresses_blocks_made_by_another_implementation() {
        // Two consecutive blocks from node's zlib (deflate, SPDY/3 dictionary, sync flush).
        let first = unhex(
            "78bbe3c6a7c202e50e703a2b294a4dcc851625acc5252999799062b9089c032c0c2c0c00000000ffff",
        );
        let second =
            unhex("02a54f0ca56cc52529f9e0329bb30812c599a0a4cf0852cd58012e64199200000000ffff");
        let mut d = Decompressor::new();
        let h = d.decompress(&first).unwrap();
        assert_eq!(h.get("streamType"), Some("stdin"));
        assert_eq!(h.get("port"), Some("8080"));
        let h = d.decompress(&second).unwrap();
        assert_eq!(h.get("streamtype"), Some("stdout"));
        assert_eq!(h.get("requestid"), Some("0"));
        assert_eq!(h.get_all("x").collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn decompresses_stored_blocks_with_a_small_window() {
        // node's zlib as spdy-transport sets it up: windowBits 11, no compression.
        let blocks = [
            "3830e3c6a7c2002e00d1ff000000020000000a73747265616d74797065000000056572726f72000000073a6d6574686f6400000004504f5354000000ffff",
            "002f00d0ff000000020000000a73747265616d74797065000000067374646f7574000000073a6d6574686f6400000004504f5354000000ffff",
            "002f00d0ff000000020000000a73747265616d7479706500000006737464657272000000073a6d6574686f6400000004504f5354000000ffff",
        ];
        let mut d = Decompressor::new();
        for (block, kind) in blocks.iter().zip(["error", "stdout", "stderr"]) {
            let h = d.decompress(&unhex(block)).unwrap();
            assert_eq!(h.get("streamtype"), Some(kind));
            assert_eq!(h.get(":method"), Some("POST"));
        }
    }

    #[test]
    fn compression_context_spans_blocks() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        for i in 0..20 {
            let mut h = Headers::new();
            h.push("streamType", "error");
            h.push("X-Index", &i.to_string());
            h.push("long", &"v".repeat(i * 500));
            let block = c.compress(&h).unwrap();
            assert_eq!(d.decompress(&block).unwrap(), h);
        }
        // The empty block of a SYN_REPLY.
        let block = c.compress(&Headers::new()).unwrap();
        assert!(d.decompress(&block).unwrap().is_empty());
    }

    #[test]
    fn first_block_announces_the_dictionary() {
        let mut h = Headers::new();
        h.push(":status", "200");
        let block = Compressor::new().compress(&h).unwrap();
        assert_eq!(&block[2..6], &0xe3c6_a7c2u32.to_be_bytes());
    }

    #[test]
    fn raw_blocks_are_validated() {
        assert!(matches!(
            Headers::decode_raw(&[0, 0, 0]),
            Err(HeaderError::Truncated)
        ));
        assert!(matches!(
            Headers::decode_raw(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']),
            Err(HeaderError::Truncated)
        ));
        assert!(matches!(
            Headers::decode_raw(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            Err(HeaderError::Truncated)
        ));
        assert!(matches!(
            Headers::decode_raw(&[0, 0, 0, 0, 1]),
            Err(HeaderError::Trailing(1))
        ));
        let mut d = Decompressor::new();
        assert!(d.decompress(b"not zlib at all").is_err());
    }

    #[test]
    fn refuses_decompression_bombs() {
        let mut h = Headers::new();
        h.push("big", &"a".repeat(MAX_DECOMPRESSED * 2));
        let block = Compressor::new().compress(&h).unwrap();
        assert!(block.len() < 4096);
        assert!(matches!(
            Decompressor::new().decompress(&block),
            Err(HeaderError::TooLarge)
        ));
    }
}
