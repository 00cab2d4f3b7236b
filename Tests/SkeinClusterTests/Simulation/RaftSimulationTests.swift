import Foundation
import SkeinCluster
import Testing

/// The per-partition Raft groups under the deterministic simulator: as many seeds as fit the
/// time budget (`SKEIN_RAFT_SIM_SECONDS`, default 40, on `SKEIN_RAFT_SIM_THREADS` threads, default 1: the real-process tests running beside it need the other core), or exactly `SKEIN_RAFT_SIM_SEEDS`
/// seeds, or one seed replayed with `SKEIN_RAFT_SIM_SEED`. A failure prints the seed and the
/// events before it.
@Suite("Raft simulation")
struct RaftSimulationTests {
    @Test("seeds under loss, delay, duplication, reordering, cuts, pauses, crashes, drift and transfers")
    func manySeeds() async throws {
        let env = ProcessInfo.processInfo.environment
        if let one = env["SKEIN_RAFT_SIM_SEED"].flatMap(UInt64.init) {
            let sim = RaftSimulator(seed: one)
            let report = sim.run()
            print("raft simulation seed \(one): \(sim.scenario), \(sim.eventsRun) events, \(sim.stats)")
            #expect(report == nil, "\(report ?? "")")
            return
        }
        // Threads of their own, off the cooperative pool the other tests need; one by default,
        // since the real-process tests beside it need the other core.
        let threads = max(1, Int(env["SKEIN_RAFT_SIM_THREADS"] ?? "") ?? 1)
        let result = await withTaskGroup(of: Outcome.self) { group in
            for t in 0..<threads {
                group.addTask { await offPool { Self.runSeeds(env, thread: t, of: threads) } }
            }
            var total = Outcome()
            for await o in group { total.merge(o) }
            return total
        }
        print("raft simulation: \(result.ran) seeds on \(threads) threads, \(result.events) events, \(result.acked) acknowledged writes, \(result.leaseReads) lease reads, \(result.elections) elections, \(result.failures.count) failed, in \(result.elapsed)")
        for failure in result.failures { Issue.record("\(failure)") }
        #expect(result.acked > 0)
    }

    struct Outcome: Sendable {
        var ran = 0, events = 0, acked = 0, leaseReads = 0, elections = 0
        var failures: [String] = []
        var elapsed: Duration = .zero

        mutating func merge(_ o: Outcome) {
            ran += o.ran; events += o.events; acked += o.acked; leaseReads += o.leaseReads; elections += o.elections
            failures += o.failures
            elapsed = max(elapsed, o.elapsed)
        }
    }

    static func runSeeds(_ env: [String: String], thread: Int, of threads: Int) -> Outcome {
        let budget = Duration.seconds(Int(env["SKEIN_RAFT_SIM_SECONDS"] ?? "") ?? 40)
        let fixedCount = env["SKEIN_RAFT_SIM_SEEDS"].flatMap(Int.init).map { ($0 + threads - 1 - thread) / threads }
        let base = env["SKEIN_SIM_BASE"].flatMap(UInt64.init) ?? UInt64(Date().timeIntervalSince1970)
        let clock = ContinuousClock()
        let started = clock.now
        var o = Outcome()
        while fixedCount.map({ o.ran < $0 }) ?? (clock.now - started < budget || o.ran < 20) {
            let seed = base &* 1_000_003 &+ UInt64(o.ran * threads + thread)
            let sim = RaftSimulator(seed: seed)
            let seedStart = clock.now
            if let report = sim.run() { o.failures.append(report) }
            if env["SKEIN_RAFT_SIM_VERBOSE"] != nil {
                print("seed \(seed): \(sim.eventsRun) events in \(clock.now - seedStart), \(sim.stats)")
            }
            o.events += sim.eventsRun
            o.acked += sim.stats.acked
            o.leaseReads += sim.stats.leaseReads
            o.elections += sim.stats.elections
            o.ran += 1
            if o.failures.count >= 3 { break }
        }
        o.elapsed = clock.now - started
        return o
    }

