/// The host of one node's Raft groups, one per partition, as a deterministic type: the node's
/// replication shell and the simulation run this same code. Inputs are peer messages,
/// proposals with their completions, ticks, and the storage's answers; outputs go to a
/// ``ReplicationStorage`` (group commits, snapshot chunks), a ``ReplicationTransport``
/// (messages per peer, in order) and the completions. Time comes from `clock`, randomness from
/// the seed; nothing else reaches in. Not thread-safe: its owner serializes every call (the
/// node's replication actor, or the simulator's one thread), and the storage answers on that
/// same executor.
///
/// What it does around the groups:
/// - **Group commit.** One write at a time: every ready that arrives while a commit runs goes
///   into the next one. A leader's appends leave before its own write (Raft §10.2.1).
/// - **Answers.** A writer is answered when its entry applies, or as soon as it commits when
///   its apply cannot refuse it (``AnswerPoint``, ``VersionCheck``, ``VersionLedger``).
/// - **Snapshots** stream in chunks the follower asks for, from a view the leader's storage
///   pins in the group commit that offers them; the follower stages them and steps the offer
///   into Raft only once every chunk is staged and checked (HostSnapshots.swift).
/// - **Compaction** by entries or bytes, carried out in the next group commit, in order with
///   every other write (HostCompaction.swift).
/// - **Storage faults** fence the partition alone: it stops voting and leading, its writers
///   are told, and it restarts from what its storage holds after a backoff (HostFencing.swift).
public final class ReplicationHost {
    public let me: RaftNodeID
    public let partitionCount: Int
    public let config: HostConfig
    /// The groups, by partition. A fenced partition's group is left as its fault found it and
    /// is not touched until the partition restarts (``isFenced(_:)``).
    public internal(set) var groups: [Raft]
    let storage: any ReplicationStorage
    let transport: any ReplicationTransport
    let clock: () -> Duration
    let isAlive: (RaftNodeID) -> Bool
    var random: DeterministicRandom

    /// Called after any input that changed a partition's leader, epoch, configuration or fault.
    public var onStatusChange: (([PartitionStatus]) -> Void)?
    /// Called with the partitions whose ``Standing`` changed (an adoption or a release is due).
    public var onStandingChange: (([Int: Standing]) -> Void)?
    /// Called when an entry answered at commit was refused when applied: never expected (the
    /// simulation fails on it), reported loudly should it happen.
    public var onRefusedAfterAnswer: ((AppliedEntry) -> Void)?
    /// What the host did that belongs in the node's log.
    public var onNote: ((HostNote) -> Void)?

    public internal(set) var status: [PartitionStatus]
    var standings: [Standing]

    // The group commit.
    var writing = false
    var batchDepth = 0
    var pumpWanted = false
    var sends: [RaftMessage] = []
    /// Compactions decided, to be carried out by the next group commit.
    var pendingCompaction: [Int: RaftSnapshotMeta] = [:]

    // Writers.
    struct WaiterKey: Hashable {
        var partition: Int
        var index: UInt64
    }
    struct Waiter {
        var term: UInt64
        var deadline: Duration
        var done: (Result<AppliedEntry, ReplicationError>) -> Void
    }
    var waiters: [WaiterKey: Waiter] = [:]
    /// Per partition, the indexes of waiters to answer at commit, in order.
    var answerAtCommit: [Int: [UInt64]] = [:]
    /// Entries answered at commit and not applied yet.
    var answeredAtCommit: Set<WaiterKey> = []
    /// Per partition, the last entry answered at commit: reads wait until it is applied.
    var answeredThrough: [Int: UInt64] = [:]
    struct CatchUp {
        var index: UInt64
        var deadline: Duration
        var done: (Result<Void, ReplicationError>) -> Void
    }
    var catchUps: [Int: [CatchUp]] = [:]
    struct Settle {
        var target: UInt64
        var term: UInt64
        var deadline: Duration
        var done: (Bool) -> Void
    }
    var settles: [Int: [Settle]] = [:]
    var ledgers: [VersionLedger]

    // Faults (HostFencing.swift).
    struct Fence {
        var fault: StorageFault
        var retryAt: Duration
        var reloading = false
    }
    var fences: [Int: Fence] = [:]
    var faultAttempts: [Int]
    var lastFaults: [Int: StorageFault] = [:]

