import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import SkeinCluster
import SkeinStore
import SkeinWorkflow
import Synchronization

/// The shell around the pure ``Membership`` machine: it feeds it the clock every few
/// milliseconds and the envelopes that arrive, and carries out what it returns. Envelopes for
/// the node whose request is being answered ride back in the answer; the others go out as
/// requests on the peer connections, and their answers are fed back in.
actor MembershipDriver {
    private var machine: Membership
    private let origin = ContinuousClock.now
    private let peers: PeerClients
    private let logger: Logger
    private let snapshot: Mutex<[Member]>
    private let transitions = Counter(label: "skein_membership_transitions_total")
    static let tickInterval: Duration = .milliseconds(10)
    /// Below the machine's stall threshold (250 ms), so a node alone never thinks it stalled.
    static let aloneTickInterval: Duration = .milliseconds(100)
    /// Told the peer address of every member that becomes dead or leaves.
    private var onDown: (@Sendable (String) -> Void)?

    func setOnDown(_ handler: @escaping @Sendable (String) -> Void) { onDown = handler }

    init(me: Member, seeds: [String], peers: PeerClients, logger: Logger, config: MembershipConfig = MembershipConfig()) {
        machine = Membership(me: me, seeds: seeds, config: config, seed: UInt64.random(in: .min ... .max), now: .zero)
        self.peers = peers
        self.logger = logger
        snapshot = Mutex([me])
    }

    /// Every known member, this node included (readable without waiting for the actor).
    nonisolated var members: [Member] { snapshot.withLock { $0 } }

    private var now: Duration { ContinuousClock.now - origin }

    /// Ticks until cancelled (graceful shutdown).
    func run() async {
        while !Task.isCancelled {
            dispatch(machine.tick(now: now), replyTo: nil)
            // A node alone has nothing to probe: a node that joins through it is answered as
            // its envelopes arrive, and the ticks speed up once it is known.
            try? await Task.sleep(for: machine.isAlone ? Self.aloneTickInterval : Self.tickInterval)
        }
    }

    /// Leaves: `left` is sent to every live member and their answers are awaited, for at most
    /// `leaveTimeout`.
    func leave(leaveTimeout: Duration = .seconds(1)) async {
        let outputs = machine.leave(now: now)
        publish()
        let sends = outputs.compactMap { if case .send(let to, let envelope) = $0 { (to, envelope) } else { nil } }
        logger.info("leaving the cluster", metadata: ["told": "\(sends.count) members"])
        await withTaskGroup(of: Void.self) { group in
            for (to, envelope) in sends {
                let peers = self.peers
                group.addTask { _ = try? await peers.connection(to: to).post(path: PeerResponder.membershipPath, body: MembershipCodec.encode([envelope])) }
            }
            let deadline = ContinuousClock.now + leaveTimeout
            group.addTask { try? await Task.sleep(until: deadline) }
            var remaining = sends.count
            while remaining > 0, ContinuousClock.now < deadline, await group.next() != nil { remaining -= 1 }
            group.cancelAll()
        }
    }

    /// Handles envelopes from one sender; returns those addressed back to it.
    func receive(_ envelopes: [Envelope], direct: Bool = true) -> [Envelope] {
        var replies: [Envelope] = []
        if direct, let sender = envelopes.first?.from.peer { peers.heardFrom(sender) }
        for envelope in envelopes {
            replies += dispatch(machine.receive(envelope, now: now), replyTo: envelope.from.peer)
        }
        return replies
    }

    @discardableResult
    private func dispatch(_ outputs: [MembershipOutput], replyTo: String?) -> [Envelope] {
        var replies: [Envelope] = []
        var outgoing: [String: [Envelope]] = [:]
        var order: [String] = []
        for output in outputs {
            switch output {
            case .send(let to, let envelope):
                if to == replyTo {
                    replies.append(envelope)
                } else {
                    if outgoing[to] == nil { order.append(to) }
                    outgoing[to, default: []].append(envelope)
                }
            case .changed(let from, let to):
                transitions.increment()
                if from?.state != to.state || from?.id != to.id {
                    logger.info("member \(to.state)", metadata: [
                        "member": "\(to.id)", "was": "\(from.map { "\($0.state)" } ?? "unknown")", "incarnation": "\(to.incarnation)"])
                    if to.state == .dead || to.state == .left { onDown?(to.peer) }
                }
            case .log(let level, let text):
                switch level {
                case .debug: logger.debug("\(text)")
                case .info: logger.info("\(text)")
                case .warning: logger.warning("\(text)")
                }
            }
        }
        for to in order {
            let batch = outgoing[to]!
            let peers = peers
            Task {
                do {
                    let answer = try await peers.connection(to: to).post(path: PeerResponder.membershipPath, body: MembershipCodec.encode(batch))
                    guard answer.status == 200 else {
                        self.logger.warning("peer refused a membership message", metadata: [
                            "peer": "\(to)", "status": "\(answer.status)", "answer": "\(String(decoding: answer.body.prefix(200), as: UTF8.self))"])
                        return
                    }
                    let replies = try MembershipCodec.decode(answer.body)
                    _ = await self.receive(replies, direct: false)
                } catch {
                    // Unreachable peers are the membership protocol's business: it notices the
                    // missing ack. The connection logs connect failures itself.
                    self.logger.trace("membership message not delivered", metadata: ["peer": "\(to)", "why": "\(error)"])
                }
            }
        }
        publish()
        return replies
    }

    private func publish() {
        let members = machine.members
        snapshot.withLock { $0 = members }
    }
}

