public import Foundation

/// Effect constructors. Each names its result slot by a key path into the step's view, which
/// must grant write access: so an effect can only fill a slot the step declared it writes.
extension StepContext {
    /// Reads a key; the slot receives the bytes, or nil if the key is absent.
    public func kvGet<A: WriteAccess>(_ key: String, into path: KeyPath<View, A>) -> Effect where A.Target.Value == Data? {
        Effect(.kvGet(key: key), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .value(let data) = output else { throw EffectOutputMismatch(expected: "value", got: output) }
            slots.set(A.Target.self, to: data)
        }
    }

    /// Reads a key holding JSON and decodes it; the slot receives nil if the key is absent.
    public func kvGet<A: WriteAccess, T: Decodable & Sendable>(_ key: String, decoding type: T.Type, into path: KeyPath<View, A>) -> Effect
    where A.Target.Value == T? {
        Effect(.kvGet(key: key), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .value(let data) = output else { throw EffectOutputMismatch(expected: "value", got: output) }
            slots.set(A.Target.self, to: try data.map { try JSONDecoder().decode(T.self, from: $0) })
        }
    }

    /// Writes a key.
    public func kvPut(_ key: String, _ value: Data) -> Effect {
        Effect(.kvPut(key: key, value: value), resultSlot: nil) { _, _ in }
    }

    /// Writes a key with a value encoded as JSON (sorted keys).
    public func kvPut<T: Encodable>(_ key: String, json value: T) -> Effect {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return kvPut(key, (try? encoder.encode(value)) ?? Data())
    }

    /// Deletes a key.
    public func kvDelete(_ key: String) -> Effect {
        Effect(.kvDelete(key: key), resultSlot: nil) { _, _ in }
    }

    /// Deletes a key; the slot receives whether it existed.
    public func kvDelete<A: WriteAccess>(_ key: String, into path: KeyPath<View, A>) -> Effect where A.Target.Value == Bool {
        Effect(.kvDelete(key: key), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .deleted(let existed) = output else { throw EffectOutputMismatch(expected: "deleted", got: output) }
            slots.set(A.Target.self, to: existed)
        }
    }

    /// Lists keys starting with `prefix`, in key order, at most `limit`.
    public func kvScan<A: WriteAccess>(prefix: String, limit: Int = 1000, into path: KeyPath<View, A>) -> Effect
    where A.Target.Value == [KVEntry] {
        Effect(.kvScan(prefix: prefix, limit: limit), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .entries(let entries) = output else { throw EffectOutputMismatch(expected: "entries", got: output) }
            slots.set(A.Target.self, to: entries)
        }
    }

    /// Runs a query on the node's own SQLite database.
    public func sqlQuery<A: WriteAccess>(_ sql: String, _ arguments: [SQLValue] = [], into path: KeyPath<View, A>) -> Effect
    where A.Target.Value == [SQLRow] {
        Effect(.sqlQuery(sql: sql, arguments: arguments), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .rows(let rows) = output else { throw EffectOutputMismatch(expected: "rows", got: output) }
            slots.set(A.Target.self, to: rows)
        }
    }

    /// Executes a statement on the node's own SQLite database.
    public func sqlExec(_ sql: String, _ arguments: [SQLValue] = []) -> Effect {
        Effect(.sqlExec(sql: sql, arguments: arguments), resultSlot: nil) { _, _ in }
    }

    /// Executes a statement; the slot receives the number of changed rows.
    public func sqlExec<A: WriteAccess>(_ sql: String, _ arguments: [SQLValue] = [], into path: KeyPath<View, A>) -> Effect
    where A.Target.Value == Int {
        Effect(.sqlExec(sql: sql, arguments: arguments), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .changes(let n) = output else { throw EffectOutputMismatch(expected: "changes", got: output) }
            slots.set(A.Target.self, to: n)
        }
    }

    /// Starts an instance of a durable workflow (on whichever node owns it); the slot receives
    /// its status as JSON once the start is durable. `input` is JSON. A taken id fails the
    /// effect (409) under `conflictPolicy` "fail"; "useExisting" answers the existing instance.
    public func workflowStart<A: WriteAccess>(_ workflow: String, id: String, input: Data, conflictPolicy: String = "fail",
                                              into path: KeyPath<View, A>) -> Effect where A.Target.Value == Data {
        Effect(.workflowStart(workflow: workflow, id: id, input: input, conflictPolicy: conflictPolicy), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .workflow(let status) = output else { throw EffectOutputMismatch(expected: "workflow", got: output) }
            slots.set(A.Target.self, to: status)
        }
    }

    /// Starts an instance of a durable workflow, keeping no result.
    public func workflowStart(_ workflow: String, id: String, input: Data, conflictPolicy: String = "fail") -> Effect {
        Effect(.workflowStart(workflow: workflow, id: id, input: input, conflictPolicy: conflictPolicy), resultSlot: nil) { _, _ in }
    }

    /// Sends the signal `name` with a JSON `payload` to a workflow instance; done once durable.
    public func workflowSignal(id: String, name: String, payload: Data) -> Effect {
        Effect(.workflowSignal(id: id, name: name, payload: payload), resultSlot: nil) { _, _ in }
    }

    /// Makes an outbound HTTP request.
    public func http<A: WriteAccess>(_ call: HTTPCall, into path: KeyPath<View, A>) -> Effect where A.Target.Value == HTTPResult {
        Effect(.http(call), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .http(let result) = output else { throw EffectOutputMismatch(expected: "http", got: output) }
            slots.set(A.Target.self, to: result)
        }
    }

    /// Runs a CPU-bound closure off the request path; the slot receives its result.
    public func compute<A: WriteAccess>(
        _ label: String, into path: KeyPath<View, A>, _ work: @escaping @Sendable () throws -> A.Target.Value
    ) -> Effect {
        Effect(.compute(label: label, work: { try work() }), resultSlot: SlotID(A.Target.self)) { output, slots in
            guard case .computed(let any) = output, let value = any as? A.Target.Value else {
                throw EffectOutputMismatch(expected: "\(A.Target.Value.self)", got: output)
            }
            slots.set(A.Target.self, to: value)
        }
    }
}