    // Snapshots (HostSnapshots.swift).
    struct OutgoingKey: Hashable {
        var partition: Int
        var peer: RaftNodeID
    }
    var outgoing: [OutgoingKey: OutgoingSnapshot] = [:]
    var incoming: [Int: IncomingSnapshot] = [:]
    var viewUsers: [SnapshotViewID: Int] = [:]
    var transferSerial: UInt64 = 0

    // Leadership (HostLeadership.swift).
    var lastBalance: Duration = .zero
    var lastTransfer: Duration?
    var lastRoles: [RaftRole]
    var lastLeaders: [RaftNodeID?]
    var lastTerms: [UInt64]
    var lastConfigurations: [RaftConfiguration]

    /// Counters, for `/v1/cluster` and the benchmarks.
    public internal(set) var counters = Counters()
    public struct Counters: Sendable, Equatable {
        /// Group commits that fsynced, and the entries they persisted.
        public var syncedCommits = 0
        public var entriesPersisted = 0
        public var snapshotsOffered = 0
        public var snapshotsInstalled = 0
        public var snapshotBytesSent = 0
        public var snapshotBytesReceived = 0
        public var compactions = 0
        public var storageFaults = 0
        public var refusedAfterAnswer = 0

        public init() {}
    }

    /// `stored` holds every partition's durable state, in order.
    public init(me: RaftNodeID, stored: [RaftStoredState], config: HostConfig = HostConfig(), seed: UInt64,
                storage: any ReplicationStorage, transport: any ReplicationTransport,
                clock: @escaping () -> Duration, isAlive: @escaping (RaftNodeID) -> Bool = { _ in true }) {
        self.me = me
        self.partitionCount = stored.count
        self.config = config
        self.storage = storage
        self.transport = transport
        self.clock = clock
        self.isAlive = isAlive
        random = DeterministicRandom(seed: seed)
        let now = clock()
        var groups: [Raft] = []
        for (p, s) in stored.enumerated() {
            groups.append(Raft(id: me, partition: p, stored: s, config: config.raft, seed: random.next(), now: now))
        }
        self.groups = groups
        ledgers = Array(repeating: VersionLedger(), count: stored.count)
        faultAttempts = Array(repeating: 0, count: stored.count)
        lastRoles = groups.map(\.role)
        lastLeaders = groups.map(\.leader)
        lastTerms = groups.map(\.term)
        lastConfigurations = groups.map(\.configuration)
        status = groups.map { PartitionStatus(id: $0.partition, leader: $0.leader, epoch: $0.term, voters: $0.configuration.voters, learners: $0.configuration.learners) }
        standings = groups.map { _ in Standing(leads: false, epoch: 0, owns: false) }
        lastBalance = now
    }

    /// Runs `body` (several inputs) and then one pump: what they hand over shares one group
    /// commit and one batch per peer.
    public func batch(_ body: () -> Void) {
        batchDepth += 1
        body()
        batchDepth -= 1
        if batchDepth == 0, pumpWanted { pump() }
    }

    // MARK: - Inputs

    /// Timers: elections and heartbeats, writers' deadlines, snapshot transfers, fenced
    /// partitions' retries, the leadership balance.
    public func tick() {
        let now = clock()
        batch {
            for g in groups where !isFenced(g.partition) { g.tick(now: now) }
            expireWaiters(now: now)
            tickSnapshots(now: now)
            retryFences(now: now)
            if let every = config.balanceEvery, now - lastBalance >= every {
                lastBalance = now
                balanceLeadership(now: now)
            }
            pump()
        }
    }

    /// Messages from peers (those addressed to other nodes are ignored).
    public func receive(_ messages: [RaftMessage]) {
        let now = clock()
        batch {
            for m in messages where m.to == me && m.partition >= 0 && m.partition < partitionCount {
                guard !isFenced(m.partition) else { continue }
                if m.isSnapshotTransfer {
                    handleTransfer(m, now: now)
                } else if case .snapshot = m.body {
                    handleOffer(m, now: now)
                } else {
                    groups[m.partition].step(m, now: now)
                }
            }
            pump()
        }
    }

