/// The building blocks of Skein's binary peer formats: LEB128 varints, length-prefixed
/// strings and byte strings. The reader trusts nothing: every length is bounded, a varint has
/// exactly one encoding, and running out of bytes is an error, never a crash.
public struct WireWriter: Sendable {
    public var bytes: [UInt8] = []

    public init() {}

    public mutating func byte(_ b: UInt8) { bytes.append(b) }

    public mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    /// A signed number, zig-zag encoded.
    public mutating func zigzag(_ value: Int64) {
        varint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    public mutating func string(_ s: String, max: Int = 255) {
        let utf8 = Array(s.utf8.prefix(max))
        varint(UInt64(utf8.count))
        bytes += utf8
    }

    public mutating func blob(_ b: [UInt8]) {
        varint(UInt64(b.count))
        bytes += b
    }
}

public struct WireError: Error, Equatable, Sendable, CustomStringConvertible {
    public let why: String
    public init(_ why: String) { self.why = why }
    public var description: String { why }
}

public struct WireReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var index = 0

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public var atEnd: Bool { index == bytes.count }
    public var remaining: Int { bytes.count - index }

    public mutating func byte(_ what: String) throws(WireError) -> UInt8 {
        guard index < bytes.count else { throw WireError("ends before \(what)") }
        defer { index += 1 }
        return bytes[index]
    }

    public mutating func bool(_ what: String) throws(WireError) -> Bool {
        switch try byte(what) {
        case 0: return false
        case 1: return true
        case let other: throw WireError("\(what) is \(other), not 0 or 1")
        }
    }

    public mutating func varint(_ what: String) throws(WireError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte(what)
            if shift == 63, b > 1 { throw WireError("\(what) overflows 64 bits") }
            result |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 {
                // One encoding per number: a trailing zero byte would be a second one.
                if b == 0, shift > 0 { throw WireError("\(what) is not minimally encoded") }
                return result
            }
            shift += 7
            if shift > 63 { throw WireError("\(what) overflows 64 bits") }
        }
    }

    public mutating func zigzag(_ what: String) throws(WireError) -> Int64 {
        let u = try varint(what)
        return Int64(bitPattern: u >> 1) ^ -Int64(bitPattern: u & 1)
    }

    public mutating func count(_ what: String, max: Int) throws(WireError) -> Int {
        let n = try varint(what)
        guard n <= UInt64(max) else { throw WireError("\(what) \(n) exceeds \(max)") }
        return Int(n)
    }

    public mutating func string(_ what: String, max: Int = 255) throws(WireError) -> String {
        let n = try count("\(what) length", max: max)
        guard remaining >= n else { throw WireError("\(what) runs past the end") }
        let slice = bytes[index..<index + n]
        index += n
        guard let s = String(validating: slice, as: UTF8.self) else { throw WireError("\(what) is not UTF-8") }
        return s
    }

    public mutating func blob(_ what: String, max: Int) throws(WireError) -> [UInt8] {
        let n = try count("\(what) length", max: max)
        guard remaining >= n else { throw WireError("\(what) runs past the end") }
        defer { index += n }
        return Array(bytes[index..<index + n])
    }
}
