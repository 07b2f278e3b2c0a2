//! Busy polling after activity (`busy_poll_us`): for a moment after each request the runtime
//! keeps polling its sockets instead of putting its threads to sleep.
//!
//! On a quiet gateway every message arrives at a sleeping thread, and waking it (and the CPU
//! it sleeps on) costs more than the gateway's own work: on the 2-core benchmark machine about
//! 50 µs per wake-up, two per proxied call. A task that yields in a loop while requests came
//! recently keeps one worker awake; each yield lets the runtime poll its sockets without
//! blocking, so the next message is picked up at once. It stops `window` after the last
//! request and waits to be woken by the next, so an idle gateway costs nothing; under load the
//! worker is busy anyway and the loop only runs when nothing else is ready. The price is up to
//! one core kept busy while traffic trickles in; deployments that value latency over that core
//! turn it on (see README, Performance).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Activity {
    since: Instant,
    /// Microseconds from `since` to the last request.
    last: AtomicU64,
    window: u64,
    idle: AtomicBool,
    wake: tokio::sync::Notify,
}

/// How long the loop spins before it offers its CPU to other runnable threads. The kernel
/// puts a thread it wakes on a CPU that is not idle when none is, and one queued behind the
/// spinning worker would wait out its whole time slice (about a millisecond, measured on 2
/// cores: the upstream waited 1.08 ms while the loop spun); a `sched_yield` every so often
/// caps that wait, and with nothing else to run it returns at once.
const OS_YIELD_EVERY: Duration = Duration::from_micros(20);

/// One per process: the setting belongs to the runtime, not to an app instance.
static ACTIVITY: OnceLock<Activity> = OnceLock::new();

/// Start polling for `window` after each request (on the current runtime). Once per process;
/// later calls change nothing.
pub fn start(window: Duration) {
    let mut first = false;
    let activity = ACTIVITY.get_or_init(|| {
        first = true;
        Activity {
            since: Instant::now(),
            last: AtomicU64::new(0),
            window: window.as_micros() as u64,
            idle: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
        }
    });
    if !first {
        return;
    }
    tokio::spawn(async move {
        let mut spinning_since = Instant::now();
        loop {
            if activity.recent() {
                if spinning_since.elapsed() >= OS_YIELD_EVERY {
                    // Let a thread the kernel queued on this CPU (the upstream, the client)
                    // run now rather than after the loop's time slice.
                    std::thread::yield_now();
                    spinning_since = Instant::now();
                }
                tokio::task::yield_now().await;
                continue;
            }
            activity.idle.store(true, Ordering::SeqCst);
            // A request that came between the check and the flag found the loop not idle and
            // did not wake it: look once more before sleeping.
            if !activity.recent() {
                activity.wake.notified().await;
            }
        }
    });
}

impl Activity {
    /// The last request came within the window.
    fn recent(&self) -> bool {
        let now = self.since.elapsed().as_micros() as u64;
        now.saturating_sub(self.last.load(Ordering::SeqCst)) < self.window
    }
}

/// A request arrived: poll for the window from now.
pub fn touch() {
    let Some(activity) = ACTIVITY.get() else { return };
    activity.last.store(activity.since.elapsed().as_micros() as u64, Ordering::SeqCst);
    if activity.idle.swap(false, Ordering::SeqCst) {
        // A stored permit if the loop is not waiting yet: it then goes on at once.
        activity.wake.notify_one();
    }
}
