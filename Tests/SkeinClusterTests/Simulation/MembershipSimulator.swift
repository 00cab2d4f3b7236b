import Foundation
import HeapModule
import SkeinCluster

/// A whole cluster of membership state machines in one process, over a simulated network
/// and clock, all driven by one seed: message loss, delay, duplication and reordering,
/// partitions (symmetric and one-way), pauses, crashes, restarts and graceful leaves.
/// Invariants are checked after every event; the first violation stops the run and is
/// reported with the seed and the last events, so `SKEIN_SIM_SEED=<seed>` replays it.
struct MembershipSimulator {
    /// What the network and the nodes may do to each other in one run.
    struct Scenario: CustomStringConvertible {
        var nodes: Int
        /// Benign runs keep loss under the bound and pauses under 500 ms, and then no live node
        /// may ever be declared dead. Hostile runs add partitions, heavy loss and long pauses,
        /// and check safety and healing.
        var benign: Bool
        var loss: Double
        var duplicate: Double
        var minDelayMs: Int
        var maxDelayMs: Int
        var reorder: Double
        var faultPhase: Duration
        var quietPhase: Duration

        var description: String {
            "\(nodes) nodes, \(benign ? "benign" : "hostile"), loss \(Int(loss * 100))%, dup \(Int(duplicate * 100))%, delay \(minDelayMs)-\(maxDelayMs) ms, reorder \(Int(reorder * 100))%"
        }
    }

    enum Event {
        case start(Int)
        case tick(Int)
        case deliver(to: Int, Envelope)
        case crash(Int)
        case restart(Int)
        case pause(Int, Duration)
        case resume(Int)
        case leave(Int)
        case partition([Pair])
        case heal
        case setLoss(Double)
        case checkDetected(name: String, generation: UInt64, crashedAt: Duration)
        case finalCheck
    }

    struct Pair: Hashable { var from: Int; var to: Int }

    struct Scheduled: Comparable {
        var time: Duration
        var order: UInt64
        var event: Event
        static func < (a: Scheduled, b: Scheduled) -> Bool { (a.time, a.order) < (b.time, b.order) }
        static func == (a: Scheduled, b: Scheduled) -> Bool { (a.time, a.order) == (b.time, b.order) }
    }

    enum Life { case notStarted, running, crashed, left }

    struct Node {
        var name: String
        var peer: String
        var machine: Membership?
        var life: Life = .notStarted
        var generation: UInt64 = 0
        var paused = false
        var inbox: [Envelope] = []
        /// Per-node clock: offset and rate (drift) against true time.
        var clockOffset: Duration
        var clockRate: Double
        var joinedAt: Duration?
        var lastPauseEnd: Duration = .zero
    }

    static let detectionBound: Duration = .seconds(3)
    static let tickInterval: Duration = .milliseconds(10)

    let seed: UInt64
    var scenario: Scenario
    var random: DeterministicRandom
    var now: Duration = .zero
    var queue = Heap<Scheduled>()
    var order: UInt64 = 0
    var nodes: [Node] = []
    var blocked: Set<Pair> = []
    var recent: [String] = []
    var seen: [[String: (UInt64, UInt64)]] = []
    var eventsRun = 0
    var violation: String?
    var finished = false
    let config: MembershipConfig

    init(seed: UInt64, config: MembershipConfig = MembershipConfig()) {
        self.seed = seed
        self.config = config
        var random = DeterministicRandom(seed: seed)
        let benign = random.below(2) == 0
        let nodes = random.below(2) == 0 ? 3 : 5
        scenario = Scenario(
            nodes: nodes, benign: benign,
            loss: benign ? Double(random.below(6)) / 100 : Double(random.below(31)) / 100,
            duplicate: Double(random.below(4)) / 100,
            minDelayMs: 1, maxDelayMs: 5 + random.below(20),
            reorder: Double(random.below(10)) / 100,
            faultPhase: .seconds(12), quietPhase: .seconds(10))
        self.random = random
        for i in 0..<nodes {
            let drift = (Double(random.below(2001)) - 1000) / 1_000_000  // ±0.1%
            self.nodes.append(Node(name: "n\(i + 1)", peer: "10.0.0.\(i + 1):9000",
                                   clockOffset: .milliseconds(random.below(100_000)), clockRate: 1 + drift))
        }
        seen = Array(repeating: [:], count: nodes)
        planFaults()
    }

