//! Repair of the HTTP/2 `:authority` pseudo-header on inbound client connections.
//!
//! Owns [`FixAuthority`], the wrapper every accepted client connection is read through (see
//! `api::serve`).
//!
//! Why it exists: etcdctl 3.4 (grpc-go ~1.26) dials its maintenance RPCs (`endpoint status`,
//! `snapshot save`, `defrag`, `endpoint hashkv`, `move-leader`) with the target
//! `passthrough:///http://127.0.0.1:2379`, so its requests carry
//! `:authority: http://127.0.0.1:2379`. Go's HTTP/2 server (real etcd) accepts that; the `h2`
//! crate under hyper/tonic rejects it as a malformed authority and resets the stream with
//! PROTOCOL_ERROR. We cannot configure `h2` to accept it, so we fix the bytes before `h2` sees
//! them: the scheme prefix (and any trailing `/`) is stripped from such an authority.
//!
//! How: the inbound byte stream is parsed as HTTP/2 frames. Every frame is handed on unchanged
//! (copied in bulk, never decoded) except header blocks (HEADERS + CONTINUATION frames), which
//! are HPACK-decoded with a decoder that follows the client's dynamic table for the lifetime of
//! the connection. As long as no block needs fixing, blocks are handed on verbatim too, so
//! `h2`'s table stays equal to the client's. From the first block that needs fixing on, every
//! block is re-encoded with literal fields only ("without indexing"/"never indexed", no
//! Huffman), which never touches the server's dynamic table, so the server decodes correctly
//! whatever the client's table holds. Connections that do not start with the HTTP/2 preface
//! (HTTP/1 health and metrics requests) pass through untouched. Input we cannot parse (bad
//! HPACK, oversized frames or blocks, broken CONTINUATION sequences) is handed on unchanged
//! from there on, and `h2` reports the protocol error. Server-to-client bytes are never touched.
//!
//! The HPACK decoder is our own (RFC 7541): the crates.io decoders either rebuild a Huffman
//! table for every string (tens of microseconds per header) or can panic on malformed input;
//! this one is small, allocation-free per block in steady state, and returns errors instead.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The server's SETTINGS_MAX_FRAME_SIZE: h2's default, which hyper and tonic keep.
const MAX_FRAME_SIZE: usize = 16_384;
/// The server's SETTINGS_HEADER_TABLE_SIZE (the default; the server never advertises another),
/// the largest dynamic table the client may use.
const MAX_TABLE_SIZE: usize = 4_096;
/// Largest header block (all its frames, raw) we buffer; past it we stop rewriting. The server
/// accepts header lists of 16 KiB, so real clients stay far below.
const MAX_BLOCK_BYTES: usize = 1 << 20;
/// Largest decoded header list (RFC 7541 sizes) we accept, against HPACK "bombs".
const MAX_DECODED_BYTES: usize = 1 << 20;
/// Size of one read from the connection into our buffer.
const READ_CHUNK: usize = 8 * 1024;

/// An accepted client connection whose inbound HTTP/2 header blocks get their `:authority`
/// fixed (see the module docs). Writes go straight to the inner stream.
pub struct FixAuthority<S> {
    inner: S,
    state: State,
    /// Bytes of the inbound stream to hand on unchanged before parsing resumes (ignored in
    /// [`State::Plain`]).
    pass: usize,
    /// Inbound bytes read from `inner` and not yet handed on: `ibuf[istart..iend]`.
    ibuf: Vec<u8>,
    istart: usize,
    iend: usize,
    /// A re-encoded header block being handed on: `out[opos..]`.
    out: Vec<u8>,
    opos: usize,
    /// How far the header block at `istart` has been checked to consist of whole frames.
    scanned: usize,
    /// Set once a block has been re-encoded: from then on every block is.
    rewriting: bool,
    hpack: BlockRewriter,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Checking whether the connection starts with the HTTP/2 preface.
    Preface,
    /// Parsing HTTP/2 frames.
    Frames,
    /// Handing everything on unchanged (HTTP/1, or input we gave up on).
    Plain,
}

enum Step {
    Progress,
    NeedInput,
}

enum Scan {
    Incomplete,
    Complete(usize),
    Invalid,
}

