import Foundation

/// What the membership machine asks its shell to do.
public enum MembershipOutput: Sendable, Equatable {
    /// Deliver `envelope` to the node whose peer address is `to`.
    case send(to: String, Envelope)
    /// A member's entry changed (`from` is nil for a newly known member).
    case changed(from: Member?, to: Member)
    /// Something a person running the node should read.
    case log(MembershipLogLevel, String)
}

public enum MembershipLogLevel: Sendable, Equatable {
    case debug, info, warning
}

/// SWIM membership with the Lifeguard refinements, as a pure state machine.
///
/// Inputs: ``tick(now:)`` (the shell calls it every few milliseconds), ``receive(_:now:)`` for
/// each arriving envelope, and ``leave(now:)`` on graceful shutdown. Outputs: messages to send,
/// member changes and log lines. Time is a `Duration` since an origin the shell picks (a
/// monotonic clock); choices are drawn from a generator seeded by the shell. No I/O, no clock,
/// no randomness of its own: the simulation drives it exactly as the node does.
///
/// - Probing: each protocol period a member is probed directly (round-robin over a shuffled
///   list); on no ack within `probeTimeout`, `indirectProbes` others are asked to probe it.
///   No ack by the end of the period makes it `suspect`.
/// - Suspicion: incarnation numbers order statements about a member; a suspected member
///   refutes by raising its incarnation. The suspicion timeout shrinks as independent
///   suspicions arrive (Lifeguard), then the member is `dead`.
/// - Lifeguard local health: missed nacks, refutations and stalls raise a multiplier that
///   slows this node's probing, so a struggling node does not accuse healthy ones.
/// - Dissemination: updates ride on pings and acks; `dead`, `left` and refutations are also
///   announced to every member at once. Full state is exchanged with a seed on join, with a
///   random member periodically, and with dead members and silent seeds to heal partitions.
public struct Membership: Sendable {
    public let config: MembershipConfig
    public private(set) var me: Member
    private let seeds: [String]
    private var random: DeterministicRandom

    private var others: [String: Entry] = [:]
    private var gossip: [String: Gossip] = [:]

    private var lastTick: Duration?
    private var localHealth = 0
    private var nextSeq: UInt64 = 1

    private var probeOrder: [String] = []
    private var probe: Probe?
    private var nextProbeAt: Duration = .zero
    private var relays: [UInt64: Relay] = [:]

    private(set) public var joined: Bool
    private var joinAttempts = 0
    private var nextJoinAt: Duration = .zero
    private var nextSyncAt: Duration
    private var nextReconnectAt: Duration

    struct Entry: Sendable {
        var member: Member
        var since: Duration
        /// Names of the nodes that independently suspect the member at its current incarnation.
        var suspectors: Set<String> = []
    }

    struct Gossip: Sendable {
        var update: MemberUpdate
        var transmits: Int
    }

    struct Probe: Sendable {
        var seq: UInt64
        var target: MemberID
        var targetPeer: String
        var indirectAt: Duration
        var endsAt: Duration
        var indirectStarted = false
        var indirectSent = 0
        var nacks = 0
        var acked = false
    }

    struct Relay: Sendable {
        var originSeq: UInt64
        var originPeer: String
        var deadline: Duration
    }

    /// - Parameters:
    ///   - me: this node, `alive`, with the generation it chose at start.
    ///   - seeds: peer addresses to join through; this node's own may be among them.
    ///   - seed: the seed of this machine's choices (the shell draws it at random).
    public init(me: Member, seeds: [String], config: MembershipConfig = MembershipConfig(), seed: UInt64, now: Duration) {
        self.config = config
        var me = me
        me.state = .alive
        self.me = me
        self.seeds = Array(Set(seeds.filter { $0 != me.peer })).sorted()
        self.random = DeterministicRandom(seed: seed)
        self.joined = self.seeds.isEmpty
        self.nextProbeAt = now
        self.nextJoinAt = now
        self.nextSyncAt = now + config.syncInterval
        self.nextReconnectAt = now + config.reconnectInterval
        self.lastTick = now
    }

    // MARK: - Views

    /// Every known member, this node included, ordered by name.
    public var members: [Member] {
        ([me] + others.values.map(\.member)).sorted { $0.id < $1.id }
    }

    /// The entry for `name`, this node included.
    public func member(named name: String) -> Member? {
        name == me.name ? me : others[name]?.member
    }

