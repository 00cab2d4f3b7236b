/// A named piece of per-request state with a fixed type.
///
/// Declare a slot as a caseless enum naming its value type:
/// ```swift
/// enum PostID: Slot { typealias Value = String }
/// ```
/// Steps never touch slots directly: they read and write them through a ``SlotView``
/// that declares the access, so an undeclared access does not compile.
public protocol Slot {
    associatedtype Value: Sendable
}

/// The identity of a slot type, used by the runtime and by pipeline validation.
public struct SlotID: Hashable, Sendable, CustomStringConvertible {
    let key: ObjectIdentifier
    /// The slot's type name, as errors and timelines show it.
    public let name: String

    public init<S: Slot>(_ slot: S.Type) {
        self.key = ObjectIdentifier(slot)
        self.name = String(describing: slot)
    }

    public var description: String { name }
    public static func == (a: SlotID, b: SlotID) -> Bool { a.key == b.key }
    public func hash(into hasher: inout Hasher) { hasher.combine(key) }
}

/// The per-request slot storage. Values keep their static type: each is read back with a
/// checked cast to the slot's `Value`, never an unchecked one.
///
/// A request holds a handful of slots, so they live in one small array searched from the
/// front: no hashing and one allocation, where a dictionary cost both on every request.
public struct SlotValues: Sendable {
    @usableFromInline var entries: [Entry] = []

    @usableFromInline struct Entry: Sendable {
        @usableFromInline let key: ObjectIdentifier
        @usableFromInline var value: any Sendable
        @usableFromInline init(key: ObjectIdentifier, value: any Sendable) {
            self.key = key
            self.value = value
        }
    }

    public init() {}

    /// The slot's value, or nil if nothing has written it.
    @inlinable public func value<S: Slot>(of slot: S.Type) -> S.Value? {
        let key = ObjectIdentifier(slot)
        for entry in entries where entry.key == key { return entry.value as? S.Value }
        return nil
    }

    @inlinable public mutating func set<S: Slot>(_ slot: S.Type, to value: S.Value) {
        let key = ObjectIdentifier(slot)
        if let i = entries.firstIndex(where: { $0.key == key }) {
            entries[i].value = value
        } else {
            if entries.capacity == 0 { entries.reserveCapacity(4) }
            entries.append(Entry(key: key, value: value))
        }
    }

    public func contains(_ id: SlotID) -> Bool { entries.contains { $0.key == id.key } }

    /// How many slots hold a value.
    public var count: Int { entries.count }
}
