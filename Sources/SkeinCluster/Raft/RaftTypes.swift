/// A voter or learner of a partition's Raft group: the peer address exactly as the seed
/// list spells it (the one name every node knows before anyone has spoken).
public typealias RaftNodeID = String

/// The nodes of a Raft group: voters elect and form quorums; learners receive the log but
/// never vote and never lead.
public struct RaftConfiguration: Sendable, Equatable, Hashable {
    public var voters: [RaftNodeID]
    public var learners: [RaftNodeID]

    public init(voters: [RaftNodeID], learners: [RaftNodeID] = []) {
        self.voters = Array(Set(voters)).sorted()
        self.learners = Array(Set(learners).subtracting(voters)).sorted()
    }

    public var quorum: Int { voters.count / 2 + 1 }
    public var members: [RaftNodeID] { voters + learners }
    public func isVoter(_ id: RaftNodeID) -> Bool { voters.contains(id) }
}

/// One entry of a partition's log. `term` is the epoch of the leader that appended it.
public struct RaftEntry: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// A command for the state machine (opaque bytes to Raft).
        case command = 0
        /// The empty entry a new leader appends to commit everything before its term.
        case noop = 1
        /// A new configuration (takes effect when appended, one change at a time).
        case configuration = 2
    }

    public var index: UInt64
    public var term: UInt64
    public var kind: Kind
    public var data: [UInt8]

    public init(index: UInt64, term: UInt64, kind: Kind, data: [UInt8] = []) {
        self.index = index
        self.term = term
        self.kind = kind
        self.data = data
    }

    /// The bytes an entry costs on the wire (payload plus a small header), for batching.
    public var size: Int { data.count + 24 }
}

/// What must be on disk before this node says anything that depends on it.
public struct RaftHardState: Sendable, Equatable {
    public var term: UInt64
    public var vote: RaftNodeID?
    public var commit: UInt64

    public init(term: UInt64 = 0, vote: RaftNodeID? = nil, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }
}

/// Where a snapshot ends: the last entry it includes and the configuration in force there.
public struct RaftSnapshotMeta: Sendable, Equatable {
    public var index: UInt64
    public var term: UInt64
    public var configuration: RaftConfiguration

    public init(index: UInt64, term: UInt64, configuration: RaftConfiguration) {
        self.index = index
        self.term = term
        self.configuration = configuration
    }
}

/// One Raft message between two nodes of a partition.
public struct RaftMessage: Sendable, Equatable {
    public enum Body: Sendable, Equatable {
        /// Entries after (prevIndex, prevTerm); `sentAt` is the leader's clock, echoed back
        /// so the leader can date its lease.
        case append(prevIndex: UInt64, prevTerm: UInt64, entries: [RaftEntry], commit: UInt64, sentAt: Duration)
        /// `index` is the new match on success, or the rejected prevIndex; `hint` the
        /// follower's last index (where the leader should probe next).
        case appendResponse(reject: Bool, index: UInt64, hint: UInt64, sentAt: Duration)
        case heartbeat(commit: UInt64, sentAt: Duration)
        /// `commit` is the follower's commit index: everything up to it matches the leader.
        case heartbeatResponse(commit: UInt64, sentAt: Duration)
        /// `transferTerm` is set when the candidate campaigns because the leader of that
        /// term handed leadership over (the leader gave up its lease first).
        case vote(preVote: Bool, lastIndex: UInt64, lastTerm: UInt64, transferTerm: UInt64?)
        case voteResponse(preVote: Bool, granted: Bool)
        case timeoutNow
        /// The leader offers its state machine at `meta.index`. The state itself never rides
        /// in a message: the receiving host fetches it in chunks (``snapshotRequest`` and
        /// ``snapshotChunk``) and steps this offer into Raft only once every chunk is staged.
        case snapshot(meta: RaftSnapshotMeta, sentAt: Duration)
        /// Host to host, never stepped into Raft: the follower asks for chunk `sequence` of
        /// the snapshot at (`index`, `snapshotTerm`).
        case snapshotRequest(index: UInt64, snapshotTerm: UInt64, sequence: Int)
        /// Host to host: chunk `sequence` of that snapshot, its CRC-32C, and whether it is the last.
        case snapshotChunk(index: UInt64, snapshotTerm: UInt64, sequence: Int, data: [UInt8], checksum: UInt32, last: Bool)
        /// Host to host: the leader no longer serves that snapshot (it restarted, or moved on).
        case snapshotGone(index: UInt64, snapshotTerm: UInt64)
    }

    public var partition: Int
    public var from: RaftNodeID
    public var to: RaftNodeID
    public var term: UInt64
    public var body: Body

    public init(partition: Int, from: RaftNodeID, to: RaftNodeID, term: UInt64, body: Body) {
        self.partition = partition
        self.from = from
        self.to = to
        self.term = term
        self.body = body
    }

    public var isVoteRequest: Bool {
        if case .vote = body { return true }
        return false
    }

    /// Whether the hosts exchange this message about a snapshot's chunks (Raft never sees it).
    public var isSnapshotTransfer: Bool {
        switch body {
        case .snapshotRequest, .snapshotChunk, .snapshotGone: true
        default: false
        }
    }

