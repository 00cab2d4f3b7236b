public import Foundation

/// What a step sees: the request, and the slots its view declares.
///
/// Reads and writes name a property of the view by key path; the access right's type decides
/// what is allowed, so `put` on a ``Read`` or any access to a slot the view lacks does not compile.
public struct StepContext<View: SlotView>: Sendable {
    @usableFromInline let state: StepState

    @inlinable init(state: StepState) { self.state = state }

    /// (Lent, not copied: a copy would retain and release every field on each access.)
    @inlinable public var request: RequestInfo { _read { yield state.request } }

    /// The value of a slot the view reads; a 500 naming step and slot if it is empty.
    @inlinable public func require<A: ReadAccess>(_ path: KeyPath<View, A>) throws(SkeinError) -> A.Target.Value {
        guard let value = state.slots.value(of: A.Target.self) else { throw missing(A.Target.self) }
        return value
    }

    @usableFromInline func missing<S: Slot>(_ slot: S.Type) -> SkeinError {
        SkeinError(code: 500, what: "slot_missing", key: String(describing: slot),
                   message: "step '\(state.stepName)' requires slot '\(slot)', which is empty")
    }

    /// The value of a slot the view reads, or nil if it is empty.
    @inlinable public func optional<A: ReadAccess>(_ path: KeyPath<View, A>) -> A.Target.Value? {
        state.slots.value(of: A.Target.self)
    }

    /// Writes a slot the view may write.
    @inlinable public mutating func put<A: WriteAccess>(_ path: KeyPath<View, A>, _ value: A.Target.Value) {
        state.slots.set(A.Target.self, to: value)
    }
}
