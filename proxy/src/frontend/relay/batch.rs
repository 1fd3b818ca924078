//! A batch of bytes on its way through the relay: sent as read (zero-copy) until something in
//! it is dropped or inserted; from then on it is rebuilt in an output buffer.

use bytes::BytesMut;

/// The input being routed and where it is rebuilt if it has to be.
pub(crate) struct Batch<'a> {
    buf: &'a [u8],
    out: &'a mut BytesMut,
    /// Start of input forwarded but not yet copied (once copying).
    run: usize,
    copied: bool,
}

impl<'a> Batch<'a> {
    /// A batch over `buf`; `out` may already hold bytes to send first.
    pub(crate) fn new(buf: &'a [u8], out: &'a mut BytesMut) -> Batch<'a> {
        Batch {
            buf,
            out,
            run: 0,
            copied: false,
        }
    }

    /// Copies what is forwarded up to `pos` into the output; from now on it holds the batch.
    fn flush(&mut self, pos: usize) {
        let from = if self.copied { self.run } else { 0 };
        self.out.extend_from_slice(&self.buf[from..pos]);
        self.copied = true;
        self.run = pos;
    }

    /// Leaves `buf[from..to]` out.
    pub(crate) fn drop_range(&mut self, from: usize, to: usize) {
        self.flush(from);
        self.run = to;
    }

    /// Writes something of pgtier's own at `pos`.
    pub(crate) fn insert(&mut self, pos: usize, write: impl FnOnce(&mut BytesMut)) {
        self.flush(pos);
        write(self.out);
    }

    /// Ends the batch at `pos`; true if the output holds it (else send `buf[..pos]` as is).
    pub(crate) fn finish(self, pos: usize) -> bool {
        if self.copied {
            self.out.extend_from_slice(&self.buf[self.run..pos]);
        }
        self.copied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_copy_until_changed() {
        let mut out = BytesMut::new();
        assert!(!Batch::new(b"abcdef", &mut out).finish(6));
        assert!(out.is_empty());
        let mut b = Batch::new(b"abcdef", &mut out);
        b.drop_range(1, 2);
        b.insert(4, |o| o.extend_from_slice(b"XY"));
        assert!(b.finish(6));
        assert_eq!(&out[..], b"acdXYef");
    }
}
