import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization
import SkeinExamples
import Testing

/// An HTTP server in the test that records every ledger call the `ledger-steps` workflow makes.
final class LedgerServer: Sendable {
    struct Call: Codable, Hashable { let instance: String; let step: Int; let node: String; let attempt: Int }
    final class Recorder: Sendable {
        let calls = Mutex<[Call]>([])
    }
    let recorder: Recorder
    let port: Int
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    private init(recorder: Recorder, port: Int, group: ServiceGroup, task: Task<Void, any Error>) {
        self.recorder = recorder
        self.port = port
        self.group = group
        self.task = task
    }

    static func start() async throws -> LedgerServer {
        let recorder = Recorder()
        let router = Router()
        router.post("/ledger") { request, _ -> HTTPResponse.Status in
            let body = try await request.body.collect(upTo: 1 << 16)
            let call = try JSONDecoder().decode(Call.self, from: Data(buffer: body))
            recorder.calls.withLock { $0.append(call) }
            return .ok
        }
        let quiet = Logger(label: "ledger", factory: { _ in SwiftLogNoOpLogHandler() })
        let (ports, sink) = AsyncStream.makeStream(of: Int.self)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in sink.yield(channel.localAddress?.port ?? 0) }, logger: quiet)
        let group = ServiceGroup(configuration: .init(services: [app], logger: quiet))
        let task = Task { try await group.run() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw TestError("ledger did not start") }
        return LedgerServer(recorder: recorder, port: port, group: group, task: task)
    }

    var url: String { "http://127.0.0.1:\(port)/ledger" }
    var all: [Call] { recorder.calls.withLock { $0 } }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
    }
}

/// Workflows on real node processes, killed with SIGKILL.
@Suite(.serialized) struct WorkflowProcessTests {
    typealias NodeProcess = ClusterProcessTests.NodeProcess

