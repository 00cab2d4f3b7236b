import Foundation
import Logging
import NIOCore
import NIOPosix
import SkeinCluster
import SkeinStore
import Synchronization

/// The node's replication: the deterministic ``ReplicationHost`` (the same code the
/// simulation runs) on an event loop, with its storage on the node's SQLite database
/// (``StoreBridge``), its transport on the peer connections (``RaftOutbox``) and its clock on
/// the monotonic clock. This actor only hosts: it turns async calls into the host's inputs and
/// completions, ticks the host when its next timer falls due, and watches the database file.
actor Replication {
    /// The event loop this actor runs on (its executor). Its work is short and never blocks
    /// (the group commit runs on the database's own thread); on a loop, the peers' batches
    /// and the requests read there reach it, and its messages and answers leave it, without
    /// waking another thread.
    nonisolated let loop: any EventLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }
    nonisolated let me: RaftNodeID
    nonisolated let store: PartitionStore
    nonisolated let partitionCount: Int
    let logger: Logger
    let host: ReplicationHost
    private let outbox: RaftOutbox
    private let published: Shared<[PartitionStatus]>
    private let publishedCounters = Shared(ReplicationHost.Counters())
    private let publishedPositions = Shared([ReplicationHost.LogPosition]())
    /// Every standing change, for the workflow engine (it adopts and releases on them).
    nonisolated let standingChanges: AsyncStream<[Int: Standing]>
    private let standingSink: AsyncStream<[Int: Standing]>.Continuation
    private let clock = ContinuousClock()
    private let origin: ContinuousClock.Instant

    init(me: RaftNodeID, voters: [RaftNodeID], store: PartitionStore, peers: PeerClients, logger: Logger,
         isAlive: @escaping @Sendable (RaftNodeID) -> Bool = { _ in true }, config: HostConfig = HostConfig(),
         seed: UInt64 = UInt64.random(in: .min ... .max), loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()) throws {
        self.loop = loop
        self.me = me
        self.store = store
        self.logger = logger
        self.partitionCount = store.partitions
        let origin = clock.now
        self.origin = origin
        let configuration = RaftConfiguration(voters: voters)
        let stored = try (0..<store.partitions).map { try store.load(partition: $0, configuration: configuration) }
        let outbox = RaftOutbox(me: me, partitionCount: store.partitions, peers: peers, logger: logger)
        self.outbox = outbox
        let clock = self.clock
        let host = ReplicationHost(me: me, stored: stored, config: config, seed: seed, storage: StoreBridge(store: store, loop: loop),
                                   transport: outbox, clock: { clock.now - origin }, isAlive: isAlive)
        self.host = host
        let published = Shared(host.status)
        self.published = published
        (standingChanges, standingSink) = AsyncStream.makeStream(of: [Int: Standing].self)
        let sink = standingSink
        host.onStatusChange = { status in published.value = status }
        host.onStandingChange = { changed in sink.yield(changed) }
        host.onNote = { note in Self.log(note, logger) }
        host.onRefusedAfterAnswer = { a in
            logger.critical("an entry answered at commit was refused when applied", metadata: ["partition": "\(a.partition)", "index": "\(a.index)"])
        }
        outbox.owner = self
    }

    private static func log(_ note: HostNote, _ logger: Logger) {
        switch note {
        case .leads(let p, let epoch):
            logger.info("leads partition", metadata: ["partition": "\(p)", "epoch": "\(epoch)"])
        case .stoppedLeading(let p, let epoch):
            logger.info("no longer leads partition", metadata: ["partition": "\(p)", "epoch": "\(epoch)"])
        case .handedOver(let p, let to, let why):
            logger.info("handing a partition's leadership over", metadata: ["partition": "\(p)", "to": "\(to)", "why": "\(why)"])
        case .configurationProposed(let p, let change, let index, let c):
            logger.info("configuration change proposed", metadata: [
                "partition": "\(p)", "change": "\(change)", "index": "\(index)",
                "voters": "\(c.voters.joined(separator: ","))", "learners": "\(c.learners.joined(separator: ","))"])
        case .fenced(let p, let fault, let retryIn):
            logger.error("a partition's storage failed; it is fenced here (it neither votes nor leads) until a retry succeeds", metadata: [
                "partition": "\(p)", "error": "\(fault.message)", "diskFull": "\(fault.diskFull)",
                "retryIn": "\(retryIn.map { "\($0)" } ?? "never: restart the node")"])
        case .restarted(let p):
            logger.notice("a fenced partition restarted from its storage", metadata: ["partition": "\(p)"])
        }
    }

    private var now: Duration { clock.now - origin }

    // MARK: - The loop

    /// Ticks until cancelled: each time the host's next timer falls due, and at least every
    /// ``longestSleep``, instead of on a fixed beat (an idle node wakes a few times a second).
    func run() async {
        var checked = clock.now
        while !Task.isCancelled {
            let wake = min(host.nextWake() ?? now + Self.longestSleep, now + Self.longestSleep)
            await sleep(until: origin + max(wake, now))
            host.tick()
            publishCounters()
            if clock.now - checked >= .seconds(1) {
                checked = clock.now
                checkDatabaseFile()
            }
        }
        host.shutdown()
        standingSink.finish()
    }

    static let longestSleep: Duration = .milliseconds(100)
    /// The ticker's sleep under way: cancelled to wake it early.
    private var sleeper: Task<Void, Never>?

    private func sleep(until deadline: ContinuousClock.Instant) async {
        let task = Task.detached { _ = try? await Task.sleep(until: deadline, clock: .continuous) }
        sleeper = task
        await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
        sleeper = nil
    }

    /// An input may have moved a timer earlier than the ticker's wake (a new leader's first
    /// heartbeat, an election as soon as a dead leader's promise ends): sleep again anew.
    private func wakeTicker() { sleeper?.cancel() }

    private func publishCounters() {
        let c = host.counters
        publishedCounters.value = c
        publishedPositions.value = host.positions
    }

    /// SQLite keeps writing to a database file deleted under it, and everything written is
    /// gone at the next start. A node whose file disappeared stops taking part at once (the
    /// others hold every acknowledged write) and says why.
    private func checkDatabaseFile() {
        guard !FileManager.default.fileExists(atPath: store.database.path), host.fault(partition: 0)?.fault.permanent != true else { return }
        host.storageGone(StorageFault("the database file \(store.database.path) was removed while the node ran; restart the node to rejoin with an empty data directory",
                                      permanent: true))
    }

    // MARK: - Status, without an actor hop

    /// Every partition's leader, epoch, configuration and fault, as last published.
    nonisolated var status: [PartitionStatus] { published.value }
    nonisolated func publishedLeader(partition: Int) -> RaftNodeID? { published.read { $0[partition].leader } }
    nonisolated func publishedEpoch(partition: Int) -> UInt64 { published.read { $0[partition].epoch } }
    /// The host's counters as of the last tick (at most ``longestSleep`` old).
    nonisolated var counters: ReplicationHost.Counters { publishedCounters.value }
    /// Each partition's commit and applied index here, as of the last tick.
    nonisolated var positions: [ReplicationHost.LogPosition] { publishedPositions.value }

    // MARK: - Inputs

    /// Membership declared `peer` dead: its partitions elect as soon as the vote promises end.
    func peerIsDown(_ peer: RaftNodeID) {
        host.peerIsDown(peer)
        wakeTicker()
    }

    /// Proposes `command` to `partition` and waits for its outcome (``AnswerPoint``): the
    /// answer is at commit only when the apply cannot refuse the entry. Throws a
    /// ``ReplicationError``.
    func propose(_ command: PartitionCommand, partition: Int, answer: AnswerPoint = .applied) async throws -> AppliedEntry {
        try await withCheckedThrowingContinuation { continuation in
            host.propose(command.encode(), partition: partition, answer: answer, check: command.versionCheck) { result in
                continuation.resume(with: result)
            }
        }
    }

    /// What is handed to this actor without waiting for it: a peer's Raft batch, or proposals
    /// answered through `done` (on this actor, with each command's position).
    enum Inbound: Sendable {
        case batch(RaftBatch)
        case proposals([(command: PartitionCommand, partition: Int, atCommit: Bool)],
                       done: @Sendable (Int, Result<AppliedEntry, ReplicationError>) -> Void)
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
        let roles = host.groups.map(\.role)
        host.batch {
            while true {
                let items = inbox.withLock { inbox -> [Inbound] in
                    if inbox.items.isEmpty { inbox.scheduled = false }
                    defer { inbox.items = [] }
                    return inbox.items
                }
                if items.isEmpty { break }
                for item in items {
                    switch item {
                    case .batch(let batch):
                        host.receive(batch.messages)
                    case .proposals(let commands, let done):
                        for (i, c) in commands.enumerated() {
                            host.propose(c.command.encode(), partition: c.partition, answer: c.atCommit ? .committed : .applied,
                                         check: c.command.versionCheck) { done(i, $0) }
                        }
                    }
                }
            }
        }
        // A new role has new timers (a leader's first heartbeat is due within an interval).
        if host.groups.map(\.role) != roles { wakeTicker() }
    }

    // MARK: - Waits and queries

    /// Waits until every entry of `partition` whose writer was answered at commit is applied
    /// here, so what the store says includes every write acknowledged so far.
    func caughtUp(partition p: Int) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            host.whenCaughtUp(partition: p) { continuation.resume(with: $0) }
        }
    }

    /// Whether this node owns `partition` (as ``owns(partition:)``), having first waited, if it
    /// does, until every entry answered at commit there is applied.
    func ownsCaughtUp(partition p: Int) async throws -> Bool {
        guard owns(partition: p) else { return false }
        try await caughtUp(partition: p)
        return owns(partition: p)
    }

    /// Whether this node may serve a read of `partition` now, then waits until what it has
    /// answered there at commit is applied: a read then sees every write acknowledged before it.
    func readPermissionCaughtUp(partition p: Int) async throws {
        try host.readPermission(partition: p).get()
        try await caughtUp(partition: p)
    }

    /// Whether this node owns `partition` now: it leads, holds the lease and has applied
    /// everything of earlier epochs (the workflow engine runs its instances only then).
    /// (Each of these first publishes any change, so a standing read here is never one the
    /// engine will not also be told of.)
    func owns(partition: Int) -> Bool {
        host.refresh()
        return host.standing(partition: partition).owns
    }

    func standing(partition: Int) -> Standing {
        host.refresh()
        return host.standing(partition: partition)
    }

    func standings() -> [Standing] {
        host.refresh()
        return (0..<partitionCount).map { host.standing(partition: $0) }
    }

    /// Waits until every entry this node's log of `partition` holds now is applied here, so
    /// the store's view of the partition includes any write whose outcome was unknown. False
    /// if this node stopped leading the partition in this epoch meanwhile, or after `limit`.
    func settle(partition p: Int, limit: Duration = .seconds(5)) async -> Bool {
        await withCheckedContinuation { continuation in
            host.whenSettled(partition: p, limit: limit) { continuation.resume(returning: $0) }
        }
    }

    /// This node's epoch for `partition` (its current term).
    func epoch(partition: Int) -> UInt64 { host.groups[partition].term }

    /// One move of a voter replacement on `partition`, if this node leads it.
    func advanceReplacement(_ replacement: VoterReplacement, partition: Int) throws -> ReplacementProgress {
        try host.advanceReplacement(replacement, partition: partition).get()
    }

    // MARK: - Transport

    /// Sends everything queued for `to`, in order, until the queue is empty, opening the
    /// peer's Raft stream when it is not open.
    fileprivate func drain(_ to: RaftNodeID) async {
        defer { outbox.draining.remove(to) }
        while let pending = outbox.queued.removeValue(forKey: to), !pending.isEmpty {
            for messages in RaftOutbox.batches(pending) {
                let body = RaftCodec.encode(RaftBatch(partitionCount: partitionCount, from: me, messages: messages))
                do {
                    try await outbox.peers.connection(to: to).sendRaft(body, partitionCount: partitionCount)
                } catch {
                    // Raft resends what matters; the connection logs its own failures.
                    logger.trace("raft messages not delivered", metadata: ["peer": "\(to)", "why": "\(error)"])
                }
            }
        }
    }

    fileprivate nonisolated func startDrain(_ to: RaftNodeID) {
        Task { await self.drain(to) }
    }
}

