//! Bounding what the `tar` crate reads on its own.
//!
//! Before it hands out an entry, `tar` reads the entry's metadata records
//! whole into memory: GNU long names and long links (`L`, `K`), PAX headers
//! (`x`), sparse maps. A hostile layer can make one of them gigabytes long
//! (a 1.5 MiB gzip layer held a 1.5 GiB long name), and no check of ours on
//! the finished entry comes in time. [`MeteredReader`] sits under the
//! archive and counts the bytes pulled while the archive looks for the next
//! entry; past the budget every read fails, so `tar` stops (and frees what
//! it had) before the record is whole. The data of an entry is read
//! outside the metered window (callers drain each entry before asking for
//! the next), so only headers, metadata records and padding are counted.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

/// The shared counter between a [`MeteredReader`] and its owner.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    metering: Cell<bool>,
    used: Cell<u64>,
    limit: Cell<u64>,
    tripped: Cell<bool>,
}

impl Meter {
    /// Counts from zero against `limit` until [`Meter::stop`].
    pub(crate) fn start(&self, limit: u64) {
        self.used.set(0);
        self.limit.set(limit);
        self.tripped.set(false);
        self.metering.set(true);
    }

    /// Stops counting (entry data is read unmetered).
    pub(crate) fn stop(&self) {
        self.metering.set(false);
    }

    /// Whether the last metered window hit its limit.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

/// A reader that fails once more than the meter's budget was read inside
/// a metered window.
pub(crate) struct MeteredReader<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R> MeteredReader<R> {
    pub(crate) fn new(inner: R) -> (Self, Rc<Meter>) {
        let meter = Rc::new(Meter::default());
        (
            MeteredReader {
                inner,
                meter: meter.clone(),
            },
            meter,
        )
    }
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        if !m.metering.get() {
            return self.inner.read(buf);
        }
        let left = m.limit.get().saturating_sub(m.used.get());
        if left == 0 && !buf.is_empty() {
            m.tripped.set(true);
            return Err(io::Error::other(
                "archive metadata record exceeds its budget",
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        m.used.set(m.used.get() + n as u64);
        Ok(n)
    }
}

impl<R: Seek> Seek for MeteredReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_budget_fail_only_inside_the_window() {
        let data = vec![7u8; 10_000];
        let (mut r, meter) = MeteredReader::new(&data[..]);
        meter.start(1000);
        let mut buf = vec![0u8; 4096];
        assert_eq!(r.read(&mut buf).unwrap(), 1000);
        assert!(r.read(&mut buf).is_err());
        assert!(meter.tripped());
        meter.stop();
        assert_eq!(r.read(&mut buf).unwrap(), 4096);
        meter.start(10);
        assert!(!meter.tripped());
        assert_eq!(r.read(&mut buf).unwrap(), 10);
    }
}
