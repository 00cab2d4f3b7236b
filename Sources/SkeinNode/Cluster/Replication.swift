import Foundation
import Logging
import NIOCore
import NIOPosix
import SkeinCluster
import SkeinStore
import Synchronization

/// Why a replicated operation did not happen here.
enum ReplicationError: Error, CustomStringConvertible {
    /// This node does not lead the partition; `leader` is who does, if anyone is known.
    case notLeader(partition: Int, leader: RaftNodeID?)
    /// The entry was replaced by another leader's: it will never apply.
    case lost(partition: Int)
    /// No answer within the wait: the write may or may not have happened.
    case timedOut(partition: Int)
    /// The node's storage failed; it no longer takes part.
    case storageFailed(String)

    var description: String {
        switch self {
        case .notLeader(let p, let l): "this node does not lead partition \(p)" + (l.map { " (\($0) does)" } ?? " and no leader is known")
        case .lost(let p): "partition \(p) changed leader before the write committed; it did not happen"
        case .timedOut(let p): "partition \(p) did not commit the write in time; it may or may not have happened"
        case .storageFailed(let why): "this node's storage failed: \(why)"
        }
    }
}

/// Where a voter replacement stands on one partition.
enum ReplacementProgress: Sendable, Equatable {
    case done(voters: [RaftNodeID])
    case working(String)
    case refused(String)
}

/// When a proposal's writer is answered.
enum Resolution: Sendable {
    /// Once the entry is applied here (what the apply did, a conflict say, is in the answer).
    case applied
    /// As soon as the entry is committed (durable on a majority), before it is applied: for
    /// writers that know their entry cannot be refused (a workflow instance's runner, the
    /// only writer of its instance). Should the apply refuse it after all, `refused` is
    /// called. Reads of the store wait for such entries (``Replication/caughtUp(partition:)``).
    case committed(refused: @Sendable () -> Void)
}

/// One partition's public state, for `/v1/cluster` and routing.
struct PartitionStatus: Sendable {
    var id: Int
    var leader: RaftNodeID?
    var epoch: UInt64
    var voters: [RaftNodeID]
    var learners: [RaftNodeID]
}