/// The host's transport onto the peer connections: what is queued for a peer leaves at once,
/// from the host's turn, when the peer's Raft stream is open; else from one task per peer
/// that opens it (and takes whatever is queued for that peer meanwhile, keeping the order).
/// Used on the replication actor's loop only.
final class RaftOutbox: ReplicationTransport {
    let me: RaftNodeID
    let partitionCount: Int
    let peers: PeerClients
    let logger: Logger
    var queued: [RaftNodeID: [RaftMessage]] = [:]
    var draining: Set<RaftNodeID> = []
    weak var owner: Replication?

    init(me: RaftNodeID, partitionCount: Int, peers: PeerClients, logger: Logger) {
        self.me = me
        self.partitionCount = partitionCount
        self.peers = peers
        self.logger = logger
    }

    func send(_ messages: [RaftMessage], to peer: RaftNodeID) {
        queued[peer, default: []] += messages
        guard !draining.contains(peer) else { return }
        if sendNow(peer) { return }
        guard let owner else { return }
        draining.insert(peer)
        owner.startDrain(peer)
    }

    /// Sends everything queued for `to` on its open Raft stream; false (and the rest still
    /// queued) when it is not open.
    private func sendNow(_ to: RaftNodeID) -> Bool {
        guard let pending = queued[to], !pending.isEmpty else {
            queued[to] = nil
            return true
        }
        guard let connection = try? peers.connection(to: to) else { return false }
        let batches = Self.batches(pending)
        for (i, messages) in batches.enumerated() {
            let body = RaftCodec.encode(RaftBatch(partitionCount: partitionCount, from: me, messages: messages))
            guard connection.trySendRaft(body) else {
                queued[to] = Array(batches[i...].joined())
                return false
            }
        }
        queued[to] = nil
        return true
    }

