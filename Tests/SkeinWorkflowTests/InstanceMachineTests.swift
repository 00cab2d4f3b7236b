import Foundation
import SkeinWorkflow
import Synchronization
import Testing

/// Counts how many times each task body ran (to prove a committed task never runs again).
final class Runs: Sendable {
    let counts = Mutex<[String: Int]>([:])
    func hit(_ key: String) { counts.withLock { $0[key, default: 0] += 1 } }
    subscript(_ key: String) -> Int { counts.withLock { $0[key] ?? 0 } }
}

/// Drives an instance the way an owner does: run what is runnable, apply the outcome, move the
/// clock to the next wake time when told to. Every state goes through JSON, as a checkpoint would.
struct Driver {
    let machine: InstanceMachine
    var state: InstanceState
    var now: Int64 = 1_000_000
    var timeline: [TimelineEntry] = []
    var results: [String: Payload] = [:]

    init(_ workflow: Workflow, id: String = "i1", input: some Encodable) throws {
        machine = InstanceMachine(workflow)
        let t = machine.start(id: id, input: try WorkflowCodec.encode(input), now: now)
        state = t.state
        timeline = t.timeline
        results = t.results
        try checkpoint()
    }

    /// Round-trips the state through its stored form, as a failover would. Every state of every
    /// test also checks the direct checkpoint writer: byte for byte what `JSONEncoder` with
    /// sorted keys writes, and read back as the same state.
    mutating func checkpoint() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let stored = state.checkpointJSON()
        #expect(String(decoding: stored, as: UTF8.self) == String(decoding: try encoder.encode(state), as: UTF8.self))
        let back = try JSONDecoder().decode(InstanceState.self, from: Data(stored))
        #expect(back == state)
        state = back
    }

    @discardableResult
    mutating func apply(_ event: InstanceEvent) throws -> Transition {
        let t = machine.apply(event, to: state, now: now)
        state = t.state
        timeline += t.timeline
        results.merge(t.results) { $1 }
        try checkpoint()
        return t
    }

    func runnable() -> [TaskRun] { machine.runnable(state, now: now) }

    /// Runs one task attempt's body and applies its outcome.
    mutating func run(_ task: TaskRun) async throws {
        let (_, body) = try #require(machine.workflow.taskBody(task.node))
        let context = TaskContext(instanceID: state.id, workflow: state.workflow, taskKey: task.key, attempt: task.attempt, node: "test")
        do {
            let output = try await body(task.input, context)
            try apply(.taskCompleted(key: task.key, attempt: task.attempt, output: output, durationMs: 1))
        } catch {
            try apply(.taskFailed(key: task.key, attempt: task.attempt, error: "\(error)", durationMs: 1))
        }
    }

    /// Runs until nothing is runnable; jumps the clock to wake times while `followTimers`.
    mutating func drive(followTimers: Bool = true, limit: Int = 100_000) async throws {
        for _ in 0..<limit {
            if let next = runnable().first {
                try await run(next)
            } else if followTimers, !state.status.isTerminal, state.status != .paused, let wake = state.wakeAt {
                now = max(now, wake)
                try apply(.timer)
            } else {
                return
            }
        }
        Issue.record("instance did not settle")
    }

    func output<T: Decodable>(_ type: T.Type) throws -> T {
        try WorkflowCodec.decode(T.self, from: try #require(state.output))
    }
}

struct Boom: Error, CustomStringConvertible { var description: String { "boom" } }

@Suite("Workflow codec and builder")
struct WorkflowBuilderTests {
    struct Blob: Codable, Equatable { var name: String; var bytes: Data }

    @Test("binary data crosses task boundaries in a JSON envelope and comes back byte for byte")
    func binaryEnvelope() throws {
        let blob = Blob(name: "x", bytes: Data([0, 1, 2, 255]))
        let payload = try WorkflowCodec.encode(blob)
        #expect(payload.description == #"{"bytes":{"$skein_bin":"AAEC/w=="},"name":"x"}"#)
        #expect(try WorkflowCodec.decode(Blob.self, from: payload) == blob)
        // Plain base64 from other encoders is accepted too.
        #expect(try WorkflowCodec.decode(Blob.self, from: Payload(json: Data(#"{"bytes":"AAEC/w==","name":"x"}"#.utf8))) == blob)
        let wrong = #expect(throws: CodecError.self) { try WorkflowCodec.decode(Blob.self, from: Payload(json: Data(#"{"bytes":"AA"}"#.utf8))) }
        #expect(wrong?.description.contains("missing field name") == true)
        #expect(throws: CodecError.self) { try WorkflowCodec.validate(Data("{nope".utf8)) }
    }

