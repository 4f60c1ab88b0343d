//! The smoltcp device: one received frame in, frames out into a
//! [`FrameSink`] (the link's output buffer, written in place).

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Where the stack's output frames go.
pub trait FrameSink {
    /// Whether another frame may be queued now (back-pressure).
    fn can_send(&self) -> bool;
    /// Queues a frame of `len` bytes, written in place by `fill`.
    fn queue_frame<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R;
}

impl FrameSink for crate::frontend::TxQueue {
    fn can_send(&self) -> bool {
        crate::frontend::TxQueue::can_send(self)
    }
    fn queue_frame<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.queue(len, fill)
    }
}

/// Frames collected in memory (tests, and anything that is not a link).
#[derive(Debug, Default)]
pub struct VecSink {
    /// The frames, oldest first.
    pub frames: Vec<Vec<u8>>,
}

impl FrameSink for VecSink {
    fn can_send(&self) -> bool {
        self.frames.len() < 4096
    }
    fn queue_frame<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut frame = vec![0; len];
        let r = fill(&mut frame);
        self.frames.push(frame);
        r
    }
}

/// The device smoltcp polls: at most one pending received frame.
pub(crate) struct Device<'a, S: FrameSink> {
    pub rx: Option<&'a [u8]>,
    pub sink: &'a mut S,
    pub mtu: usize,
}

pub(crate) struct Rx<'a>(&'a [u8]);
pub(crate) struct Tx<'a, S: FrameSink>(&'a mut S);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<S: FrameSink> phy::TxToken for Tx<'_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.queue_frame(len, f)
    }
}

impl<S: FrameSink> phy::Device for Device<'_, S> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b, S>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_, S>)> {
        let frame = self.rx.take()?;
        Some((Rx(frame), Tx(self.sink)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_, S>> {
        if self.sink.can_send() {
            Some(Tx(self.sink))
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps.max_burst_size = None;
        caps
    }
}
