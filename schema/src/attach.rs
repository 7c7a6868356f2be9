//! Who drains a segment: the attach handshake between the shim and its
//! collectors, both sides. (Like `commit`, this is a protocol over the
//! header's atomics; every ordering carries its reason.)
//!
//! `Header::state` says whether the shim records (`Attached`), has no
//! collector (`Waiting`: none attached yet, or the last one detached; it
//! records nothing and, with `idle=free`, instruments nothing), or lost the
//! one it had (`Detached`: the collector died; it counts its events as lost,
//! so that a collector that continues the capture can say exactly what is
//! missing). `Header::collector_pid` says which collector holds the segment.
//! A collector attaches in three steps: it claims `collector_pid` with a
//! compare-and-swap (so two collectors cannot both win), bumps
//! `attach_count` (the shim re-announces its devices and blocks to each new
//! attach, so it must see the new count no later than the new state), then
//! sets `state` to `Attached`. It detaches in two: `state` to `Waiting`
//! ([`detach`]: the shim records nothing more), then, once it has drained
//! what the shim had gathered, `collector_pid` to 0 ([`release`]). In
//! between, a shim publishing into a full ring still waits for it
//! ([`draining`]).
//!
//! Before it attaches, a collector writes what it asks of the shim
//! ([`Request`], [`set_request`]); the attach publishes it, and the shim
//! reads it once it sees `Attached` ([`requested_events`],
//! [`requested_stop_pc`], [`hits_stop_range`]). A collector that asks for
//! a start trigger attaches as `Armed` instead: the shim instruments for
//! its events and records nothing until a vCPU meets the trigger
//! ([`requested_start_pc`], [`hits_start_range`]); that vCPU makes it
//! `Attached` ([`start_at_trigger`]), and the recording starts with it.
//!
//! The shim may stop the recording itself, when the trigger the collector
//! set before it attached fires (`Header::stop_at_pc`): it takes the
//! collector's first step of a detach ([`stop_at_trigger`]); the collector,
//! finding `Waiting` while it holds the segment ([`stopped_by_shim`]),
//! drains and releases as after its own.
//!
//! Either side may find the other gone. A collector attaching over a holder
//! that died takes the segment over; a shim waiting for room in a full ring
//! checks that its collector is alive ([`collector_alive`]) and, if not,
//! detaches it itself ([`give_up_on_dead_collector`]); a live collector that
//! finds itself detached attaches again ([`ensure_attached`]).

use crate::layout::Header;
use crate::options::{EventSet, Overflow};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The values of `Header::state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// No collector: none has attached yet, or the last one detached. The
    /// shim records nothing.
    Waiting = 0,
    /// A collector is attached and draining: the shim records.
    Attached = 1,
    /// The collector that was attached died: the shim counts events as
    /// lost until a collector attaches again.
    Detached = 2,
    /// A collector is attached and waits for its start trigger (`attach
    /// --from-pc`, `--from-device`): the shim is instrumented for its
    /// events but records none until a vCPU meets the trigger
    /// ([`start_at_trigger`]), which makes it `Attached`.
    Armed = 3,
}

impl State {
    /// The state `Header::state` holds, or the value itself when it is none
    /// (a corrupt or foreign segment).
    pub fn of(header: &Header) -> Result<State, u32> {
        // Acquire: pairs with the Release part of the stores below, after
        // which what the storing side wrote first is visible.
        State::from_u32(header.state.load(Ordering::Acquire))
    }

    fn from_u32(v: u32) -> Result<State, u32> {
        match v {
            0 => Ok(State::Waiting),
            1 => Ok(State::Attached),
            2 => Ok(State::Detached),
            3 => Ok(State::Armed),
            other => Err(other),
        }
    }
}

// ------------------------------------------------------------- the shim

/// The shim's question at every event: `Some(true)` record it, `Some(false)`
/// count it lost (a collector was attached and died), `None` ignore it (no
/// collector: none yet, or it detached; or its start trigger has not fired).
#[inline(always)]
pub fn recording(header: &Header) -> Option<bool> {
    // Relaxed: the hot path; what a new collector set up before attaching
    // (`attach_count`) the shim reads with its own orderings.
    match header.state.load(Ordering::Relaxed) {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    }
}