    /// Proposes `data` to `partition`; `done` is called once with what became of it. With
    /// `check`, the entry applies only if its key is at the base version: a check the host can
    /// decide now is decided now (a refusal appends nothing), and the writer is answered at
    /// commit only when the apply cannot refuse the entry.
    public func propose(_ data: [UInt8], partition p: Int, answer: AnswerPoint = .applied, check: VersionCheck? = nil,
                        done: @escaping (Result<AppliedEntry, ReplicationError>) -> Void) {
        if let fence = fences[p] {
            done(.failure(Self.fenced(p, fence.fault)))
            return
        }
        let now = clock()
        let g = groups[p]
        var atCommit = answer == .committed
        var certain = false
        if let check {
            switch ledgers[p].decide(check, term: g.term, earlierTermsApplied: g.hasAppliedTermStart) {
            case .refuse:
                done(.failure(.conflict(partition: p, key: check.key)))
                return
            case .certain: certain = true
            case .uncertain: atCommit = false
            }
        }
        guard let (index, term) = g.propose(data, now: now) else {
            done(.failure(.notLeader(partition: p, leader: g.role == .leader ? nil : g.leader)))
            return
        }
        if let check { ledgers[p].proposed(check, index: index, certain: certain) }
        waiters[WaiterKey(partition: p, index: index)] = Waiter(term: term, deadline: now + config.waitLimit, done: done)
        if atCommit { answerAtCommit[p, default: []].append(index) }
        pump()
    }

    /// Membership declared `peer` dead: its partitions elect as soon as the vote promises end.
    public func peerIsDown(_ peer: RaftNodeID) {
        let now = clock()
        batch {
            for g in groups where !isFenced(g.partition) { g.peerIsDown(peer, now: now) }
            pump()
        }
    }

    /// Calls `done` once every entry of `partition` whose writer was answered at commit is
    /// applied here (a read then sees every write acknowledged before it).
    public func whenCaughtUp(partition p: Int, done: @escaping (Result<Void, ReplicationError>) -> Void) {
        if let fence = fences[p] {
            done(.failure(Self.fenced(p, fence.fault)))
            return
        }
        guard let target = answeredThrough[p], groups[p].applied < target else {
            done(.success(()))
            return
        }
        catchUps[p, default: []].append(CatchUp(index: target, deadline: clock() + config.waitLimit, done: done))
    }

    /// Calls `done(true)` once everything this node's log of `partition` holds now is applied
    /// here (so a write whose outcome was unknown has settled either way); `false` if this
    /// node stops leading it in this epoch first, or after `limit`.
    public func whenSettled(partition p: Int, limit: Duration, done: @escaping (Bool) -> Void) {
        guard !isFenced(p) else { return done(false) }
        let g = groups[p]
        guard g.role == .leader else { return done(false) }
        guard g.applied < g.lastIndex else { return done(true) }
        settles[p, default: []].append(Settle(target: g.lastIndex, term: g.term, deadline: clock() + limit, done: done))
    }

    /// Ends every wait (the node stops): writers learn their outcome is unknown.
    public func shutdown() {
        for (key, w) in waiters { w.done(.failure(.timedOut(partition: key.partition))) }
        waiters = [:]
        for (p, list) in catchUps { for c in list { c.done(.failure(.timedOut(partition: p))) } }
        catchUps = [:]
        for (_, list) in settles { for s in list { s.done(false) } }
        settles = [:]
        for key in Array(outgoing.keys) { closeOutgoing(key) }
    }

    // MARK: - Queries

    public func isFenced(_ p: Int) -> Bool { fences[p] != nil }

    /// Where each partition's log stands here: committed, applied, and compacted through.
    public struct LogPosition: Sendable, Equatable {
        public var commit: UInt64
        public var applied: UInt64
        public var compactedThrough: UInt64
    }

    public var positions: [LogPosition] {
        groups.map { LogPosition(commit: $0.commit, applied: $0.applied, compactedThrough: $0.snapshotMeta.index) }
    }

    /// Whether this node may answer a read of `partition` from its applied state now.
    public func readPermission(partition p: Int) -> Result<Void, ReplicationError> {
        if let fence = fences[p] { return .failure(Self.fenced(p, fence.fault)) }
        let g = groups[p]
        if g.canServeReads(now: clock()) { return .success(()) }
        return .failure(.notLeader(partition: p, leader: g.role == .leader ? nil : g.leader))
    }

    /// Publishes what changed since the last input (a lease that lapsed since, say), so that
    /// what a caller reads next agrees with the events it was sent.
    public func refresh() {
        publish()
    }