    @Test("a loop step's {\"again\": …} is split by scanning, exactly as decoding would, and anything else is left to the decoder")
    func soleMember() throws {
        func split(_ json: String) -> String? {
            WorkflowCodec.soleMember(of: Payload(json: Data(json.utf8))).map { "\($0.key)=\($0.value.description)" }
        }
        #expect(split(#"{"again":{"n":[1,2.5e3,{"s":"}]\"{"}],"t":true,"u":null}}"#) == #"again={"n":[1,2.5e3,{"s":"}]\"{"}],"t":true,"u":null}"#)
        #expect(split(" { \"done\" :\t\"x\\\"y\" }\n") == #"done="x\"y""#)
        #expect(split(#"{"done":-12}"#) == "done=-12")
        #expect(split(#"{"done":[]}"#) == "done=[]")
        // Whatever a loop body encodes through the codec splits into what was encoded.
        let input = BundledLikeInput(steps: 3, stepMs: 0, step: 2)
        let encoded = try WorkflowCodec.encode(LoopResult.again(input))
        let member = try #require(WorkflowCodec.soleMember(of: encoded))
        #expect(member.key == "again")
        #expect(try WorkflowCodec.decode(BundledLikeInput.self, from: member.value) == input)
        // Anything else goes to the full decoder, which names the problem.
        for bad in [#"{"again":1,"done":2}"#, "{}", "[1]", #"{"a":[1}}"#, #"{"a":tru}"#, #"{"a":1"#, #"{"a\u0041":1}"#, #"{"a":1}x"#, #"{"a":"open}"#, #"{"a":{"b" 1}}"#, #"{"a":[1,]}"#, #"{"a":{"b":1,}}"#, #"{"a":[1 2]}"#, #"{"a":01x}"#] {
            #expect(split(bad) == nil, "\(bad)")
        }
    }

    struct BundledLikeInput: Codable, Equatable, Sendable { var steps: Int; var stepMs: Int?; var step: Int? }

    @Test("duplicate ids are refused when the flow is built, anywhere in the tree")
    func duplicates() {
        let twice = flow(Int.self).then("a") { x, _ in x }.then("a") { x, _ in x }
        #expect(throws: FlowError("workflow w: duplicate id \"a\"")) { try twice.build("w") }
        let inFork = flow(Int.self).fork([ForkBranch("a") { (x: Int, _) in x }, ForkBranch("b") { (x: Int, _) in x }])
            .join("a") { r, _ in 0 }
        #expect(throws: FlowError.self) { try inFork.build("w") }
        let badLoop = flow(Int.self).loop("l", maxIterations: 0) { x, _ in .done(x) }
        #expect(throws: FlowError("workflow w: loop l: maxIterations must be at least 1")) { try badLoop.build("w") }
        // A child flow's ids are prefixed, so reusing a flow twice is fine.
        let step = flow(Int.self).then("inc") { x, _ in x + 1 }
        #expect(throws: Never.self) { try flow(Int.self).child("first", step).child("second", step).build("w") }
    }

    @Test("the definition hash is stable and changes with structure and options")
    func definitionHash() throws {
        func make(timeout: Duration?, retries: Int = 0) throws -> Workflow {
            try flow(Int.self).then("a", TaskOptions(timeout: timeout, retry: TaskRetry(maxRetries: retries))) { x, _ in x }.build("w")
        }
        let a = try make(timeout: .seconds(1))
        #expect(a.definitionHash == (try make(timeout: .seconds(1))).definitionHash)
        #expect(a.definitionHash.count == 64)
        #expect(a.definitionHash != (try make(timeout: .seconds(2))).definitionHash)
        #expect(a.definitionHash != (try make(timeout: .seconds(1), retries: 1)).definitionHash)
        #expect(a.definitionHash != (try flow(Int.self).then("b") { x, _ in x }.build("w")).definitionHash)
    }
}

@Suite("Instance state machine")
struct InstanceMachineTests {
    static func sequence(_ runs: Runs) throws -> Workflow {
        try flow(Int.self)
            .then("double") { x, _ in runs.hit("double"); return x * 2 }
            .then("inc") { x, _ in runs.hit("inc"); return x + 1 }
            .then("show") { x, _ in runs.hit("show"); return "n=\(x)" }
            .build("seq")
    }

