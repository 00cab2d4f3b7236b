import Foundation

/// How a task is retried after it fails: `maxRetries` more attempts, the n-th waiting
/// `initialDelay · multiplier^(n−1)`, at most `maxDelay`. Attempt counts and the time of the next
/// attempt are part of the instance's checkpoint, so they survive a failover.
public struct TaskRetry: Sendable, Hashable, Codable {
    public var maxRetries: Int
    public var initialDelay: Duration
    public var multiplier: Double
    public var maxDelay: Duration

    public init(maxRetries: Int = 0, initialDelay: Duration = .seconds(1), multiplier: Double = 2, maxDelay: Duration = .seconds(60)) {
        self.maxRetries = max(0, maxRetries)
        self.initialDelay = initialDelay
        self.multiplier = max(1, multiplier)
        self.maxDelay = maxDelay
    }

    /// The wait before attempt `attempt + 1`, after attempt `attempt` (counted from 1) failed.
    public func delay(after attempt: Int) -> Duration {
        let ms = Double(initialDelay.milliseconds) * pow(multiplier, Double(max(0, attempt - 1)))
        return .milliseconds(Int64(min(ms, Double(maxDelay.milliseconds))))
    }
}

/// A task's options: a timeout per attempt, retries, and tags (for people and dashboards).
public struct TaskOptions: Sendable, Hashable {
    public var timeout: Duration?
    public var retry: TaskRetry
    public var tags: [String]

    public init(timeout: Duration? = nil, retry: TaskRetry = TaskRetry(), tags: [String] = []) {
        self.timeout = timeout
        self.retry = retry
        self.tags = tags
    }
}

/// What a running task knows about itself.
public struct TaskContext: Sendable {
    public let instanceID: String
    public let workflow: String
    /// The task's key within the instance (its id; a loop body's is `id#iteration`).
    public let taskKey: String
    /// Counted from 1; a task re-run after its owner died keeps its attempt number.
    public let attempt: Int
    /// The node running it (its name), for tasks that report where they ran.
    public let node: String

    public init(instanceID: String, workflow: String, taskKey: String, attempt: Int, node: String) {
        self.instanceID = instanceID
        self.workflow = workflow
        self.taskKey = taskKey
        self.attempt = attempt
        self.node = node
    }
}

public typealias TaskBody = @Sendable (Payload, TaskContext) async throws -> Payload

/// A loop body's answer: go round again with a new value, or leave the loop with one.
public enum LoopResult<Value: Codable & Sendable>: Codable, Sendable {
    case again(Value)
    case done(Value)

    enum Key: String, CodingKey { case again, done }

    // `{"again": value}` or `{"done": value}`: what the machine reads between iterations.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        if let v = try c.decodeIfPresent(Value.self, forKey: .again) { self = .again(v) }
        else { self = .done(try c.decode(Value.self, forKey: .done)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        switch self {
        case .again(let v): try c.encode(v, forKey: .again)
        case .done(let v): try c.encode(v, forKey: .done)
        }
    }
}

/// What a loop does when it reaches its maximum number of iterations.
public enum LoopOnMax: String, Sendable, Hashable, Codable {
    case fail
    case exitWithLast
}

/// One node of a flow, type-erased (the typed ``Flow`` builder makes these).
public indirect enum FlowNode: Sendable {
    case task(TaskNode)
    case sequence(id: String, [FlowNode])
    case fork(id: String, branches: [Branch], join: TaskNode)
    case loop(LoopNode)
    case route(RouteNode)
    case delay(id: String, DurationSpec)
    case signal(id: String, name: String, timeout: DurationSpec?)
    /// A fork over a number of copies of one task decided by the value (`id[i]` each).
    case map(MapNode)

    public struct MapNode: Sendable {
        public var id: String
        public var options: TaskOptions
        public var count: @Sendable (Payload) throws -> Int
        /// Receives `{"index": i, "value": v}`.
        public var body: TaskBody
        public var join: TaskNode
    }

    public struct TaskNode: Sendable {
        public var id: String
        public var options: TaskOptions
        public var body: TaskBody
    }

    public struct Branch: Sendable {
        public var name: String
        public var node: FlowNode
    }

    public struct LoopNode: Sendable {
        public var id: String
        public var options: TaskOptions
        public var maxIterations: Int
        public var onMax: LoopOnMax
        public var body: TaskBody
    }

    public struct RouteNode: Sendable {
        public var id: String
        public var key: @Sendable (Payload) throws -> String
        public var branches: [Branch]
        public var defaultBranch: FlowNode?
    }

    public var id: String {
        switch self {
        case .task(let t): t.id
        case .sequence(let id, _), .fork(let id, _, _), .delay(let id, _), .signal(let id, _, _): id
        case .loop(let l): l.id
        case .route(let r): r.id
        case .map(let m): m.id
        }
    }
}

/// A duration fixed in the flow, or computed from the value when the node is reached (and
/// then kept in the checkpoint).
public struct DurationSpec: Sendable {
    let fixed: Duration?
    let compute: @Sendable (Payload) throws -> Duration?

