import Foundation
import SkeinCluster
import Testing

/// The membership machine under the deterministic simulator: as many seeds as fit the time
/// budget (`SKEIN_SIM_SECONDS`, default 20), or exactly `SKEIN_SIM_SEEDS` seeds, or one seed
/// replayed with `SKEIN_SIM_SEED`. A failure prints the seed and the events before it.
@Suite("Membership simulation")
struct MembershipSimulationTests {
    @Test("seeds under loss, delay, duplication, reordering, partitions, pauses, crashes and restarts")
    func manySeeds() async throws {
        let env = ProcessInfo.processInfo.environment
        if let one = env["SKEIN_SIM_SEED"].flatMap(UInt64.init) {
            var sim = MembershipSimulator(seed: one)
            let report = sim.run()
            #expect(report == nil, "\(report ?? "")")
            return
        }
        // CPU-bound for the whole budget: run on a thread of its own, not the two-thread
        // cooperative pool the other tests (and the nodes they start) need.
        let (ran, benign, events, failures, elapsed) = await offPool { Self.runSeeds(env) }
        print("membership simulation: \(ran) seeds (\(benign) benign, \(ran - benign) hostile), \(events) events, \(failures.count) failed, in \(elapsed)")
        for failure in failures { Issue.record("\(failure)") }
    }

    static func runSeeds(_ env: [String: String]) -> (Int, Int, Int, [String], Duration) {
        let budget = Duration.seconds(Int(env["SKEIN_SIM_SECONDS"] ?? "") ?? 20)
        let fixedCount = env["SKEIN_SIM_SEEDS"].flatMap(Int.init)
        let base = env["SKEIN_SIM_BASE"].flatMap(UInt64.init) ?? UInt64(Date().timeIntervalSince1970)
        let clock = ContinuousClock()
        let started = clock.now
        var ran = 0
        var benign = 0
        var events = 0
        var failures: [String] = []
        while fixedCount.map({ ran < $0 }) ?? (clock.now - started < budget || ran < 20) {
            let seed = base &* 1_000_003 &+ UInt64(ran)
            var sim = MembershipSimulator(seed: seed)
            if let report = sim.run() { failures.append(report) }
            if sim.scenario.benign { benign += 1 }
            events += sim.eventsRun
            ran += 1
            if failures.count >= 3 { break }
        }
        return (ran, benign, events, failures, clock.now - started)
    }

    @Test("the same seed replays the same run")
    func replay() {
        var a = MembershipSimulator(seed: 42)
        var b = MembershipSimulator(seed: 42)
        _ = a.run()
        _ = b.run()
        #expect(a.eventsRun == b.eventsRun)
        #expect(a.recent == b.recent)
        #expect(a.nodes.map { $0.machine?.members } == b.nodes.map { $0.machine?.members })
    }

    @Test("a broken machine is caught: dead declared too early fails the benign invariant")
    func invariantsCanFail() {
        // A suspicion timeout far below a pause makes live nodes die: the checker must see it.
        var config = MembershipConfig()
        config.suspicionMin = .milliseconds(20)
        config.suspicionMax = .milliseconds(20)
        config.stallThreshold = .seconds(100)
        var caught = 0
        for seed in UInt64(0)..<40 {
            var sim = MembershipSimulator(seed: seed, config: config)
            guard sim.scenario.benign else { continue }
            if let report = sim.run(), report.contains("dead") { caught += 1 }
        }
        #expect(caught > 0)
    }
}

/// Runs `work` on a new thread and awaits its result without occupying a cooperative thread.
func offPool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: work()) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}