    @Test("the checkpoint writer escapes what JSONEncoder escapes and leaves out what it leaves out")
    func checkpointWriterEscapes() throws {
        let runs = Runs()
        var d = try Driver(try Self.sequence(runs), input: 20)
        d.state.error = "a \"quoted\" path/to\\it\n\ttab\u{01}\u{1F} é ☃"
        d.state.signalName = "sig/\"n\""
        d.state.signals = ["s\n1": [Payload(json: Data(#"{"a":"/\\"}"#.utf8)), .null], "empty": []]
        d.state.output = Payload(json: Data("[1,2]".utf8))
        d.state.wakeAt = -5
        d.state.version = UInt64.max
        d.state.frames["x/y"] = Frame(kind: .route, input: nil)
        d.state.frames["x/y"]!.chosen = "b\u{7F}"
        d.state.frames["x/y"]!.done = ["z": .null, "a": Payload(json: Data("\"s\"".utf8))]
        try d.checkpoint()
        #expect(d.state.version == UInt64.max)
        #expect(d.state.frames["x/y"]?.done?["a"]?.description == "\"s\"")
    }

    @Test("a sequence runs task by task and completes with the last output; results are kept")
    func sequence() async throws {
        let runs = Runs()
        var d = try Driver(try Self.sequence(runs), input: 20)
        #expect(d.state.status == .inProgress)
        #expect(d.runnable().map(\.key) == ["double"])
        try await d.drive()
        #expect(d.state.status == .completed)
        #expect(try d.output(String.self) == "n=41")
        #expect(d.state.completedTasks == 3)
        #expect(d.results["inc"]?.description == "41")
        #expect(d.state.frames.isEmpty)
        #expect(d.timeline.map(\.kind) == ["started", "task_completed", "task_completed", "task_completed", "completed"])
    }

    @Test("a resumed instance goes on from its checkpoint and never re-runs a committed task")
    func resumeSkipsCommittedTasks() async throws {
        let runs = Runs()
        let workflow = try Self.sequence(runs)
        var d = try Driver(workflow, input: 1)
        try await d.run(d.runnable()[0])
        // The owner dies while "inc" runs: its result never arrives. A new owner takes the state.
        let inFlight = d.runnable()[0]
        #expect(inFlight.key == "inc")
        var survivor = Driver(machine: InstanceMachine(workflow), state: d.state)
        try survivor.checkpoint()
        #expect(survivor.runnable().map(\.key) == ["inc"])
        try await survivor.drive()
        #expect(try survivor.output(String.self) == "n=3")
        #expect(runs["double"] == 1 && runs["inc"] == 1 && runs["show"] == 1)
        // The dead owner's late result for an attempt already done is ignored.
        let late = survivor.machine.apply(.taskCompleted(key: "inc", attempt: 1, output: Payload(json: Data("99".utf8)), durationMs: 1),
                                          to: survivor.state, now: survivor.now)
        #expect(!late.changed && late.state == survivor.state)
    }

    @Test("failed attempts are retried with backoff; attempts and the next try survive a failover; then the instance fails")
    func retries() async throws {
        let failures = Mutex(2)
        let w = try flow(Int.self)
            .then("flaky", TaskOptions(retry: TaskRetry(maxRetries: 3, initialDelay: .seconds(1), multiplier: 2))) { (x: Int, ctx) in
                if failures.withLock({ f in f -= 1; return f >= 0 }) { throw Boom() }
                return ctx.attempt
            }.build("flaky")
        var d = try Driver(w, input: 0)
        try await d.run(d.runnable()[0])
        #expect(d.state.status == .waiting)
        #expect(d.state.wakeAt == d.now + 1000)
        #expect(d.runnable().isEmpty)
        try d.checkpoint()  // a failover here keeps attempt 2 and its time
        d.now += 999
        #expect(d.runnable().isEmpty)
        d.now += 1
        try d.apply(.timer)
        #expect(d.runnable().map(\.attempt) == [2])
        try await d.run(d.runnable()[0])
        #expect(d.state.wakeAt == d.now + 2000)
        try await d.drive()
        #expect(try d.output(Int.self) == 3)
        #expect(d.timeline.filter { $0.kind == "retry_scheduled" }.map(\.attempt) == [2, 3])

        let always = try flow(Int.self).then("bad", TaskOptions(retry: TaskRetry(maxRetries: 1, initialDelay: .milliseconds(10)))) { (_: Int, _) -> Int in throw Boom() }.build("bad")
        var e = try Driver(always, input: 0)
        try await e.drive()
        #expect(e.state.status == .failed)
        #expect(e.state.error == "task bad failed after 2 attempts: boom")
    }

    @Test("fork branches are runnable together, each finished branch is kept, a failover re-runs only the unfinished one")
    func fork() async throws {
        let runs = Runs()
        let w = try flow(Int.self)
            .fork([
                ForkBranch("a") { (x: Int, _) in runs.hit("a"); return x + 1 },
                ForkBranch("b", flow(Int.self).then("b1") { x, _ in runs.hit("b1"); return x * 10 }.then("b2") { x, _ in runs.hit("b2"); return x * 10 }),
            ])
            .join("sum") { r, _ in try r.value("a", as: Int.self) + r.value("b", as: Int.self) }
            .build("fork")
        var d = try Driver(w, input: 1)
        #expect(Set(d.runnable().map(\.key)) == ["a", "b1"])
        try await d.run(d.runnable().first { $0.key == "a" }!)
        #expect(d.state.frames["sum.fork"]?.done?["a"]?.description == "2")
        // Failover with b1 in flight: only b1 (then b2) run again; a is done.
        var survivor = Driver(machine: InstanceMachine(w), state: d.state)
        #expect(survivor.runnable().map(\.key) == ["b1"])
        try await survivor.drive()
        #expect(try survivor.output(Int.self) == 102)
        #expect(runs["a"] == 1 && runs["b1"] == 1 && runs["b2"] == 1)
    }

    @Test("a fan-out runs as many copies as the value asks for, all at once, and joins them in order")
    func fanOut() async throws {
        let w = try flow(Int.self)
            .fanOut("copy", count: { $0 }) { (i: Int, _: Int) in i * 10 }
            .join("sum") { r, _ in try r.ordered(as: Int.self).reduce(0, +) }
            .build("fanout")
        var d = try Driver(w, input: 4)
        #expect(d.runnable().map(\.key) == ["copy[0]", "copy[1]", "copy[2]", "copy[3]"])
        try await d.drive()
        #expect(try d.output(Int.self) == 60)
        var none = try Driver(w, input: 0)
        try await none.drive()
        #expect(try none.output(Int.self) == 0)
        // A delay computed from the value.
        let nap = try flow(Int.self).delay("nap") { .milliseconds($0) }.build("nap")
        let n = try Driver(nap, input: 250)
        #expect(n.state.wakeAt == n.now + 250)
    }

    @Test("a timeout's deadline is durable: fixed when the attempt becomes runnable, kept across a failover, new for a retry and for each loop round")
    func durableDeadlines() async throws {
        let w = try flow(Int.self)
            .then("slow", TaskOptions(timeout: .seconds(30), retry: TaskRetry(maxRetries: 1, initialDelay: .seconds(1)))) { (x: Int, ctx) in
                if ctx.attempt == 1 { throw Boom() }
                return x
            }
            .loop("round", maxIterations: 10, TaskOptions(timeout: .seconds(5))) { x, _ in x >= 2 ? .done(x) : .again(x + 1) }
            .build("deadlines")
        var d = try Driver(w, input: 0)
        let started = d.now
        #expect(d.runnable().map(\.deadline) == [started + 30_000])
        // Time passes and the owner dies mid-attempt: the next owner sees the same deadline.
        d.now += 12_000
        try d.checkpoint()
        #expect(d.runnable().map(\.deadline) == [started + 30_000])
        // The attempt fails; the retry gets its own deadline once it becomes runnable.
        try await d.run(d.runnable()[0])
        #expect(d.runnable().isEmpty)
        d.now += 1_000
        try d.apply(.timer)
        #expect(d.runnable().map(\.attempt) == [2])
        #expect(d.runnable().map(\.deadline) == [d.now + 30_000])
        try await d.run(d.runnable()[0])
        // Each round of the loop has a deadline of its own.
        let first = try #require(d.runnable().first)
        #expect(first.key == "round#1" && first.deadline == d.now + 5_000)
        d.now += 100
        try await d.run(first)
        #expect(d.runnable().first.map { ($0.key, $0.deadline) } ?? ("", nil) == ("round#2", d.now + 5_000))
        try await d.drive()
        #expect(d.state.status == .completed)
        // A task without a timeout has no deadline.
        var plain = try Driver(try flow(Int.self).then("a") { (x: Int, _) in x }.build("plain"), input: 1)
        #expect(plain.runnable().map(\.deadline) == [nil])
        try await plain.drive()
        #expect(plain.state.status == .completed)
    }

    @Test("loops go round until done; at the maximum they fail or leave with the last value")
    func loops() async throws {
        let countdown = try flow(Int.self).loop("tick", maxIterations: 100) { x, _ in x <= 1 ? .done(0) : .again(x - 1) }.build("c")
        var d = try Driver(countdown, input: 5)
        try await d.drive()
        #expect(d.state.status == .completed && d.state.completedTasks == 5)
        #expect(d.results.keys.sorted() == ["tick#1", "tick#2", "tick#3", "tick#4", "tick#5"])

        let capped = try flow(Int.self).loop("l", maxIterations: 3) { x, _ in .again(x + 1) }.build("c")
        var f = try Driver(capped, input: 0)
        try await f.drive()
        #expect(f.state.error == "loop l reached its maximum of 3 iterations")
        let exits = try flow(Int.self).loop("l", maxIterations: 3, onMax: .exitWithLast) { x, _ in .again(x + 1) }.build("c")
        var g = try Driver(exits, input: 0)
        try await g.drive()
        #expect(try g.output(Int.self) == 3)
    }

    @Test("the checkpoint does not grow with the number of steps done")
    func constantCheckpoint() async throws {
        let long = try flow(Int.self).loop("step", maxIterations: 1_000_000) { x, _ in x >= 5_000 ? .done(x) : .again(x + 1) }.build("long")
        var d = try Driver(long, input: 0)
        var sizes: [Int: Int] = [:]
        while let task = d.runnable().first {
            try await d.run(task)
            if d.state.completedTasks == 10 || d.state.completedTasks == 4_999 {
                sizes[d.state.completedTasks] = try JSONEncoder().encode(d.state).count
            }
        }
        #expect(d.state.status == .completed)
        let small = try #require(sizes[10]), large = try #require(sizes[4_999])
        #expect(large <= small + 8, "checkpoint at step 10: \(small) bytes, at step 4,999: \(large) bytes")
    }

    @Test("route takes the branch named by its key, else the default; with neither the instance fails")
    func route() async throws {
        func triage(default hasDefault: Bool) throws -> Workflow {
            try flow(String.self)
                .route("kind", key: { $0 },
                       branches: ["billing": flow(String.self).then("bill") { _, _ in "billing" },
                                  "tech": flow(String.self).then("fix") { _, _ in "tech" }],
                       default: hasDefault ? flow(String.self).then("other") { _, _ in "other" } : nil)
                .build("triage")
        }
        for (kind, expected) in [("billing", "billing"), ("tech", "tech"), ("cats", "other")] {
            var d = try Driver(try triage(default: true), input: kind)
            try await d.drive()
            #expect(try d.output(String.self) == expected)
            #expect(d.results["kind"]?.description == "\"\(kind)\"")
        }
        var d = try Driver(try triage(default: false), input: "cats")
        try await d.drive()
        #expect(d.state.error == "route kind has no branch \"cats\" and no default")
    }

    @Test("a delay is durable: waiting with its wake time, moving on only when the time has come")
    func delay() async throws {
        let w = try flow(Int.self).delay("nap", .seconds(60)).then("after") { x, _ in x + 1 }.build("d")
        var d = try Driver(w, input: 1)
        #expect(d.state.status == .waiting && d.state.wakeAt == d.now + 60_000)
        d.now += 59_999
        #expect(!(try d.apply(.timer)).changed)
        d.now += 1
        try d.apply(.timer)
        #expect(d.runnable().map(\.key) == ["after"])
        try await d.drive()
        #expect(try d.output(Int.self) == 2)
    }

    static let approval = try! flow(Int.self)
        .waitForSignal("first", "approve", as: String.self)
        .waitForSignal("second", "approve", as: String.self, timeout: .seconds(10))
        .then("done") { (s: String?, _) in s ?? "timed out" }
        .build("approval")

    @Test("signals sent early are buffered and consumed first in, first out; a timeout goes on with null")
    func signals() async throws {
        var d = try Driver(Self.approval, input: 0)
        #expect(d.state.status == .awaitingSignal && d.state.signalName == "approve")
        // Two signals: the first wait takes the first, the second is buffered for the next wait.
        try d.apply(.signal(name: "approve", payload: try WorkflowCodec.encode("one")))
        #expect(d.state.frames["second"] != nil)
        // It is waiting on "second" now, with a timeout.
        #expect(d.state.status == .awaitingSignal && d.state.wakeAt == d.now + 10_000)
        try d.apply(.signal(name: "approve", payload: try WorkflowCodec.encode("two")))
        try await d.drive()
        #expect(try d.output(String.self) == "two")

        var early = try Driver(try flow(Int.self).delay("wait", .seconds(1)).waitForSignal("s", "go", as: Int.self).then("t") { x, _ in x ?? -1 }.build("early"), input: 0)
        try early.apply(.signal(name: "go", payload: try WorkflowCodec.encode(7)))
        try early.apply(.signal(name: "go", payload: try WorkflowCodec.encode(8)))
        #expect(early.state.signals["go"]?.count == 2)
        try await early.drive()
        #expect(try early.output(Int.self) == 7)
        #expect(early.state.status == .completed)

        var t = try Driver(Self.approval, input: 0)
        try t.apply(.signal(name: "approve", payload: try WorkflowCodec.encode("one")))
        try await t.drive()
        #expect(try t.output(String.self) == "timed out")
        #expect(t.timeline.contains { $0.kind == "signal_timeout" })
    }

    @Test("pause and cancel wait for the task boundary; cancel beats pause; unpause goes on")
    func pauseAndCancel() async throws {
        let runs = Runs()
        var d = try Driver(try Self.sequence(runs), input: 1)
        let running = d.runnable()[0]
        try d.apply(.pause(reason: "review"))
        #expect(d.state.status == .inProgress && d.state.pauseRequested)
        #expect(d.runnable().isEmpty)  // nothing new starts
        try await d.run(running)       // the boundary
        #expect(d.state.status == .paused)
        #expect(d.state.completedTasks == 1)
        try d.apply(.unpause)
        #expect(d.state.status == .inProgress && d.runnable().map(\.key) == ["inc"])
        // Cancel and pause together: cancel wins at the boundary.
        let next = d.runnable()[0]
        try d.apply(.pause(reason: nil))
        try d.apply(.cancel(reason: "customer"))
        try await d.run(next)
        #expect(d.state.status == .cancelled)
        #expect(d.runnable().isEmpty)
        #expect(d.machine.apply(.signal(name: "x", payload: .null), to: d.state, now: d.now).refused == "instance i1 is cancelled")
        // An instance waiting on a delay is cancelled at once.
        var w = try Driver(try flow(Int.self).delay("nap", .seconds(60)).build("nap"), input: 0)
        try w.apply(.cancel(reason: nil))
        #expect(w.state.status == .cancelled)
        // A paused instance resumes with `resume`, too.
        var p = try Driver(try flow(Int.self).delay("nap", .seconds(1)).then("x") { x, _ in x }.build("p"), input: 0)
        try p.apply(.pause(reason: nil))
        #expect(p.state.status == .paused)
        p.now += 5_000
        try p.apply(.timer)
        #expect(p.state.status == .paused && p.runnable().isEmpty)
        try p.apply(.resume)
        #expect(p.runnable().map(\.key) == ["x"])
    }

    @Test("conflict policies: fail refuses, useExisting answers the existing one, terminateExisting restarts; another definition is always refused")
    func conflicts() throws {
        let runs = Runs()
        let w = try Self.sequence(runs)
        let existing = InstanceMachine(w).start(id: "x", input: Payload(json: Data("1".utf8)), now: 0).state
        #expect(InstanceMachine.decide(existing: nil, policy: .fail, workflow: w) == .start)
        guard case .conflict = InstanceMachine.decide(existing: existing, policy: .fail, workflow: w) else { Issue.record("fail must refuse"); return }
        #expect(InstanceMachine.decide(existing: existing, policy: .useExisting, workflow: w) == .existing)
        #expect(InstanceMachine.decide(existing: existing, policy: .terminateExisting, workflow: w) == .start)
        let other = try flow(Int.self).then("double", TaskOptions(timeout: .seconds(1))) { x, _ in x }.build("seq")
        for policy in [ConflictPolicy.fail, .useExisting, .terminateExisting] {
            guard case .conflict(let why) = InstanceMachine.decide(existing: existing, policy: policy, workflow: other) else {
                Issue.record("a definition mismatch must be refused under \(policy)"); continue
            }
            #expect(why.contains("definition"))
        }
    }
}

extension Driver {
    init(machine: InstanceMachine, state: InstanceState) {
        self.machine = machine
        self.state = state
    }
}