    public static func fixed(_ d: Duration) -> DurationSpec { DurationSpec(fixed: d, compute: { _ in d }) }

    var canonical: String { fixed.map { "\($0.milliseconds)ms" } ?? "computed" }
}

/// Why a flow cannot be built.
public struct FlowError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A typed flow from `Input` to `Output`: a sequence of nodes, built one call at a time.
/// `build(_:)` checks it (unique ids, sensible options) and computes its definition hash.
public struct Flow<Input: Codable & Sendable, Output: Codable & Sendable>: Sendable {
    var nodes: [FlowNode]
    var problems: [String]

    init(nodes: [FlowNode], problems: [String] = []) {
        self.nodes = nodes
        self.problems = problems
    }

    private func adding<Next>(_ node: FlowNode, problem: String? = nil) -> Flow<Input, Next> {
        Flow<Input, Next>(nodes: nodes + [node], problems: problems + (problem.map { [$0] } ?? []))
    }

    /// A task: `body` receives the previous value and returns the next.
    public func then<Next: Codable & Sendable>(_ id: String, _ options: TaskOptions = TaskOptions(),
                                               _ body: @escaping @Sendable (Output, TaskContext) async throws -> Next) -> Flow<Input, Next> {
        adding(.task(.init(id: id, options: options, body: Self.erase(body))))
    }

    /// Runs every branch on the current value at once (each branch's progress is
    /// checkpointed on its own), then `join`s their results.
    public func fork(_ branches: [ForkBranch<Output>]) -> ForkStage<Input, Output> {
        ForkStage(flow: self, branches: branches)
    }

    /// Runs `body` again and again: `.again(v)` goes round with `v`, `.done(v)` leaves with
    /// `v`. Each iteration is a checkpoint. After `maxIterations` the loop fails or leaves
    /// with the last value (`onMax`).
    public func loop(_ id: String, maxIterations: Int = 10, onMax: LoopOnMax = .fail, _ options: TaskOptions = TaskOptions(),
                     _ body: @escaping @Sendable (Output, TaskContext) async throws -> LoopResult<Output>) -> Flow<Input, Output> {
        let node = FlowNode.loop(.init(id: id, options: options, maxIterations: maxIterations, onMax: onMax, body: Self.erase(body)))
        return adding(node, problem: maxIterations >= 1 ? nil : "loop \(id): maxIterations must be at least 1")
    }