    /// No seed to join and no other member known: no timer of this machine can fire until an
    /// envelope arrives, so a shell may tick it rarely.
    public var isAlone: Bool { seeds.isEmpty && others.isEmpty }

    /// Lifeguard's local health multiplier (0 is healthy).
    public var localHealthMultiplier: Int { localHealth }

    private var liveCount: Int { 1 + others.values.count { $0.member.state.isLive } }

    // MARK: - Inputs

    /// Advances time: probes, timeouts, suspicion expiry, joins and syncs.
    public mutating func tick(now: Duration) -> [MembershipOutput] {
        var out: [MembershipOutput] = []
        if let last = lastTick, now - last > config.stallThreshold, me.state == .alive {
            // We were not running: whatever we were probing was not at fault, and others may
            // have suspected us meanwhile. Start the probe afresh and refute preemptively.
            probe = nil
            nextProbeAt = now
            raiseLocalHealth()
            // Nor could we hear refutations meanwhile: give every suspect its full time again.
            for name in others.keys where others[name]!.member.state == .suspect {
                others[name]!.since = now
            }
            me.incarnation += 1
            out.append(.log(.info, "stalled for \(Self.format(now - last)); refuting any suspicion at incarnation \(me.incarnation)"))
            announce(MemberUpdate(member: me, origin: me.name), now: now, into: &out)
        }
        lastTick = now
        guard me.state == .alive else { return out }

        joinIfNeeded(now: now, into: &out)
        relayTimeouts(now: now, into: &out)
        probeStep(now: now, into: &out)
        suspicionTimeouts(now: now, into: &out)
        periodicSync(now: now, into: &out)
        reap(now: now)
        return out
    }

    /// Handles one envelope from another node.
    public mutating func receive(_ envelope: Envelope, now: Duration) -> [MembershipOutput] {
        var out: [MembershipOutput] = []
        let from = envelope.from
        if from.id == me.id { return out }
        if from.name == me.name {
            out.append(.log(.warning, "a node at \(from.peer) claims this node's name \(me.name) (generation \(from.id.generation)); ignoring it"))
            return out
        }
        if !joined {
            joined = true
            out.append(.log(.info, "joined the cluster through \(from.name) at \(from.peer)"))
        }
        apply(MemberUpdate(member: from, origin: from.name), now: now, into: &out)
        for update in envelope.message.updates {
            apply(update, now: now, into: &out)
        }
        guard me.state == .alive else { return out }

        switch envelope.message {
        case .ping(let seq, _, _):
            out.append(.send(to: from.peer, wrap(.ack(seq: seq, updates: piggyback(now: now)))))
        case .ack(let seq, _):
            if var current = probe, current.seq == seq || from.id == current.target {
                // Any ack from the member being probed proves it alive, its answer to a
                // ping relayed for someone else included: our own ack may be the one lost.
                current.acked = true
                probe = current
            }
            if probe?.seq != seq, let relay = relays.removeValue(forKey: seq) {
                out.append(.send(to: relay.originPeer, wrap(.ack(seq: relay.originSeq, updates: piggyback(now: now)))))
            }
        case .nack(let seq, _):
            if var current = probe, current.seq == seq {
                current.nacks += 1
                probe = current
            }
        case .pingRequest(let seq, let target, _):
            let relaySeq = takeSeq()
            relays[relaySeq] = Relay(originSeq: seq, originPeer: from.peer, deadline: now + config.relayTimeout)
            out.append(.send(to: target.peer, wrap(.ping(seq: relaySeq, target: target.id, updates: piggyback(now: now, buddy: target.id)))))
        case .sync(let theirs, let wantsReply):
            for member in theirs {
                apply(MemberUpdate(member: member, origin: from.name), now: now, into: &out)
            }
            if wantsReply {
                out.append(.send(to: from.peer, wrap(.sync(members: members, wantsReply: false))))
            }
        case .announce:
            break
        }
        return out
    }

    /// Leaves gracefully: this node becomes `left` and tells every live member at once. The
    /// shell sends the returned messages and waits (briefly) for them before exiting.
    public mutating func leave(now: Duration) -> [MembershipOutput] {
        guard me.state == .alive else { return [] }
        let before = me
        me.state = .left
        me.incarnation += 1
        var out: [MembershipOutput] = [.changed(from: before, to: me)]
        let update = MemberUpdate(member: me, origin: me.name)
        for entry in others.values where entry.member.state.isLive {
            out.append(.send(to: entry.member.peer, wrap(.announce(updates: [update]))))
        }
        return out
    }