impl<S> FixAuthority<S> {
    pub fn new(inner: S) -> Self {
        FixAuthority {
            inner,
            state: State::Preface,
            pass: 0,
            ibuf: Vec::new(),
            istart: 0,
            iend: 0,
            out: Vec::new(),
            opos: 0,
            scanned: 0,
            rewriting: false,
            hpack: BlockRewriter::default(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn give_up(&mut self) {
        self.state = State::Plain;
        self.pass = usize::MAX;
        self.scanned = 0;
        self.hpack = BlockRewriter::default();
    }

    /// Advances the parser over the buffered input: sets `pass`, fills `out`, or asks for more.
    fn step(&mut self) -> Step {
        let avail = &self.ibuf[self.istart..self.iend];
        match self.state {
            State::Plain => {
                self.pass = usize::MAX;
                Step::Progress
            }
            State::Preface => {
                let n = avail.len().min(PREFACE.len());
                if avail[..n] != PREFACE[..n] {
                    self.give_up();
                    Step::Progress
                } else if n < PREFACE.len() {
                    Step::NeedInput
                } else {
                    self.pass = PREFACE.len();
                    self.state = State::Frames;
                    Step::Progress
                }
            }
            State::Frames => {
                if avail.len() < FRAME_HEADER_LEN {
                    return Step::NeedInput;
                }
                if avail[3] != TYPE_HEADERS {
                    self.pass = FRAME_HEADER_LEN + frame_len(avail);
                    return Step::Progress;
                }
                match self.scan_block() {
                    Scan::Incomplete => Step::NeedInput,
                    Scan::Invalid => {
                        self.give_up();
                        Step::Progress
                    }
                    Scan::Complete(total) => {
                        self.scanned = 0;
                        let raw = &self.ibuf[self.istart..self.istart + total];
                        match self.hpack.process(raw, self.rewriting, &mut self.out) {
                            Ok(false) => self.pass = total,
                            Ok(true) => {
                                self.rewriting = true;
                                self.istart += total;
                            }
                            Err(Malformed) => self.give_up(),
                        }
                        Step::Progress
                    }
                }
            }
        }
    }

    /// Checks the frames of the header block at `istart`: a HEADERS frame, then CONTINUATION
    /// frames of the same stream, up to END_HEADERS.
    fn scan_block(&mut self) -> Scan {
        let avail = &self.ibuf[self.istart..self.iend];
        let stream = &avail[5..FRAME_HEADER_LEN];
        let mut pos = self.scanned;
        loop {
            let Some(head) = avail.get(pos..pos + FRAME_HEADER_LEN) else {
                self.scanned = pos;
                return Scan::Incomplete;
            };
            if pos > 0 && (head[3] != TYPE_CONTINUATION || head[5..] != *stream) {
                return Scan::Invalid;
            }
            let len = frame_len(head);
            let end = pos + FRAME_HEADER_LEN + len;
            if len > MAX_FRAME_SIZE || end > MAX_BLOCK_BYTES {
                return Scan::Invalid;
            }
            if end > avail.len() {
                self.scanned = pos;
                return Scan::Incomplete;
            }
            if head[4] & FLAG_END_HEADERS != 0 {
                return Scan::Complete(end);
            }
            pos = end;
        }
    }

    /// Reads more input from `inner` into `ibuf`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>
    where
        S: AsyncRead + Unpin,
    {
        if self.istart == self.iend {
            self.istart = 0;
            self.iend = 0;
            if self.ibuf.len() > 8 * READ_CHUNK {
                // Shrink back after a large header block.
                self.ibuf = Vec::new();
            }
        }
        if self.ibuf.len() - self.iend < READ_CHUNK / 2 {
            if self.istart > 0 {
                self.ibuf.copy_within(self.istart..self.iend, 0);
                self.iend -= self.istart;
                self.istart = 0;
            }
            if self.ibuf.len() - self.iend < READ_CHUNK / 2 {
                let len = (self.ibuf.len() * 2).max(READ_CHUNK);
                self.ibuf.resize(len, 0);
            }
        }
        let mut rb = ReadBuf::new(&mut self.ibuf[self.iend..]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.iend += n;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.opos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.opos);
                buf.put_slice(&this.out[this.opos..this.opos + n]);
                this.opos += n;
                if this.opos == this.out.len() {
                    this.out.clear();
                    this.opos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.pass > 0 {
                let want = this.pass.min(buf.remaining());
                let n = if this.iend > this.istart {
                    let n = want.min(this.iend - this.istart);
                    buf.put_slice(&this.ibuf[this.istart..this.istart + n]);
                    this.istart += n;
                    n
                } else {
                    // Nothing buffered: read straight into the caller's buffer.
                    let mut rb = ReadBuf::new(buf.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    buf.advance(n);
                    n
                };
                if this.state != State::Plain {
                    this.pass -= n;
                }
                return Poll::Ready(Ok(()));
            }
            match this.step() {
                Step::Progress => {}
                Step::NeedInput => {
                    if ready!(this.poll_fill(cx))? == 0 {
                        if this.iend == this.istart {
                            return Poll::Ready(Ok(()));
                        }
                        // Truncated input: hand on what there is, unchanged.
                        this.give_up();
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn frame_len(head: &[u8]) -> usize {
    (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2])
}

/// Input that is not valid HTTP/2 + HPACK (or exceeds our limits).
#[derive(Debug, PartialEq, Eq)]
struct Malformed;

/// One decoded header field: name `hbuf[name.0..name.1]`, value `hbuf[value.0..value.1]`.
#[derive(Clone, Copy)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
    never_indexed: bool,
}

/// Decodes header blocks (tracking the client's HPACK state) and re-encodes them when needed.
/// Its buffers are reused from block to block.
#[derive(Default)]
struct BlockRewriter {
    decoder: Decoder,
    /// The HPACK fragment of the current block, padding and priority removed.
    frag: Vec<u8>,
    /// Names and values of the current block's fields.
    hbuf: Vec<u8>,
    fields: Vec<Field>,
    /// The re-encoded HPACK block.
    enc: Vec<u8>,
}

impl BlockRewriter {
    /// Decodes the header block `raw` (whole frames, checked by `scan_block`). When it needs
    /// its `:authority` fixed, or `force`, appends the re-encoded frames to `out` and returns
    /// true; otherwise the block is to be handed on verbatim and `out` is untouched.
    fn process(&mut self, raw: &[u8], force: bool, out: &mut Vec<u8>) -> Result<bool, Malformed> {
        let stream = &raw[5..FRAME_HEADER_LEN];
        let flags = raw[4];
        let mut priority = None;
        self.frag.clear();
        let mut pos = 0;
        while pos < raw.len() {
            let len = frame_len(&raw[pos..]);
            let mut payload = &raw[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + len];
            if pos == 0 {
                let mut pad = 0;
                if flags & FLAG_PADDED != 0 {
                    let (&p, rest) = payload.split_first().ok_or(Malformed)?;
                    pad = usize::from(p);
                    payload = rest;
                }
                if flags & FLAG_PRIORITY != 0 {
                    let (p, rest) = payload.split_first_chunk::<5>().ok_or(Malformed)?;
                    priority = Some(*p);
                    payload = rest;
                }
                payload = &payload[..payload.len().checked_sub(pad).ok_or(Malformed)?];
            }
            self.frag.extend_from_slice(payload);
            pos += FRAME_HEADER_LEN + len;
        }

        self.hbuf.clear();
        self.fields.clear();
        self.decoder
            .decode(&self.frag, &mut self.hbuf, &mut self.fields)?;

        let mut fixed = false;
        for f in &mut self.fields {
            if &self.hbuf[f.name.0..f.name.1] == b":authority" {
                let value = &self.hbuf[f.value.0..f.value.1];
                if let Some(host) = strip_scheme(value) {
                    f.value.0 = f.value.1 - host.len();
                    while f.value.1 > f.value.0 && self.hbuf[f.value.1 - 1] == b'/' {
                        f.value.1 -= 1;
                    }
                    fixed = true;
                }
            }
        }
        if !fixed && !force {
            return Ok(false);
        }

        self.enc.clear();
        for f in &self.fields {
            encode_field(
                &mut self.enc,
                &self.hbuf[f.name.0..f.name.1],
                &self.hbuf[f.value.0..f.value.1],
                f.never_indexed,
            );
        }
        write_frames(
            out,
            &self.enc,
            stream,
            flags & FLAG_END_STREAM,
            priority.as_ref(),
        );
        Ok(true)
    }
}

/// The part of `value` after an `http://` or `https://` prefix, if it has one.
fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&value[scheme.len()..]);
        }
    }
    None
}

/// Appends the HPACK block `block` as a HEADERS frame plus CONTINUATION frames as needed.
fn write_frames(
    out: &mut Vec<u8>,
    block: &[u8],
    stream: &[u8],
    end_stream: u8,
    priority: Option<&[u8; 5]>,
) {
    let prio_len = priority.map_or(0, |p| p.len());
    let first = block.len().min(MAX_FRAME_SIZE - prio_len);
    let mut flags = end_stream;
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if first == block.len() {
        flags |= FLAG_END_HEADERS;
    }
    out.reserve(block.len() + FRAME_HEADER_LEN * (2 + block.len() / MAX_FRAME_SIZE) + 5);
    write_frame_header(out, prio_len + first, TYPE_HEADERS, flags, stream);
    if let Some(p) = priority {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME_SIZE);
        let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(out, n, TYPE_CONTINUATION, flags, stream);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn write_frame_header(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: &[u8]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(stream);
}

/// Appends one field as a literal without indexing (or never indexed), name from the static
/// table when it is there, no Huffman coding: the server's dynamic table is never touched.
fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], never_indexed: bool) {
    let first = if never_indexed { 0x10 } else { 0x00 };
    match STATIC_TABLE.iter().position(|(n, _)| *n == name) {
        Some(i) => encode_int(out, first, 4, i + 1),
        None => {
            out.push(first);
            encode_str(out, name);
        }
    }
    encode_str(out, value);
}

fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// HPACK integer with an N-bit prefix (RFC 7541 5.1); `first` holds the bits above it.
fn encode_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An RFC 7541 decoder, keeping the client's dynamic table across blocks.
struct Decoder {
    /// Newest entry first; each is name then value, split at the `usize`.
    table: VecDeque<(Box<[u8]>, usize)>,
    /// RFC 7541 size of the table (entries' lengths + 32 each).
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE_SIZE,
        }
    }
}

impl Decoder {
    /// Decodes `block`, appending names and values to `hbuf` and the fields to `fields`.
    fn decode(
        &mut self,
        block: &[u8],
        hbuf: &mut Vec<u8>,
        fields: &mut Vec<Field>,
    ) -> Result<(), Malformed> {
        let mut i = 0;
        let mut decoded = 0;
        while let Some(&b) = block.get(i) {
            let start = hbuf.len();
            let (name_end, never_indexed) = if b & 0x80 != 0 {
                // Indexed field.
                let (index, n) = decode_int(&block[i..], 7)?;
                i += n;
                let (name, value) = self.get(index)?;
                hbuf.extend_from_slice(name);
                let name_end = hbuf.len();
                hbuf.extend_from_slice(value);
                (name_end, false)
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                if !fields.is_empty() {
                    return Err(Malformed);
                }
                let (size, n) = decode_int(&block[i..], 5)?;
                i += n;
                if size > MAX_TABLE_SIZE {
                    return Err(Malformed);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let indexing = b & 0x40 != 0;
                let (index, n) = decode_int(&block[i..], if indexing { 6 } else { 4 })?;
                i += n;
                if index == 0 {
                    i += decode_str(&block[i..], hbuf)?;
                } else {
                    let (name, _) = self.get(index)?;
                    hbuf.extend_from_slice(name);
                }
                let name_end = hbuf.len();
                i += decode_str(&block[i..], hbuf)?;
                if indexing {
                    self.insert(&hbuf[start..], name_end - start);
                }
                (name_end, !indexing && b & 0x10 != 0)
            };
            decoded += hbuf.len() - start + 32;
            if decoded > MAX_DECODED_BYTES {
                return Err(Malformed);
            }
            fields.push(Field {
                name: (start, name_end),
                value: (name_end, hbuf.len()),
                never_indexed,
            });
        }
        Ok(())
    }

    /// The entry at `index` of the combined static + dynamic table (1-based).
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), Malformed> {
        if index == 0 {
            Err(Malformed)
        } else if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            Ok((name, value))
        } else {
            let (entry, name_len) = self
                .table
                .get(index - 1 - STATIC_TABLE.len())
                .ok_or(Malformed)?;
            Ok(entry.split_at(*name_len))
        }
    }