    /// Picks a branch by `key` of the current value (a pure function: its answer is
    /// checkpointed), or `default` when no branch has that key (no default: the instance fails).
    public func route<Next: Codable & Sendable>(_ id: String, key: @escaping @Sendable (Output) throws -> String,
                                                branches: [String: Flow<Output, Next>], default fallback: Flow<Output, Next>? = nil) -> Flow<Input, Next> {
        let keyFunction: @Sendable (Payload) throws -> String = { payload in try key(try WorkflowCodec.decode(Output.self, from: payload)) }
        let erased = branches.keys.sorted().map { name in
            FlowNode.Branch(name: name, node: .sequence(id: "\(id)/\(name)", branches[name]!.nodes))
        }
        let problems = branches.values.flatMap(\.problems) + (fallback?.problems ?? [])
        var next: Flow<Input, Next> = adding(.route(.init(id: id, key: keyFunction, branches: erased,
                                                          defaultBranch: fallback.map { .sequence(id: "\(id)/default", $0.nodes) })),
                                             problem: branches.isEmpty && fallback == nil ? "route \(id) has no branches" : nil)
        next.problems += problems
        return next
    }

    /// Waits `duration` durably (the wake time is in the checkpoint), passing the value on.
    public func delay(_ id: String, _ duration: Duration) -> Flow<Input, Output> {
        adding(.delay(id: id, .fixed(duration)), problem: duration >= .zero ? nil : "delay \(id) is negative")
    }

    /// A durable delay whose length comes from the value (computed once, when reached).
    public func delay(_ id: String, _ duration: @escaping @Sendable (Output) throws -> Duration) -> Flow<Input, Output> {
        adding(.delay(id: id, DurationSpec(fixed: nil, compute: { try duration(try WorkflowCodec.decode(Output.self, from: $0)) })))
    }

    /// Waits for the signal `name` and goes on with its payload (nil when `timeout` passes
    /// first). A signal sent before the instance waits is kept and consumed in order.
    public func waitForSignal<Payload: Codable & Sendable>(_ id: String, _ name: String, as: Payload.Type, timeout: Duration? = nil) -> Flow<Input, Payload?> {
        adding(.signal(id: id, name: name, timeout: timeout.map { .fixed($0) }), problem: name.isEmpty ? "signal \(id) has an empty name" : nil)
    }

    /// Waits for a signal with a timeout computed from the value (nil: no timeout).
    public func waitForSignal<Payload: Codable & Sendable>(_ id: String, _ name: String, as: Payload.Type,
                                                           timeout: @escaping @Sendable (Output) throws -> Duration?) -> Flow<Input, Payload?> {
        adding(.signal(id: id, name: name, timeout: DurationSpec(fixed: nil, compute: { try timeout(try WorkflowCodec.decode(Output.self, from: $0)) })),
               problem: name.isEmpty ? "signal \(id) has an empty name" : nil)
    }

    /// Runs `count(value)` copies of one task at once (copy i gets `i` and the value), then
    /// joins their results (by index: `results.value("0", …)`, or `ordered`).
    public func fanOut<Item: Codable & Sendable>(_ id: String, count: @escaping @Sendable (Output) throws -> Int, _ options: TaskOptions = TaskOptions(),
                                                 _ body: @escaping @Sendable (Int, Output) async throws -> Item) -> FanOutStage<Input, Output> {
        FanOutStage(flow: self, id: id, options: options,
                    count: { try count(try WorkflowCodec.decode(Output.self, from: $0)) },
                    body: Flow<FanOutItem<Output>, FanOutItem<Output>>.erase { (item: FanOutItem<Output>, _) in try await body(item.index, item.value) })
    }

    /// Runs another flow here, inline (its ids are prefixed with `id/`).
    public func child<Next: Codable & Sendable>(_ id: String, _ flow: Flow<Output, Next>) -> Flow<Input, Next> {
        var next: Flow<Input, Next> = adding(.sequence(id: id, flow.nodes.map { Self.prefixed($0, with: id + "/") }))
        next.problems += flow.problems
        return next
    }

