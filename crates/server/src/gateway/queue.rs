//! A socket's bounded queue of events (the hub's `Outbound`s), which holds memory only while
//! events wait.
//!
//! tokio's bounded `mpsc` allocates its channel state and a first block of 32 slots when it
//! is made: about 1.3 KiB per socket, a sixth of an idle socket's memory. Most sockets are
//! idle most of the time, so this queue is a `VecDeque` behind a mutex, allocated on the
//! first event and released when it drains, and the receiver's waker is kept beside it (a
//! waiting `recv` is a pointer, where a `Notify` waiter is ~80 bytes of the socket's future).
//! One sender (the hub's entry for the socket) and one receiver (the socket's task).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Slots a drained queue may keep; a bigger one is released so a burst does not stay.
const KEEP: usize = 8;

struct Shared<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiver's task while it waits for an event.
    waiting: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why [`QueueSender::try_send`] refused an event.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// `capacity` events are waiting.
    Full,
    /// The receiver is gone.
    Closed,
}

/// Why [`QueueReceiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is waiting now.
    Empty,
    /// Nothing is waiting and the sender is gone.
    Disconnected,
}

/// A queue of at most `capacity` events.
pub fn queue<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waiting: None,
            sender_gone: false,
            receiver_gone: false,
        }),
    });
    (
        QueueSender {
            shared: shared.clone(),
            capacity,
        },
        QueueReceiver { shared },
    )
}

/// The sending side (the hub's entry for the socket).
pub struct QueueSender<T> {
    shared: Arc<Shared<T>>,
    capacity: usize,
}

impl<T> QueueSender<T> {
    /// Queues `item` unless the queue is full or its receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), SendError> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(SendError::Closed);
        }
        if state.items.len() >= self.capacity {
            return Err(SendError::Full);
        }
        state.items.push_back(item);
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone. (The hub just sends: `try_send` says `Closed`.)
    #[cfg(test)]
    fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

/// The receiving side (the socket's task).
pub struct QueueReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> QueueReceiver<T> {
    /// The next event; `None` once the queue is empty and the sender is gone.
    /// Cancel-safe: an event is only taken when this returns it.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some(item) = take(&mut state) {
            return Poll::Ready(Some(item));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        // Checked and registered under the same lock as `try_send` pushes: no lost wake-up.
        match &mut state.waiting {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waiting => *waiting = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match take(&mut state) {
            Some(item) => Ok(item),
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

/// The oldest event; a drained queue gives back a big buffer.
fn take<T>(state: &mut State<T>) -> Option<T> {
    let item = state.items.pop_front()?;
    if state.items.is_empty() && state.items.capacity() > KEEP {
        state.items = VecDeque::new();
    }
    Some(item)
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.items = VecDeque::new();
        state.waiting = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An event of a kind the tests need not tell apart.
    fn resync() -> &'static str {
        "resync"
    }

    #[test]
    fn bounded_in_order_and_released_when_drained() {
        let (tx, mut rx) = queue(3);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        for pos in 1..=3 {
            tx.try_send(["1", "2", "3"][pos - 1]).unwrap();
        }
        assert_eq!(tx.try_send(resync()).unwrap_err(), SendError::Full);
        for want in ["1", "2", "3"] {
            assert_eq!(rx.try_recv().unwrap(), want);
        }
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        tx.try_send(resync()).unwrap();
        assert_eq!(rx.try_recv(), Ok("resync"));
    }

    #[test]
    fn a_big_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = queue::<&str>(1000);
        for _ in 0..100 {
            tx.try_send(resync()).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[test]
    fn either_side_going_is_seen_by_the_other() {
        let (tx, mut rx) = queue(4);
        tx.try_send(resync()).unwrap();
        drop(tx);
        assert!(rx.try_recv().is_ok(), "what was queued is still delivered");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);

        let (tx, rx) = queue(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(resync()).unwrap_err(), SendError::Closed);
    }

    #[tokio::test]
    async fn recv_wakes_for_an_event_sent_while_it_waits() {
        let (tx, mut rx) = queue(4);
        let waiter = tokio::spawn(async move { rx.recv().await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(resync()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("recv woke")
            .unwrap();
        assert!(got);
    }

    #[tokio::test]
    async fn recv_ends_when_the_sender_goes() {
        let (tx, mut rx) = queue::<&str>(4);
        let waiter = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let ended = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("recv woke")
            .unwrap();
        assert!(ended);
    }
}