    fn insert(&mut self, entry: &[u8], name_len: usize) {
        let size = entry.len() + 32;
        if size > self.max_size {
            // RFC 7541 4.4: an entry larger than the table empties it and is not added.
            self.evict(self.max_size);
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((entry.into(), name_len));
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((entry, _)) => self.size -= entry.len() + 32,
                None => break,
            }
        }
    }
}

/// Decodes an HPACK integer with an N-bit prefix; returns it and the bytes it took.
fn decode_int(buf: &[u8], prefix: u32) -> Result<(usize, usize), Malformed> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*buf.first().ok_or(Malformed)?) & max;
    if value < max {
        return Ok((value, 1));
    }
    // At most 4 continuation bytes (values up to 2^28): plenty, and no overflow.
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(Malformed)
}

/// Decodes an HPACK string literal, appending it to `out`; returns the bytes it took.
fn decode_str(buf: &[u8], out: &mut Vec<u8>) -> Result<usize, Malformed> {
    let huffman = buf.first().ok_or(Malformed)? & 0x80 != 0;
    let (len, n) = decode_int(buf, 7)?;
    let data = buf.get(n..n + len).ok_or(Malformed)?;
    if huffman {
        huffman_decode(data, out)?;
    } else {
        out.extend_from_slice(data);
    }
    Ok(n + len)
}