    // MARK: - Plan

    mutating func planFaults() {
        let n = scenario.nodes
        for i in 0..<n { schedule(.milliseconds(random.below(500)), .start(i)) }
        let faultStart = Duration.seconds(2)
        let faultEnd = scenario.faultPhase
        func at() -> Duration { faultStart + .milliseconds(random.below(Int((faultEnd - faultStart) / .milliseconds(1)) - 4000)) }

        // Crashes, each followed (usually) by a restart with the same name.
        for _ in 0..<(1 + random.below(2)) {
            let victim = random.below(n)
            let t = at()
            schedule(t, .crash(victim))
            if random.below(4) != 0 { schedule(t + .milliseconds(1000 + random.below(3000)), .restart(victim)) }
        }
        // Pauses (SIGSTOP): at most 500 ms in benign runs.
        for _ in 0..<random.below(3) {
            let length: Duration = scenario.benign ? .milliseconds(100 + random.below(401)) : .milliseconds(100 + random.below(3000))
            schedule(at(), .pause(random.below(n), length))
        }
        // A graceful leave, later restarted.
        if random.below(3) == 0 {
            let who = random.below(n)
            let t = at()
            schedule(t, .leave(who))
            schedule(t + .milliseconds(1000 + random.below(2000)), .restart(who))
        }
        if !scenario.benign {
            for _ in 0..<(1 + random.below(2)) {
                var sideA: Set<Int> = []
                for i in 0..<n where random.below(2) == 0 { sideA.insert(i) }
                if sideA.isEmpty { sideA.insert(0) }
                if sideA.count == n { sideA.remove(n - 1) }
                let oneWay = random.below(3) == 0
                var pairs: [Pair] = []
                for a in sideA { for b in 0..<n where !sideA.contains(b) {
                    pairs.append(Pair(from: a, to: b))
                    if !oneWay { pairs.append(Pair(from: b, to: a)) }
                } }
                let t = at()
                schedule(t, .partition(pairs))
                schedule(min(faultEnd, t + .milliseconds(1000 + random.below(4000))), .heal)
            }
            schedule(faultEnd, .setLoss(min(scenario.loss, 0.05)))
            schedule(faultEnd, .heal)
        }
        schedule(faultEnd + scenario.quietPhase, .finalCheck)
    }

    mutating func schedule(_ time: Duration, _ event: Event) {
        order += 1
        queue.insert(Scheduled(time: time, order: order, event: event))
    }

    // MARK: - Run

    /// Runs to the end or the first violation; returns the violation's report.
    mutating func run() -> String? {
        while !finished, let next = queue.popMin() {
            now = next.time
            eventsRun += 1
            handle(next.event)
            if violation == nil { checkInvariants() }
            if let violation {
                return """
                    membership simulation seed \(seed) failed (\(scenario)) at t=\(Self.ms(now)) ms after \(eventsRun) events:
                    \(violation)
                    last events:
                    \(recent.joined(separator: "\n"))
                    replay: SKEIN_SIM_SEED=\(seed) swift test --filter MembershipSimulationTests
                    """
            }
        }
        return nil
    }

    mutating func note(_ line: String) {
        recent.append("  \(Self.ms(now)) ms \(line)")
        if recent.count > 40 { recent.removeFirst() }
    }

    func localNow(_ i: Int) -> Duration {
        nodes[i].clockOffset + now * nodes[i].clockRate
    }

