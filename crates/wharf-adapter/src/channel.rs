//! [`ChannelStream`]: the [`DeliveryStream`] of a subscription whose reader
//! task (a puller, a stream reader) sends deliveries down a channel, so
//! `next` is a channel receive and cancel safe.

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use wharf_core::{Delivery, DeliveryStream, Result};

/// The sending half a reader task gets from [`ChannelStream::new`].
pub type DeliverySender = mpsc::UnboundedSender<Result<Delivery>>;

/// A subscription's deliveries, received from its reader task.
///
/// It ends when the reader drops its sender, when the backend's closed
/// signal turns `true`, or on [`close`](DeliveryStream::close). Ending it —
/// or dropping it — raises the stop signal the reader watches (and runs the
/// [`on_end`](ChannelStream::on_end) hook first); ending it also drops what
/// is buffered, which releases those deliveries.
pub struct ChannelStream {
    rx: mpsc::UnboundedReceiver<Result<Delivery>>,
    backend_closed: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    on_end: Option<Box<dyn Fn() + Send>>,
    ended: bool,
}

impl ChannelStream {
    /// A stream that also ends once `backend_closed` turns `true`; returns
    /// the sender for the reader task and the stop signal it should watch.
    pub fn new(
        backend_closed: watch::Receiver<bool>,
    ) -> (Self, DeliverySender, watch::Receiver<bool>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let stream = ChannelStream {
            rx,
            backend_closed,
            stop,
            on_end: None,
            ended: false,
        };
        (stream, tx, stop_rx)
    }

    /// Runs `hook` whenever the stream ends or is dropped, before the stop
    /// signal is raised and before buffered deliveries are released (it may
    /// run more than once).
    #[must_use]
    pub fn on_end(mut self, hook: impl Fn() + Send + 'static) -> Self {
        self.on_end = Some(Box::new(hook));
        self
    }

    /// Another receiver of the stop signal, for a second task of the
    /// subscription.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    fn signal_end(&self) {
        if let Some(hook) = &self.on_end {
            hook();
        }
        self.stop.send_replace(true);
    }

    /// Ends the stream: stops the reader and releases what is buffered.
    fn end(&mut self) {
        self.ended = true;
        self.signal_end();
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        self.signal_end();
    }
}

#[async_trait]
impl DeliveryStream for ChannelStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        if self.ended {
            return None;
        }
        let item = tokio::select! {
            biased;
            _ = self.backend_closed.wait_for(|c| *c) => None,
            item = self.rx.recv() => Some(item),
        };
        match item {
            Some(Some(d)) => Some(d),
            Some(None) => {
                self.ended = true;
                None
            }
            None => {
                self.end();
                None
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        if self.ended {
            return None;
        }
        self.rx.try_recv().ok()
    }

    async fn close(&mut self) -> Result<()> {
        self.end();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn the_backend_closing_ends_the_stream_and_stops_the_reader() {
        let (closed, closed_rx) = watch::channel(false);
        let ends = Arc::new(AtomicUsize::new(0));
        let counted = ends.clone();
        let (stream, _tx, mut stop) = ChannelStream::new(closed_rx);
        let mut stream = stream.on_end(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        closed.send_replace(true);
        assert!(stream.next().await.is_none());
        assert!(*stop.borrow_and_update());
        assert_eq!(ends.load(Ordering::Relaxed), 1);
        assert!(stream.try_next().is_none());
        drop(stream);
        assert_eq!(ends.load(Ordering::Relaxed), 2, "the hook runs on drop too");
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_ends_the_stream() {
        let (_closed, closed_rx) = watch::channel(false);
        let (mut stream, tx, stop) = ChannelStream::new(closed_rx);
        drop(tx);
        assert!(stream.next().await.is_none());
        assert!(!*stop.borrow(), "nothing to stop");
        drop(stream);
        assert!(*stop.borrow(), "dropping the stream raises the stop signal");
    }
}