    static func call(_ method: HTTPMethod, _ port: Int, _ path: String, _ body: String? = nil) async -> (Int, [String: Any]) {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
        request.method = method
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        guard let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(30)),
              let data = try? await response.body.collect(upTo: 16 << 20) else { return (0, [:]) }
        return (Int(response.status.code), (try? JSONSerialization.jsonObject(with: Data(buffer: data))) as? [String: Any] ?? [:])
    }

    static func timeline(_ port: Int, _ id: String) async -> [[String: Any]] {
        guard let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/instances/\(id)/timeline"), timeout: .seconds(10)),
              let data = try? await response.body.collect(upTo: 16 << 20) else { return [] }
        return (try? JSONSerialization.jsonObject(with: Data(buffer: data))) as? [[String: Any]] ?? []
    }

    /// Waits until every instance is completed (asking through `ports` in turn).
    static func waitCompleted(_ ids: [String], ports: [Int], within: Duration) async -> [String: String] {
        let deadline = ContinuousClock.now + within
        var statuses: [String: String] = [:]
        var pending = Set(ids)
        var turn = 0
        while !pending.isEmpty, ContinuousClock.now < deadline {
            for id in pending.sorted() {
                turn += 1
                let (code, body) = await call(.GET, ports[turn % ports.count], "/v1/instances/\(id)")
                if code == 200, let s = body["status"] as? String {
                    statuses[id] = s
                    if s == "completed" || s == "failed" || s == "cancelled" { pending.remove(id) }
                }
            }
            if !pending.isEmpty { try? await Task.sleep(for: .milliseconds(200)) }
        }
        return statuses
    }

    /// Every step below an instance's last step recorded at the kill ran exactly once; every
    /// step ran at least once. (The step in flight at the kill, and any step in flight when
    /// leadership moves again afterwards — the survivors rebalance — runs again on the new owner.)
    static func checkExactlyOnce(_ calls: [LedgerServer.Call], before: [LedgerServer.Call], steps: Int, ids: [String], movedBeforeKill: Set<String> = []) {
        let lastAtKill = Dictionary(grouping: before, by: \.instance).mapValues { $0.map(\.step).max() ?? 0 }
        let byStep = Dictionary(grouping: calls, by: { "\($0.instance)#\($0.step)" })
        let counts = byStep.mapValues(\.count)
        var problems: [String] = []
        for id in ids {
            for step in 1...steps {
                let n = counts["\(id)#\(step)"] ?? 0
                if n == 0 { problems.append("\(id) step \(step) never ran") }
                if !movedBeforeKill.contains(id), step < (lastAtKill[id] ?? 0), n != 1 {
                    let runs = (byStep["\(id)#\(step)"] ?? []).map { "\($0.node) attempt \($0.attempt)" }.joined(separator: ", ")
                    problems.append("\(id) step \(step) (below the in-flight step \(lastAtKill[id]!)) ran \(n) times: \(runs)")
                }
            }
        }
        #expect(problems.isEmpty, "\(problems.prefix(20))")
    }

    /// A task whose result was committed never starts again: on each instance's timeline, no
    /// `task_started` of a task comes after its `task_completed` (times are ISO 8601 UTC with
    /// milliseconds, so they order as strings).
    static func checkNoRunAfterCommit(_ timelines: [String: [[String: Any]]]) {
        var problems: [String] = []
        for (id, lines) in timelines {
            var completedAt: [String: String] = [:]
            for line in lines where line["kind"] as? String == "task_completed" {
                if let task = line["task"] as? String, let at = line["at"] as? String { completedAt[task] = at }
            }
            for line in lines where line["kind"] as? String == "task_started" {
                guard let task = line["task"] as? String, let at = line["at"] as? String, let done = completedAt[task] else { continue }
                if at > done { problems.append("\(id) \(task) started at \(at), after its result was committed at \(done)") }
            }
        }
        #expect(problems.isEmpty, "\(problems.prefix(20))")
    }

    @Test func aSingleNodeKilledMidTaskCompletesItsInstancesAfterARestart() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let ledger = try await LedgerServer.start()
        defer { Task { await ledger.stop() } }
        let ports = ClusterProcessTests.freePorts(2)
        let node = NodeProcess(name: "w1", client: ports[0], peer: ports[1], data: temporaryDirectory() + "/w1")
        try FileManager.default.createDirectory(atPath: node.data, withIntermediateDirectories: true)
        defer { node.signal(SIGKILL) }
        try node.start(seeds: [ports[1]], secret: "s", extra: ["--partitions", "4"])
        let port = ports[0]
        var ready = false
        for _ in 0..<100 where !ready {
            ready = (await Self.call(.GET, port, "/v1/instances?limit=1")).0 == 200
            if !ready { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(ready)

        // Bad input is refused with the reason.
        let unknown = await Self.call(.POST, port, "/v1/workflows/nope/instances", #"{"id":"x"}"#)
        #expect(unknown.0 == 404 && (unknown.1["error"] as? [String: Any])?["what"] as? String == "workflow_not_found")
        let badJSON = await Self.call(.POST, port, "/v1/workflows/countdown/instances", "{nope")
        #expect(badJSON.0 == 400)
        let noID = await Self.call(.POST, port, "/v1/workflows/countdown/instances", #"{"input":{"from":1}}"#)
        #expect(noID.0 == 400 && ((noID.1["error"] as? [String: Any])?["message"] as? String ?? "").contains("\"id\""))
        let badPolicy = await Self.call(.POST, port, "/v1/workflows/countdown/instances", #"{"id":"p","conflictPolicy":"maybe"}"#)
        #expect(badPolicy.0 == 400)
        let noInstance = await Self.call(.POST, port, "/v1/instances/ghost/signals/approval", "{}")
        #expect(noInstance.0 == 404)
        let first = await Self.call(.POST, port, "/v1/workflows/countdown/instances?wait=10", #"{"id":"dup","input":{"from":3}}"#)
        #expect(first.0 == 200 && first.1["output"] as? Int == 3)
        let again = await Self.call(.POST, port, "/v1/workflows/countdown/instances", #"{"id":"dup","input":{"from":3}}"#)
        #expect(again.0 == 409)
        let existing = await Self.call(.POST, port, "/v1/workflows/countdown/instances", #"{"id":"dup","input":{"from":3},"conflictPolicy":"useExisting"}"#)
        #expect(existing.0 == 200 && existing.1["status"] as? String == "completed")
        let otherWorkflow = await Self.call(.POST, port, "/v1/workflows/triage/instances", #"{"id":"dup","input":{"kind":"x"},"conflictPolicy":"terminateExisting"}"#)
        #expect(otherWorkflow.0 == 409)  // another definition under the same id: always refused
        let badSignalBody = await Self.call(.POST, port, "/v1/instances/dup/signals/x", "{nope")
        #expect(badSignalBody.0 == 400)

        // Ten instances of ten 100 ms steps; SIGKILL in the middle; restart; all complete.
        let ids = (0..<10).map { "crash-\($0)" }
        for id in ids {
            let started = await Self.call(.POST, port, "/v1/workflows/ledger-steps/instances", #"{"id":"\#(id)","input":{"steps":10,"stepMs":100,"ledger":"\#(ledger.url)"}}"#)
            #expect(started.0 == 202, "\(started)")
        }
        try await Task.sleep(for: .milliseconds(550))
        node.signal(SIGKILL)
        _ = node.process.map { $0.waitUntilExit() }
        let atKill = ledger.all
        #expect(atKill.count > 0)
        try node.start(seeds: [ports[1]], secret: "s", extra: ["--partitions", "4"])
        let statuses = await Self.waitCompleted(ids, ports: [port], within: .seconds(60))
        #expect(ids.allSatisfy { statuses[$0] == "completed" }, "\(statuses)\n\(node.log.suffix(3000))")
        Self.checkExactlyOnce(ledger.all, before: atKill, steps: 10, ids: ids)
        let lines = await Self.timeline(port, ids[0])
        #expect(lines.contains { $0["kind"] as? String == "adopted" }, "\(lines)")
        #expect(lines.filter { $0["kind"] as? String == "task_completed" }.count == 11)
    }

    @Test func aClusterLosesTheOwnerOfManyInstancesAndEveryInstanceCompletesWithEachStepOnce() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let ledger = try await LedgerServer.start()
        defer { Task { await ledger.stop() } }
        let cluster = try ClusterProcessTests.ProcessCluster(3)
        defer { cluster.killAll() }
        let nodes = cluster.nodes
        try cluster.startVoters(extra: ["--partitions", "8"])
        try await KeyValueClusterTests.waitForLeaders(nodes, partitions: 8)
        // Leadership moves while it spreads over the nodes (and an instance's in-flight task
        // runs again on its new owner): start once it has settled, so the kill is the only move.
        var stableSince = ContinuousClock.now
        var last: [String: Int] = [:]
        let settleBy = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < settleBy {
            let v = await KeyValueClusterTests.view(nodes[0])
            let now = Dictionary(grouping: v?.partitions.compactMap(\.leader) ?? [], by: { $0 }).mapValues(\.count)
            if now != last || now.values.reduce(0, +) != 8 || (now.values.max() ?? 0) - (now.values.min() ?? 0) > 1 || now.count != 3 {
                last = now
                stableSince = ContinuousClock.now
            } else if ContinuousClock.now - stableSince > .milliseconds(1500) {
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }

        let count = 200, steps = 6
        let ids = (0..<count).map { "inst-\($0)" }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (i, id) in ids.enumerated() {
                group.addTask {
                    var code = 0
                    for _ in 0..<20 where code != 202 {
                        (code, _) = await Self.call(.POST, nodes[i % 3].client, "/v1/workflows/ledger-steps/instances",
                                                    #"{"id":"\#(id)","input":{"steps":\#(steps),"stepMs":200,"ledger":"\#(ledger.url)"},"conflictPolicy":"useExisting"}"#)
                        if code != 202 && code != 200 { try await Task.sleep(for: .milliseconds(200)) } else { code = 202 }
                    }
                    #expect(code == 202, "starting \(id)")
                }
            }
            try await group.waitForAll()
        }
        // Kill the node leading the most partitions while most instances are mid-flight.
        let view = try #require(await KeyValueClusterTests.view(nodes[0]))
        let leads = Dictionary(grouping: view.partitions.compactMap(\.leader), by: { $0 }).mapValues(\.count)
        let victimName = try #require(leads.max { $0.value < $1.value }?.key)
        let victim = try #require(nodes.first { $0.name == victimName })
        // Under a loaded suite the starts can take longer than an instance's run, so wait (up
        // to 30 s) until the victim is mid-way through some instance: its steps started there
        // and not all are done. Then the kill really interrupts work in flight.
        let waitStart = ContinuousClock.now
        while ContinuousClock.now - waitStart < .seconds(30) {
            let midway = Dictionary(grouping: ledger.all, by: \.instance).values.contains { calls in
                calls.contains { $0.node == victimName } && Set(calls.map(\.step)).count < steps
            }
            if midway { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let killedAt = iso.string(from: Date())
        victim.signal(SIGKILL)
        _ = victim.process.map { $0.waitUntilExit() }
        let atKill = ledger.all
        let survivors = nodes.filter { $0.name != victimName }.map(\.client)
        let statuses = await Self.waitCompleted(ids, ports: survivors, within: .seconds(120))
        let done = ids.filter { statuses[$0] == "completed" }.count
        #expect(done == count, "\(done) of \(count) completed; others: \(statuses.filter { $0.value != "completed" }.prefix(10))\n\(nodes.map { "== \($0.name)\n\($0.log.suffix(2000))" }.joined(separator: "\n"))")
        var timelines: [String: [[String: Any]]] = [:]
        for id in ids { timelines[id] = await Self.timeline(survivors[0], id) }
        // On a starved machine a lease can lapse before the kill and move an instance early
        // (its in-flight task then runs again, as promised): the count below the kill's
        // in-flight step is exact only for instances the kill was the first move of. What
        // holds for every instance is checked on its timeline: no task starts again after
        // its result was committed.
        let movedBeforeKill = Set(ids.filter { id in
            timelines[id]!.contains { ["adopted", "resumed"].contains($0["kind"] as? String) && ($0["at"] as? String ?? "") < killedAt }
        })
        Self.checkExactlyOnce(ledger.all, before: atKill, steps: steps, ids: ids, movedBeforeKill: movedBeforeKill)
        Self.checkNoRunAfterCommit(timelines)
        // SKEIN_DUMP_TIMELINES=FILE keeps every timeline and ledger call, to read a failure by.
        if let dump = ProcessInfo.processInfo.environment["SKEIN_DUMP_TIMELINES"] {
            let data = try JSONSerialization.data(withJSONObject: ["killedAt": killedAt, "victim": victimName, "timelines": timelines,
                                                                    "ledger": ledger.all.map { ["i": $0.instance, "s": $0.step, "n": $0.node, "a": $0.attempt] }])
            try data.write(to: URL(fileURLWithPath: dump))
        }
        // Instances the victim owned show the adoption in their timeline.
        var adopted = 0
        for id in ids {
            let lines = timelines[id]!
            if lines.contains(where: { $0["kind"] as? String == "adopted" }) { adopted += 1 }
            #expect(lines.allSatisfy { $0["node"] is String && $0["epoch"] is Int })
        }
        #expect(adopted > 0, "no instance was adopted")
        // And some instance really moved: its steps ran on the victim, then on a survivor.
        let nodesPerInstance = Dictionary(grouping: ledger.all, by: \.instance).mapValues { Set($0.map(\.node)) }
        #expect(nodesPerInstance.values.contains { $0.contains(victimName) && $0.count > 1 })
    }
}

/// A pipeline step starts and signals a workflow as effects.
@Suite struct WorkflowEffectTests {
    /// A task that finishes quickly costs one log entry: its `task_started` line rides on the
    /// checkpoint of its result, and the timeline lists it before that result.
    @Test func aQuickTaskStartAndResultShareOneCheckpoint() async throws {
        let node = try await TestNode.start(workflows: try BundledWorkflows.all())
        defer { Task { await node.stop() } }
        func entries() async throws -> Int {
            let view = try await node.request("GET", "/v1/cluster").json() as? [String: Any]
            return (view?["log"] as? [String: Any])?["entries"] as? Int ?? -1
        }
        var started = try await node.request("POST", "/v1/workflows/countdown/instances?wait=10", body: #"{"id":"quick-0","input":{"from":2}}"#)
        for _ in 0..<50 where started.status == 503 {
            try await Task.sleep(for: .milliseconds(100))
            started = try await node.request("POST", "/v1/workflows/countdown/instances?wait=10", body: #"{"id":"quick-0","input":{"from":2}}"#)
        }
        #expect(started.status == 200, "\(started.text)")
        // A starved machine may take longer than the window between a task's start and its
        // result; then the line goes on its own. One run in five within it is enough here.
        var runs: [String] = []
        for attempt in 1...5 {
            try await Task.sleep(for: .milliseconds(100))
            let before = try await entries()
            let id = "quick-\(attempt)"
            let run = try await node.request("POST", "/v1/workflows/countdown/instances?wait=10", body: #"{"id":"\#(id)","input":{"from":2}}"#)
            #expect(run.status == 200, "\(run.text)")
            try await Task.sleep(for: .milliseconds(100))
            let added = try await entries() - before
            let lines = try #require(try await node.request("GET", "/v1/instances/\(id)/timeline").json() as? [[String: Any]])
            let kinds = lines.map { "\($0["kind"] as? String ?? "?")\(($0["task"] as? String).map { " " + $0 } ?? "")" }
            runs.append("\(added) entries: \(kinds)")
            // The start and one checkpoint per task (two loop rounds and the count, which completes).
            if added == 4 {
                #expect(kinds == ["started", "task_started tick#1", "task_completed tick#1", "task_started tick#2", "task_completed tick#2",
                                  "task_started count", "task_completed count", "completed"], "\(kinds)")
                return
            }
        }
        Issue.record("no run took one entry per checkpoint: \(runs)")
    }

    @Test func aPipelineStartsAndSignalsAWorkflow() async throws {
        let node = try await TestNode.start(workflows: try BundledWorkflows.all())
        defer { Task { await node.stop() } }
        var started = try await node.request("POST", "/t/approve/order-1")
        for _ in 0..<50 where started.status == 503 || started.status == 500 {
            try await Task.sleep(for: .milliseconds(100))
            started = try await node.request("POST", "/t/approve/order-1")
        }
        #expect(started.status == 202, "\(started.text)")
        #expect(((try? started.json()) as? [String: Any])?["workflow"] as? String == "approval")
        let signalled = try await node.request("POST", "/t/approve/order-1/yes", body: #"{"by":"ada"}"#)
        #expect(signalled.status == 202, "\(signalled.text) \(signalled.headers)")
        var status: [String: Any] = [:]
        for _ in 0..<50 {
            status = (try? await node.request("GET", "/v1/instances/order-1").json()) as? [String: Any] ?? [:]
            if status["status"] as? String == "completed" { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect((status["output"] as? [String: Any])?["approved"] as? [String: String] == ["by": "ada"], "\(status)")
        // A second start under the default policy fails the pipeline with the workflow's 409.
        let again = try await node.request("POST", "/t/approve/order-1")
        #expect(again.status == 409, "\(again.text)")
    }
}
