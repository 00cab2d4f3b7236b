/// The wire format of Raft traffic between two nodes: one batch per request, carrying
/// messages of any number of partitions.
///
/// `version · partitionCount · from · count · message*`, integers as varints. The partition
/// count rides along so that nodes created with different counts refuse each other instead of
/// mixing up partitions.
public struct RaftBatch: Sendable, Equatable {
    public var partitionCount: Int
    public var from: RaftNodeID
    public var messages: [RaftMessage]

    public init(partitionCount: Int, from: RaftNodeID, messages: [RaftMessage]) {
        self.partitionCount = partitionCount
        self.from = from
        self.messages = messages
    }
}

public enum RaftCodec {
    /// 2: snapshots travel in chunks the follower asks for, not in one message.
    public static let version: UInt8 = 2
    public static let maxMessages = 1 << 16
    public static let maxEntries = 1 << 16
    public static let maxPayload = 64 << 20
    public static let maxPartitions = 4096

    public static func encode(_ batch: RaftBatch) -> [UInt8] {
        var w = WireWriter()
        w.byte(version)
        w.varint(UInt64(batch.partitionCount))
        w.string(batch.from)
        w.varint(UInt64(batch.messages.count))
        for m in batch.messages {
            w.varint(UInt64(m.partition))
            w.string(m.to)
            w.varint(m.term)
            switch m.body {
            case .append(let prevIndex, let prevTerm, let entries, let commit, let sentAt):
                w.byte(1); w.varint(prevIndex); w.varint(prevTerm); w.varint(commit); w.duration(sentAt)
                w.varint(UInt64(entries.count))
                for e in entries { w.entry(e) }
            case .appendResponse(let reject, let index, let hint, let sentAt):
                w.byte(2); w.byte(reject ? 1 : 0); w.varint(index); w.varint(hint); w.duration(sentAt)
            case .heartbeat(let commit, let sentAt):
                w.byte(3); w.varint(commit); w.duration(sentAt)
            case .heartbeatResponse(let commit, let sentAt):
                w.byte(4); w.varint(commit); w.duration(sentAt)
            case .vote(let preVote, let lastIndex, let lastTerm, let transferTerm):
                w.byte(5); w.byte(preVote ? 1 : 0); w.varint(lastIndex); w.varint(lastTerm)
                if let t = transferTerm { w.byte(1); w.varint(t) } else { w.byte(0) }
            case .voteResponse(let preVote, let granted):
                w.byte(6); w.byte(preVote ? 1 : 0); w.byte(granted ? 1 : 0)
            case .timeoutNow:
                w.byte(7)
            case .snapshot(let meta, let sentAt):
                w.byte(8); w.varint(meta.index); w.varint(meta.term)
                w.blob(RaftConfigurationCodec.encode(meta.configuration)); w.duration(sentAt)
            case .snapshotRequest(let index, let snapshotTerm, let sequence):
                w.byte(9); w.varint(index); w.varint(snapshotTerm); w.varint(UInt64(sequence))
            case .snapshotChunk(let index, let snapshotTerm, let sequence, let data, let checksum, let last):
                w.byte(10); w.varint(index); w.varint(snapshotTerm); w.varint(UInt64(sequence))
                w.varint(UInt64(checksum)); w.byte(last ? 1 : 0); w.blob(data)
            case .snapshotGone(let index, let snapshotTerm):
                w.byte(11); w.varint(index); w.varint(snapshotTerm)
            }
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(RaftCodecError) -> RaftBatch {
        var r = WireReader(bytes: bytes)
        let v: UInt8
        do { v = try r.byte("version") } catch { throw .malformed(error.why) }
        guard v == version else { throw .unsupportedVersion(v) }
        do {
            return try batch(&r)
        } catch {
            throw .malformed(error.why)
        }
    }

    private static func batch(_ r: inout WireReader) throws(WireError) -> RaftBatch {
        let partitions = try r.count("partition count", max: maxPartitions)
        guard partitions > 0 else { throw WireError("partition count is 0") }
        let from = try r.string("from")
        guard !from.isEmpty else { throw WireError("empty sender") }
        let n = try r.count("message count", max: maxMessages)
        var messages: [RaftMessage] = []
        for _ in 0..<n {
            let partition = try r.count("partition", max: partitions - 1)
            let to = try r.string("to")
            let term = try r.varint("term")
            let body: RaftMessage.Body
            switch try r.byte("message kind") {
            case 1:
                let prevIndex = try r.varint("prevIndex"), prevTerm = try r.varint("prevTerm")
                let commit = try r.varint("commit"), sentAt = try r.duration("sentAt")
                let count = try r.count("entry count", max: maxEntries)
                var entries: [RaftEntry] = []
                entries.reserveCapacity(count)
                for i in 0..<count {
                    let e = try r.entry()
                    guard e.index == prevIndex + UInt64(i) + 1 else { throw WireError("entry \(e.index) out of sequence") }
                    entries.append(e)
                }
                body = .append(prevIndex: prevIndex, prevTerm: prevTerm, entries: entries, commit: commit, sentAt: sentAt)
            case 2:
                body = .appendResponse(reject: try r.bool("reject"), index: try r.varint("index"), hint: try r.varint("hint"), sentAt: try r.duration("sentAt"))
            case 3:
                body = .heartbeat(commit: try r.varint("commit"), sentAt: try r.duration("sentAt"))
            case 4:
                body = .heartbeatResponse(commit: try r.varint("commit"), sentAt: try r.duration("sentAt"))
            case 5:
                let pre = try r.bool("preVote"), lastIndex = try r.varint("lastIndex"), lastTerm = try r.varint("lastTerm")
                let transfer: UInt64? = try r.bool("has transferTerm") ? try r.varint("transferTerm") : nil
                body = .vote(preVote: pre, lastIndex: lastIndex, lastTerm: lastTerm, transferTerm: transfer)
            case 6:
                body = .voteResponse(preVote: try r.bool("preVote"), granted: try r.bool("granted"))
            case 7:
                body = .timeoutNow
            case 8:
                let index = try r.varint("snapshot index"), term = try r.varint("snapshot term")
                guard let configuration = RaftConfigurationCodec.decode(try r.blob("configuration", max: 64 << 10)) else {
                    throw WireError("malformed snapshot configuration")
                }
                body = .snapshot(meta: RaftSnapshotMeta(index: index, term: term, configuration: configuration), sentAt: try r.duration("sentAt"))
            case 9:
                body = .snapshotRequest(index: try r.varint("snapshot index"), snapshotTerm: try r.varint("snapshot term"),
                                        sequence: try r.count("chunk sequence", max: Int(Int32.max)))
            case 10:
                let index = try r.varint("snapshot index"), snapshotTerm = try r.varint("snapshot term")
                let sequence = try r.count("chunk sequence", max: Int(Int32.max))
                let checksum = try r.varint("chunk checksum")
                guard checksum <= UInt64(UInt32.max) else { throw WireError("chunk checksum out of range") }
                let last = try r.bool("last chunk")
                body = .snapshotChunk(index: index, snapshotTerm: snapshotTerm, sequence: sequence, data: try r.blob("chunk", max: maxPayload),
                                      checksum: UInt32(checksum), last: last)
            case 11:
                body = .snapshotGone(index: try r.varint("snapshot index"), snapshotTerm: try r.varint("snapshot term"))
            case let other:
                throw WireError("unknown message kind \(other)")
            }
            messages.append(RaftMessage(partition: partition, from: from, to: to, term: term, body: body))
        }
        guard r.atEnd else { throw WireError("\(r.remaining) trailing bytes") }
        return RaftBatch(partitionCount: partitions, from: from, messages: messages)
    }
}

extension WireWriter {
    mutating func duration(_ d: Duration) {
        let (s, a) = d.components
        zigzag(s &* 1_000_000_000 &+ a / 1_000_000_000)
    }

    mutating func entry(_ e: RaftEntry) {
        varint(e.index); varint(e.term); byte(e.kind.rawValue); blob(e.data)
    }
}

extension WireReader {
    mutating func duration(_ what: String) throws(WireError) -> Duration {
        .nanoseconds(try zigzag(what))
    }

    mutating func entry() throws(WireError) -> RaftEntry {
        let index = try varint("entry index"), term = try varint("entry term")
        let raw = try byte("entry kind")
        guard let kind = RaftEntry.Kind(rawValue: raw) else { throw WireError("unknown entry kind \(raw)") }
        return RaftEntry(index: index, term: term, kind: kind, data: try blob("entry data", max: RaftCodec.maxPayload))
    }
}

public enum RaftCodecError: Error, Equatable, Sendable, CustomStringConvertible {
    case unsupportedVersion(UInt8)
    case malformed(String)

    public var description: String {
        switch self {
        case .unsupportedVersion(let v): "unsupported raft message version \(v) (this node speaks \(RaftCodec.version))"
        case .malformed(let why): "malformed raft message: \(why)"
        }
    }
}