/// The node's view of the cluster, shared by the peer port, `/v1/cluster` and shutdown.
/// The membership driver exists once the peer port is bound (its address may be port 0 in
/// tests, known only then).
final class ClusterHandle: Sendable {
    let settings: NodeSettings
    let generation: UInt64
    let auth: PeerAuth
    let traffic = PeerTraffic()
    let peers: PeerClients
    let logger: Logger
    private let driver = Mutex<MembershipDriver?>(nil)
    private let advertisedPeer = Mutex<String?>(nil)
    private let replicationDriver = Mutex<Replication?>(nil)
    private let workflowEngine = Mutex<WorkflowEngine?>(nil)

    /// The node's event loops: the client and peer ports, the peer connections and the
    /// replication actor run on them.
    let loops: any EventLoopGroup
    /// Whether ``loops`` is the node's own group (`--event-loops`), shut down as the node stops.
    let ownsLoops: Bool

    init(settings: NodeSettings, generation: UInt64, auth: PeerAuth, logger: Logger) {
        self.settings = settings
        self.generation = generation
        self.auth = auth
        self.logger = logger
        if let count = settings.eventLoops {
            loops = MultiThreadedEventLoopGroup(numberOfThreads: count)
            ownsLoops = true
        } else {
            loops = MultiThreadedEventLoopGroup.singleton
            ownsLoops = false
        }
        peers = PeerClients(auth: auth, traffic: traffic, logger: logger, loops: loops)
    }

    var membership: MembershipDriver? { driver.withLock { $0 } }
    var replication: Replication? { replicationDriver.withLock { $0 } }
    var workflows: WorkflowEngine? { workflowEngine.withLock { $0 } }

    /// Starts the workflow engine over the partitions once replication runs.
    func startWorkflows(_ workflows: [Workflow], replication: Replication) -> WorkflowEngine {
        let engine = WorkflowEngine(workflows: workflows, cluster: self, replication: replication, node: settings.name, logger: logger)
        workflowEngine.withLock { $0 = engine }
        return engine
    }

    /// This node's id in every partition's Raft group: its peer address as the seed list
    /// spells it (known once the peer port is bound).
    var raftID: RaftNodeID? { advertisedPeer.withLock { $0 } }

    /// The voters of every partition: the seed nodes, or this node alone without seeds.
    func voters(me: RaftNodeID) -> [RaftNodeID] {
        let seeds = settings.seeds.map(\.description)
        return seeds.isEmpty ? [me] : seeds
    }

    /// Starts the partitions' Raft groups once the peer port (and so this node's id) is known.
    func startReplication(store: PartitionStore) throws -> Replication {
        guard let me = raftID else { throw PeerCallError(description: "the peer port is not bound yet") }
        let voters = voters(me: me)
        var config = HostConfig()
        config.compactAfterEntries = settings.logCompactEntries
        config.compactAfterBytes = settings.logCompactBytes
        config.keepEntries = min(config.keepEntries, max(1, settings.logCompactEntries / 4))
        let created = try Replication(me: me, voters: voters, store: store, peers: peers, logger: logger,
                                      isAlive: { [weak self] peer in self?.member(peer: peer)?.state == .alive }, config: config, loop: loops.next())
        replicationDriver.withLock { $0 = created }
        logger.info(voters.contains(me) ? "replicating as a voter" : "replicating as a non-voter (not in --seeds): forwarding to leaders",
                    metadata: ["partitions": "\(store.partitions)", "voters": "\(voters.joined(separator: ","))"])
        return created
    }

    /// The member whose peer address is `peer`, if membership knows one.
    func member(peer: String) -> Member? {
        members.first { $0.peer == peer && $0.state != .dead && $0.state != .left } ?? members.first { $0.peer == peer }
    }

    func start(peerPort: Int) -> MembershipDriver {
        let peer = "\(settings.peer.host):\(peerPort)"
        let me = Member(id: MemberID(name: settings.name, generation: generation), peer: peer,
                        client: settings.listen.description, state: .alive, incarnation: 0)
        let created = MembershipDriver(me: me, seeds: settings.seeds.map(\.description), peers: peers, logger: logger)
        driver.withLock { $0 = created }
        advertisedPeer.withLock { $0 = peer }
        logger.info("peer port open", metadata: ["peer": "\(peer)", "generation": "\(generation)", "seeds": "\(settings.seeds.map(\.description).joined(separator: ","))"])
        return created
    }

    /// Every known member, this node included.
    var members: [Member] {
        if let driver = membership { return driver.members }
        return [Member(id: MemberID(name: settings.name, generation: generation), peer: settings.peer.description,
                       client: settings.listen.description, state: .alive, incarnation: 0)]
    }
}

/// A node's generation: chosen at each start, larger than any before it on this data
/// directory (the wall clock in milliseconds, or one more than the last if the clock went
/// back), and written down before the node speaks to anyone.
enum Generation {
    static func next(dataDirectory: String) throws -> UInt64 {
        let path = (dataDirectory as NSString).appendingPathComponent("generation")
        let previous = (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        let generation = max(UInt64(Date().timeIntervalSince1970 * 1000), previous + 1)
        let handle = try FileHandle(forWritingTo: { () throws -> URL in
            if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
            return URL(fileURLWithPath: path)
        }())
        defer { try? handle.close() }
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: Data("\(generation)\n".utf8))
        try handle.synchronize()
        return generation
    }
}