    mutating func handle(_ event: Event) {
        switch event {
        case .start(let i), .restart(let i):
            guard nodes[i].life != .running else { return }
            nodes[i].generation += 1 + UInt64(random.below(1000))
            let me = Member(id: MemberID(name: nodes[i].name, generation: nodes[i].generation),
                            peer: nodes[i].peer, client: "client-\(i)", state: .alive, incarnation: 0)
            nodes[i].machine = Membership(me: me, seeds: nodes.map(\.peer), config: config, seed: random.next(), now: localNow(i))
            nodes[i].life = .running
            nodes[i].paused = false
            nodes[i].inbox = []
            nodes[i].joinedAt = nil
            seen[i] = [:]  // a restarted node's view starts afresh
            note("start \(me.id)")
            schedule(now, .tick(i))
        case .tick(let i):
            guard nodes[i].life == .running, !nodes[i].paused else { return }
            let outputs = nodes[i].machine!.tick(now: localNow(i))
            process(outputs, from: i)
            schedule(now + Self.tickInterval + .microseconds(random.below(2000)), .tick(i))
        case .deliver(let to, let envelope):
            guard nodes[to].life == .running else { return }
            if nodes[to].paused {
                nodes[to].inbox.append(envelope)
                return
            }
            let outputs = nodes[to].machine!.receive(envelope, now: localNow(to))
            process(outputs, from: to)
        case .crash(let i):
            guard nodes[i].life == .running else { return }
            note("crash \(nodes[i].name)#\(nodes[i].generation)")
            nodes[i].life = .crashed
            nodes[i].machine = nil
            nodes[i].paused = false
            nodes[i].inbox = []
            if scenario.benign {
                schedule(now + Self.detectionBound, .checkDetected(name: nodes[i].name, generation: nodes[i].generation, crashedAt: now))
            }
        case .pause(let i, let length):
            guard nodes[i].life == .running, !nodes[i].paused else { return }
            note("pause \(nodes[i].name) for \(Self.ms(length)) ms")
            nodes[i].paused = true
            schedule(now + length, .resume(i))
        case .resume(let i):
            guard nodes[i].life == .running, nodes[i].paused else { return }
            note("resume \(nodes[i].name)")
            nodes[i].paused = false
            nodes[i].lastPauseEnd = now
            let inbox = nodes[i].inbox
            nodes[i].inbox = []
            let tickFirst = random.below(2) == 0
            if tickFirst { handle(.tick(i)) }
            for envelope in inbox where nodes[i].life == .running {
                process(nodes[i].machine!.receive(envelope, now: localNow(i)), from: i)
            }
            if !tickFirst { handle(.tick(i)) }
        case .leave(let i):
            guard nodes[i].life == .running, !nodes[i].paused else { return }
            note("leave \(nodes[i].name)")
            process(nodes[i].machine!.leave(now: localNow(i)), from: i)
            nodes[i].life = .left
            nodes[i].machine = nil
        case .partition(let pairs):
            note("partition \(pairs.map { "\($0.from + 1)->\($0.to + 1)" }.joined(separator: " "))")
            blocked.formUnion(pairs)
        case .heal:
            if !blocked.isEmpty { note("heal partition") }
            blocked = []
        case .setLoss(let loss):
            scenario.loss = loss
        case .checkDetected(let name, let generation, let crashedAt):
            checkDetected(name: name, generation: generation, crashedAt: crashedAt)
        case .finalCheck:
            finalCheck()
            finished = true
        }
    }

    mutating func process(_ outputs: [MembershipOutput], from i: Int) {
        for output in outputs {
            switch output {
            case .send(let to, let envelope):
                guard let target = nodes.firstIndex(where: { $0.peer == to }) else { continue }
                send(envelope, from: i, to: target)
            case .changed(_, let member):
                note("\(nodes[i].name) sees \(member)")
            case .log(_, let line):
                if Self.traceMessages { print("\(Self.ms(now)) \(nodes[i].name) log: \(line)") }
            }
        }
        if nodes[i].joinedAt == nil, nodes[i].machine?.joined == true { nodes[i].joinedAt = now }
    }

