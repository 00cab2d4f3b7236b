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

    @usableFromInline init(name: String, declarations: [SlotDeclaration], continuations: [Step],
                           body: @escaping @Sendable (StepState) throws -> Decision) {
        self.name = name
        self.declarations = declarations
        self.continuations = continuations
        self.body = body
    }
    @usableFromInline let body: @Sendable (StepState) throws -> Decision

    /// A step with a slot view.
    @inlinable public init<View: SlotView>(
        _ name: String,
        view: View.Type,
        continuations: [Step] = [],
        _ body: @escaping @Sendable (inout StepContext<View>) throws -> Decision
    ) {
        self.init(name: name, declarations: View.declarations, continuations: continuations) { state in
            var context = StepContext<View>(state: state)
            return try body(&context)
        }
    }

    /// A step that touches no slots.
    @inlinable public init(
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

/// The mutable state a request's steps run against: request, slots, and the running step's
/// name for errors. A reference, so handing it to each step copies nothing.
///
/// `@unchecked Sendable`: one request's state is used by one task at a time — the runner hands
/// it to a step and takes it back before anything else touches it; effect tasks never see it.
@usableFromInline final class StepState: @unchecked Sendable {
    @usableFromInline var request: RequestInfo
    @usableFromInline var slots: SlotValues
    @usableFromInline var stepName: String

    @usableFromInline init(request: RequestInfo, slots: SlotValues, stepName: String) {
        self.request = request
        self.slots = slots
        self.stepName = stepName
    }
}