    /// Checks the flow and fixes its definition hash.
    public func build(_ name: String) throws(FlowError) -> Workflow {
        guard !name.isEmpty else { throw FlowError("a workflow needs a name") }
        if let first = problems.first { throw FlowError("workflow \(name): \(first)") }
        let root = FlowNode.sequence(id: "$root", nodes)
        var seen: Set<String> = []
        var duplicates: [String] = []
        Workflow.walk(root) { node in
            if !seen.insert(node.id).inserted { duplicates.append(node.id) }
            if case .fork(_, _, let join) = node, !seen.insert(join.id).inserted { duplicates.append(join.id) }
            if case .map(let m) = node, !seen.insert(m.join.id).inserted { duplicates.append(m.join.id) }
        }
        if let d = duplicates.first { throw FlowError("workflow \(name): duplicate id \"\(d)\"") }
        return Workflow(name: name, root: root)
    }

    static func erase<In: Codable & Sendable, Out: Codable & Sendable>(_ body: @escaping @Sendable (In, TaskContext) async throws -> Out) -> TaskBody {
        { payload, context in
            let input = try WorkflowCodec.decode(In.self, from: payload)
            return try WorkflowCodec.encode(try await body(input, context))
        }
    }

    static func prefixed(_ node: FlowNode, with prefix: String) -> FlowNode {
        switch node {
        case .task(var t): t.id = prefix + t.id; return .task(t)
        case .sequence(let id, let nodes): return .sequence(id: prefix + id, nodes.map { prefixed($0, with: prefix) })
        case .fork(let id, let branches, var join):
            join.id = prefix + join.id
            return .fork(id: prefix + id, branches: branches.map { .init(name: $0.name, node: prefixed($0.node, with: prefix)) }, join: join)
        case .loop(var l): l.id = prefix + l.id; return .loop(l)
        case .route(var r):
            r.id = prefix + r.id
            r.branches = r.branches.map { .init(name: $0.name, node: prefixed($0.node, with: prefix)) }
            r.defaultBranch = r.defaultBranch.map { prefixed($0, with: prefix) }
            return .route(r)
        case .delay(let id, let d): return .delay(id: prefix + id, d)
        case .signal(let id, let name, let timeout): return .signal(id: prefix + id, name: name, timeout: timeout)
        case .map(var m): m.id = prefix + m.id; m.join.id = prefix + m.join.id; return .map(m)
        }
    }
}

/// Starts a flow taking `Input`.
public func flow<Input: Codable & Sendable>(_ input: Input.Type) -> Flow<Input, Input> {
    Flow(nodes: [])
}

/// One branch of a fork: a name and a flow from the fork's value.
public struct ForkBranch<Input: Codable & Sendable>: Sendable {
    let name: String
    let nodes: [FlowNode]
    let problems: [String]

    public init<Output>(_ name: String, _ flow: Flow<Input, Output>) {
        self.name = name
        nodes = flow.nodes
        problems = flow.problems
    }

    /// A branch of one task, whose id is the branch's name.
    public init<Output: Codable & Sendable>(_ name: String, _ options: TaskOptions = TaskOptions(),
                                            _ body: @escaping @Sendable (Input, TaskContext) async throws -> Output) {
        self.init(name, flow(Input.self).then(name, options, body))
    }
}

/// The results of a fork's branches, by branch name, for its join.
public struct ForkResults: Codable, Sendable {
    public let values: [String: Payload]

    public init(values: [String: Payload]) { self.values = values }

    public func value<T: Decodable>(_ branch: String, as type: T.Type) throws -> T {
        guard let payload = values[branch] else { throw CodecError("no branch \"\(branch)\" (branches: \(values.keys.sorted().joined(separator: ", ")))") }
        return try WorkflowCodec.decode(T.self, from: payload)
    }

