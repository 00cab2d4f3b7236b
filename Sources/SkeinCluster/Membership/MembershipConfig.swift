/// Timing and sizing of the membership protocol. The defaults suit a LAN or loopback cluster
/// of 3 to a few dozen nodes; `cluster/bench membership` measures them.
public struct MembershipConfig: Sendable, Equatable {
    /// One probe per period (scaled by Lifeguard's local health multiplier).
    public var protocolPeriod: Duration = .milliseconds(150)
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    public var probeTimeout: Duration = .milliseconds(50)
    /// How many members are asked to probe indirectly (SWIM's k).
    public var indirectProbes: Int = 3
    /// Lifeguard's dynamic suspicion timeout: `suspicionMax` with no independent
    /// confirmations, falling to `suspicionMin` as `confirmationsWanted` arrive.
    public var suspicionMin: Duration = .milliseconds(550)
    public var suspicionMax: Duration = .milliseconds(1100)
    public var confirmationsWanted: Int = 2
    /// Lifeguard's local health multiplier never exceeds this.
    public var maxLocalHealth: Int = 8
    /// A tick that comes this long after the previous one means this node was not running
    /// (paused, stopped, starved): it blames itself, not its probe target, and refutes at once.
    public var stallThreshold: Duration = .milliseconds(250)
    /// Full-state exchange with a random live member, to heal what gossip missed.
    public var syncInterval: Duration = .seconds(2)
    /// Full-state exchange with a random dead member or an unanswered seed, so a cluster split
    /// by a partition heals when the partition ends.
    public var reconnectInterval: Duration = .seconds(1)
    /// Join retries: first after this, doubling up to `joinRetryMax`.
    public var joinRetryInitial: Duration = .milliseconds(200)
    public var joinRetryMax: Duration = .seconds(5)
    /// Each update is piggybacked `retransmitMultiplier * ceil(log2(n + 1))` times.
    public var retransmitMultiplier: Int = 3
    /// At most this many updates ride on one message.
    public var maxPiggyback: Int = 8
    /// Dead and departed members are forgotten after this long.
    public var deadRetention: Duration = .seconds(3600)

    public init() {}

    /// How long a relay waits before sending a nack: within the prober's indirect phase.
    var relayTimeout: Duration { (protocolPeriod - probeTimeout) * 0.8 }
}
