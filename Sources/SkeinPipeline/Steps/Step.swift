/// The layer of the pipeline a step belongs to, in the order they run.
public enum StepLayer: String, Sendable, Codable {
    case global
    case route
    case main
}

/// A named, pure unit of request handling: a function of a typed context to a ``Decision``.
///
/// A step reads and writes slots only through its ``SlotView``; it performs no I/O itself, but
/// returns `.need(effects…)` and resumes in a continuation, which is itself a step. Continuations
/// a step may resume in are declared up front so the router can validate the pipeline.
public struct Step: Sendable, CustomStringConvertible {
    public let name: String
    /// Slot declarations of this step's view.
    public let declarations: [SlotDeclaration]
    /// Steps this step may name as `then:` in a `.need`.
    public let continuations: [Step]
    let body: @Sendable (inout StepState) throws -> Decision

    /// A step with a slot view.
    public init<View: SlotView>(
        _ name: String,
        view: View.Type,
        continuations: [Step] = [],
        _ body: @escaping @Sendable (inout StepContext<View>) throws -> Decision
    ) {
        self.name = name
        self.declarations = View.declarations
        self.continuations = continuations
        self.body = { state in
            var context = StepContext<View>(state: state)
            // Drop the caller's reference so the step's writes do not copy the slot storage.
            state.slots = SlotValues()
            defer { state = context.state }
            return try body(&context)
        }
    }

    /// A step that touches no slots.
    public init(
        _ name: String,
        continuations: [Step] = [],
        _ body: @escaping @Sendable (inout StepContext<NoSlots>) throws -> Decision
    ) {
        self.init(name, view: NoSlots.self, continuations: continuations, body)
    }

    public var description: String { name }

    /// The slots this step (or an effect it declares) may write.
    public var writes: [SlotID] { declarations.filter(\.writes).map(\.slot) }
    /// The slots this step reads that must have been written before it runs.
    public var requiredReads: [SlotID] { declarations.filter { $0.reads && $0.requiresWriter }.map(\.slot) }

    func declares(continuation: Step) -> Bool {
        continuations.contains { $0.name == continuation.name }
    }
}

/// The mutable state a step runs against: request, slots, and the step's name for errors.
struct StepState: Sendable {
    var request: RequestInfo
    var slots: SlotValues
    var stepName: String
}