    public init(from decoder: any Decoder) throws {
        // A fork's join receives `{"branch": value, …}`: keep each value's JSON as it is.
        let container = try decoder.singleValueContainer()
        let object = try container.decode([String: JSONFragment].self)
        values = object.mapValues { Payload(json: $0.json) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(values.mapValues { JSONFragment(json: $0.json) })
    }
}

/// Any JSON value, kept as its bytes (re-encoded canonically).
struct JSONFragment: Codable, Sendable {
    var json: Data

    init(json: Data) { self.json = json }

    init(from decoder: any Decoder) throws {
        let value = try decoder.singleValueContainer().decode(AnyJSON.self)
        json = try JSONSerialization.data(withJSONObject: value.object, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes])
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(try JSONDecoder().decode(AnyJSON.self, from: json))
    }
}

/// A JSON value decoded generically.
enum AnyJSON: Codable, Sendable {
    case null, bool(Bool), number(Double), integer(Int64), string(String), array([AnyJSON]), object([String: AnyJSON])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .integer(i) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([AnyJSON].self) { self = .array(a) }
        else { self = .object(try c.decode([String: AnyJSON].self)) }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let d): try c.encode(d)
        case .integer(let i): try c.encode(i)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    var object: Any {
        switch self {
        case .null: NSNull()
        case .bool(let b): b
        case .number(let d): d
        case .integer(let i): i
        case .string(let s): s
        case .array(let a): a.map(\.object)
        case .object(let o): o.mapValues(\.object)
        }
    }
}

/// The result of `fork(...)`: name the join.
public struct ForkStage<Input: Codable & Sendable, Value: Codable & Sendable>: Sendable {
    let flow: Flow<Input, Value>
    let branches: [ForkBranch<Value>]

    /// Combines the branches' results (by branch name) into the next value.
    public func join<Next: Codable & Sendable>(_ id: String, _ options: TaskOptions = TaskOptions(),
                                               _ body: @escaping @Sendable (ForkResults, TaskContext) async throws -> Next) -> Flow<Input, Next> {
        let forkID = "\(id).fork"
        let node = FlowNode.fork(id: forkID, branches: branches.map { .init(name: $0.name, node: .sequence(id: "\(forkID)/\($0.name)", $0.nodes)) },
                                 join: .init(id: id, options: options, body: Flow<ForkResults, ForkResults>.erase(body)))
        var problems = flow.problems + branches.flatMap(\.problems)
        if branches.isEmpty { problems.append("fork \(id) has no branches") }
        if Set(branches.map(\.name)).count != branches.count { problems.append("fork \(id) has two branches with one name") }
        return Flow<Input, Next>(nodes: flow.nodes + [node], problems: problems)
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (s, atto) = components
        return s * 1000 + atto / 1_000_000_000_000_000
    }
}

/// What a fan-out copy receives.
public struct FanOutItem<Value: Codable & Sendable>: Codable, Sendable {
    public var index: Int
    public var value: Value
}

/// The result of `fanOut(...)`: name the join.
public struct FanOutStage<Input: Codable & Sendable, Value: Codable & Sendable>: Sendable {
    let flow: Flow<Input, Value>
    let id: String
    let options: TaskOptions
    let count: @Sendable (Payload) throws -> Int
    let body: TaskBody

    public func join<Next: Codable & Sendable>(_ joinID: String, _ options: TaskOptions = TaskOptions(),
                                               _ body: @escaping @Sendable (ForkResults, TaskContext) async throws -> Next) -> Flow<Input, Next> {
        let node = FlowNode.map(.init(id: id, options: self.options, count: count, body: self.body,
                                      join: .init(id: joinID, options: options, body: Flow<ForkResults, ForkResults>.erase(body))))
        return Flow<Input, Next>(nodes: flow.nodes + [node], problems: flow.problems)
    }
}

extension ForkResults {
    /// A fan-out's results in index order.
    public func ordered<T: Decodable>(as type: T.Type) throws -> [T] {
        try values.keys.compactMap(Int.init).sorted().map { try value(String($0), as: T.self) }
    }
}