    /// `SKEIN_SIM_TRACE=1` with `SKEIN_SIM_SEED`: print every message and the machines' logs.
    static let traceMessages = ProcessInfo.processInfo.environment["SKEIN_SIM_TRACE"] != nil

    mutating func send(_ envelope: Envelope, from: Int, to: Int) {
        if blocked.contains(Pair(from: from, to: to)) { return }
        if random.chance(scenario.loss) {
            if Self.traceMessages { print("\(Self.ms(now)) LOST \(nodes[from].name)->\(nodes[to].name) \(String(describing: envelope).prefix(300))") }
            return
        }
        if Self.traceMessages { print("\(Self.ms(now)) send \(nodes[from].name)->\(nodes[to].name) \(String(describing: envelope).prefix(300))") }
        let copies = random.chance(scenario.duplicate) ? 2 : 1
        for _ in 0..<copies {
            var delay = Duration.milliseconds(scenario.minDelayMs + random.below(scenario.maxDelayMs - scenario.minDelayMs + 1))
            if random.chance(scenario.reorder) { delay += .milliseconds(random.below(60)) }
            schedule(now + delay, .deliver(to: to, envelope))
        }
    }

    // MARK: - Invariants

    mutating func checkInvariants() {
        for (i, node) in nodes.enumerated() where node.life == .running {
            let machine = node.machine!
            if machine.me.state != .alive {
                violation = "\(node.name) sees itself as \(machine.me.state)"
                return
            }
            for member in machine.members {
                let key = (member.id.generation, member.incarnation)
                if let previous = seen[i][member.name], key < previous {
                    violation = "\(node.name)'s view of \(member.name) went back from generation \(previous.0) incarnation \(previous.1) to \(key.0)/\(key.1)"
                    return
                }
                seen[i][member.name] = key
                guard scenario.benign, member.name != node.name, member.state == .dead,
                      let j = nodes.firstIndex(where: { $0.name == member.name }) else { continue }
                if nodes[j].life == .running, nodes[j].generation == member.id.generation {
                    violation = "\(node.name) declared \(member.id) dead, but it is running (benign run: loss \(Int(scenario.loss * 100))%, pauses ≤ 500 ms)"
                    return
                }
            }
        }
    }

    mutating func checkDetected(name: String, generation: UInt64, crashedAt: Duration) {
        for node in nodes where node.life == .running && !node.paused {
            guard let joinedAt = node.joinedAt, joinedAt < crashedAt, node.lastPauseEnd < crashedAt else { continue }
            guard let entry = node.machine!.member(named: name) else { continue }
            if entry.id.generation == generation, entry.state.isLive {
                violation = "\(node.name) still sees \(entry.id) as \(entry.state) \(Self.ms(Self.detectionBound)) ms after it crashed"
                return
            }
        }
    }

    mutating func finalCheck() {
        for observer in nodes where observer.life == .running {
            let machine = observer.machine!
            for other in nodes where other.name != observer.name && other.generation > 0 {
                let entry = machine.member(named: other.name)
                switch other.life {
                case .running:
                    // Alive, or at worst a passing suspicion (loss continues in the quiet phase).
                    guard let entry, entry.id.generation == other.generation, entry.state.isLive else {
                        violation = "after \(Self.ms(scenario.quietPhase)) ms without faults, \(observer.name) sees \(entry.map(String.init(describing:)) ?? "nothing") for running \(other.name)#\(other.generation)"
                        return
                    }
                case .crashed, .left:
                    if let entry, entry.id.generation == other.generation, entry.state.isLive {
                        violation = "after \(Self.ms(scenario.quietPhase)) ms without faults, \(observer.name) still sees stopped \(entry.id) as \(entry.state)"
                        return
                    }
                    if other.life == .left, let entry, entry.id.generation == other.generation, entry.state != .left {
                        violation = "\(observer.name) sees \(entry.id), which left gracefully, as \(entry.state)"
                        return
                    }
                case .notStarted:
                    break
                }
            }
        }
    }

    static func ms(_ d: Duration) -> Int64 {
        d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    }
}