    /// A leader's appends and heartbeats, which may leave before its own write is durable;
    /// every other message (votes, a follower's acknowledgements) waits for the disk.
    public var canLeaveBeforeFsync: Bool {
        switch body {
        case .append, .heartbeat: true
        default: false
        }
    }
}

public enum RaftRole: String, Sendable, Equatable {
    case follower, preCandidate, candidate, leader
}

/// Timing of one Raft group. Durations are on the node's own monotonic clock, which may run
/// at most `maxDrift` fast or slow against true time.
public struct RaftConfig: Sendable, Equatable {
    /// The minimum election timeout E; the actual one is drawn from [E, 2E).
    public var electionTimeout: Duration = .milliseconds(500)
    public var heartbeatInterval: Duration = .milliseconds(100)
    /// The bound on clock rate error, as a fraction (0.01 = 1%).
    public var maxDrift: Double = 0.01
    /// Held back from the lease on top of the drift correction.
    public var leaseMargin: Duration = .milliseconds(10)
    public var maxEntriesPerAppend = 1024
    public var maxBytesPerAppend = 4 << 20
    /// Appends in flight to one follower before the leader waits for acknowledgements.
    public var maxInflight = 128
    /// A snapshot offer counts as lost when its transfer has shown no sign of life this long
    /// (``Raft/snapshotStreaming(to:now:)``); the leader then probes, and offers anew.
    public var snapshotStall: Duration = .seconds(3)
    #if DEBUG
    /// Safety rules switched off, for the tests that prove the checkers catch their absence.
    /// Debug builds only: a release build has no such switch.
    public var breaks: RaftRuleBreaks = []
    #endif

    public init() {}

    /// How long a leader may act on a quorum's acknowledgements. A follower that hears from
    /// the leader promises not to vote for E on its own clock, which is at least
    /// E/(1+ρ) of true time; a lease of L on the leader's clock is at most L/(1−ρ) of true
    /// time. So L ≤ E(1−ρ)/(1+ρ) keeps every lease inside every promise it rests on.
    public var leaseDuration: Duration {
        electionTimeout * ((1 - maxDrift) / (1 + maxDrift)) - leaseMargin
    }
}

/// What the shell must do after feeding Raft: persist (and fsync) `hardState`, `snapshot` and
/// `entries` — deleting stored entries from `entries.first.index` on first — then send
/// `messages`, apply `committed` in order, and call ``Raft/advance(_:)``. A snapshot offer among
/// `messages` is of the state machine as it stands before `committed` is applied.
public struct RaftReady: Sendable {
    public var hardState: RaftHardState?
    /// A snapshot to install: the state machine the host has staged, at this point.
    public var snapshot: RaftSnapshotMeta?
    public var entries: [RaftEntry] = []
    public var messages: [RaftMessage] = []
    public var committed: [RaftEntry] = []
    /// Whether this ready must be fsynced before its messages leave: it has entries, a
    /// snapshot, or a new term or vote. A ready that only advances the commit index and applies
    /// entries need not be (the log it applies from is already durable; after a crash the
    /// state machine re-applies from it).
    public var mustSync: Bool = false

    public var isEmpty: Bool {
        hardState == nil && snapshot == nil && entries.isEmpty && messages.isEmpty && committed.isEmpty
    }
}

/// What a node restores from its storage at start.
public struct RaftStoredState: Sendable {
    public var hardState: RaftHardState
    public var snapshot: RaftSnapshotMeta
    public var entries: [RaftEntry]
    /// The last index the state machine has applied (at least `snapshot.index`).
    public var applied: UInt64

    public init(hardState: RaftHardState, snapshot: RaftSnapshotMeta, entries: [RaftEntry], applied: UInt64) {
        self.hardState = hardState
        self.snapshot = snapshot
        self.entries = entries
        self.applied = applied
    }

    /// A group that has never run: empty log, the given configuration.
    public static func fresh(_ configuration: RaftConfiguration) -> RaftStoredState {
        RaftStoredState(hardState: RaftHardState(), snapshot: RaftSnapshotMeta(index: 0, term: 0, configuration: configuration), entries: [], applied: 0)
    }
}

/// Safety rules of Raft that a test may switch off (``RaftConfig/breaks``, debug builds only)
/// to prove that a scripted scenario or the simulation's checkers catch their absence.
public struct RaftRuleBreaks: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// Commit an earlier term's entry by counting its replicas (Figure 8, §5.4.2).
    public static let commitEarlierTermsByCount = RaftRuleBreaks(rawValue: 1 << 0)
    /// Commit what the leader alone holds, without a quorum.
    public static let commitOnLeaderAlone = RaftRuleBreaks(rawValue: 1 << 1)
    /// Grant votes without checking that the candidate's log is up to date (§5.4.1).
    public static let voteWithoutLogCheck = RaftRuleBreaks(rawValue: 1 << 2)
    /// Let a new leader change the configuration before its own no-op commits.
    public static let configurationBeforeNoop = RaftRuleBreaks(rawValue: 1 << 3)
    /// Let the leader count its own entries toward a quorum before they are durable.
    public static let countOwnEntriesBeforeFsync = RaftRuleBreaks(rawValue: 1 << 4)
}