    /// `messages` in order, cut into batches of at most about 8 MiB (at least one message each).
    static func batches(_ messages: [RaftMessage]) -> [[RaftMessage]] {
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
}

/// The host's storage onto ``PartitionStore``: each answer hops from the database's thread to
/// the replication actor's loop, where the host runs.
final class StoreBridge: ReplicationStorage {
    let store: PartitionStore
    let loop: any EventLoop

    init(store: PartitionStore, loop: any EventLoop) {
        self.store = store
        self.loop = loop
    }

    private func onLoop<T: Sendable>(_ done: @escaping (T) -> Void) -> @Sendable (T) -> Void {
        let bound = NIOLoopBound(done, eventLoop: loop)
        let loop = self.loop
        return { value in loop.execute { bound.value(value) } }
    }

    func commit(_ writes: [PartitionWrite], done: @escaping (GroupCommitOutcome) -> Void) {
        store.commit(writes, done: onLoop(done))
    }

    func load(partition: Int, done: @escaping (Result<RaftStoredState, StorageFault>) -> Void) {
        store.load(partition: partition, done: onLoop(done))
    }

    func readChunk(view: SnapshotViewID, cursor: [UInt8], maxBytes: Int, done: @escaping (Result<SnapshotChunkRead, StorageFault>) -> Void) {
        store.readChunk(view: view, cursor: cursor, maxBytes: maxBytes, done: onLoop(done))
    }

    func stageChunk(partition: Int, sequence: Int, data: [UInt8], done: @escaping (Result<Void, StorageFault>) -> Void) {
        store.stageChunk(partition: partition, sequence: sequence, data: data, done: onLoop(done))
    }

    func discardStaged(partition: Int) { store.discardStaged(partition: partition) }

    func closeView(_ view: SnapshotViewID) { store.closeView(view) }
}

extension RaftMessage {
    /// Roughly what the message costs on the wire, for batching.
    var approximateSize: Int {
        switch body {
        case .append(_, _, let entries, _, _): 64 + entries.reduce(0) { $0 + $1.size }
        case .snapshotChunk(_, _, _, let data, _, _): 64 + data.count
        default: 64
        }
    }
}

/// A value shared across threads behind a lock, that closures can hold (a `Mutex` cannot be
/// captured).
final class Shared<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { mutex = Mutex(value) }

    var value: Value {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }

    func read<T>(_ body: (Value) -> T) -> T { mutex.withLock { body($0) } }
}