/// Bit lengths of the HPACK Huffman code (RFC 7541 Appendix B) for symbols 0..=255 and EOS.
/// The code is canonical, so these lengths define it completely.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const HUFFMAN_MAX_LEN: usize = 30;
const EOS: u16 = 256;

/// Canonical decoding tables: the codes of length `l` are `first[l]..first[l] + count[l]`,
/// for the symbols `symbols[offset[l]..]`.
struct Huffman {
    first: [u32; HUFFMAN_MAX_LEN + 1],
    count: [u32; HUFFMAN_MAX_LEN + 1],
    offset: [u16; HUFFMAN_MAX_LEN + 1],
    symbols: [u16; 257],
}

static HUFFMAN: Huffman = {
    let mut h = Huffman {
        first: [0; HUFFMAN_MAX_LEN + 1],
        count: [0; HUFFMAN_MAX_LEN + 1],
        offset: [0; HUFFMAN_MAX_LEN + 1],
        symbols: [0; 257],
    };
    let mut code = 0u32;
    let mut k = 0usize;
    let mut len = 1;
    while len <= HUFFMAN_MAX_LEN {
        h.first[len] = code;
        h.offset[len] = k as u16;
        let mut sym = 0;
        while sym < 257 {
            if HUFFMAN_LENGTHS[sym] as usize == len {
                h.symbols[k] = sym as u16;
                k += 1;
                h.count[len] += 1;
            }
            sym += 1;
        }
        code = (code + h.count[len]) << 1;
        len += 1;
    }
    h
};