/// Whether the attached collector (`Header::collector_pid`) is alive. For
/// the shim's slow path only (a syscall and a read of /proc).
pub fn collector_alive(header: &Header) -> bool {
    // Acquire: pairs with the collector's claim (AcqRel).
    process_alive(header.collector_pid.load(Ordering::Acquire))
}

/// The collector's trigger fired (`Header::stop_at_pc`): the shim stops the
/// recording, as `detach` would. The collector keeps the segment until it
/// has drained (`stopped_by_shim`).
pub fn stop_at_trigger(header: &Header) {
    // AcqRel: as `detach`; a failure means the collector detached or died
    // meanwhile, which stands.
    let _ = header.state.compare_exchange(
        State::Attached as u32,
        State::Waiting as u32,
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
}

/// A vCPU met the collector's start trigger (`Header::start_at_pc`,
/// `start_ranges`): the shim starts recording, with this event (every vCPU
/// from its next). Returns whether this call started it.
pub fn start_at_trigger(header: &Header) -> bool {
    // AcqRel: as `stop_at_trigger`; a failure means the recording started
    // (another vCPU), or the collector detached or died meanwhile.
    header
        .state
        .compare_exchange(
            State::Armed as u32,
            State::Attached as u32,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Whether the shim waits for the collector's start trigger (`Armed`).
#[inline(always)]
pub fn armed(header: &Header) -> bool {
    // Relaxed: the shim's slow path, after `recording` said no; the state
    // was published with the attach (which the shim saw with Acquire).
    header.state.load(Ordering::Relaxed) == State::Armed as u32
}

/// The shim found its collector dead: it detaches it, so that it stops
/// waiting for it and counts its events lost until a collector attaches
/// (one that waited for its start trigger had nothing recorded: the shim
/// just waits for the next).
pub fn give_up_on_dead_collector(header: &Header) {
    // AcqRel: as the collector's own detach; a failure means a collector
    // attached or detached meanwhile, which stands.
    for (from, to) in [
        (State::Attached, State::Detached),
        (State::Armed, State::Waiting),
    ] {
        let _ = header.state.compare_exchange(
            from as u32,
            to as u32,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// The shim, its collector dead, drops its instrumentation: the events
/// lost from now on are not counted ([`Attached::losses_uncounted`]).
pub fn stop_counting_losses(header: &Header) {
    // Release: pairs with the next attach's swap (AcqRel).
    header.losses_uncounted.store(1, Ordering::Release);
}

// ------------------------------------------------------- the collector

/// Why a collector could not attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// A live collector (this pid) holds the segment.
    Held(u32),
    /// `Header::state` holds no state (a corrupt or foreign segment).
    BadState(u32),
}

/// What `attach` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// The state before ours.
    pub previous: State,
    /// The collector that held the segment and had died, if one did.
    pub took_over_from: Option<u32>,
    /// Since a collector died, the shim stopped counting the events it
    /// could not deliver (`stop_counting_losses`): the vCPUs'
    /// `events_lost` are a lower bound of what was missed.
    pub losses_uncounted: bool,
}

/// Makes collector `me` the segment's: the shim starts recording. A live
/// holder (`alive`) is refused; one that is between its two steps of
/// attaching or detaching is given up to `patience` tries of `wait`; a dead
/// one is taken over.
pub fn attach(
    header: &Header,
    me: u32,
    alive: impl Fn(u32) -> bool,
    mut patience: u32,
    mut wait: impl FnMut(),
) -> Result<Attached, AttachError> {
    loop {
        // Acquire (both): a holder's claim and state are seen whole.
        let holder = header.collector_pid.load(Ordering::Acquire);
        let previous = State::of(header).map_err(AttachError::BadState)?;
        if holder != 0 && holder != me && alive(holder) {
            if matches!(previous, State::Attached | State::Armed) || patience == 0 {
                return Err(AttachError::Held(holder));
            }
            patience -= 1;
            wait();
            continue;
        }
        // AcqRel: our claim must be visible before the attach_count and
        // state stores below; we must see the holder's last stores.
        if header
            .collector_pid
            .compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        // AcqRel: ordered after the claim, before the state.
        header.attach_count.fetch_add(1, Ordering::AcqRel);
        // AcqRel: after the shim's store (Release); before our state, after
        // which the shim counts again.
        let losses_uncounted = header.losses_uncounted.swap(0, Ordering::AcqRel) == 1;
        ensure_attached(header).map_err(AttachError::BadState)?;
        let took_over_from =
            (matches!(previous, State::Attached | State::Armed) && holder != 0 && holder != me)
                .then_some(holder);
        return Ok(Attached {
            previous,
            took_over_from,
            losses_uncounted,
        });
    }
}

/// Sets `state` to `Attached` if it is not (the caller holds
/// `collector_pid`), or to `Armed` when the collector set a start trigger
/// (`Request::start_at_pc`, `start_ranges`). Returns whether it had to
/// change it (a shim that decided the collector was gone), or the value
/// that is no state.
pub fn ensure_attached(header: &Header) -> Result<bool, u32> {
    // Relaxed: written by the caller itself, before.
    let armed = header.start_armed.load(Ordering::Relaxed) == 1
        || header.start_ranges_len.load(Ordering::Relaxed) > 0;
    let target = if armed { State::Armed } else { State::Attached };
    let mut changed = false;
    loop {
        match State::of(header)? {
            State::Attached | State::Armed => return Ok(changed),
            st => {
                changed = true;
                // AcqRel: our collector_pid and attach_count stores must be
                // visible to a shim that sees Attached.
                if header
                    .state
                    .compare_exchange(
                        st as u32,
                        target as u32,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    return Ok(changed);
                }
            }
        }
    }
}

/// The attached collector, alive, finds the shim gave up on it
/// (`Detached`): it takes the segment back. A `Waiting` state (the shim
/// stopped the recording at the collector's trigger) is left as it is.
/// Returns whether it changed the state, or the value that is no state.
pub fn reclaim(header: &Header) -> Result<bool, u32> {
    State::of(header)?;
    // AcqRel: as `ensure_attached`.
    Ok(header
        .state
        .compare_exchange(
            State::Detached as u32,
            State::Attached as u32,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok())
}

/// Whether a live collector other than `me` holds the segment (`attach`
/// would refuse it): for a caller to check before it does anything
/// irreversible.
pub fn held_by_other(header: &Header, me: u32, alive: impl Fn(u32) -> bool) -> Option<u32> {
    let holder = header.collector_pid.load(Ordering::Acquire);
    (matches!(State::of(header), Ok(State::Attached | State::Armed))
        && holder != 0
        && holder != me
        && alive(holder))
    .then_some(holder)
}

/// Collector `me` stops the recording: the shim records nothing from now
/// on (and drops its instrumentation, see `options::Idle`). It still holds
/// the segment: the shim publishes what it gathered, waiting for room if a
/// ring is full, until `release`.
pub fn detach(header: &Header, me: u32) {
    if header.collector_pid.load(Ordering::Acquire) != me {
        return; // not ours (any more)
    }
    // AcqRel: everything we did happens before a next collector's attach.
    // From Armed too: a window whose start trigger never fired.
    for from in [State::Attached, State::Armed] {
        let _ = header.state.compare_exchange(
            from as u32,
            State::Waiting as u32,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// What a collector asks of the shim for its capture.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// What to record (`None`: the shim's `events` option).
    pub events: Option<EventSet>,
    /// What a full ring does (`None`: the shim's `overflow` option).
    pub overflow: Option<Overflow>,
    /// Stop the recording as a vCPU is about to execute the instruction at
    /// this address (`attach --until-pc`).
    pub stop_at_pc: Option<u64>,
    /// Stop it after the first I/O access inside one of these (first, last)
    /// physical ranges (`attach --until-device`); at most
    /// `layout::MAX_STOP_RANGES` are kept.
    pub stop_ranges: &'a [(u64, u64)],
    /// Start the recording only as a vCPU is about to execute the
    /// instruction at this address (`attach --from-pc`).
    pub start_at_pc: Option<u64>,
    /// Start it with the first I/O access inside one of these (first, last)
    /// physical ranges (`attach --from-device`); at most
    /// `layout::MAX_STOP_RANGES` are kept.
    pub start_ranges: &'a [(u64, u64)],
}

/// The collector, before it attaches: writes its `Request` (every field,
/// so nothing of an earlier collector's stays).
pub fn set_request(header: &Header, request: &Request) {
    // Relaxed (all): the attach that follows publishes them (its stores
    // are AcqRel, the shim reads the state with Acquire).
    header
        .requested_events
        .store(request.events.map_or(0, |e| e.bits()), Ordering::Relaxed);
    let overflow = match request.overflow {
        None => 0,
        Some(Overflow::Block) => 1,
        Some(Overflow::Drop) => 2,
    };
    header.requested_overflow.store(overflow, Ordering::Relaxed);
    store_trigger(
        (&header.stop_armed, &header.stop_at_pc),
        (&header.stop_ranges, &header.stop_ranges_len),
        request.stop_at_pc,
        request.stop_ranges,
    );
    store_trigger(
        (&header.start_armed, &header.start_at_pc),
        (&header.start_ranges, &header.start_ranges_len),
        request.start_at_pc,
        request.start_ranges,
    );
}

/// `set_request`'s writing of one trigger (where the recording stops, or
/// where it starts): the instruction address `pc` into (armed flag,
/// address), and the I/O `ranges`, as many as fit, into (slots, how many
/// hold).
fn store_trigger(
    (armed, at_pc): (&AtomicU32, &AtomicU64),
    (slots, len): (&[[AtomicU64; 2]], &AtomicU32),
    pc: Option<u64>,
    ranges: &[(u64, u64)],
) {
    // Relaxed (all): as in `set_request`.
    at_pc.store(pc.unwrap_or(0), Ordering::Relaxed);
    armed.store(pc.is_some() as u32, Ordering::Relaxed);
    let ranges = &ranges[..ranges.len().min(slots.len())];
    for (slot, &(first, last)) in slots.iter().zip(ranges) {
        slot[0].store(first, Ordering::Relaxed);
        slot[1].store(last, Ordering::Relaxed);
    }
    len.store(ranges.len() as u32, Ordering::Relaxed);
}

/// The shim: the events the collector asked for (`None`: its own option).
pub fn requested_events(header: &Header) -> Option<EventSet> {
    // Relaxed: written before the attach, which the shim saw with Acquire.
    let events = EventSet::from_bits(header.requested_events.load(Ordering::Relaxed));
    (!events.is_empty()).then_some(events)
}

/// The shim: what the collector wants a full ring to do (`None`: its own
/// option). Read at every event: a plain load of a header word.
#[inline(always)]
pub fn requested_overflow(header: &Header) -> Option<Overflow> {
    // Relaxed: as `requested_events`.
    match header.requested_overflow.load(Ordering::Relaxed) {
        1 => Some(Overflow::Block),
        2 => Some(Overflow::Drop),
        _ => None,
    }
}

/// The shim: the address the collector wants the recording stopped at.
pub fn requested_stop_pc(header: &Header) -> Option<u64> {
    // Relaxed: as `requested_events`.
    (header.stop_armed.load(Ordering::Relaxed) == 1)
        .then(|| header.stop_at_pc.load(Ordering::Relaxed))
}

/// The shim: the address the collector wants the recording started at.
pub fn requested_start_pc(header: &Header) -> Option<u64> {
    // Relaxed: as `requested_events`.
    (header.start_armed.load(Ordering::Relaxed) == 1)
        .then(|| header.start_at_pc.load(Ordering::Relaxed))
}

/// Whether an I/O access at `paddr` is one the collector wants the
/// recording stopped after (`Header::stop_ranges`, `attach --until-device`).
#[inline(always)]
pub fn hits_stop_range(header: &Header, paddr: u64) -> bool {
    in_ranges(&header.stop_ranges, &header.stop_ranges_len, paddr)
}

/// Whether an I/O access at `paddr` is one the collector wants the
/// recording started with (`Header::start_ranges`, `attach --from-device`).
pub fn hits_start_range(header: &Header, paddr: u64) -> bool {
    in_ranges(&header.start_ranges, &header.start_ranges_len, paddr)
}

/// Whether the collector wants the recording started by an I/O access.
pub fn start_by_access(header: &Header) -> bool {
    // Relaxed: written before the attach, which the shim saw with Acquire.
    header.start_ranges_len.load(Ordering::Relaxed) > 0
}

#[inline(always)]
fn in_ranges(slots: &[[AtomicU64; 2]], len: &AtomicU32, paddr: u64) -> bool {
    // Relaxed: written before the attach, which the shim saw with Acquire.
    let n = len.load(Ordering::Relaxed) as usize;
    slots[..n.min(slots.len())].iter().any(|[first, last]| {
        (first.load(Ordering::Relaxed)..=last.load(Ordering::Relaxed)).contains(&paddr)
    })
}

/// Whether the shim stopped the recording of collector `me` at its trigger
/// (`stop_at_trigger`): `me` holds the segment, and it is `Waiting`.
pub fn stopped_by_shim(header: &Header, me: u32) -> bool {
    // Acquire (both): as `State::of`.
    header.collector_pid.load(Ordering::Acquire) == me && State::of(header) == Ok(State::Waiting)
}

/// Collector `me`, detached, lets the segment go: a producer waiting on a
/// full ring gives up instead of waiting for it.
pub fn release(header: &Header, me: u32) {
    let _ = header
        .collector_pid
        .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire);
}

/// Whether a collector drains the rings: one is attached, or has detached
/// and not yet released the segment. A shim with a full ring waits for room
/// only then (`overflow=block`).
pub fn draining(header: &Header) -> bool {
    // Acquire (both): as `State::of`.
    match State::of(header) {
        Ok(State::Attached | State::Armed) => true,
        Ok(State::Waiting) => header.collector_pid.load(Ordering::Acquire) != 0,
        _ => false,
    }
}

// -------------------------------------------------------------- both

/// Whether process `pid` is alive: it exists and is not a zombie (a killed
/// collector not yet reaped by its parent is gone all the same).
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // Safety: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    // EPERM: it exists but is not ours; it is alive, unless a zombie.
    !matches!(proc_state(pid), Some('Z' | 'X'))
}

/// The state letter in /proc/<pid>/stat (None when unreadable).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may contain anything, so look after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;

    fn header(mem: &mut [u64]) -> &mut Header {
        // Safety: `mem` is a whole segment of u64s (aligned, longer than a
        // `Header`, any bytes valid for one), borrowed by the result.
        unsafe { &mut *(mem.as_mut_ptr() as *mut Header) }
    }

    fn segment() -> Vec<u64> {
        let g = Geometry {
            n_vcpus: 1,
            event_ring_bytes: 8192,
            meta_ring_bytes: 8192,
        };
        let mut mem = vec![0u64; g.segment_bytes().unwrap() as usize / 8];
        header(&mut mem).initialise(g, 0, "");
        mem
    }

    #[test]
    fn attach_detach_and_take_over() {
        let mut mem = segment();
        let h = header(&mut mem);
        assert_eq!(recording(h), None, "nothing before an attach");
        let a = attach(h, 10, |_| true, 0, || {}).unwrap();
        assert_eq!((a.previous, a.took_over_from), (State::Waiting, None));
        assert_eq!(recording(h), Some(true));
        assert_eq!(h.attach_count.load(Ordering::Relaxed), 1);
        // A live holder is refused; a dead one is taken over.
        assert_eq!(
            attach(h, 11, |_| true, 3, || {}),
            Err(AttachError::Held(10))
        );
        assert_eq!(held_by_other(h, 11, |_| true), Some(10));
        let a = attach(h, 11, |_| false, 0, || {}).unwrap();
        assert_eq!((a.previous, a.took_over_from), (State::Attached, Some(10)));
        assert_eq!(h.attach_count.load(Ordering::Relaxed), 2);
        // Only the holder detaches.
        detach(h, 10);
        release(h, 10);
        assert_eq!(recording(h), Some(true));
        detach(h, 11);
        assert_eq!(recording(h), None, "nothing is recorded until an attach");
        assert!(draining(h), "detached, not yet released");
        release(h, 11);
        assert!(!draining(h));
        assert_eq!(h.collector_pid.load(Ordering::Relaxed), 0);
        assert_eq!(held_by_other(h, 12, |_| true), None);
    }

    #[test]
    fn a_request_replaces_the_one_before() {
        let mut mem = segment();
        let h = header(&mut mem);
        let events = EventSet::parse("mmio").unwrap();
        set_request(
            h,
            &Request {
                events: Some(events),
                overflow: Some(Overflow::Drop),
                stop_at_pc: Some(0),
                stop_ranges: &[(0x10, 0x1f), (0x40, 0x40)],
                start_at_pc: Some(0x80),
                start_ranges: &[(0x100, 0x1ff)],
            },
        );
        assert_eq!(requested_events(h), Some(events));
        assert_eq!(requested_overflow(h), Some(Overflow::Drop));
        assert_eq!(requested_stop_pc(h), Some(0), "address 0 is an address");
        assert!(hits_stop_range(h, 0x1f) && hits_stop_range(h, 0x40));
        assert!(!hits_stop_range(h, 0x20));
        assert_eq!(requested_start_pc(h), Some(0x80));
        assert!(start_by_access(h) && hits_start_range(h, 0x100) && !hits_start_range(h, 0x10));
        set_request(h, &Request::default());
        assert_eq!((requested_events(h), requested_stop_pc(h)), (None, None));
        assert_eq!(requested_overflow(h), None);
        assert!(!hits_stop_range(h, 0x10));
        assert_eq!(requested_start_pc(h), None);
        assert!(!start_by_access(h));
    }

    #[test]
    fn a_start_trigger_arms_the_attach_and_the_shim_starts_the_recording() {
        let mut mem = segment();
        let h = header(&mut mem);
        set_request(
            h,
            &Request {
                start_at_pc: Some(0x80),
                ..Request::default()
            },
        );
        attach(h, 10, |_| true, 0, || {}).unwrap();
        assert_eq!(State::of(h), Ok(State::Armed));
        assert_eq!(recording(h), None, "nothing recorded before the trigger");
        assert!(armed(h) && draining(h) && !stopped_by_shim(h, 10));
        assert_eq!(held_by_other(h, 11, |_| true), Some(10));
        stop_at_trigger(h);
        assert_eq!(State::of(h), Ok(State::Armed), "no stop before the start");
        assert!(start_at_trigger(h));
        assert!(!start_at_trigger(h), "once");
        assert_eq!(recording(h), Some(true));
        assert_eq!(ensure_attached(h), Ok(false));
        // A window whose trigger never fired detaches all the same.
        let mut mem = segment();
        let h = header(&mut mem);
        set_request(
            h,
            &Request {
                start_ranges: &[(0x100, 0x1ff)],
                ..Request::default()
            },
        );
        attach(h, 10, |_| true, 0, || {}).unwrap();
        assert!(armed(h));
        detach(h, 10);
        assert_eq!(State::of(h), Ok(State::Waiting));
    }

    #[test]
    fn the_shim_stops_at_the_trigger_and_the_collector_finishes() {
        let mut mem = segment();
        let h = header(&mut mem);
        attach(h, 10, |_| true, 0, || {}).unwrap();
        assert!(!stopped_by_shim(h, 10));
        stop_at_trigger(h);
        assert_eq!(recording(h), None);
        assert!(stopped_by_shim(h, 10) && !stopped_by_shim(h, 11));
        assert!(draining(h), "the collector still drains");
        release(h, 10);
        assert!(!draining(h) && !stopped_by_shim(h, 10));
    }

    #[test]
    fn the_shim_gives_up_and_the_collector_comes_back() {
        let mut mem = segment();
        let h = header(&mut mem);
        attach(h, 10, |_| true, 0, || {}).unwrap();
        give_up_on_dead_collector(h);
        assert_eq!(State::of(h), Ok(State::Detached));
        assert_eq!(reclaim(h), Ok(true));
        assert_eq!(reclaim(h), Ok(false));
        give_up_on_dead_collector(h);
        assert_eq!(ensure_attached(h), Ok(true));
        assert_eq!(ensure_attached(h), Ok(false));
        stop_at_trigger(h);
        assert_eq!(reclaim(h), Ok(false), "a stop at the trigger stands");
        h.state.store(7, Ordering::Relaxed);
        assert_eq!(
            attach(h, 12, |_| false, 0, || {}),
            Err(AttachError::BadState(7))
        );
    }

    #[test]
    fn a_holder_between_its_steps_is_waited_for() {
        let mut mem = segment();
        let h = header(&mut mem);
        // Claimed, not yet attached: a live holder gets `patience` waits.
        h.collector_pid.store(10, Ordering::Relaxed);
        let mut waits = 0;
        assert_eq!(
            attach(h, 11, |_| true, 2, || waits += 1),
            Err(AttachError::Held(10))
        );
        assert_eq!(waits, 2);
    }

    #[test]
    fn process_alive_knows_the_living_and_the_absent() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(0));
        assert!(!process_alive(i32::MAX as u32));
    }
}