    // MARK: - Probing

    private mutating func probeStep(now: Duration, into out: inout [MembershipOutput]) {
        if var current = probe {
            if !current.acked, !current.indirectStarted, now >= current.indirectAt {
                let helpers = pickRandom(config.indirectProbes, excluding: [current.target.name])
                if let target = others[current.target.name]?.member, target.id == current.target {
                    for helper in helpers {
                        out.append(.send(to: helper.peer, wrap(.pingRequest(seq: current.seq, target: target, updates: piggyback(now: now)))))
                    }
                }
                current.indirectStarted = true
                current.indirectSent = helpers.count
                probe = current
            }
            guard now >= current.endsAt else { return }
            finishProbe(current, now: now, into: &out)
            probe = nil
        }
        guard now >= nextProbeAt, let target = nextProbeTarget() else { return }
        let seq = takeSeq()
        let scale = Int64(1 + localHealth)
        probe = Probe(seq: seq, target: target.id, targetPeer: target.peer,
                      indirectAt: now + config.probeTimeout * scale, endsAt: now + config.protocolPeriod * scale)
        nextProbeAt = now + config.protocolPeriod * scale
        out.append(.send(to: target.peer, wrap(.ping(seq: seq, target: target.id, updates: piggyback(now: now, buddy: target.id)))))
    }

    private mutating func finishProbe(_ probe: Probe, now: Duration, into out: inout [MembershipOutput]) {
        if probe.acked {
            if localHealth > 0 { localHealth -= 1 }
            return
        }
        if probe.indirectSent > 0, probe.nacks < probe.indirectSent {
            // Lifeguard: a relay that did not even nack suggests our own links are at fault.
            raiseLocalHealth()
        }
        guard var entry = others[probe.target.name], entry.member.id == probe.target, entry.member.state.isLive else { return }
        let before = entry.member
        if entry.member.state == .alive {
            entry.member.state = .suspect
            entry.since = now
            entry.suspectors = [me.name]
            others[probe.target.name] = entry
            out.append(.changed(from: before, to: entry.member))
            out.append(.log(.info, "suspect \(entry.member.id): no ack to a direct or indirect probe"))
            // Probe it next: the ping carries the suspicion (buddy system), so a member that
            // is alive hears of it and refutes within one period rather than whenever its
            // turn in the round comes, which may be after the suspicion runs out.
            probeOrder.removeAll { $0 == probe.target.name }
            probeOrder.append(probe.target.name)
        } else if !entry.suspectors.contains(me.name) {
            entry.suspectors.insert(me.name)
            others[probe.target.name] = entry
        }
        enqueue(MemberUpdate(member: entry.member, origin: me.name))
    }

    private mutating func nextProbeTarget() -> Member? {
        while true {
            if probeOrder.isEmpty {
                probeOrder = others.values.filter { $0.member.state.isLive }.map(\.member.name).sorted()
                probeOrder.shuffle(using: &random)
                if probeOrder.isEmpty { return nil }
            }
            let name = probeOrder.removeLast()
            if let entry = others[name], entry.member.state.isLive { return entry.member }
        }
    }

    private mutating func relayTimeouts(now: Duration, into out: inout [MembershipOutput]) {
        for (seq, relay) in relays.sorted(by: { $0.key < $1.key }) where now >= relay.deadline {
            relays[seq] = nil
            out.append(.send(to: relay.originPeer, wrap(.nack(seq: relay.originSeq, updates: piggyback(now: now)))))
        }
    }

    // MARK: - Suspicion

    /// Lifeguard: `max - (max - min) * log(C + 1) / log(K + 1)`, where C counts independent
    /// suspicions beyond the first and K is how many are wanted (none in clusters too small
    /// to supply them, where the timeout is the minimum).
    func suspicionTimeout(confirmations: Int) -> Duration {
        let wanted = liveCount - 2 < config.confirmationsWanted ? 0 : config.confirmationsWanted
        guard wanted > 0 else { return config.suspicionMin }
        let c = min(confirmations, wanted)
        let fraction = log(Double(c + 1)) / log(Double(wanted + 1))
        let span = config.suspicionMax - config.suspicionMin
        return max(config.suspicionMin, config.suspicionMax - span * fraction)
    }

