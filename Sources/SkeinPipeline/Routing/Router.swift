/// Collects routes and middleware, validates every pipeline, and builds a ``Router``.
///
/// ```swift
/// var routes = RouterBuilder()
/// routes.use(requestID)                                  // global before-steps
/// routes.add(.get, "/blog/posts/:id", before: [auth], steps: [parseID, loadPost])
/// let router = try routes.build()                        // rejects read-before-write
/// ```
public struct RouterBuilder: Sendable {
    var global: [Step] = []
    var routes: [(method: String, pattern: String, before: [Step], steps: [Step])] = []

    public init() {}

    /// Adds global before-steps, run before every route's own.
    public mutating func use(_ steps: Step...) { global.append(contentsOf: steps) }

    /// Adds a route: its before-steps, then its main steps.
    public mutating func add(_ method: HTTPRequest.Method, _ pattern: String, before: [Step] = [], steps: [Step]) {
        routes.append((method.rawValue, pattern, before, steps))
    }

    /// Validates every route and builds the router.
    ///
    /// A route is rejected when one of its steps (or continuations) reads a slot with ``Read`` or
    /// ``ReadWrite`` that no earlier step, continuation or effect can have written.
    public func build() throws(PipelineError) -> Router {
        var table = RouteTable<Pipeline>()
        for route in routes {
            let name = "\(route.method) \(route.pattern)"
            let chain = global.map { PipelineStage(step: $0, layer: .global) }
                + route.before.map { PipelineStage(step: $0, layer: .route) }
                + route.steps.map { PipelineStage(step: $0, layer: .main) }
            try PipelineValidator.validate(route: name, chain: chain)
            do {
                try table.add(method: route.method, pattern: route.pattern, value: Pipeline(route: name, chain: chain))
            } catch {
                throw PipelineError(route: name, step: "", slot: "", message: error.message)
            }
        }
        return Router(table: table)
    }
}

/// Routes requests to validated pipelines.
public struct Router: Sendable {
    public let table: RouteTable<Pipeline>

    public func match(method: String, path: String) -> RouteTable<Pipeline>.Match {
        table.match(method: method, path: path)
    }
}

/// Why a pipeline was rejected, naming the route, the step and the slot.
public struct PipelineError: Error, Sendable, Equatable, CustomStringConvertible {
    public let route: String
    public let step: String
    public let slot: String
    public let message: String
    public var description: String { message }
}

/// Static read-before-write validation of a chain of steps.
public enum PipelineValidator {
    public static func validate(route: String, chain: [PipelineStage]) throws(PipelineError) {
        var written = Set<SlotID>()
        for stage in chain {
            written = try check(stage.step, route: route, written: written, path: [])
        }
    }

    /// Checks a step and its continuations; returns the slots that may be written after it.
    private static func check(_ step: Step, route: String, written: Set<SlotID>, path: [String]) throws(PipelineError) -> Set<SlotID> {
        for slot in step.requiredReads where !written.contains(slot) {
            let via = path.isEmpty ? "" : " (continuation of '\(path.joined(separator: "' → '"))')"
            throw PipelineError(
                route: route, step: step.name, slot: slot.name,
                message: "route \(route): step '\(step.name)'\(via) reads slot '\(slot.name)', but no earlier step or effect writes it")
        }
        // Effects the step declares, and the step itself, may have written its write slots
        // by the time a continuation runs.
        var after = written.union(step.writes)
        for continuation in step.continuations where !path.contains(continuation.name) {
            after.formUnion(try check(continuation, route: route, written: written.union(step.writes), path: path + [step.name]))
        }
        return after
    }
}

public import HTTPTypes
