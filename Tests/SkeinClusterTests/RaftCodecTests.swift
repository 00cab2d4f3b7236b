import SkeinCluster
import Testing

@Suite("Raft codec")
struct RaftCodecTests {
    static func sample(_ random: inout DeterministicRandom, partitions: Int) -> RaftMessage {
        func entries(after prev: UInt64) -> [RaftEntry] {
            (0..<random.below(4)).map { i in
                RaftEntry(index: prev + UInt64(i) + 1, term: UInt64(random.below(9)), kind: RaftEntry.Kind(rawValue: UInt8(random.below(3)))!,
                          data: (0..<random.below(20)).map { _ in UInt8(random.below(256)) })
            }
        }
        let sentAt = Duration.nanoseconds(Int64(random.below(1 << 40)) - (1 << 39))
        let body: RaftMessage.Body
        switch random.below(11) {
        case 0:
            let prev = UInt64(random.below(1000))
            body = .append(prevIndex: prev, prevTerm: UInt64(random.below(5)), entries: entries(after: prev), commit: UInt64(random.below(1000)), sentAt: sentAt)
        case 1: body = .appendResponse(reject: random.chance(0.5), index: random.next(), hint: UInt64(random.below(100)), sentAt: sentAt)
        case 2: body = .heartbeat(commit: UInt64(random.below(100)), sentAt: sentAt)
        case 3: body = .heartbeatResponse(commit: UInt64(random.below(100)), sentAt: sentAt)
        case 4: body = .vote(preVote: random.chance(0.5), lastIndex: random.next(), lastTerm: UInt64(random.below(9)), transferTerm: random.chance(0.5) ? UInt64(random.below(9)) : nil)
        case 5: body = .voteResponse(preVote: random.chance(0.5), granted: random.chance(0.5))
        case 6: body = .timeoutNow
        case 7:
            body = .snapshot(meta: RaftSnapshotMeta(index: UInt64(random.below(1000)), term: 3, configuration: RaftConfiguration(voters: ["a:1", "b:2"], learners: ["c:3"])),
                             sentAt: sentAt)
        case 8: body = .snapshotRequest(index: random.next(), snapshotTerm: UInt64(random.below(9)), sequence: random.below(1 << 20))
        case 9:
            body = .snapshotChunk(index: random.next(), snapshotTerm: UInt64(random.below(9)), sequence: random.below(1 << 20),
                                  data: (0..<random.below(50)).map { _ in UInt8(random.below(256)) }, checksum: UInt32(truncatingIfNeeded: random.next()),
                                  last: random.chance(0.5))
        default: body = .snapshotGone(index: random.next(), snapshotTerm: UInt64(random.below(9)))
        }
        return RaftMessage(partition: random.below(partitions), from: "node-ä:9000", to: "n\(random.below(5)):9000", term: random.next() >> random.below(64), body: body)
    }

    @Test func everyMessageRoundTrips() throws {
        var random = DeterministicRandom(seed: 3)
        for _ in 0..<500 {
            let batch = RaftBatch(partitionCount: 16, from: "node-ä:9000", messages: (0..<random.below(6)).map { _ in Self.sample(&random, partitions: 16) })
            #expect(try RaftCodec.decode(RaftCodec.encode(batch)) == batch)
        }
    }

    @Test func anUnknownVersionAndAPartitionOutOfRangeAreRejected() {
        var bytes = RaftCodec.encode(RaftBatch(partitionCount: 4, from: "a", messages: []))
        bytes[0] = 9
        #expect(throws: RaftCodecError.unsupportedVersion(9)) { try RaftCodec.decode(bytes) }
        var batch = RaftBatch(partitionCount: 4, from: "a", messages: [RaftMessage(partition: 3, from: "a", to: "b", term: 1, body: .timeoutNow)])
        #expect(throws: Never.self) { try RaftCodec.decode(RaftCodec.encode(batch)) }
        batch.messages[0].partition = 4
        #expect(throws: RaftCodecError.self) { try RaftCodec.decode(RaftCodec.encode(batch)) }
    }

    /// Fuzz: random bytes, and valid batches truncated, extended and with bytes flipped, must
    /// decode to an error or to a batch that encodes back to the same bytes; never crash.
    @Test func fuzz() {
        var random = DeterministicRandom(seed: 11)
        var accepted = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 4 == 0 {
                bytes = (0..<random.below(64)).map { _ in UInt8(random.below(256)) }
            } else {
                let batch = RaftBatch(partitionCount: 8, from: "a", messages: (0..<1 + random.below(3)).map { _ in Self.sample(&random, partitions: 8) })
                bytes = RaftCodec.encode(batch)
                switch random.below(3) {
                case 0: bytes.removeLast(1 + random.below(bytes.count))
                case 1: bytes.append(UInt8(random.below(256)))
                default: bytes[random.below(bytes.count)] ^= UInt8(1 + random.below(255))
                }
            }
            if let decoded = try? RaftCodec.decode(bytes) {
                accepted += 1
                #expect(RaftCodec.encode(decoded) == bytes)
            }
        }
        #expect(accepted > 0)
    }
}