    private mutating func suspicionTimeouts(now: Duration, into out: inout [MembershipOutput]) {
        for name in others.keys.sorted() {
            guard var entry = others[name], entry.member.state == .suspect else { continue }
            let timeout = suspicionTimeout(confirmations: max(0, entry.suspectors.count - 1))
            guard now - entry.since >= timeout else { continue }
            let before = entry.member
            entry.member.state = .dead
            entry.since = now
            entry.suspectors = []
            others[name] = entry
            out.append(.changed(from: before, to: entry.member))
            out.append(.log(.info, "dead \(entry.member.id): suspected for \(Self.format(timeout)) without refutation"))
            announce(MemberUpdate(member: entry.member, origin: me.name), now: now, into: &out)
        }
    }

    // MARK: - Applying updates

    private mutating func apply(_ update: MemberUpdate, now: Duration, into out: inout [MembershipOutput]) {
        let incoming = update.member
        if incoming.name == me.name {
            refuteIfNeeded(incoming, now: now, into: &out)
            return
        }
        guard var entry = others[incoming.name] else {
            var entry = Entry(member: incoming, since: now)
            if incoming.state == .suspect { entry.suspectors = [update.origin] }
            others[incoming.name] = entry
            out.append(.changed(from: nil, to: incoming))
            enqueue(update)
            if incoming.state.isLive { insertIntoProbeOrder(incoming.name) }
            return
        }
        let current = entry.member
        if incoming.id.generation < current.id.generation { return }
        if incoming.id.generation > current.id.generation {
            entry = Entry(member: incoming, since: now)
            if incoming.state == .suspect { entry.suspectors = [update.origin] }
            others[incoming.name] = entry
            out.append(.changed(from: current, to: incoming))
            out.append(.log(.info, "\(incoming.name) restarted: generation \(incoming.id.generation) replaces \(current.id.generation)"))
            enqueue(update)
            if incoming.state.isLive { insertIntoProbeOrder(incoming.name) }
            return
        }
        // Same generation: incarnation numbers and state precedence decide.
        var accepted = false
        switch incoming.state {
        case .alive:
            accepted = current.state != .left && incoming.incarnation > current.incarnation
        case .suspect:
            if current.state == .alive {
                accepted = incoming.incarnation >= current.incarnation
            } else if current.state == .suspect {
                if incoming.incarnation > current.incarnation {
                    accepted = true
                } else if incoming.incarnation == current.incarnation, !entry.suspectors.contains(update.origin) {
                    entry.suspectors.insert(update.origin)
                    others[incoming.name] = entry
                    enqueue(update)
                }
            }
        case .dead:
            accepted = current.state.isLive ? incoming.incarnation >= current.incarnation
                : (current.state == .dead && incoming.incarnation > current.incarnation)
        case .left:
            accepted = current.state != .left && incoming.incarnation >= current.incarnation
        }
        guard accepted else { return }
        var updated = incoming
        // Addresses come from the member itself; keep what we know if a relay omitted them.
        if updated.peer.isEmpty { updated.peer = current.peer }
        if updated.client.isEmpty { updated.client = current.client }
        entry.member = updated
        if current.state != updated.state { entry.since = now }
        entry.suspectors = updated.state == .suspect ? [update.origin] : []
        others[incoming.name] = entry
        out.append(.changed(from: current, to: updated))
        if current.state != updated.state {
            let level: MembershipLogLevel = updated.state == .suspect ? .debug : .info
            out.append(.log(level, "\(updated.state) \(updated.id) (incarnation \(updated.incarnation), from \(update.origin))"))
        }
        enqueue(MemberUpdate(member: updated, origin: update.origin))
        if updated.state.isLive, !current.state.isLive { insertIntoProbeOrder(updated.name) }
    }

    private mutating func refuteIfNeeded(_ claim: Member, now: Duration, into out: inout [MembershipOutput]) {
        guard claim.id.generation == me.id.generation, me.state == .alive,
              claim.state == .suspect || claim.state == .dead || claim.state == .left,
              claim.incarnation >= me.incarnation else { return }
        me.incarnation = claim.incarnation + 1
        raiseLocalHealth()
        out.append(.log(.info, "refuting \(claim.state) about this node: incarnation now \(me.incarnation)"))
        announce(MemberUpdate(member: me, origin: me.name), now: now, into: &out)
    }

    // MARK: - Dissemination

    private mutating func enqueue(_ update: MemberUpdate) {
        gossip[update.member.name] = Gossip(update: update, transmits: 0)
    }