/// Decodes a Huffman-coded string (RFC 7541 5.2), appending it to `out`.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let h = &HUFFMAN;
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let i = code.wrapping_sub(h.first[len]);
            if i < h.count[len] {
                let sym = h.symbols[usize::from(h.offset[len]) + i as usize];
                if sym == EOS {
                    return Err(Malformed);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == HUFFMAN_MAX_LEN {
                return Err(Malformed);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len > 7 || code != (1 << len) - 1 {
        return Err(Malformed);
    }
    Ok(())
}

/// The HPACK static table (RFC 7541 Appendix A).
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An inbound stream handed out `chunk` bytes at a time; writes are discarded.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .chunk
                .min(buf.remaining())
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Chunked {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn run(input: &[u8], chunk: usize, read_size: usize) -> Vec<u8> {
        let mut conn = FixAuthority::new(Chunked {
            data: input.to_vec(),
            pos: 0,
            chunk,
        });
        let mut out = Vec::new();
        let mut buf = vec![0; read_size];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// `input` through `FixAuthority`, checking that the way it is split does not matter.
    async fn through(input: &[u8]) -> Vec<u8> {
        let out = run(input, usize::MAX, 1 << 20).await;
        for (chunk, read_size) in [(1, 1), (1, 4096), (7, 3), (100, 16_384), (20_000, 9)] {
            assert_eq!(
                run(input, chunk, read_size).await,
                out,
                "{chunk}/{read_size}"
            );
        }
        out
    }

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame_header(&mut f, payload.len(), ty, flags, &stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn h2(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for f in frames {
            v.extend_from_slice(f);
        }
        v
    }

    fn raw_str(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_str(&mut v, s);
        v
    }

    /// Huffman-codes `s` with the canonical code given by `HUFFMAN_LENGTHS`.
    fn huffman_str(s: &[u8]) -> Vec<u8> {
        let mut codes = [0u32; 257];
        let mut code = 0u32;
        for len in 1..=HUFFMAN_MAX_LEN {
            for sym in 0..257 {
                if usize::from(HUFFMAN_LENGTHS[sym]) == len {
                    codes[sym] = code;
                    code += 1;
                }
            }
            code <<= 1;
        }
        let (mut bits, mut nbits, mut data) = (0u64, 0u32, Vec::new());
        for &b in s {
            let len = u32::from(HUFFMAN_LENGTHS[usize::from(b)]);
            bits = (bits << len) | u64::from(codes[usize::from(b)]);
            nbits += len;
            while nbits >= 8 {
                data.push((bits >> (nbits - 8)) as u8);
                nbits -= 8;
            }
        }
        if nbits > 0 {
            data.push(((bits << (8 - nbits)) as u8) | ((1u8 << (8 - nbits)) - 1));
        }
        let mut v = Vec::new();
        encode_int(&mut v, 0x80, 7, data.len());
        v.extend(data);
        v
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn hdrs(list: &[(&str, &str)]) -> Headers {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// The frames of an HTTP/2 client stream: (type, flags, stream, payload).
    fn parse_frames(out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(out.starts_with(PREFACE));
        let mut rest = &out[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = frame_len(rest);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            frames.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        frames
    }

    /// Each header block of `out` decoded with a fresh, independent decoder, with the
    /// HEADERS flags (END_HEADERS cleared) and stream.
    fn header_blocks(out: &[u8]) -> Vec<(u8, u32, Headers)> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut open: Option<(u8, u32, Vec<u8>)> = None;
        for (ty, flags, stream, mut payload) in parse_frames(out) {
            match ty {
                TYPE_HEADERS => {
                    assert!(open.is_none());
                    assert!(payload.len() <= MAX_FRAME_SIZE);
                    if flags & FLAG_PADDED != 0 {
                        let pad = usize::from(payload.remove(0));
                        payload.truncate(payload.len() - pad);
                    }
                    if flags & FLAG_PRIORITY != 0 {
                        payload.drain(..5);
                    }
                    open = Some((flags & !FLAG_END_HEADERS, stream, payload));
                }
                TYPE_CONTINUATION => {
                    assert!(payload.len() <= MAX_FRAME_SIZE);
                    let block = open.as_mut().unwrap();
                    assert_eq!(block.1, stream);
                    block.2.extend(payload);
                }
                _ => {
                    assert!(open.is_none());
                    continue;
                }
            }
            if flags & FLAG_END_HEADERS != 0 {
                let (flags, stream, block) = open.take().unwrap();
                blocks.push((flags, stream, decoder.decode(&block).unwrap()));
            }
        }
        assert!(open.is_none());
        blocks
    }

    fn data_frames(out: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
        parse_frames(out)
            .into_iter()
            .filter(|f| f.0 == 0x0)
            .map(|(_, flags, stream, payload)| (flags, stream, payload))
            .collect()
    }

    #[tokio::test]
    async fn fixes_authority_also_when_referenced_from_the_dynamic_table() {
        let mut first = vec![0x82, 0x86, 0x84]; // GET, http, /
        first.push(0x41); // :authority, incremental indexing
        first.extend(raw_str(b"http://127.0.0.1:2379"));
        first.push(0x40); // new name, incremental indexing
        first.extend(raw_str(b"x-custom"));
        first.extend(huffman_str(b"some value"));
        // Dynamic table now: 62 = x-custom, 63 = :authority.
        let second = vec![0x83, 0x86, 0x84, 0x80 | 63, 0x80 | 62];
        let body = b"\x00\x00\x00\x00\x05hello".to_vec();
        let input = h2(&[
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first),
            frame(0x0, FLAG_END_STREAM, 1, &body),
            frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &second),
            frame(0x8, 0, 0, &[0, 0, 1, 0]), // WINDOW_UPDATE
        ]);
        let out = through(&input).await;

        let want = |method| {
            hdrs(&[
                (":method", method),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "127.0.0.1:2379"),
                ("x-custom", "some value"),
            ])
        };
        assert_eq!(
            header_blocks(&out),
            vec![(0, 1, want("GET")), (FLAG_END_STREAM, 3, want("POST"))]
        );
        assert_eq!(data_frames(&out), vec![(FLAG_END_STREAM, 1, body)]);
        assert_eq!(parse_frames(&out).last().unwrap().3, [0, 0, 1, 0]);
        // Re-encoded blocks never index: they decode the same from any table state.
        let mut decoder = Decoder::default();
        for (ty, _, _, payload) in parse_frames(&out) {
            if ty == TYPE_HEADERS {
                let (mut hbuf, mut fields) = (Vec::new(), Vec::new());
                decoder.decode(&payload, &mut hbuf, &mut fields).unwrap();
                assert_eq!(fields.len(), 5);
            }
        }
        assert!(decoder.table.is_empty());
    }

    #[tokio::test]
    async fn passes_http1_through() {
        let input = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n\r\n".to_vec();
        assert_eq!(through(&input).await, input);
        let input = b"PRI * HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(through(&input).await, input);
        assert_eq!(through(b"").await, b"");
    }

    #[tokio::test]
    async fn passes_good_authorities_through_verbatim() {
        let mut first = vec![0x82, 0x86, 0x84, 0x41];
        first.extend(huffman_str(b"127.0.0.1:2379"));
        let second = vec![0x83, 0x86, 0x84, 0x80 | 62];
        let input = h2(&[
            frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &first),
            frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &second),
        ]);
        assert_eq!(through(&input).await, input);
    }

    #[tokio::test]
    async fn joins_continuations_and_drops_padding() {
        let mut block = vec![0x3f, 0xe1, 0x1f, 0x83, 0x87, 0x04]; // size update 4096, POST, https
        block.extend(raw_str(b"/etcdserverpb.Maintenance/Status"));
        block.push(0x41);
        block.extend(huffman_str(b"https://localhost:2379/"));
        block.push(0x10); // never indexed, new name
        block.extend(raw_str(b"token"));
        block.extend(huffman_str(b"secret"));
        let mut first = vec![3]; // pad length
        first.extend([0x80, 0, 0, 5, 200]); // priority: exclusive, depends on 5, weight 200
        first.extend(&block[..10]); // splits a string
        first.extend([0, 0, 0]);
        let input = h2(&[
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 7, &first),
            frame(TYPE_CONTINUATION, 0, 7, &block[10..20]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 7, &block[20..]),
        ]);
        let out = through(&input).await;
        let frames = parse_frames(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].1, FLAG_END_HEADERS | FLAG_PRIORITY);
        assert_eq!(frames[1].3[..5], [0x80, 0, 0, 5, 200]);
        let want = hdrs(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", "localhost:2379"),
            ("token", "secret"),
        ]);
        assert_eq!(header_blocks(&out), vec![(FLAG_PRIORITY, 7, want)]);
        // The sensitive field stays "never indexed".
        assert!(frames[1].3.windows(7).any(|w| w == b"\x10\x05token"));
    }

    #[tokio::test]
    async fn splits_big_rewritten_blocks_into_continuations() {
        let big = "v".repeat(40_000);
        let mut block = vec![0x82, 0x86, 0x84, 0x01];
        block.extend(raw_str(b"http://127.0.0.1:2379"));
        block.push(0x00);
        block.extend(raw_str(b"x-big"));
        block.extend(raw_str(big.as_bytes()));
        let chunks: Vec<_> = block.chunks(MAX_FRAME_SIZE).collect();
        let mut frames = vec![frame(TYPE_HEADERS, FLAG_END_STREAM, 1, chunks[0])];
        for (i, c) in chunks.iter().enumerate().skip(1) {
            let flags = if i + 1 == chunks.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            frames.push(frame(TYPE_CONTINUATION, flags, 1, c));
        }
        let out = through(&h2(&frames)).await;
        let want = hdrs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "127.0.0.1:2379"),
            ("x-big", &big),
        ]);
        assert_eq!(header_blocks(&out), vec![(FLAG_END_STREAM, 1, want)]);
        assert_eq!(parse_frames(&out).len(), 1 + 3);
    }

    #[tokio::test]
    async fn passes_malformed_input_through_unchanged() {
        let bad_authority = {
            let mut b = vec![0x01];
            b.extend(raw_str(b"http://x"));
            b
        };
        let cases = [
            // Unknown dynamic table index.
            vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70])],
            // Truncated string, then a valid block that would need fixing.
            vec![
                frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x01, 0x05, b'a']),
                frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &bad_authority),
            ],
            // Table size update above the server's limit, and after a field.
            vec![frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1,
                &[0x3f, 0xe2, 0x1f, 0x82],
            )],
            vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x82, 0x20])],
            // Bad Huffman padding (a zero bit).
            vec![frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1,
                &[0x01, 0x81, 0x00],
            )],
            // Padding longer than the frame.
            vec![frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_PADDED,
                1,
                &[9, 0x82],
            )],
            // Frame above the server's max frame size.
            vec![frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1,
                &vec![0x82; 20_000],
            )],
            // CONTINUATION missing or on another stream.
            vec![
                frame(TYPE_HEADERS, 0, 1, &bad_authority),
                frame(0x0, 0, 1, b"data"),
            ],
            vec![
                frame(TYPE_HEADERS, 0, 1, &bad_authority),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]),
            ],
            // Truncated at the end of the stream.
            vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &bad_authority)[..12].to_vec()],
        ];
        for frames in cases {
            let input = h2(&frames);
            assert_eq!(through(&input).await, input);
        }
    }

    #[tokio::test]
    async fn survives_garbage() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut frames = Vec::new();
            for _ in 0..rand() % 6 {
                let len = (rand() % 40) as usize;
                let payload: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                let ty = [TYPE_HEADERS, TYPE_CONTINUATION, 0][(rand() % 3) as usize];
                frames.push(frame(ty, rand() as u8, (rand() % 3) as u32, &payload));
            }
            let input = h2(&frames);
            let out = run(
                &input,
                1 + (rand() % 50) as usize,
                1 + (rand() % 50) as usize,
            )
            .await;
            assert_eq!(out.len() >= PREFACE.len(), input.len() >= PREFACE.len());
        }
    }

    /// Random valid blocks (all representations, table size updates, evictions) decode the
    /// same with our decoder as with an independent one.
    #[test]
    fn decoder_agrees_with_loona_hpack() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let string = |s: &[u8], huffman: bool| {
            if huffman { huffman_str(s) } else { raw_str(s) }
        };
        let mut ours = Decoder::default();
        let mut theirs = loona_hpack::Decoder::new();
        let (mut agreed, mut dynamic_refs) = (0, 0);
        for _ in 0..3_000 {
            let mut block = Vec::new();
            if rand(20) == 0 {
                encode_int(
                    &mut block,
                    0x20,
                    5,
                    rand(MAX_TABLE_SIZE as u64 + 1) as usize,
                );
            }
            for _ in 0..1 + rand(8) {
                let value: Vec<u8> = (0..rand(100)).map(|_| rand(256) as u8).collect();
                match rand(4) {
                    0 => {
                        let index = 1 + rand(61 + 12) as usize;
                        dynamic_refs += usize::from(index > 61);
                        encode_int(&mut block, 0x80, 7, index);
                    }
                    r => {
                        let (first, prefix) = [(0x40, 6), (0x00, 4), (0x10, 4)][r as usize - 1];
                        if rand(2) == 0 {
                            encode_int(&mut block, first, prefix, 1 + rand(61 + 4) as usize);
                        } else {
                            encode_int(&mut block, first, prefix, 0);
                            let name = format!("x-n{}", rand(50));
                            block.extend(string(name.as_bytes(), rand(2) == 0));
                        }
                        block.extend(string(&value, rand(2) == 0));
                    }
                }
            }
            let (mut hbuf, mut fields) = (Vec::new(), Vec::new());
            let got = ours.decode(&block, &mut hbuf, &mut fields).map(|()| {
                fields
                    .iter()
                    .map(|f| {
                        let name = hbuf[f.name.0..f.name.1].to_vec();
                        (name, hbuf[f.value.0..f.value.1].to_vec())
                    })
                    .collect::<Headers>()
            });
            match (got, theirs.decode(&block)) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want);
                    agreed += 1;
                }
                (Err(Malformed), Err(_)) => {
                    // Index out of range: both fail; start both afresh.
                    ours = Decoder::default();
                    theirs = loona_hpack::Decoder::new();
                }
                (got, want) => panic!("{block:02x?}: {got:?} vs {want:?}"),
            }
        }
        assert!(
            agreed > 1_000 && dynamic_refs > 500,
            "{agreed} {dynamic_refs}"
        );
    }

    #[test]
    fn decodes_rfc7541_huffman_examples() {
        // RFC 7541 C.4.1 - C.4.3 (requests with Huffman coding, one connection).
        let blocks = [
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ];
        let want = [
            hdrs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]),
            hdrs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            hdrs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        let mut decoder = Decoder::default();
        for (hex, want) in blocks.iter().zip(want) {
            let block: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let (mut hbuf, mut fields) = (Vec::new(), Vec::new());
            decoder.decode(&block, &mut hbuf, &mut fields).unwrap();
            let got: Headers = fields
                .iter()
                .map(|f| {
                    (
                        hbuf[f.name.0..f.name.1].to_vec(),
                        hbuf[f.value.0..f.value.1].to_vec(),
                    )
                })
                .collect();
            assert_eq!(got, want);
        }
        assert_eq!(decoder.table.len(), 3);
        assert_eq!(decoder.size, 164);
        // Every byte value round-trips through the Huffman code.
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        let coded = huffman_str(&all);
        let (_, n) = decode_int(&coded, 7).unwrap();
        huffman_decode(&coded[n..], &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn static_table_matches_loona_hpack() {
        let mut decoder = loona_hpack::Decoder::new();
        for (i, (name, value)) in STATIC_TABLE.iter().enumerate() {
            let got = decoder.decode(&[0x80 | (i as u8 + 1)]).unwrap();
            assert_eq!(got, vec![(name.to_vec(), value.to_vec())]);
        }
    }
}