    @Test("seed 1796195465576064 stays quiet")
    func probeAnsweredAtTheMatch() {
        // Found by a time-seeded run, when scenarios were drawn differently: a follower's match
        // moved to its commit index by a heartbeat answer while it was being probed; every answer
        // at that match, and every duplicate of one, then sent another probe, past 2,000,000
        // events. The seed draws another scenario now; it stays as a bound on a run's events.
        let sim = RaftSimulator(seed: 1_796_195_465_576_064)
        let report = sim.run()
        #expect(report == nil, "\(report ?? "")")
        #expect(sim.eventsRun < 100_000)
    }

    @Test("the same seed replays the same run")
    func replay() {
        let a = RaftSimulator(seed: 7)
        let b = RaftSimulator(seed: 7)
        #expect(a.run() == nil)
        _ = b.run()
        #expect(a.eventsRun == b.eventsRun)
        #expect(a.recent == b.recent)
        #expect(a.stats == b.stats)
    }

    @Test("a broken lease is caught: clocks drifting past the stated bound overlap leases")
    func brokenLeaseIsCaught() {
        // The lease is only as good as the drift bound: with clocks really drifting 45% while
        // the configuration assumes 1%, a slow deposed leader keeps its lease while a fast
        // follower's promise has run out and a successor takes one. The checker must see it.
        // Leaders cut off from their followers are what it takes; about one seed in 25 hits it.
        let cutsOnly = RaftSimulator.Scenario(
            nodes: 3, partitions: 4, loss: 0, duplicate: 0, minDelayUs: 100, maxDelayUs: 500,
            crashes: false, pauses: false, cuts: true, falseDownReports: false, transfers: false, storageFaults: false,
            writesPerSecond: 100, keys: 4, compactEvery: 0, chunkBytes: 64, faultPhaseMs: 5_000, quietPhaseMs: 3_000)
        var caught: UInt64?
        for seed in UInt64(0)..<400 {
            let sim = RaftSimulator(seed: seed, scenario: cutsOnly, clockDrift: 0.45)
            if let report = sim.run(), report.contains("hold leases at the same time") {
                caught = seed
                break
            }
        }
        #expect(caught != nil)
        // The same runs with drift inside the bound are clean.
        if let seed = caught {
            let sim = RaftSimulator(seed: seed, scenario: cutsOnly)
            #expect(sim.run() == nil)
        }
    }
}

/// The workflow layer over the simulated cluster (WorkflowSimulation.swift): `SKEIN_WF_SIM_SEEDS`
/// seeds (default 60), or one replayed with `SKEIN_WF_SIM_SEED`; the base is `SKEIN_SIM_BASE`.
@Suite("Workflow simulation")
struct WorkflowSimulationTests {
    @Test("instances complete through crashes, cuts, pauses and transfers; each task result is committed once")
    func seeds() async throws {
        let env = ProcessInfo.processInfo.environment
        if let one = env["SKEIN_WF_SIM_SEED"].flatMap(UInt64.init) {
            let sim = RaftSimulator(seed: one, workflows: true)
            let report = sim.run()
            print("workflow simulation seed \(one): \(sim.scenario), \(sim.eventsRun) events, \(sim.wf.started.count) instances, \(sim.wf.completed) completed")
            #expect(report == nil, "\(report ?? "")")
            return
        }
        let count = env["SKEIN_WF_SIM_SEEDS"].flatMap(Int.init) ?? 60
        let base = env["SKEIN_SIM_BASE"].flatMap(UInt64.init) ?? UInt64(Date().timeIntervalSince1970)
        let (failures, instances, reruns, early) = await offPool { () -> ([String], Int, Int, Int) in
            var failures: [String] = []
            var instances = 0, reruns = 0, early = 0
            for n in 0..<count {
                let seed = base &* 7_000_003 &+ UInt64(n)
                let sim = RaftSimulator(seed: seed, workflows: true)
                if let report = sim.run() { failures.append(report) }
                instances += sim.wf.started.count
                reruns += sim.wf.executions.values.filter { $0 > 1 }.count
                early += sim.wf.answeredAtCommit.count
                if failures.count >= 3 { break }
            }
            return (failures, instances, reruns, early)
        }
        print("workflow simulation: \(count) seeds, \(instances) instances started, \(early) checkpoints answered at commit before they applied, \(reruns) task attempts run again after an owner changed, \(failures.count) failed")
        for f in failures { Issue.record("\(f)") }
        #expect(instances > 0)
        #expect(early > 0, "no runner went on from a checkpoint before it applied: that path went untested")
    }
}

