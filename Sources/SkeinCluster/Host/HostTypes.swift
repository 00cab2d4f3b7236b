/// Why a replicated operation did not happen here, or may not have.
public enum ReplicationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// This node does not lead the partition; `leader` is who does, if anyone is known.
    /// Nothing was appended: the operation certainly did not happen.
    case notLeader(partition: Int, leader: RaftNodeID?)
    /// The entry was replaced by another leader's: it never applies.
    case lost(partition: Int)
    /// No answer within the wait: the operation may or may not have happened.
    case timedOut(partition: Int)
    /// The operation's precondition failed when it was proposed (the versioned key moved on):
    /// nothing was appended.
    case conflict(partition: Int, key: String)
    /// The partition's storage failed here and it is fenced until a retry succeeds; `full`
    /// when the disk is full. Nothing acknowledged is lost; the operation did not happen here.
    case storageFailed(partition: Int, why: String, full: Bool)

    public var description: String {
        switch self {
        case .notLeader(let p, let l): "this node does not lead partition \(p)" + (l.map { " (\($0) does)" } ?? " and no leader is known")
        case .lost(let p): "partition \(p) changed leader before the write committed; it did not happen"
        case .timedOut(let p): "partition \(p) did not commit the write in time; it may or may not have happened"
        case .conflict(let p, let key): "\(key) in partition \(p) changed meanwhile; nothing was written"
        case .storageFailed(let p, let why, let full):
            full ? "the disk is full: partition \(p) cannot write here (\(why))" : "partition \(p)'s storage failed here: \(why)"
        }
    }
}

/// A precondition decided when the entry is proposed: the command applies only if `key` is at
/// `base` (`nil`: whatever it is), and leaves it at `next`. The host refuses a proposal whose
/// base cannot match and answers at commit only when it knows the apply must accept it, so an
/// acknowledged entry is never refused when applied.
public struct VersionCheck: Sendable, Equatable {
    public var key: String
    /// The version the key must have (0: the key must not exist), or nil for an unconditional write.
    public var base: UInt64?
    public var next: UInt64

    public init(key: String, base: UInt64?, next: UInt64) {
        self.key = key
        self.base = base
        self.next = next
    }
}

/// When a proposal's writer is answered.
public enum AnswerPoint: Sendable, Equatable {
    /// Once the entry is applied here (the answer says what the apply did).
    case applied
    /// As soon as the entry is committed (durable on a majority), when its apply cannot refuse
    /// it: a command without a precondition that always applies (a key-value put), or one
    /// whose ``VersionCheck`` the host could decide at once. Otherwise at apply. Reads of the
    /// partition wait until such entries are applied (``ReplicationHost/whenCaughtUp``).
    case committed
}

/// What applying one committed entry did.
public struct AppliedEntry: Sendable, Equatable {
    public var partition: Int
    public var index: UInt64
    public var term: UInt64
    /// For a delete: whether the key existed.
    public var existed: Bool
    /// A versioned command refused because its key was not at its base version.
    public var conflict: Bool
    /// The versioned key the command touched, and its version after the apply (its version
    /// as found when refused; 0 when absent).
    public var key: String?
    public var version: UInt64

    public init(partition: Int, index: UInt64, term: UInt64, existed: Bool = false, conflict: Bool = false, key: String? = nil, version: UInt64 = 0) {
        self.partition = partition
        self.index = index
        self.term = term
        self.existed = existed
        self.conflict = conflict
        self.key = key
        self.version = version
    }
}

/// One partition's share of a group commit, in the order the storage must do it: persist the
/// hard state, install the staged snapshot, replace the log from `entries.first`, pin a view of
/// the state machine for a snapshot offer, apply `committed`, then forget the log up to
/// `compactTo`. A failure anywhere rolls back this share alone.
public struct PartitionWrite: Sendable {
    public var partition: Int
    public var hardState: RaftHardState?
    /// Install the snapshot staged for this partition (``ReplicationStorage/stageChunk``), at this point.
    public var installSnapshot: RaftSnapshotMeta?
    public var entries: [RaftEntry]
    /// Open a read view of the state machine as it stands before `committed` is applied
    /// (the state a snapshot offer in this ready stands for).
    public var openView: Bool
    public var committed: [RaftEntry]
    /// Forget stored entries up to this point (the state machine stands in for them).
    public var compactTo: RaftSnapshotMeta?
    /// Whether the write must be fsynced before it counts (``RaftReady/mustSync``).
    public var mustSync: Bool

    public init(partition: Int, hardState: RaftHardState? = nil, installSnapshot: RaftSnapshotMeta? = nil, entries: [RaftEntry] = [],
                openView: Bool = false, committed: [RaftEntry] = [], compactTo: RaftSnapshotMeta? = nil, mustSync: Bool = false) {
        self.partition = partition
        self.hardState = hardState
        self.installSnapshot = installSnapshot
        self.entries = entries
        self.openView = openView
        self.committed = committed
        self.compactTo = compactTo
        self.mustSync = mustSync
    }
}

/// A storage failure, as the host acts on it.
public struct StorageFault: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// The disk is full (clients are told 507; the write is retried once there is room).
    public var diskFull: Bool
    /// Retrying cannot help (the database file was removed, say): only a restart can.
    public var permanent: Bool

    public init(_ message: String, diskFull: Bool = false, permanent: Bool = false) {
        self.message = message
        self.diskFull = diskFull
        self.permanent = permanent
    }

    public var description: String { message }
}

