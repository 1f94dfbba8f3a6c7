//! Capabilities: what a transport honestly offers, so users choosing by configuration know.
//!
//! Every transport declares its [`Capabilities`] for a given endpoint, and the conformance suite
//! checks the declaration against behaviour: a transport that claims `reliable` must deliver
//! 100,000 messages in order with none lost; one that claims `peer_loss` must report a killed
//! peer as an error.

use std::fmt;

/// Which way messages can flow on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Both sides send and receive.
    Duplex,
    /// The connecting side only sends, the binding side only receives (mailslot, copydata).
    OneWay,
}

/// What the transport promises about delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Every accepted message arrives exactly once, in order, or the caller gets an error.
    Reliable,
    /// Messages may be lost, duplicated or reordered (UDP, remote mailslots).
    BestEffort,
}

/// How message boundaries are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Boundaries {
    /// The mechanism itself keeps boundaries (datagrams, rings, window messages).
    Messages,
    /// A byte stream carrying length-prefixed frames.
    FramedBytes,
}

/// How far a transport reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Processes on one host.
    Host,
    /// Processes in one desktop session (window messages).
    Session,
    /// Across hosts.
    Network,
}

/// How a listener hands out connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accept {
    /// One connection per connecting peer (sockets, pipes, shm, UDP demultiplexed by address).
    PerPeer,
    /// One receiving connection for all senders (mailslot, copydata): the first `accept`
    /// returns it; later calls fail with [`crate::ErrorKind::Unsupported`].
    Shared,
    /// One connection per connecting peer, as [`PerPeer`](Self::PerPeer), but a name belongs
    /// to a *pool* of listeners rather than to one: any number of listeners may bind the same
    /// endpoint (a broker's queue group, `nats://`) and each connecting peer reaches one of
    /// them. So binding a name another live listener holds is not
    /// [`crate::ErrorKind::AddrInUse`]: it joins the pool.
    Pooled,
}

impl Accept {
    /// Whether each connecting peer gets a connection of its own (`PerPeer` or `Pooled`).
    pub fn per_peer(self) -> bool {
        self != Accept::Shared
    }

    /// Whether a bound name is the listener's alone, so that a second bind of it fails with
    /// [`crate::ErrorKind::AddrInUse`] (all but `Pooled`).
    pub fn exclusive_names(self) -> bool {
        self != Accept::Pooled
    }
}

/// What a transport offers on one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Which way messages flow.
    pub direction: Direction,
    /// Reliable or best-effort.
    pub delivery: Delivery,
    /// Whether messages from one sender arrive in the order sent.
    pub ordered: bool,
    /// How boundaries are kept.
    pub boundaries: Boundaries,
    /// The largest message payload in bytes, on this endpoint with its options.
    pub max_message: usize,
    /// How far it reaches.
    pub reach: Reach,
    /// Whether a peer that dies is reported to the survivor as
    /// [`crate::ErrorKind::ConnectionLost`] (rather than going unnoticed).
    pub peer_loss: bool,
    /// How the listener hands out connections.
    pub accept: Accept,
}

impl Capabilities {
    /// Whether every accepted message is delivered once, in order.
    pub fn is_reliable(&self) -> bool {
        self.delivery == Delivery::Reliable && self.ordered
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}{}, {}, max {} B, reach {}{}",
            match self.direction {
                Direction::Duplex => "duplex",
                Direction::OneWay => "one-way",
            },
            match self.delivery {
                Delivery::Reliable => "reliable",
                Delivery::BestEffort => "best-effort",
            },
            if self.ordered {
                " ordered"
            } else {
                " unordered"
            },
            match self.boundaries {
                Boundaries::Messages => "messages",
                Boundaries::FramedBytes => "framed bytes",
            },
            self.max_message,
            match self.reach {
                Reach::Host => "host",
                Reach::Session => "session",
                Reach::Network => "network",
            },
            if self.peer_loss {
                ", detects peer loss"
            } else {
                ""
            },
        )
    }
}
