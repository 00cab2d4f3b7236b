/// A node's identity: its name plus the generation it chose when it started. A node restarted
/// with the same name and address has a new, larger generation, so nobody confuses it with its
/// dead former self.
public struct MemberID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var name: String
    public var generation: UInt64

    public init(name: String, generation: UInt64) {
        self.name = name
        self.generation = generation
    }

    public static func < (a: MemberID, b: MemberID) -> Bool {
        (a.name, a.generation) < (b.name, b.generation)
    }

    public var description: String { "\(name)#\(generation)" }
}

/// What a node believes about a member.
public enum MemberState: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case alive = 0
    case suspect = 1
    case dead = 2
    case left = 3

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .dead: "dead"
        case .left: "left"
        }
    }

    /// Whether the member is still probed and counted among the live.
    public var isLive: Bool { self == .alive || self == .suspect }
}

/// One member as a node sees it, and the unit of gossip: an update carries a member's whole
/// entry, plus who originated its state (for Lifeguard's count of independent suspicions).
public struct Member: Hashable, Sendable, CustomStringConvertible {
    public var id: MemberID
    /// Peer address (host:port) of the member's HTTP/2 peer port.
    public var peer: String
    /// Client address (host:port), for people and for forwarding requests.
    public var client: String
    public var state: MemberState
    public var incarnation: UInt64

    public init(id: MemberID, peer: String, client: String, state: MemberState, incarnation: UInt64) {
        self.id = id
        self.peer = peer
        self.client = client
        self.state = state
        self.incarnation = incarnation
    }

    public var name: String { id.name }

    public var description: String { "\(id) \(state) inc=\(incarnation) peer=\(peer)" }
}

/// A gossiped statement about a member: its entry, and the name of the node that made the
/// statement (the suspector of a `suspect`, the member itself for `alive` and `left`).
public struct MemberUpdate: Hashable, Sendable {
    public var member: Member
    public var origin: String

    public init(member: Member, origin: String) {
        self.member = member
        self.origin = origin
    }
}
