//! The I/O thread of one virtio device: waits (epoll) on the queues' ioeventfds, runs the
//! device's [`QueueHandler`] and raises the queue's MSI-X vector by signalling its irqfd, so
//! neither a notification nor an interrupt goes through a vCPU thread or the device lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::registers::QueueConfig;
use super::{needs_interrupt, QueueHandler, VirtioError};
use crate::vstate::memory::GuestMemory;

const KILL_TOKEN: u64 = u64::MAX;
/// Tokens of the handler's extra fds start here (queue tokens are queue positions).
const EXTRA_TOKEN_BASE: u64 = 1 << 32;

/// One queue handed to the thread.
pub struct ActiveQueue {
    pub index: usize,
    pub queue: Queue,
    /// The queue's notification eventfd (a clone of the one KVM signals).
    pub notify: EventFd,
    /// The irqfd of the queue's MSI-X vector; `None` when the driver gave it no vector.
    pub interrupt: Option<EventFd>,
}

/// Builds a virtio-queue `Queue` from the driver's settings; `None` (logged) when the rings
/// do not fit in guest memory or are misaligned, so such a queue is never served.
pub fn build_queue(name: &str, index: usize, cfg: &QueueConfig, event_idx: bool, mem: &GuestMemory) -> Option<Queue> {
    if !cfg.ready {
        return None;
    }
    let mut q = Queue::new(cfg.max_size).ok()?;
    q.set_size(cfg.size);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(cfg.desc);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(cfg.avail);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(cfg.used);
    q.set_used_ring_address(lo, hi);
    q.set_ready(true);
    q.set_event_idx(event_idx);
    if !q.is_valid(mem) {
        ratelog::warn_limited!("{name}: queue {index} rings are outside guest memory or misaligned: not served");
        return None;
    }
    Some(q)
}

/// What a device's I/O thread did, for `vm.counters`: relaxed increments on the I/O thread,
/// read by the control loop on request.
#[derive(Debug, Default)]
pub struct VirtioCounters {
    /// Queue notifications (kicks) the thread woke up for.
    pub notifications: AtomicU64,
    /// Requests completed (used-ring entries).
    pub requests: AtomicU64,
    /// MSI-X interrupts raised.
    pub interrupts: AtomicU64,
    pub bytes_from_guest: AtomicU64,
    pub bytes_to_guest: AtomicU64,
}

impl VirtioCounters {
    /// Name and value of each counter.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("notifications", v(&self.notifications)),
            ("requests", v(&self.requests)),
            ("interrupts", v(&self.interrupts)),
            ("bytes_from_guest", v(&self.bytes_from_guest)),
            ("bytes_to_guest", v(&self.bytes_to_guest)),
        ]
    }
}