/// The imperative shell around the node's Raft groups, one per partition: it feeds them ticks
/// (when a group's timer falls due, on a monotonic clock) and peer messages, writes what they ask to persist in
/// one SQLite transaction per round (the group commit: everything that arrived while the
/// previous fsync ran goes into the next), then sends their messages — batched per peer, in
/// order, as frames of one long-lived HTTP/2 stream per peer — and applies committed entries.
/// Writers wait until their entry is applied with the term it was proposed in, or, when they
/// ask (``Resolution/committed(refused:)``), only until this node has committed it.
actor Replication {
    /// The event loop this actor runs on (its executor). Its work is short and never blocks
    /// (the group commit runs on the database's own thread); on a loop, the peers' batches
    /// and the requests read there reach it, and its messages and answers leave it, without
    /// waking another thread.
    nonisolated let loop: any EventLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }
    let me: RaftNodeID
    let store: PartitionStore
    let peers: PeerClients
    let logger: Logger
    let groups: [Raft]
    let partitionCount: Int
    let waitLimit: Duration
    /// Whether membership sees a node alive (leadership is only handed to live voters).
    let isAlive: @Sendable (RaftNodeID) -> Bool
    private var lastTransfer: ContinuousClock.Instant?
    private let clock = ContinuousClock()
    private let origin: ContinuousClock.Instant
    private var writing = false
    private var pumpScheduled = false
    private var failed: String?
    private var waiters: [WaiterKey: Waiter] = [:]
    private var outbox: [RaftNodeID: [RaftMessage]] = [:]
    private var sending: Set<RaftNodeID> = []
    private let published: Mutex<[PartitionStatus]>
    /// Group commits that fsynced (apply-only ones skip it) and entries they persisted, for
    /// `/v1/cluster` and the benchmark's fsyncs-per-write figure.
    let commits = Atomic<Int>(0)
    let entriesPersisted = Atomic<Int>(0)
    private var lastRoles: [RaftRole]
    private var lastLeaders: [RaftNodeID?]
    private var lastTerms: [UInt64]
    private var lastConfigurations: [RaftConfiguration]

    struct WaiterKey: Hashable { var partition: Int; var index: UInt64 }
    struct Waiter {
        var term: UInt64
        var deadline: ContinuousClock.Instant
        /// Called once, on this actor, with what became of the entry.
        var resume: @Sendable (Result<AppliedEntry, any Error>) -> Void
        var refused: (@Sendable () -> Void)? = nil
    }
    /// Per partition, the indexes of entries whose writers are answered at commit, in order.
    private var answerAtCommit: [Int: [UInt64]] = [:]
    /// Entries answered at commit and not yet applied: what to call if the apply refuses one.
    private var answeredAtCommit: [WaiterKey: @Sendable () -> Void] = [:]
    /// Per partition, the last entry answered at commit: reads of the store wait until it is applied.
    private var answeredThrough: [Int: UInt64] = [:]
    private var catchUps: [Int: [CatchUp]] = [:]
    struct CatchUp {
        var index: UInt64
        var deadline: ContinuousClock.Instant
        var continuation: CheckedContinuation<Void, any Error>
    }

    init(me: RaftNodeID, voters: [RaftNodeID], store: PartitionStore, peers: PeerClients, logger: Logger,
         isAlive: @escaping @Sendable (RaftNodeID) -> Bool = { _ in true },
         waitLimit: Duration = .seconds(5), seed: UInt64 = UInt64.random(in: .min ... .max),
         loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()) throws {
        self.loop = loop
        self.me = me
        self.isAlive = isAlive
        self.store = store
        self.peers = peers
        self.logger = logger
        self.partitionCount = store.partitions
        self.waitLimit = waitLimit
        origin = clock.now
        let configuration = RaftConfiguration(voters: voters)
        var groups: [Raft] = []
        var seeds = DeterministicRandom(seed: seed)
        for p in 0..<store.partitions {
            let stored = try store.load(partition: p, configuration: configuration)
            groups.append(Raft(id: me, partition: p, stored: stored, seed: seeds.next(), now: .zero))
        }
        self.groups = groups
        lastRoles = groups.map(\.role)
        lastLeaders = groups.map(\.leader)
        lastTerms = groups.map(\.term)
        lastConfigurations = groups.map(\.configuration)
        published = Mutex(groups.map { PartitionStatus(id: $0.partition, leader: $0.leader, epoch: $0.term, voters: $0.configuration.voters, learners: $0.configuration.learners) })
    }

    private var now: Duration { clock.now - origin }

    /// Ticks until cancelled: each time a group's timer falls due (``Raft/nextTimer``), and
    /// at least every ``longestSleep`` (waiters' deadlines, the leadership balance, the check
    /// that the database file is still there), instead of on a fixed beat: an idle node wakes
    /// a few times a second, not a hundred.
    func run() async {
        var balanced = clock.now
        var checked = clock.now
        while !Task.isCancelled {
            await sleep(until: nextWake())
            let t = now
            for g in groups { g.tick(now: t) }
            expireWaiters()
            let wall = clock.now
            if wall - checked >= .seconds(1) {
                checked = wall
                checkDatabaseFile()
            }
            if wall - balanced >= .milliseconds(500) {
                balanced = wall
                balanceLeadership()
            }
            pump()
        }
        for (_, w) in waiters { w.resume(.failure(ReplicationError.timedOut(partition: 0))) }
        waiters = [:]
        for (p, waiting) in catchUps { for c in waiting { c.continuation.resume(throwing: ReplicationError.timedOut(partition: p)) } }
        catchUps = [:]
    }

    /// The longest the ticker sleeps, whatever the groups' timers say.
    static let longestSleep: Duration = .milliseconds(100)
    /// The ticker's sleep under way: cancelled to wake it early (``wakeTicker()``).
    private var sleeper: Task<Void, Never>?

    /// When the ticker should wake: the earliest group timer, at most ``longestSleep`` away.
    private func nextWake() -> ContinuousClock.Instant {
        let t = now
        var next = t + Self.longestSleep
        for g in groups {
            if let due = g.nextTimer, due < next { next = due }
        }
        return origin + max(next, t)
    }

    private func sleep(until deadline: ContinuousClock.Instant) async {
        let task = Task.detached { _ = try? await Task.sleep(until: deadline, clock: .continuous) }
        sleeper = task
        await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
        sleeper = nil
    }

    /// An input moved a timer earlier than the ticker's wake (a new leader's heartbeat, an
    /// election as soon as a dead leader's promise ends): wake it now to sleep again anew.
    private func wakeTicker() { sleeper?.cancel() }

    /// Every partition's leader and epoch, as last published.
    nonisolated var status: [PartitionStatus] { published.withLock { $0 } }

    /// The leader of `partition` as last published (at every pump), without an actor hop.
    nonisolated func publishedLeader(partition: Int) -> RaftNodeID? { published.withLock { $0[partition].leader } }

    /// Membership declared `peer` dead: its partitions elect as soon as the vote promises end.
    func peerIsDown(_ peer: RaftNodeID) {
        let t = now
        for g in groups { g.peerIsDown(peer, now: t) }
        wakeTicker()
        pump()
    }

    /// Proposes a command to `partition` and waits until it is applied here. Throws
    /// ``ReplicationError/notLeader(partition:leader:)`` when another node leads.
    /// With `resolve: .committed`, answers as soon as the entry is committed.
    func propose(_ command: PartitionCommand, partition: Int, resolve: Resolution = .applied) async throws -> AppliedEntry {
        if let failed { throw ReplicationError.storageFailed(failed) }
        let g = groups[partition]
        guard let (index, term) = g.propose(command.encode(), now: now) else {
            throw ReplicationError.notLeader(partition: partition, leader: g.role == .leader ? nil : g.leader)
        }
        let deadline = clock.now + waitLimit
        return try await withCheckedThrowingContinuation { continuation in
            var waiter = Waiter(term: term, deadline: deadline, resume: { continuation.resume(with: $0) })
            if case .committed(let refused) = resolve {
                waiter.refused = refused
                answerAtCommit[partition, default: []].append(index)
            }
            waiters[WaiterKey(partition: partition, index: index)] = waiter
            pumpSoon()
        }
    }

    /// What is handed to this actor without waiting for it: a peer's Raft batch (stepped; what
    /// it asks to persist goes into the next group commit, its answers travel on this node's
    /// own stream to the peer), or proposals answered through `done` (``add(_:done:)``).
    enum Inbound: Sendable {
        case batch(RaftBatch)
        case proposals([(command: PartitionCommand, partition: Int, atCommit: Bool)],
                       done: @Sendable (Int, Result<AppliedEntry, any Error>) -> Void)
    }

    private struct Inbox {
        var items: [Inbound] = []
        var scheduled = false
    }
    private let inbox = Mutex(Inbox())

    /// Hands `item` to this actor from any thread, without waiting: what arrives before the
    /// actor takes its turn is taken in that one turn, in order, followed by one pump (one
    /// append per follower, one group commit), instead of a task and a pump each.
    nonisolated func submit(_ item: Inbound) {
        let schedule = inbox.withLock { inbox -> Bool in
            inbox.items.append(item)
            defer { inbox.scheduled = true }
            return !inbox.scheduled
        }
        if schedule { loop.execute { self.assumeIsolated { $0.takeInbox() } } }
    }

    private func takeInbox() {
        while true {
            let items = inbox.withLock { inbox -> [Inbound] in
                if inbox.items.isEmpty { inbox.scheduled = false }
                defer { inbox.items = [] }
                return inbox.items
            }
            if items.isEmpty { break }
            let t = now
            for item in items {
                switch item {
                case .batch(let batch):
                    for m in batch.messages where m.to == me { groups[m.partition].step(m, now: t) }
                case .proposals(let commands, let done):
                    add(commands, done: done)
                }
            }
        }
        pump()
    }

    /// Proposes `commands`, each answered through `done` (called on this actor, with the
    /// command's position) once applied here, or at once if it cannot be proposed. A command
    /// with `atCommit` is answered as soon as it is committed, as with
    /// ``Resolution/committed(refused:)``: only for commands whose apply cannot refuse them.
    private func add(_ commands: [(command: PartitionCommand, partition: Int, atCommit: Bool)],
                     done: @escaping @Sendable (Int, Result<AppliedEntry, any Error>) -> Void) {
        let deadline = clock.now + waitLimit
        let t = now
        for (i, item) in commands.enumerated() {
            if let failed {
                done(i, .failure(ReplicationError.storageFailed(failed)))
                continue
            }
            let g = groups[item.partition]
            guard let (index, term) = g.propose(item.command.encode(), now: t) else {
                done(i, .failure(ReplicationError.notLeader(partition: item.partition, leader: g.role == .leader ? nil : g.leader)))
                continue
            }
            var waiter = Waiter(term: term, deadline: deadline, resume: { done(i, $0) })
            if item.atCommit {
                waiter.refused = {}
                answerAtCommit[item.partition, default: []].append(index)
            }
            waiters[WaiterKey(partition: item.partition, index: index)] = waiter
        }
    }

    /// A pump after the jobs already waiting for this actor: the proposals among them then
    /// share one append per follower and one group commit (``Raft/propose(_:now:)`` leaves
    /// its appends to the next take).
    private func pumpSoon() {
        guard !pumpScheduled else { return }
        pumpScheduled = true
        Task { self.scheduledPump() }
    }

    private func scheduledPump() {
        pumpScheduled = false
        pump()
    }

    /// Whether this node owns `partition` (as ``owns(partition:)``), having first waited, if it
    /// does, until every entry answered at commit there is applied (``caughtUp(partition:)``).
    func ownsCaughtUp(partition p: Int) async throws -> Bool {
        guard owns(partition: p) else { return false }
        try await caughtUp(partition: p)
        return owns(partition: p)
    }

    /// Whether this node may serve a read of `partition` now (``readPermission(partition:)``),
    /// then waits until what it has answered there at commit is applied: a read then sees
    /// every write acknowledged before it.
    func readPermissionCaughtUp(partition p: Int) async throws {
        _ = try readPermission(partition: p)
        try await caughtUp(partition: p)
    }

    /// Waits until every entry of `partition` whose writer was answered at commit is applied
    /// here, so what the store says includes every checkpoint acknowledged so far.
    func caughtUp(partition p: Int) async throws {
        if let failed { throw ReplicationError.storageFailed(failed) }
        guard let target = answeredThrough[p], groups[p].applied < target else { return }
        let deadline = clock.now + waitLimit
        try await withCheckedThrowingContinuation { continuation in
            catchUps[p, default: []].append(CatchUp(index: target, deadline: deadline, continuation: continuation))
        }
    }

    /// Answers the writers waiting for commit whose entries this node, still leading in the
    /// term they were proposed in, has committed. (A leader commits only what a majority,
    /// itself included, has made durable; an entry of its own term at or below its commit
    /// index is that entry.) The others wait for the apply, which says whether they were lost.
    private func answerCommitted() {
        // Only partitions with writers waiting are keys; iterating the keys' copy leaves the
        // dictionary free to change without copying it whole.
        guard !answerAtCommit.isEmpty else { return }
        for p in Array(answerAtCommit.keys) {
            let indexes = answerAtCommit[p]!
            let g = groups[p]
            guard g.role == .leader else {
                // No longer leading: the apply says whether each of them happened.
                answerAtCommit[p] = nil
                continue
            }
            var answered = 0
            for index in indexes {
                guard index <= g.commit else { break }
                answered += 1
                let key = WaiterKey(partition: p, index: index)
                guard let w = waiters[key], g.role == .leader, w.term == g.term else { continue }
                waiters[key] = nil
                answeredAtCommit[key] = w.refused ?? {}
                answeredThrough[p] = max(answeredThrough[p] ?? 0, index)
                w.resume(.success(AppliedEntry(partition: p, index: index, term: w.term, existed: false)))
            }
            if answered == indexes.count {
                answerAtCommit[p] = nil
            } else if answered > 0 {
                answerAtCommit[p]!.removeFirst(answered)
            }
        }
    }

    /// Whether this node owns `partition` now: it leads, holds the lease and has applied
    /// everything of earlier epochs (the workflow engine runs its instances only then).
    func owns(partition: Int) -> Bool {
        failed == nil && groups[partition].canServeReads(now: now)
    }

    /// This node's standing in `partition`: whether it leads, in which epoch, and whether it
    /// may act as the owner right now (lease held, earlier epochs applied).
    func standing(partition: Int) -> (leads: Bool, epoch: UInt64, owns: Bool) {
        let g = groups[partition]
        return (failed == nil && g.role == .leader, g.term, failed == nil && g.canServeReads(now: now))
    }

    /// ``standing(partition:)`` for every partition at once (one actor hop).
    func standings() -> [(leads: Bool, epoch: UInt64, owns: Bool)] {
        (0..<partitionCount).map { standing(partition: $0) }
    }

    /// Waits until every entry this node's log of `partition` holds now is applied here, so
    /// the store's view of the partition includes any write whose outcome was unknown (one
    /// that timed out may still commit). False if this node stopped leading the partition in
    /// this epoch meanwhile, or after `limit`.
    func settle(partition p: Int, limit: Duration = .seconds(5)) async -> Bool {
        let g = groups[p]
        let target = g.lastIndex
        let term = g.term
        let deadline = clock.now + limit
        while g.applied < target {
            guard failed == nil, g.role == .leader, g.term == term, clock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return true
    }

    /// This node's epoch for `partition` as last published: for labels, without an actor hop.
    nonisolated func publishedEpoch(partition: Int) -> UInt64 { published.withLock { $0[partition].epoch } }

    /// This node's epoch for `partition` (its current term).
    func epoch(partition: Int) -> UInt64 { groups[partition].term }

    /// Whether this node may answer a read of `partition` from its own table now (it leads
    /// and holds the lease); otherwise who to ask.
    func readPermission(partition: Int) throws -> RaftNodeID? {
        if let failed { throw ReplicationError.storageFailed(failed) }
        let g = groups[partition]
        if g.canServeReads(now: now) { return nil }
        throw ReplicationError.notLeader(partition: partition, leader: g.role == .leader ? nil : g.leader)
    }

    /// One move of a voter replacement on `partition`, if this node leads it: proposes the
    /// next configuration (or hands leadership away when it is the voter leaving). Safe to call
    /// again and again; each call does at most one step.
    func advanceReplacement(_ replacement: VoterReplacement, partition: Int) throws -> ReplacementProgress {
        if let failed { throw ReplicationError.storageFailed(failed) }
        let g = groups[partition]
        guard g.role == .leader else { throw ReplicationError.notLeader(partition: partition, leader: g.leader) }
        let t = now
        let step = replacement.next(
            leader: me, configuration: g.configuration, changePending: g.configurationChangePending, commit: g.commit,
            match: g.match(of: replacement.add), removeIsAlive: isAlive(replacement.remove),
            transferTargets: g.configuration.voters.filter { $0 != me && isAlive($0) })
        defer { pump() }
        switch step {
        case .done:
            return .done(voters: g.configuration.voters)
        case .wait(let why):
            return .working(why)
        case .refuse(let why):
            return .refused(why)
        case .transfer(let target):
            if g.transferee == nil {
                logger.info("handing leadership away before leaving the voters", metadata: ["partition": "\(partition)", "to": "\(target)"])
                g.transferLeadership(to: target, now: t)
            }
            return .working("\(me) leads and is being replaced: handing leadership to \(target)")
        case .propose(let configuration, let what):
            switch g.proposeConfiguration(configuration, now: t) {
            case .success(let index):
                logger.info("configuration change proposed", metadata: [
                    "partition": "\(partition)", "change": "\(what)", "index": "\(index)",
                    "voters": "\(configuration.voters.joined(separator: ","))", "learners": "\(configuration.learners.joined(separator: ","))"])
                return .working(what)
            case .failure(let why):
                return .working("\(what): not yet (\(why))")
            }
        }
    }

    /// SQLite keeps writing to a database file deleted under it, and everything written is
    /// gone at the next start. A node whose file disappeared stops taking part at once (the
    /// others hold every acknowledged write) and says why.
    private func checkDatabaseFile() {
        guard failed == nil, !FileManager.default.fileExists(atPath: store.database.path) else { return }
        storageFailed(DatabaseFileMissing(path: store.database.path))
    }

    struct DatabaseFileMissing: Error, CustomStringConvertible {
        let path: String
        var description: String { "the database file \(path) was removed while the node ran; restart the node to rejoin with an empty data directory" }
    }

    /// Spreads leadership over the live voters: a node leading at least two partitions more
    /// than some live voter hands one to it (one transfer per second per node), so leaders
    /// spread at start and move back to a node that returns.
    private func balanceLeadership() {
        guard failed == nil else { return }
        if let last = lastTransfer, clock.now - last < .seconds(1) { return }
        let voters = groups[0].configuration.voters
        guard voters.contains(me), voters.count > 1 else { return }
        var counts = Dictionary(uniqueKeysWithValues: voters.map { ($0, 0) })
        for g in groups {
            // A partition counts for the leader this node has heard from; ours only while we lead.
            if let leader = g.leader, counts[leader] != nil { counts[leader]! += 1 }
        }
        let mine = counts[me] ?? 0
        let candidates = voters.filter { $0 != me && isAlive($0) }
        guard let target = candidates.min(by: { (counts[$0]!, $0) < (counts[$1]!, $1) }),
              mine - counts[target]! >= 2,
              let group = groups.first(where: { $0.role == .leader && $0.transferee == nil }) else { return }
        lastTransfer = clock.now
        logger.info("handing a partition to a less loaded voter", metadata: [
            "partition": "\(group.partition)", "to": "\(target)", "leads": "\(mine)", "they lead": "\(counts[target]!)"])
        group.transferLeadership(to: target, now: now)
        pump()
    }

    private func expireWaiters() {
        let t = clock.now
        for (key, w) in waiters where w.deadline <= t {
            waiters[key] = nil
            w.resume(.failure(ReplicationError.timedOut(partition: key.partition)))
        }
        for (p, waiting) in catchUps where waiting.contains(where: { $0.deadline <= t }) {
            for c in waiting where c.deadline <= t { c.continuation.resume(throwing: ReplicationError.timedOut(partition: p)) }
            catchUps[p] = waiting.filter { $0.deadline > t }
        }
    }

    /// Starts the next group commit if none is under way and any partition has work.
    private func pump() {
        guard failed == nil else { return }
        publish()
        answerCommitted()
        var readies: [(Int, RaftReady)] = []
        var immediate: [RaftMessage] = []
        let t = now
        for g in groups {
            if g.hasReady, !g.readyNeedsStorage {
                // Only messages (heartbeats and their answers, mostly): no disk round trip.
                immediate += g.ready().messages
                g.advance(now: t)
            } else if g.hasReady, !writing {
                var r = g.ready()
                // A leader's appends and heartbeats may leave before its own fsync (Raft
                // §10.2.1): its commit index counts only what it has made durable. Everything
                // else (votes, a follower's acknowledgements) waits for the disk.
                immediate += r.messages.filter(\.canLeaveBeforeFsync)
                r.messages.removeAll(where: \.canLeaveBeforeFsync)
                readies.append((g.partition, r))
            } else {
                // A write is under way: new entries go into the next one, but their appends
                // leave now, so the followers' fsyncs overlap this node's write.
                immediate += g.takeMessagesThatCanLeave()
            }
        }
        if !immediate.isEmpty {
            for m in immediate { outbox[m.to, default: []].append(m) }
            startSending()
        }
        guard !readies.isEmpty else { return }
        writing = true
        let writes = readies.map { PartitionWrite(partition: $0.0, ready: $0.1) }
        // The outcome comes back straight from the writer thread to this actor's loop.
        let taken = readies
        store.commit(writes) { result in
            self.loop.execute {
                self.assumeIsolated { me in
                    switch result {
                    case .success(let r): me.committed(taken, snapshots: r.snapshots, applied: r.applied)
                    case .failure(let error): me.storageFailed(error)
                    }
                }
            }
        }
    }

    private func committed(_ readies: [(Int, RaftReady)], snapshots: [Int: [UInt8]], applied: [AppliedEntry]) {
        writing = false
        if readies.contains(where: { $0.1.mustSync }) { commits.add(1, ordering: .relaxed) }
        entriesPersisted.add(readies.reduce(0) { $0 + $1.1.entries.count }, ordering: .relaxed)
        for (p, r) in readies {
            for var m in r.messages {
                if case .snapshot(let meta, _, let sentAt) = m.body {
                    m.body = .snapshot(meta: meta, data: snapshots[p] ?? [], sentAt: sentAt)
                }
                outbox[m.to, default: []].append(m)
            }
        }
        for a in applied {
            let key = WaiterKey(partition: a.partition, index: a.index)
            if let refused = answeredAtCommit.removeValue(forKey: key) {
                if a.conflict {
                    // Never expected: its writer knew nothing else writes what it changes.
                    logger.critical("an entry answered at commit was refused when applied", metadata: ["partition": "\(a.partition)", "index": "\(a.index)"])
                    refused()
                }
                continue
            }
            guard let w = waiters.removeValue(forKey: key) else { continue }
            if w.term == a.term {
                w.resume(.success(a))
            } else {
                w.resume(.failure(ReplicationError.lost(partition: a.partition)))
            }
        }
        let t = now
        for (p, _) in readies {
            groups[p].advance(now: t)
            compactIfLong(p)
            if var waiting = catchUps[p] {
                let applied = groups[p].applied
                for c in waiting where c.index <= applied { c.continuation.resume() }
                waiting.removeAll { $0.index <= applied }
                catchUps[p] = waiting.isEmpty ? nil : waiting
            }
        }
        startSending()
        pump()
    }

    /// Sends what is queued for each peer: at once, from this turn, when the peer's Raft
    /// stream is open; else from a task that opens it (one per peer at a time, which also
    /// takes whatever is queued for that peer meanwhile, keeping the order).
    private func startSending() {
        for to in Array(outbox.keys) where !sending.contains(to) {
            if sendNow(to) { continue }
            sending.insert(to)
            Task { await self.drain(to) }
        }
    }

    /// Sends everything queued for `to` on its open Raft stream; false (and the rest still
    /// queued) when it is not open.
    private func sendNow(_ to: RaftNodeID) -> Bool {
        guard let pending = outbox[to], !pending.isEmpty else {
            outbox[to] = nil
            return true
        }
        guard let connection = try? peers.connection(to: to) else { return false }
        let batches = Self.batches(pending)
        for (i, messages) in batches.enumerated() {
            let body = RaftCodec.encode(RaftBatch(partitionCount: partitionCount, from: me, messages: messages))
            guard connection.trySendRaft(body) else {
                outbox[to] = Array(batches[i...].joined())
                return false
            }
        }
        outbox[to] = nil
        return true
    }

    /// `messages` in order, cut into batches of at most about 8 MiB (at least one message each).
    private static func batches(_ messages: [RaftMessage]) -> [[RaftMessage]] {
        var batches: [[RaftMessage]] = [[]]
        var bytes = 0
        for m in messages {
            let size = m.approximateSize
            if bytes + size > 8 << 20, !batches[batches.count - 1].isEmpty {
                batches.append([])
                bytes = 0
            }
            batches[batches.count - 1].append(m)
            bytes += size
        }
        return batches
    }

    /// Keeps each partition's log bounded: past 20,000 entries, forget all but the last
    /// 1,000 applied (the table stands in for them; a follower that needs them gets a snapshot).
    private func compactIfLong(_ p: Int) {
        let g = groups[p]
        guard g.applied > g.snapshotMeta.index + 20_000, let meta = g.compact(to: g.applied - 1_000) else { return }
        let store = self.store
        let logger = self.logger
        Task {
            do { try await store.compact(partition: p, to: meta) } catch {
                logger.error("log compaction failed", metadata: ["partition": "\(p)", "error": "\(error)"])
            }
        }
    }

    private func storageFailed(_ error: any Error) {
        writing = false
        let why = "\(error)"
        failed = why
        logger.critical("the partition log could not be written; this node stops taking part in replication", metadata: ["error": "\(why)"])
        for (_, w) in waiters { w.resume(.failure(ReplicationError.storageFailed(why))) }
        waiters = [:]
        for (_, waiting) in catchUps { for c in waiting { c.continuation.resume(throwing: ReplicationError.storageFailed(why)) } }
        catchUps = [:]
    }

    /// Sends everything queued for `to`, in order, until the queue is empty, opening the
    /// peer's Raft stream when it is not open.
    private func drain(_ to: RaftNodeID) async {
        defer { sending.remove(to) }
        while let pending = outbox.removeValue(forKey: to), !pending.isEmpty {
            for messages in Self.batches(pending) {
                let body = RaftCodec.encode(RaftBatch(partitionCount: partitionCount, from: me, messages: messages))
                do {
                    try await peers.connection(to: to).sendRaft(body, partitionCount: partitionCount)
                } catch {
                    // Raft resends what matters; the connection logs its own failures.
                    logger.trace("raft messages not delivered", metadata: ["peer": "\(to)", "why": "\(error)"])
                }
            }
        }
    }

    /// Publishes every partition's leader, epoch and configuration when any changed (it runs
    /// at every pump, so the common case — nothing changed — is one pass of comparisons).
    private func publish() {
        var changed = false
        for (i, g) in groups.enumerated() {
            let role = g.role
            if role != lastRoles[i] {
                // A new role has new timers (a leader's first heartbeat is due within an interval).
                wakeTicker()
                if role == .leader || lastRoles[i] == .leader {
                    logger.info(role == .leader ? "leads partition" : "no longer leads partition",
                                metadata: ["partition": "\(i)", "epoch": "\(g.term)"])
                }
                lastRoles[i] = role
                changed = true
            }
            if g.term != lastTerms[i] {
                lastTerms[i] = g.term
                changed = true
            }
            if g.leader != lastLeaders[i] {
                lastLeaders[i] = g.leader
                changed = true
            }
            if g.configuration != lastConfigurations[i] {
                lastConfigurations[i] = g.configuration
                changed = true
            }
        }
        guard changed else { return }
        let current = groups.map { PartitionStatus(id: $0.partition, leader: $0.leader, epoch: $0.term, voters: $0.configuration.voters, learners: $0.configuration.learners) }
        published.withLock { $0 = current }
    }
}

extension RaftMessage {
    /// Roughly what the message costs on the wire, for batching.
    var approximateSize: Int {
        switch body {
        case .append(_, _, let entries, _, _): 64 + entries.reduce(0) { $0 + $1.size }
        case .snapshot(_, let data, _): 128 + data.count
        default: 64
        }
    }
}