/// The simulation's checkers bite: with one of Raft's safety rules switched off
/// (``RaftRuleBreaks``, debug builds only) a pinned seed must fail, and with the rule on it
/// passes (it is among the pinned seeds `cluster/test` runs). Found by running 300 seeds per
/// rule (`SKEIN_EXPLORE_BREAK=fsync|alone|vote|fig8|noop SKEIN_EXPLORE_SEEDS=300`); a change
/// to the host or the scenarios draws other runs from these seeds, and then they are found
/// again the same way. Figure 8's rule and the no-op wait before a configuration change are
/// out of the random runs' reach (no seed of 300 hit the first; the runs change no
/// configuration): the scripted scenarios (RaftTrapTests) hold those.
@Suite("Simulation mutations")
struct SimulationMutationTests {
    #if DEBUG
    static func run(_ seed: UInt64, breaking rule: RaftRuleBreaks) -> String? {
        var raft = RaftConfig()
        raft.breaks = rule
        return RaftSimulator(seed: seed, raft: raft).run()
    }

    @Test("a leader counting its entries before its own fsync loses an acknowledged write", arguments: [UInt64(20_261_182_783_517)])
    func countBeforeFsync(seed: UInt64) {
        let report = Self.run(seed, breaking: .countOwnEntriesBeforeFsync)
        #expect(report?.contains("acknowledged write") == true, "\(report ?? "the seed passed")")
        #expect(RaftSimulator(seed: seed).run() == nil)
    }

    @Test("a leader committing alone loses an acknowledged write", arguments: [UInt64(20_261_182_783_372)])
    func commitAlone(seed: UInt64) {
        let report = Self.run(seed, breaking: .commitOnLeaderAlone)
        #expect(report?.contains("acknowledged write") == true, "\(report ?? "the seed passed")")
        #expect(RaftSimulator(seed: seed).run() == nil)
    }

    @Test("votes granted without the log check elect a leader that lacks an acknowledged write", arguments: [UInt64(20_261_182_783_372)])
    func voteWithoutLogCheck(seed: UInt64) {
        let report = Self.run(seed, breaking: .voteWithoutLogCheck)
        #expect(report?.contains("acknowledged write") == true, "\(report ?? "the seed passed")")
        #expect(RaftSimulator(seed: seed).run() == nil)
    }
    #endif

    /// Runs `SKEIN_EXPLORE_SEEDS` seeds (default 300) from the pinned base with the rule
    /// `SKEIN_EXPLORE_BREAK` names switched off, and prints the seeds that fail: how the pinned
    /// seeds above were found. Does nothing without the variable.
    @Test func explore() {
        #if DEBUG
        let env = ProcessInfo.processInfo.environment
        let rules: [String: RaftRuleBreaks] = ["fig8": .commitEarlierTermsByCount, "alone": .commitOnLeaderAlone, "vote": .voteWithoutLogCheck,
                                               "noop": .configurationBeforeNoop, "fsync": .countOwnEntriesBeforeFsync]
        guard let name = env["SKEIN_EXPLORE_BREAK"], let rule = rules[name] else { return }
        let count = Int(env["SKEIN_EXPLORE_SEEDS"] ?? "") ?? 300
        let base = env["SKEIN_SIM_BASE"].flatMap(UInt64.init) ?? 20_261_122
        var caught: [UInt64] = []
        for n in 0..<count {
            let seed = base &* 1_000_003 &+ UInt64(n)
            if Self.run(seed, breaking: rule) != nil { caught.append(seed) }
        }
        print("breaking \(name): \(caught.count) of \(count) seeds fail: \(caught.prefix(20))")
        #endif
    }
}
