//! The world's events and their queue order (earliest time first, then insertion order).

use std::cmp::Ordering;
use std::rc::Rc;

use buildmesh_protocol::wire::Message;

/// One published message on its way: every delivery's (time, seq, node), sorted, drawn and
/// numbered when it was published.
#[derive(Debug)]
pub(super) struct Fanout {
    pub(super) msg: Rc<Message>,
    pub(super) deliveries: Vec<(u64, u64, u32)>,
}

/// One event of the simulation.
#[derive(Debug)]
pub(super) enum Ev {
    /// The `next`th delivery of a fan-out. Only the earliest undelivered one of each message is
    /// in the queue, under its own (time, seq): the queue holds one entry per message in flight
    /// instead of one per delivery (half a million when 10,000 nodes announce in the same
    /// millisecond), and the order of events is the same as with one entry per delivery.
    Deliver {
        fan: Rc<Fanout>,
        next: u32,
    },
    Timer {
        node: u32,
        inc: u32,
    },
    BuildDone {
        node: u32,
        inc: u32,
        build: u64,
    },
    Crash {
        node: u32,
    },
    Restart {
        node: u32,
    },
    PartitionStart {
        id: u32,
    },
    Heal {
        id: u32,
    },
    Submit,
    SybilAnnounce,
}

/// An event at its virtual time; `seq` keeps insertion order among equal times.
#[derive(Debug)]
pub(super) struct Scheduled {
    pub(super) time: u64,
    pub(super) seq: u64,
    pub(super) ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
/// Reversed: the heap pops the earliest (time, seq) first.
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}
