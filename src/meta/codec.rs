//! A tiny length-prefixed binary encoding for store values.
//!
//! Values are read back from disk, so decoding is outside input: every read
//! is bounds-checked and a short or malformed value is `None`, never a panic.

/// Appends fields to a byte buffer.
#[derive(Default)]
pub struct Encoder(Vec<u8>);

impl Encoder {
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A byte string, prefixed by its length as a u32. Store values are far
    /// below 4 GiB (paths, causes); longer input is cut to fit the prefix.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        let v = &v[..v.len().min(u32::MAX as usize)];
        self = self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads fields in the order an [`Encoder`] wrote them.
pub struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder(buf)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }

    /// True once every byte was read; a value with trailing bytes is malformed.
    pub fn is_done(&self) -> bool {
        self.0.is_empty()
    }
}
