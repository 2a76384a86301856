//! A same-core signal between tasks (e.g. "this connection has bytes to write"), the same on
//! both runtimes: it needs only a `Waker`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Permit semantics: a signal while nobody waits is kept for the next wait.
///
/// One task waits on a signal at a time (like `AtomicWaker`): a wait registers its task's
/// waker in place of the previous one. That takes no allocation, and it cannot pile up
/// copies of one task's waker: `Waker::will_wake` may say two wakers of the same task
/// differ (their vtables can be distinct copies), so a list of waiters would grow with each
/// poll of a task that waits while it is woken for other reasons (a connection's task is
/// polled for its reads and its writes alike).
#[derive(Default)]
pub struct LocalSignal {
    permit: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl LocalSignal {
    pub fn signal(&self) {
        self.permit.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Drops the waiter's waker: a task that ends while registered here must not be kept
    /// alive by it (a waker holds its task's memory).
    pub fn forget_waiter(&self) {
        drop(self.waker.take());
    }

    pub fn wait(&self) -> LocalWait<'_> {
        LocalWait { signal: self }
    }
}

/// The future of [`LocalSignal::wait`].
pub struct LocalWait<'a> {
    signal: &'a LocalSignal,
}

impl Future for LocalWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.permit.replace(false) {
            return Poll::Ready(());
        }
        let waker = match self.signal.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.signal.waker.set(Some(waker));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(wait: &mut LocalWait<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(wait).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_signal_is_kept_for_the_next_wait_and_wakes_a_waiting_task_once() {
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&woken));
        let signal = LocalSignal::default();
        // Signalled before anyone waits: the next wait is ready at once, and only that one.
        signal.signal();
        assert_eq!(poll(&mut signal.wait(), &waker), Poll::Ready(()));
        let mut wait = signal.wait();
        assert_eq!(poll(&mut wait, &waker), Poll::Pending);
        // Polled again while waiting (woken for something else): still one waker kept.
        assert_eq!(poll(&mut wait, &waker), Poll::Pending);
        signal.signal();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(poll(&mut wait, &waker), Poll::Ready(()));
        // A second signal with nobody registered wakes nobody.
        signal.signal();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }
}