    public func standing(partition p: Int) -> Standing {
        guard !isFenced(p) else { return Standing(leads: false, epoch: groups[p].term, owns: false) }
        let g = groups[p]
        return Standing(leads: g.role == .leader, epoch: g.term, owns: g.canServeReads(now: clock()))
    }

    /// The earliest time an input is due without any arriving: a group's timer, a lease that
    /// lapses (ownership changes), a fenced partition's retry, a chunk's wait, a writer's deadline.
    public func nextWake() -> Duration? {
        let now = clock()
        var next: Duration?
        func consider(_ t: Duration?) {
            guard let t else { return }
            if next == nil || t < next! { next = t }
        }
        for g in groups where !isFenced(g.partition) {
            consider(g.nextTimer)
            if g.role == .leader { consider(g.leaseExpiry(now: now)) }
        }
        for f in fences.values where !f.reloading && !f.fault.permanent { consider(f.retryAt) }
        for s in incoming.values where s.requested != nil { consider(s.requestedAt + config.chunkTimeout) }
        if let every = config.balanceEvery { consider(lastBalance + every) }
        return next
    }

    static func fenced(_ p: Int, _ fault: StorageFault) -> ReplicationError {
        .storageFailed(partition: p, why: fault.message, full: fault.diskFull)
    }

    // MARK: - The group commit

    /// Sends what can leave, and starts the next group commit if none is under way and any
    /// partition has something to write.
    public func pump() {
        guard batchDepth == 0 else {
            pumpWanted = true
            return
        }
        pumpWanted = false
        defer { flushSends() }
        publish()
        answerCommitted()
        let now = clock()
        var readies: [(Int, RaftReady)] = []
        var outgoingMessages: [RaftMessage] = []
        for g in groups where !isFenced(g.partition) {
            if g.hasReady, !g.readyNeedsStorage {
                // Only messages (heartbeats and their answers, mostly): no disk round trip.
                outgoingMessages += g.ready().messages
                g.advance(now: now)
            } else if g.hasReady, !writing {
                var r = g.ready()
                // A leader's appends and heartbeats leave before its own fsync (Raft §10.2.1):
                // its commit index counts only what it has made durable. Everything else
                // (votes, a follower's acknowledgements, snapshot offers) waits for the disk.
                outgoingMessages += r.messages.filter(\.canLeaveBeforeFsync)
                r.messages.removeAll(where: \.canLeaveBeforeFsync)
                readies.append((g.partition, r))
            } else {
                // A write is under way: new entries go into the next one, but their appends
                // leave now, so the followers' fsyncs overlap this node's write.
                outgoingMessages += g.takeMessagesThatCanLeave()
            }
        }
        send(outgoingMessages)
        guard !writing else { return }
        var writes: [PartitionWrite] = readies.map { p, r in
            PartitionWrite(partition: p, hardState: r.hardState, installSnapshot: r.snapshot, entries: r.entries,
                           openView: r.messages.contains { if case .snapshot = $0.body { true } else { false } },
                           committed: r.committed, compactTo: pendingCompaction.removeValue(forKey: p), mustSync: r.mustSync)
        }
        for (p, meta) in pendingCompaction.sorted(by: { $0.key < $1.key }) where !isFenced(p) {
            writes.append(PartitionWrite(partition: p, compactTo: meta))
        }
        pendingCompaction = [:]
        guard !writes.isEmpty else { return }
        writing = true
        storage.commit(writes) { outcome in self.committed(readies, writes: writes, outcome) }
    }

    func committed(_ readies: [(Int, RaftReady)], writes: [PartitionWrite], _ outcome: GroupCommitOutcome) {
        writing = false
        let now = clock()
        batch {
            if writes.contains(where: { $0.mustSync && outcome.failed[$0.partition] == nil }) { counters.syncedCommits += 1 }
            for w in writes {
                if let fault = outcome.failed[w.partition] {
                    if let view = outcome.views[w.partition] { storage.closeView(view) }
                    if !isFenced(w.partition) { fence(w.partition, fault, now: now) }
                    continue
                }
                guard !isFenced(w.partition) else {
                    if let view = outcome.views[w.partition] { storage.closeView(view) }
                    continue
                }
                faultAttempts[w.partition] = 0
                lastFaults[w.partition] = nil
                counters.entriesPersisted += w.entries.count
                if w.compactTo != nil { counters.compactions += 1 }
                if let meta = w.installSnapshot { installed(w.partition, meta) }
            }
            for (p, r) in readies where !isFenced(p) {
                var messages: [RaftMessage] = []
                for m in r.messages {
                    if case .snapshot(let meta, _) = m.body {
                        guard let view = outcome.views[p], offer(m, meta: meta, view: view, now: now) else { continue }
                    }
                    messages.append(m)
                }
                if let view = outcome.views[p], viewUsers[view] == nil { storage.closeView(view) }
                send(messages)
            }
            for a in outcome.applied where !isFenced(a.partition) { applied(a) }
            for (p, _) in readies where !isFenced(p) {
                groups[p].advance(now: now)
                compactIfLong(p)
                resolveWaits(p)
            }
            pump()
        }
    }

