//! The async runtime under embassy-net: a spinning executor, a TSC time driver with a small
//! timer queue, and the critical-section implementation embassy's crates need.
//!
//! The board owns the loop: [`Runtime::turn`] polls every woken task once and then wakes the
//! timers that are due, and the board does its own synchronous work (relay timers, console)
//! between turns. Nothing sleeps; the CPU spins, as a poll-mode appliance does.
//!
//! - Time: `embassy_time_driver` ticks are microseconds from [`platform::now_micros`], the
//!   same clock the relay gets, so stack timeouts and relay timeouts agree.
//! - Timers: [`TimerQueue`], a fixed table woken from [`Runtime::turn`].
//! - Critical sections: the kernel is single-core and takes interrupts only in the idle
//!   halt, whose handlers run no Rust code, so there is nothing to exclude; acquire and
//!   release do nothing.

use crate::platform;
use alloc::boxed::Box;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use embassy_executor::raw::{Executor, TaskStorage};
use embassy_executor::{SpawnError, Spawner};

use super::timers::TimerQueue;

/// embassy-time's clock and alarms.
struct TscTimeDriver {
    queue: spin::Mutex<TimerQueue>,
}

impl embassy_time_driver::Driver for TscTimeDriver {
    fn now(&self) -> u64 {
        platform::now_micros()
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        self.queue.lock().schedule(at, waker);
    }
}

embassy_time_driver::time_driver_impl!(static TIME_DRIVER: TscTimeDriver = TscTimeDriver {
    queue: spin::Mutex::new(TimerQueue::new()),
});

/// Critical sections for a single core whose interrupts run no Rust code.
struct SingleCore;

critical_section::set_impl!(SingleCore);

// SAFETY: the kernel runs on one CPU, and interrupts are enabled only inside the idle halt
// between loop turns, where the entry stubs run no Rust code (platform module doc); so code
// inside a critical section can never be preempted or run concurrently with another; there
// is nothing to disable or restore.
unsafe impl critical_section::Impl for SingleCore {
    unsafe fn acquire() -> critical_section::RawRestoreState {}
    unsafe fn release(_state: critical_section::RawRestoreState) {}
}

/// The executor and its loop step.
pub struct Runtime {
    executor: &'static Executor,
}

impl Runtime {
    /// Creates the executor (once, at boot; it lives forever).
    pub fn new() -> Self {
        Self {
            executor: Box::leak(Box::new(Executor::new(core::ptr::null_mut()))),
        }
    }

    /// A spawner for this executor.
    pub fn spawner(&self) -> Spawner {
        self.executor.spawner()
    }

    /// Polls every woken task once, then wakes the timers that are due.
    pub fn turn(&self) {
        // SAFETY: `poll` is never re-entered: `turn` is only called from the board loop,
        // never from a task or from the pender (platform-spin's pender does nothing).
        unsafe { self.executor.poll() };
        TIME_DRIVER
            .queue
            .lock()
            .wake_expired(platform::now_micros());
    }
}

/// Spawns `future` as a task whose storage lives on the heap for the life of the kernel.
/// Unlike `#[embassy_executor::task]` this takes generic futures and needs no static pool.
pub fn spawn<F: Future + 'static>(spawner: Spawner, future: F) -> Result<(), SpawnError> {
    let storage: &'static TaskStorage<F> = Box::leak(Box::new(TaskStorage::new()));
    spawner.spawn(storage.spawn(move || future)?);
    Ok(())
}

/// Gives the other tasks (and the board loop) one turn.
pub fn yield_now() -> impl Future<Output = ()> {
    YieldNow(false)
}

struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