/// A read view of one partition's state machine, pinned by a group commit for a snapshot.
public typealias SnapshotViewID = UInt64

/// What a group commit did: per partition, its view (when asked) and what its entries' applies
/// did, or why its share failed (and was rolled back).
public struct GroupCommitOutcome: Sendable {
    public var applied: [AppliedEntry]
    public var views: [Int: SnapshotViewID]
    public var failed: [Int: StorageFault]

    public init(applied: [AppliedEntry] = [], views: [Int: SnapshotViewID] = [:], failed: [Int: StorageFault] = [:]) {
        self.applied = applied
        self.views = views
        self.failed = failed
    }

    /// Every partition of `writes` failed with `fault` (the transaction itself did not commit).
    public static func allFailed(_ writes: [PartitionWrite], _ fault: StorageFault) -> GroupCommitOutcome {
        GroupCommitOutcome(failed: Dictionary(writes.map { ($0.partition, fault) }, uniquingKeysWith: { a, _ in a }))
    }
}

/// One chunk of a snapshot read from a view: its bytes and where the next one starts
/// (nil: this was the last).
public struct SnapshotChunkRead: Sendable {
    public var data: [UInt8]
    public var next: [UInt8]?

    public init(data: [UInt8], next: [UInt8]?) {
        self.data = data
        self.next = next
    }
}

/// The host's disk. Every call's `done` runs once, on the host's executor (the adapter hops
/// there), never inside the call. Calls are carried out in the order made: a chunk staged
/// before a group commit that installs it is written first.
public protocol ReplicationStorage: AnyObject {
    /// One group commit (one transaction, fsynced if any write asks).
    func commit(_ writes: [PartitionWrite], done: @escaping (GroupCommitOutcome) -> Void)
    /// A partition's durable state, to start its group again after a fault.
    func load(partition: Int, done: @escaping (Result<RaftStoredState, StorageFault>) -> Void)
    /// The chunk of `view` that starts at `cursor` (`[]`: the first), about `maxBytes` long.
    func readChunk(view: SnapshotViewID, cursor: [UInt8], maxBytes: Int, done: @escaping (Result<SnapshotChunkRead, StorageFault>) -> Void)
    /// Stages chunk `sequence` of the snapshot being received for `partition` (0 drops what
    /// was staged before).
    func stageChunk(partition: Int, sequence: Int, data: [UInt8], done: @escaping (Result<Void, StorageFault>) -> Void)
    /// Drops what is staged for `partition` (a transfer given up).
    func discardStaged(partition: Int)
    /// Releases a view.
    func closeView(_ view: SnapshotViewID)
}

/// The host's network: `messages` to `peer`, in order, best effort (Raft resends what matters).
public protocol ReplicationTransport: AnyObject {
    func send(_ messages: [RaftMessage], to peer: RaftNodeID)
}

/// One partition as this node sees it, for `/v1/cluster` and routing.
public struct PartitionStatus: Sendable, Equatable {
    public var id: Int
    public var leader: RaftNodeID?
    public var epoch: UInt64
    public var voters: [RaftNodeID]
    public var learners: [RaftNodeID]
    /// Why the partition is fenced here (its storage failed), if it is.
    public var fault: StorageFault?
    /// Failed writes or reloads in a row (reset by a write that succeeds).
    public var faultAttempts: Int

    public init(id: Int, leader: RaftNodeID?, epoch: UInt64, voters: [RaftNodeID], learners: [RaftNodeID], fault: StorageFault? = nil, faultAttempts: Int = 0) {
        self.id = id
        self.leader = leader
        self.epoch = epoch
        self.voters = voters
        self.learners = learners
        self.fault = fault
        self.faultAttempts = faultAttempts
    }
}

/// This node's standing in a partition: whether it leads, in which epoch, and whether it may act
/// as the owner now (lease held, earlier epochs applied).
public struct Standing: Sendable, Equatable {
    public var leads: Bool
    public var epoch: UInt64
    public var owns: Bool

    public init(leads: Bool, epoch: UInt64, owns: Bool) {
        self.leads = leads
        self.epoch = epoch
        self.owns = owns
    }
}

/// Knobs of the host.
public struct HostConfig: Sendable {
    public var raft = RaftConfig()
    /// How long a writer waits for its entry before its outcome is unknown.
    public var waitLimit: Duration = .seconds(5)
    /// Compact a partition's log past this many entries…
    public var compactAfterEntries = 20_000
    /// …or past this many bytes of entries…
    public var compactAfterBytes = 64 << 20
    /// …keeping this many applied entries for followers a little behind.
    public var keepEntries = 1_000
    /// The size a snapshot chunk aims at.
    public var chunkBytes = 1 << 20
    /// A follower asks for a chunk again after this long without it, and gives the transfer
    /// up after ``chunkRetries`` such waits in a row.
    public var chunkTimeout: Duration = .seconds(2)
    public var chunkRetries = 5
    /// A leader drops a snapshot view no follower asked anything of for this long.
    public var viewIdleLimit: Duration = .seconds(20)
    /// A fenced partition's first retry comes after this long, each next one twice as late,
    /// up to ``fenceRetryLimit``.
    public var fenceRetryFirst: Duration = .milliseconds(100)
    public var fenceRetryLimit: Duration = .seconds(10)
    /// The leadership balance runs this often (nil: never).
    public var balanceEvery: Duration? = .milliseconds(500)
    /// The most versioned keys a partition's ledger remembers before it forgets them all.
    public var ledgerCapacity = 100_000

    public init() {}
}