    /// What one applied entry tells its writer and the ledger.
    private func applied(_ a: AppliedEntry) {
        if let key = a.key { ledgers[a.partition].applied(key: key, index: a.index, version: a.version, capacity: config.ledgerCapacity) }
        let key = WaiterKey(partition: a.partition, index: a.index)
        if answeredAtCommit.remove(key) != nil {
            if a.conflict {
                counters.refusedAfterAnswer += 1
                onRefusedAfterAnswer?(a)
            }
            return
        }
        guard let w = waiters.removeValue(forKey: key) else { return }
        w.done(w.term == a.term ? .success(a) : .failure(.lost(partition: a.partition)))
    }

    private func resolveWaits(_ p: Int) {
        let g = groups[p]
        if var list = catchUps[p] {
            for c in list where c.index <= g.applied { c.done(.success(())) }
            list.removeAll { $0.index <= g.applied }
            catchUps[p] = list.isEmpty ? nil : list
        }
        if var list = settles[p] {
            for s in list where g.applied >= s.target || g.role != .leader || g.term != s.term {
                s.done(g.applied >= s.target && g.role == .leader && g.term == s.term)
            }
            list.removeAll { g.applied >= $0.target || g.role != .leader || g.term != $0.term }
            settles[p] = list.isEmpty ? nil : list
        }
    }

    /// Answers the writers waiting for commit whose entries this node, still leading in the
    /// term they were proposed in, has committed (a leader commits only what a majority,
    /// itself included, has made durable). The others wait for the apply, which tells.
    private func answerCommitted() {
        guard !answerAtCommit.isEmpty else { return }
        for p in Array(answerAtCommit.keys) {
            let indexes = answerAtCommit[p]!
            let g = groups[p]
            guard !isFenced(p), g.role == .leader else {
                answerAtCommit[p] = nil
                continue
            }
            var answered = 0
            for index in indexes {
                guard index <= g.commit else { break }
                answered += 1
                let key = WaiterKey(partition: p, index: index)
                guard let w = waiters[key], w.term == g.term else { continue }
                waiters[key] = nil
                answeredAtCommit.insert(key)
                answeredThrough[p] = max(answeredThrough[p] ?? 0, index)
                w.done(.success(AppliedEntry(partition: p, index: index, term: w.term)))
            }
            if answered == indexes.count {
                answerAtCommit[p] = nil
            } else if answered > 0 {
                answerAtCommit[p]!.removeFirst(answered)
            }
        }
    }

    private func expireWaiters(now: Duration) {
        for (key, w) in waiters where w.deadline <= now {
            waiters[key] = nil
            w.done(.failure(.timedOut(partition: key.partition)))
        }
        for (p, list) in catchUps where list.contains(where: { $0.deadline <= now }) {
            for c in list where c.deadline <= now { c.done(.failure(.timedOut(partition: p))) }
            catchUps[p] = list.filter { $0.deadline > now }
        }
        for (p, list) in settles where list.contains(where: { $0.deadline <= now }) {
            for s in list where s.deadline <= now { s.done(false) }
            settles[p] = list.filter { $0.deadline > now }
        }
    }

    /// Queues `messages`; the pump hands what is queued to the transport once, grouped by peer
    /// in their order (one batch per peer per pump).
    func send(_ messages: [RaftMessage]) {
        sends += messages
    }

    private func flushSends() {
        guard !sends.isEmpty else { return }
        let messages = sends
        sends = []
        var byPeer: [RaftNodeID: [RaftMessage]] = [:]
        var order: [RaftNodeID] = []
        for m in messages {
            if byPeer[m.to] == nil { order.append(m.to) }
            byPeer[m.to, default: []].append(m)
        }
        for peer in order { transport.send(byPeer[peer]!, to: peer) }
    }
}
