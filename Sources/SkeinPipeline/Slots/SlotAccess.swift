/// What a view declares about one slot.
public struct SlotDeclaration: Sendable, Hashable {
    public let slot: SlotID
    public let reads: Bool
    public let writes: Bool
    /// Whether pipeline validation requires an earlier writer for this read.
    public let requiresWriter: Bool
}

/// An access right to one slot, held as a stored property of a ``SlotView``.
public protocol SlotAccess: Sendable {
    associatedtype Target: Slot
    var declaration: SlotDeclaration { get }
}

/// An access right that allows reading.
public protocol ReadAccess: SlotAccess {}
/// An access right that allows writing (directly or as an effect's result slot).
public protocol WriteAccess: SlotAccess {}

/// Read access to a slot that an earlier step (or effect) must be able to have written;
/// pipeline validation rejects a route where none can.
public struct Read<S: Slot>: ReadAccess {
    public typealias Target = S
    public init() {}
    public var declaration: SlotDeclaration { .init(slot: SlotID(S.self), reads: true, writes: false, requiresWriter: true) }
}

/// Read access to a slot that may legitimately be empty (no earlier writer is required).
public struct ReadIfPresent<S: Slot>: ReadAccess {
    public typealias Target = S
    public init() {}
    public var declaration: SlotDeclaration { .init(slot: SlotID(S.self), reads: true, writes: false, requiresWriter: false) }
}

/// Write access to a slot.
public struct Write<S: Slot>: WriteAccess {
    public typealias Target = S
    public init() {}
    public var declaration: SlotDeclaration { .init(slot: SlotID(S.self), reads: false, writes: true, requiresWriter: false) }
}

/// Read and write access to a slot; the read requires an earlier writer.
public struct ReadWrite<S: Slot>: ReadAccess, WriteAccess {
    public typealias Target = S
    public init() {}
    public var declaration: SlotDeclaration { .init(slot: SlotID(S.self), reads: true, writes: true, requiresWriter: true) }
}

/// A step's declared view of the request's slots: a struct whose stored properties are
/// access rights (``Read``, ``Write``, ``ReadWrite``, ``ReadIfPresent``).
///
/// ```swift
/// struct LoadPostView: SlotView {
///     var id = Read<PostID>()
///     var json = Write<PostJSON>()
/// }
/// ```
/// A step using this view can call `ctx.require(\.id)` and `ctx.put(\.json, …)`; naming a slot
/// the view lacks, or writing through a `Read`, is a compile-time error.
public protocol SlotView: Sendable {
    init()
}

extension SlotView {
    /// The declarations of this view, read once when a step is built.
    @usableFromInline static var declarations: [SlotDeclaration] {
        Mirror(reflecting: Self()).children.compactMap { ($0.value as? any SlotAccess)?.declaration }
    }
}

/// The view of a step that touches no slots.
public struct NoSlots: SlotView {
    public init() {}
}
