//! A worker's event queue: unbounded, for one thread, one receiver.
//!
//! Why not async-channel: its unbounded channel is built for threads (cache-padded head and
//! tail, listeners, and blocks of 31 slots allocated as messages flow), ~3-4 KiB per pod for a
//! queue that is almost always empty. Everything here runs on the agent's one thread, so a
//! `VecDeque` that grows with what is queued and one waker do.
//!
//! Semantics kept from async-channel: `send` fails (handing the item back) once the receiver
//! is gone; `recv` ends with `None` once every sender is gone and the queue is empty.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Inner<T> {
    items: VecDeque<T>,
    /// The receiver's, while it waits.
    waker: Option<Waker>,
    senders: usize,
    receiver_alive: bool,
}

/// The sending side; clones share the queue.
pub struct Sender<T>(Rc<RefCell<Inner<T>>>);

/// The one receiving side.
pub struct Receiver<T>(Rc<RefCell<Inner<T>>>);

/// A new empty queue.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Rc::new(RefCell::new(Inner {
        items: VecDeque::new(),
        waker: None,
        senders: 1,
        receiver_alive: true,
    }));
    (Sender(inner.clone()), Receiver(inner))
}

impl<T> Sender<T> {
    /// Queues `item` and wakes the receiver; fails only when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        let waker = {
            let mut inner = self.0.borrow_mut();
            if !inner.receiver_alive {
                return Err(item);
            }
            inner.items.push_back(item);
            inner.waker.take()
        };
        // Woken outside the borrow: a waker may run code that sends again.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.borrow_mut().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.0.borrow_mut();
            inner.senders -= 1;
            if inner.senders == 0 {
                inner.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next queued item, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.0.borrow_mut().items.pop_front()
    }

    /// The next item; `None` once the queue is empty and no sender is left.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            let mut inner = self.0.borrow_mut();
            if let Some(item) = inner.items.pop_front() {
                return Poll::Ready(Some(item));
            }
            if inner.senders == 0 {
                return Poll::Ready(None);
            }
            inner.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut inner = self.0.borrow_mut();
            inner.receiver_alive = false;
            inner.waker = None;
            std::mem::take(&mut inner.items)
        };
        // Dropped outside the borrow: an item's drop may touch a sender.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_wakes_a_waiting_receiver_and_ends_when_senders_are_gone() {
        let ex = async_executor::LocalExecutor::new();
        let (tx, rx) = unbounded::<u32>();
        let got = Rc::new(RefCell::new(Vec::new()));
        let seen = got.clone();
        let task = ex.spawn(async move {
            while let Some(n) = rx.recv().await {
                seen.borrow_mut().push(n);
            }
        });
        futures_lite::future::block_on(ex.run(async {
            // The receiver runs first and waits on the empty queue.
            futures_lite::future::yield_now().await;
            let tx2 = tx.clone();
            tx.send(1).unwrap();
            tx2.send(2).unwrap();
            futures_lite::future::yield_now().await;
            tx2.send(3).unwrap();
            drop(tx);
            drop(tx2);
            task.await;
        }));
        assert_eq!(*got.borrow(), [1, 2, 3]);
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone_and_try_recv_does_not_wait() {
        let (tx, rx) = unbounded::<&str>();
        assert_eq!(rx.try_recv(), None);
        tx.send("a").unwrap();
        assert_eq!(rx.try_recv(), Some("a"));
        drop(rx);
        assert_eq!(tx.send("b"), Err("b"));
    }
}
