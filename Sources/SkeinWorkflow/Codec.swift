public import Foundation

/// A value crossing a task boundary: JSON bytes. Binary data travels inside JSON as an
/// envelope `{"$skein_bin": "<base64>"}`, so `Data` round-trips through any task.
public struct Payload: Sendable, Hashable, Codable, CustomStringConvertible {
    public var json: Data

    public init(json: Data) { self.json = json }

    /// JSON `null`: what a signal that timed out delivers.
    public static let null = Payload(json: Data("null".utf8))

    public var description: String { String(decoding: json, as: UTF8.self) }

    // Stored as the JSON text itself when a payload is part of a Codable state.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        json = Data(try container.decode(String.self).utf8)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Why a value could not cross a task boundary.
public struct CodecError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// JSON with sorted keys and the binary envelope, both ways.
public enum WorkflowCodec {
    static let binaryKey = "$skein_bin"

    private struct EnvelopeKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
        static let bin = EnvelopeKey(stringValue: binaryKey)
    }

    public static func encode<T: Encodable>(_ value: T) throws -> Payload {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dataEncodingStrategy = .custom { data, encoder in
            var container = encoder.container(keyedBy: EnvelopeKey.self)
            try container.encode(data.base64EncodedString(), forKey: .bin)
        }
        encoder.nonConformingFloatEncodingStrategy = .throw
        do {
            return Payload(json: try encoder.encode(value))
        } catch {
            throw CodecError("cannot encode \(T.self) as JSON: \(error)")
        }
    }

    public static func decode<T: Decodable>(_ type: T.Type, from payload: Payload) throws -> T {
        let decoder = JSONDecoder()
        decoder.dataDecodingStrategy = .custom { decoder in
            if let container = try? decoder.container(keyedBy: EnvelopeKey.self),
               let text = try? container.decode(String.self, forKey: .bin) {
                guard let data = Data(base64Encoded: text) else {
                    throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad base64 in \(binaryKey)"))
                }
                return data
            }
            // Plain base64 strings are accepted too (what other JSON encoders emit for bytes).
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let data = Data(base64Encoded: text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "expected binary data"))
            }
            return data
        }
        do {
            return try decoder.decode(T.self, from: payload.json)
        } catch let error as DecodingError {
            throw CodecError("\(payload.description.prefix(200)) is not a \(T.self): \(describe(error))")
        }
    }

    /// Checks that `data` is one JSON value (object, array, string, number, true, false, null).
    public static func validate(_ data: Data) throws -> Payload {
        do {
            _ = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw CodecError("not JSON: \((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)")")
        }
        return Payload(json: data)
    }

    /// The key and the value's bytes of a JSON object with exactly one member, such as a loop
    /// body's `{"again": …}`, found by scanning instead of decoding (what a loop step costs is
    /// mostly this); nil for anything else, including an escaped key, so the caller decodes
    /// fully and reports the problem.
    public static func soleMember(of payload: Payload) -> (key: String, value: Payload)? {
        let b = [UInt8](payload.json)
        var i = 0
        func skipSpace() {
            while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
        }
        func skipString() -> Bool {
            guard i < b.count, b[i] == 0x22 else { return false }
            i += 1
            while i < b.count {
                switch b[i] {
                case 0x5C: i += 2
                case 0x22: i += 1; return true
                default: i += 1
                }
            }
            return false
        }
        func skipScalar() -> Bool {
            let start = i
            while i < b.count, !(b[i] == 0x2C || b[i] == 0x7D || b[i] == 0x5D || b[i] == 0x3A || b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09) { i += 1 }
            let token = String(decoding: b[start..<i], as: UTF8.self)
            if token == "true" || token == "false" || token == "null" { return true }
            guard let first = token.utf8.first, first == 0x2D || (0x30...0x39).contains(first) else { return false }
            return Double(token) != nil
        }
        // A full JSON grammar check, so what is kept is one valid value; nesting past 256
        // levels is left to the decoder.
        func skipValue(depth: Int = 0) -> Bool {
            guard i < b.count, depth < 256 else { return false }
            switch b[i] {
            case 0x22:
                return skipString()
            case 0x7B, 0x5B:
                let object = b[i] == 0x7B
                let closer: UInt8 = object ? 0x7D : 0x5D
                i += 1
                skipSpace()
                if i < b.count, b[i] == closer { i += 1; return true }
                while true {
                    if object {
                        guard skipString() else { return false }
                        skipSpace()
                        guard i < b.count, b[i] == 0x3A else { return false }
                        i += 1
                        skipSpace()
                    }
                    guard skipValue(depth: depth + 1) else { return false }
                    skipSpace()
                    guard i < b.count else { return false }
                    if b[i] == closer { i += 1; return true }
                    guard b[i] == 0x2C else { return false }
                    i += 1
                    skipSpace()
                }
            default:
                return skipScalar()
            }
        }
        skipSpace()
        guard i < b.count, b[i] == 0x7B else { return nil }
        i += 1
        skipSpace()
        let keyStart = i
        guard skipString() else { return nil }
        let key = b[(keyStart + 1)..<(i - 1)]
        guard !key.contains(0x5C) else { return nil }
        skipSpace()
        guard i < b.count, b[i] == 0x3A else { return nil }
        i += 1
        skipSpace()
        let valueStart = i
        guard skipValue() else { return nil }
        let valueEnd = i
        skipSpace()
        guard i < b.count, b[i] == 0x7D else { return nil }
        i += 1
        skipSpace()
        guard i == b.count else { return nil }
        return (String(decoding: key, as: UTF8.self), Payload(json: Data(b[valueStart..<valueEnd])))
    }

    /// `{"name": value, …}` from already-encoded values, keys sorted.
    public static func object(_ fields: [String: Payload]) -> Payload {
        var out = Data("{".utf8)
        for (i, key) in fields.keys.sorted().enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out.append(try! JSONEncoder().encode(key))
            out.append(UInt8(ascii: ":"))
            out.append(fields[key]!.json)
        }
        out.append(UInt8(ascii: "}"))
        return Payload(json: out)
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ p: [any CodingKey]) -> String { p.isEmpty ? "the top level" : p.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .keyNotFound(let key, let c): return "missing field \(path(c.codingPath + [key]))"
        case .typeMismatch(let t, let c): return "expected \(t) at \(path(c.codingPath))"
        case .valueNotFound(let t, let c): return "expected \(t) at \(path(c.codingPath)), found null"
        case .dataCorrupted(let c): return "\(c.debugDescription) at \(path(c.codingPath))"
        @unknown default: return "\(error)"
        }
    }
}
