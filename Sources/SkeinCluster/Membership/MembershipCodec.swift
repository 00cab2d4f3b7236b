/// The wire format of membership messages: compact binary, versioned.
///
/// A body is `version (1 byte) · count (varint) · envelope*`. Integers are LEB128 varints,
/// strings a varint length and UTF-8 bytes, lists a varint count and their items. The decoder
/// trusts nothing: every length is bounded, every byte accounted for, and anything else is a
/// ``MembershipCodecError`` (never a crash), which the node answers with 400.
public enum MembershipCodec {
    public static let version: UInt8 = 1
    public static let maxEnvelopes = 64
    public static let maxUpdates = 256
    public static let maxMembers = 4096
    public static let maxString = 255

    public static func encode(_ envelopes: [Envelope]) -> [UInt8] {
        var w = WireWriter()
        w.bytes.append(version)
        w.varint(UInt64(envelopes.count))
        for envelope in envelopes {
            w.member(envelope.from)
            switch envelope.message {
            case .ping(let seq, let target, let updates):
                w.bytes.append(1); w.varint(seq); w.string(target.name); w.varint(target.generation); w.updates(updates)
            case .ack(let seq, let updates):
                w.bytes.append(2); w.varint(seq); w.updates(updates)
            case .nack(let seq, let updates):
                w.bytes.append(3); w.varint(seq); w.updates(updates)
            case .pingRequest(let seq, let target, let updates):
                w.bytes.append(4); w.varint(seq); w.member(target); w.updates(updates)
            case .sync(let members, let wantsReply):
                w.bytes.append(5); w.bytes.append(wantsReply ? 1 : 0); w.varint(UInt64(members.count))
                for member in members { w.member(member) }
            case .announce(let updates):
                w.bytes.append(6); w.updates(updates)
            }
        }
        return w.bytes
    }

    public static func decode<Bytes: Collection<UInt8>>(_ bytes: Bytes) throws(MembershipCodecError) -> [Envelope] {
        var r = WireReader(bytes: Array(bytes))
        let v: UInt8
        do { v = try r.byte("version") } catch { throw .malformed(error.why) }
        guard v == version else { throw .unsupportedVersion(v) }
        do {
            return try envelopes(&r)
        } catch {
            throw .malformed(error.why)
        }
    }

    private static func envelopes(_ r: inout WireReader) throws(WireError) -> [Envelope] {
        let count = try r.count("envelope count", max: maxEnvelopes)
        var envelopes: [Envelope] = []
        envelopes.reserveCapacity(count)
        for _ in 0..<count {
            let from = try r.member()
            let message: MembershipMessage
            switch try r.byte("message kind") {
            case 1:
                let seq = try r.varint("seq")
                let target = MemberID(name: try r.string("target"), generation: try r.varint("generation"))
                message = .ping(seq: seq, target: target, updates: try r.updates())
            case 2: message = .ack(seq: try r.varint("seq"), updates: try r.updates())
            case 3: message = .nack(seq: try r.varint("seq"), updates: try r.updates())
            case 4:
                let seq = try r.varint("seq")
                let target = try r.member()
                message = .pingRequest(seq: seq, target: target, updates: try r.updates())
            case 5:
                let wantsReply = try r.bool("wantsReply")
                let n = try r.count("member count", max: maxMembers)
                var members: [Member] = []
                for _ in 0..<n { members.append(try r.member()) }
                message = .sync(members: members, wantsReply: wantsReply)
            case 6: message = .announce(updates: try r.updates())
            case let other: throw WireError("unknown message kind \(other)")
            }
            envelopes.append(Envelope(from: from, message: message))
        }
        guard r.atEnd else { throw WireError("\(r.remaining) trailing bytes") }
        return envelopes
    }
}

extension WireWriter {
    mutating func member(_ m: Member) {
        string(m.id.name); varint(m.id.generation); string(m.peer); string(m.client)
        bytes.append(m.state.rawValue); varint(m.incarnation)
    }

    mutating func updates(_ updates: [MemberUpdate]) {
        varint(UInt64(updates.count))
        for u in updates { member(u.member); string(u.origin) }
    }
}

extension WireReader {
    mutating func member() throws(WireError) -> Member {
        let name = try string("name")
        guard !name.isEmpty else { throw WireError("empty member name") }
        let generation = try varint("generation")
        let peer = try string("peer")
        let client = try string("client")
        let raw = try byte("state")
        guard let state = MemberState(rawValue: raw) else { throw WireError("unknown member state \(raw)") }
        let incarnation = try varint("incarnation")
        return Member(id: MemberID(name: name, generation: generation), peer: peer, client: client, state: state, incarnation: incarnation)
    }

    mutating func updates() throws(WireError) -> [MemberUpdate] {
        let n = try count("update count", max: MembershipCodec.maxUpdates)
        var result: [MemberUpdate] = []
        for _ in 0..<n {
            let member = try member()
            result.append(MemberUpdate(member: member, origin: try string("origin")))
        }
        return result
    }
}

public enum MembershipCodecError: Error, Equatable, Sendable, CustomStringConvertible {
    case unsupportedVersion(UInt8)
    case malformed(String)

    public var description: String {
        switch self {
        case .unsupportedVersion(let v): "unsupported membership message version \(v) (this node speaks \(MembershipCodec.version))"
        case .malformed(let why): "malformed membership message: \(why)"
        }
    }
}