    private mutating func announce(_ update: MemberUpdate, now: Duration, into out: inout [MembershipOutput]) {
        enqueue(update)
        for name in others.keys.sorted() {
            let member = others[name]!.member
            guard member.state.isLive, member.name != update.member.name else { continue }
            out.append(.send(to: member.peer, wrap(.announce(updates: [update]))))
        }
    }

    /// Up to `maxPiggyback` updates, least-sent first; a ping to a suspect carries its
    /// suspicion first (Lifeguard's buddy system) so it can refute at once.
    private mutating func piggyback(now: Duration, buddy: MemberID? = nil) -> [MemberUpdate] {
        var result: [MemberUpdate] = []
        if let buddy, let entry = others[buddy.name], entry.member.id == buddy, entry.member.state == .suspect {
            result.append(MemberUpdate(member: entry.member, origin: entry.suspectors.sorted().first ?? me.name))
        }
        guard !gossip.isEmpty else { return result }
        let limit = config.retransmitMultiplier * Self.ceilLog2(others.count + 2)
        let chosen = gossip.values.sorted {
            ($0.transmits, $0.update.member.name) < ($1.transmits, $1.update.member.name)
        }.prefix(config.maxPiggyback - result.count)
        for item in chosen {
            let name = item.update.member.name
            result.append(item.update)
            if item.transmits + 1 >= limit {
                gossip[name] = nil
            } else {
                gossip[name]!.transmits += 1
            }
        }
        return result
    }

    // MARK: - Joining, syncing, healing

    private mutating func joinIfNeeded(now: Duration, into out: inout [MembershipOutput]) {
        guard !joined, now >= nextJoinAt else { return }
        if joinAttempts > 0 {
            out.append(.log(.warning, "not joined yet: no seed has answered (\(seeds.joined(separator: ", "))); retrying"))
        }
        for seed in seeds {
            out.append(.send(to: seed, wrap(.sync(members: members, wantsReply: true))))
        }
        let backoff = min(config.joinRetryMax, config.joinRetryInitial * (1 << min(joinAttempts, 16)))
        joinAttempts += 1
        nextJoinAt = now + backoff
    }

    private mutating func periodicSync(now: Duration, into out: inout [MembershipOutput]) {
        if now >= nextSyncAt {
            nextSyncAt = now + config.syncInterval
            if let partner = pickRandom(1, excluding: []).first {
                out.append(.send(to: partner.peer, wrap(.sync(members: members, wantsReply: true))))
            }
        }
        guard joined, now >= nextReconnectAt else { return }
        nextReconnectAt = now + config.reconnectInterval
        let livePeers = Set(others.values.filter { $0.member.state.isLive }.map(\.member.peer))
        var candidates = others.values.filter { $0.member.state == .dead }.map(\.member.peer)
        candidates += seeds.filter { !livePeers.contains($0) }
        candidates = Array(Set(candidates)).sorted()
        guard !candidates.isEmpty else { return }
        let peer = candidates[random.below(candidates.count)]
        out.append(.send(to: peer, wrap(.sync(members: members, wantsReply: true))))
    }

    private mutating func reap(now: Duration) {
        for (name, entry) in others where !entry.member.state.isLive && now - entry.since > config.deadRetention {
            others[name] = nil
            gossip[name] = nil
        }
    }

    // MARK: - Helpers

    private func wrap(_ message: MembershipMessage) -> Envelope {
        Envelope(from: me, message: message)
    }

    private mutating func takeSeq() -> UInt64 {
        defer { nextSeq += 1 }
        return nextSeq
    }

    private mutating func raiseLocalHealth() {
        localHealth = min(config.maxLocalHealth, localHealth + 1)
    }

    private mutating func insertIntoProbeOrder(_ name: String) {
        guard !probeOrder.contains(name) else { return }
        probeOrder.insert(name, at: random.below(probeOrder.count + 1))
    }

    private mutating func pickRandom(_ count: Int, excluding: Set<String>) -> [Member] {
        var pool = others.values.map(\.member).filter { $0.state == .alive && !excluding.contains($0.name) }.sorted { $0.id < $1.id }
        pool.shuffle(using: &random)
        return Array(pool.prefix(count))
    }

    static func ceilLog2(_ n: Int) -> Int {
        var bits = 0
        var value = 1
        while value < n { value <<= 1; bits += 1 }
        return max(bits, 1)
    }

    static func format(_ duration: Duration) -> String {
        let ms = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return "\(ms) ms"
    }
}
