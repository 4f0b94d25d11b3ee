//! The send window: at most `size` of a fleet's requests are being put on the wire at once.
//!
//! When 1,000 agents call the model together, each call goes through the same steps: a
//! connection (TCP, TLS), the request written, then seconds of waiting for the answer. Without
//! a bound the runtime interleaves the first steps of all 1,000 calls: most connections are
//! made before most requests are written, so the requests reach the API in a burst at the
//! end, the answers come back in the same burst, and the engine works through that backlog
//! while the API sits idle. Inside the window requests go out in the order they were
//! admitted and evenly, and their answers come back the same way. (`fanout bench items` on 2
//! cores: makespan 0.675 → 0.650 s, 10% less CPU; see BENCHMARKS.md.)
//!
//! A request leaves the window once its body has been handed to its connection, when it
//! fails, or after [`SendWindowConfig::horizon`]. A request still in the window after the
//! horizon is waiting on the network (a TLS handshake with a distant API), not on this
//! machine's CPU, and it stops holding the others back; so the window can slow a
//! latency-bound start to no less than `size / horizon` requests per second.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Size and horizon of the window (policy as data; `size: 0` turns it off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindowConfig {
    /// Requests being sent at once.
    pub size: usize,
    /// How long a request may hold its place before it stops counting.
    pub horizon: Duration,
}

impl Default for SendWindowConfig {
    /// 64 requests, 25 ms: a latency-bound start still sends 2,560 requests a second.
    fn default() -> Self {
        SendWindowConfig {
            size: 64,
            horizon: Duration::from_millis(25),
        }
    }
}

/// The window shared by every call of a transport. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SendWindow {
    places: Option<Arc<Semaphore>>,
    horizon: Duration,
}

impl SendWindow {
    pub fn new(config: SendWindowConfig) -> SendWindow {
        SendWindow {
            places: (config.size > 0).then(|| Arc::new(Semaphore::new(config.size))),
            horizon: config.horizon,
        }
    }

    /// Wait for a place (first come, first served). `None` when the window is off.
    pub async fn enter(&self) -> Option<Place> {
        let places = Arc::clone(self.places.as_ref()?);
        // The semaphore is never closed, so this only fails if it were; then go unbounded.
        let permit = places.acquire_owned().await.ok()?;
        Some(Place {
            permit: Arc::new(Mutex::new(Some(permit))),
            horizon: self.horizon,
        })
    }
}

/// A request's place in the window; released by whichever comes first: its body handed
/// over ([`WindowedBody`]), the horizon ([`Place::hold_until_sent`]), or the request dropped.
#[derive(Debug, Clone)]
pub struct Place {
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    horizon: Duration,
}

impl Place {
    fn release(&self) {
        self.permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Whether the place is still held.
    pub fn held(&self) -> bool {
        self.permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Drive `send` to its end, giving the place up at the horizon if it is still held then.
    pub async fn hold_until_sent<F: Future>(&self, send: F) -> F::Output {
        let mut send = std::pin::pin!(send);
        tokio::select! {
            biased;
            output = &mut send => output,
            () = tokio::time::sleep(self.horizon) => {
                self.release();
                send.await
            }
        }
    }

    /// `bytes` as a request body that gives the place up when the connection takes it.
    pub fn body(&self, bytes: Bytes) -> WindowedBody {
        WindowedBody {
            bytes: Some(bytes),
            place: Some(self.clone()),
        }
    }
}

/// A one-piece request body that releases its window place when it is taken.
#[derive(Debug)]
pub struct WindowedBody {
    bytes: Option<Bytes>,
    place: Option<Place>,
}

impl Body for WindowedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = self.bytes.take().map(|bytes| Ok(Frame::data(bytes)));
        if let Some(place) = self.place.take() {
            place.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.as_ref().map_or(0, |bytes| bytes.len() as u64))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn window(size: usize) -> SendWindow {
        SendWindow::new(SendWindowConfig {
            size,
            horizon: Duration::from_millis(25),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_frees_when_the_body_is_taken() {
        let window = window(1);
        let place = window.enter().await.expect("a place");
        // The window is full until the body is handed over.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), window.enter())
                .await
                .is_err()
        );
        let mut body = place.body(Bytes::from_static(b"{}"));
        assert_eq!(body.size_hint().exact(), Some(2));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let frame = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        assert!(body.is_end_stream());
        assert!(!place.held());
        assert!(window.enter().await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_still_waiting_at_the_horizon_gives_its_place_up() {
        let window = window(1);
        let place = window.enter().await.expect("a place");
        let slow = {
            let place = place.clone();
            tokio::spawn(async move {
                place
                    .hold_until_sent(tokio::time::sleep(Duration::from_secs(1)))
                    .await
            })
        };
        // The next request gets in at the horizon, not after the slow one's second.
        let started = tokio::time::Instant::now();
        let next = window.enter().await.expect("a place");
        assert_eq!(started.elapsed(), Duration::from_millis(25));
        assert!(next.held());
        slow.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_request_gives_its_place_up_and_size_zero_is_unbounded() {
        let window = window(1);
        let place = window.enter().await.expect("a place");
        drop(place);
        assert!(window.enter().await.is_some());
        assert!(
            SendWindow::new(SendWindowConfig::default())
                .places
                .is_some()
        );
        assert!(window_off().enter().await.is_none());
    }

    fn window_off() -> SendWindow {
        SendWindow::new(SendWindowConfig {
            size: 0,
            horizon: Duration::ZERO,
        })
    }
}
