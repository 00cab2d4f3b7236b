/// The messages of the membership protocol. Each travels in an ``Envelope`` that names its
/// sender, so the receiver can answer and learns the sender is alive.
public enum MembershipMessage: Hashable, Sendable {
    /// A direct probe. `target` is who the prober thinks it is probing (it may be a former
    /// generation of the receiver; the receiver acks anyway and its envelope corrects that).
    case ping(seq: UInt64, target: MemberID, updates: [MemberUpdate])
    /// The answer to a ping, direct or relayed for an indirect probe.
    case ack(seq: UInt64, updates: [MemberUpdate])
    /// Lifeguard: the relay of an indirect probe got no ack in time. It tells the prober that
    /// the relay itself is fine, so a silent target, not the prober, is to blame.
    case nack(seq: UInt64, updates: [MemberUpdate])
    /// Ask the receiver to probe `target` and relay the answer under `seq`.
    case pingRequest(seq: UInt64, target: Member, updates: [MemberUpdate])
    /// Full-state exchange: on join with a seed, and periodically with a random member to
    /// heal partitions. With `wantsReply` the receiver answers with its own full state.
    case sync(members: [Member], wantsReply: Bool)
    /// Updates pushed at once to every member: deaths, departures and refutations, which are
    /// rare and decisive, so they are not left to piggybacking alone.
    case announce(updates: [MemberUpdate])

    public var updates: [MemberUpdate] {
        switch self {
        case .ping(_, _, let updates), .ack(_, let updates), .nack(_, let updates),
             .pingRequest(_, _, let updates), .announce(let updates):
            updates
        case .sync:
            []
        }
    }
}

/// A message and its sender's own entry (identity, addresses, incarnation).
public struct Envelope: Hashable, Sendable {
    public var from: Member
    public var message: MembershipMessage

    public init(from: Member, message: MembershipMessage) {
        self.from = from
        self.message = message
    }
}