pub struct Worker {
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// `kind`: the I/O thread's seccomp filter (the device's backend decides what it calls).
    pub fn spawn(
        kind: crate::seccomp::ThreadKind,
        name: String,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        handler: Box<dyn QueueHandler>,
        counters: Arc<VirtioCounters>,
    ) -> Result<Self, VirtioError> {
        let evt_err = |name: &str| {
            let name = name.to_string();
            move |source| VirtioError::EventFd { name, source }
        };
        let kill = EventFd::new(EFD_NONBLOCK).map_err(evt_err(&name))?;
        let epoll = Epoll::new().map_err(evt_err(&name))?;
        let add = |fd: i32, token: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
        use std::os::fd::AsRawFd;
        add(kill.as_raw_fd(), KILL_TOKEN).map_err(evt_err(&name))?;
        for (i, q) in queues.iter().enumerate() {
            add(q.notify.as_raw_fd(), i as u64).map_err(evt_err(&name))?;
        }
        // Edge-triggered: the handler reads such an fd until it would block (or until the
        // queue it feeds is full, and then again on that queue's next notification).
        let mut extra = Vec::new();
        for (n, (fd, queue_index)) in handler.extra_fds().into_iter().enumerate() {
            let Some(pos) = queues.iter().position(|q| q.index == queue_index) else { continue };
            let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, EXTRA_TOKEN_BASE + n as u64))
                .map_err(evt_err(&name))?;
            extra.push(pos);
        }
        let kill_clone = kill.try_clone().map_err(evt_err(&name))?;
        let thread_name = format!("virtio-{}", name.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>());
        let thread = crate::threads::spawn(kind, thread_name, {
            let name = name.clone();
            move || run(&name, &epoll, &kill_clone, &mem, queues, &extra, handler, &counters)
        })
        .map_err(|source| VirtioError::SpawnWorker { name, source })?;
        Ok(Self { kill, thread: Some(thread) })
    }

    /// Asks the thread to stop and returns at once; it ends after the request it is
    /// serving (a driver reset: the device lock is not held while it finishes).
    pub fn signal_stop(&self) {
        // A failed write means the counter is saturated: a stop is pending anyway.
        let _ = self.kill.write(1);
    }

    /// Whether the thread has ended (joining it then does not block).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and waits for it (device detach, VM teardown).
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.signal_stop();
            // A panic on the thread was reported by its panic hook already.
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)] // the thread's whole state, handed over once
fn run(
    name: &str,
    epoll: &Epoll,
    kill: &EventFd,
    mem: &GuestMemory,
    mut queues: Vec<ActiveQueue>,
    extra: &[usize],
    mut handler: Box<dyn QueueHandler>,
    counters: &VirtioCounters,
) {
    log::debug!("{name}: I/O thread serving {} queue(s)", queues.len());
    // Buffers the driver made available before DRIVER_OK (or before a notification was
    // registered) would otherwise wait for the next kick.
    for q in &mut queues {
        serve(name, q, mem, handler.as_mut(), counters);
    }
    let mut events = vec![EpollEvent::default(); queues.len() + extra.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{name}: epoll_wait failed, I/O thread stops: {e}");
                return;
            }
        };
        for ev in events.iter().take(n) {
            let token = ev.data();
            if token == KILL_TOKEN {
                let _ = kill.read();
                log::debug!("{name}: I/O thread stopped");
                return;
            }
            if token >= EXTRA_TOKEN_BASE {
                let pos = usize::try_from(token - EXTRA_TOKEN_BASE).ok().and_then(|n| extra.get(n));
                if let Some(q) = pos.and_then(|&p| queues.get_mut(p)) {
                    serve(name, q, mem, handler.as_mut(), counters);
                }
                continue;
            }
            let Some(q) = usize::try_from(token).ok().and_then(|i| queues.get_mut(i)) else { continue };
            // EAGAIN: another wake-up already consumed it; serving again is harmless.
            let _ = q.notify.read();
            counters.notifications.fetch_add(1, Ordering::Relaxed);
            serve(name, q, mem, handler.as_mut(), counters);
        }
    }
}

fn serve(
    name: &str,
    q: &mut ActiveQueue,
    mem: &GuestMemory,
    handler: &mut dyn QueueHandler,
    counters: &VirtioCounters,
) {
    let old_used = q.queue.next_used();
    let used = handler.process(q.index, &mut q.queue, mem);
    let traffic = handler.take_traffic();
    counters.bytes_from_guest.fetch_add(traffic.from_guest, Ordering::Relaxed);
    counters.bytes_to_guest.fetch_add(traffic.to_guest, Ordering::Relaxed);
    if !used {
        return;
    }
    let completed = q.queue.next_used().wrapping_sub(old_used);
    counters.requests.fetch_add(u64::from(completed), Ordering::Relaxed);
    if let (true, Some(irq)) = (needs_interrupt(&q.queue, mem, old_used), &q.interrupt) {
        match irq.write(1) {
            Ok(()) => {
                counters.interrupts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ratelog::warn_limited!("{name}: raising queue {} interrupt: {e}", q.index),
        }
    }
}

/// The I/O thread's filter for a virtio device type (virtio spec 5: 1 net, 2 block, 4 rng).
pub fn thread_kind(device_type: u32) -> crate::seccomp::ThreadKind {
    use crate::seccomp::ThreadKind;
    match device_type {
        1 => ThreadKind::VirtioNet,
        2 => ThreadKind::VirtioBlock,
        // The narrowest: only the worker's own calls.
        _ => ThreadKind::VirtioRng,
    }
}

/// What every virtio I/O thread does, whatever its device: wait on its epoll set, read the
/// queue notifications and its stop eventfd, signal irqfds. Each device adds its backend's
/// calls (see `block`, `net`, `rng`).
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    r.allow(&[libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_read, libc::SYS_write]);
}
