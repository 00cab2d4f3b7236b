import SkeinCluster
import Testing

@Suite("Membership codec")
struct MembershipCodecTests {
    static func sample(_ random: inout DeterministicRandom) -> Envelope {
        func member() -> Member {
            Member(id: MemberID(name: "n\(random.below(9))", generation: random.next() >> random.below(64)),
                   peer: "127.0.0.1:\(9000 + random.below(100))", client: "127.0.0.1:\(8000 + random.below(100))",
                   state: MemberState(rawValue: UInt8(random.below(4)))!, incarnation: UInt64(random.below(1000)))
        }
        func updates() -> [MemberUpdate] { (0..<random.below(5)).map { _ in MemberUpdate(member: member(), origin: "ö\(random.below(9))") } }
        let message: MembershipMessage
        switch random.below(6) {
        case 0: message = .ping(seq: random.next(), target: member().id, updates: updates())
        case 1: message = .ack(seq: random.next(), updates: updates())
        case 2: message = .nack(seq: UInt64(random.below(10)), updates: updates())
        case 3: message = .pingRequest(seq: random.next(), target: member(), updates: updates())
        case 4: message = .sync(members: (0..<random.below(6)).map { _ in member() }, wantsReply: random.below(2) == 0)
        default: message = .announce(updates: updates())
        }
        return Envelope(from: member(), message: message)
    }

    @Test func everyMessageRoundTrips() throws {
        var random = DeterministicRandom(seed: 1)
        for _ in 0..<500 {
            let envelopes = (0..<random.below(4)).map { _ in Self.sample(&random) }
            #expect(try MembershipCodec.decode(MembershipCodec.encode(envelopes)) == envelopes)
        }
    }

    @Test func anUnknownVersionIsRejectedByName() {
        var bytes = MembershipCodec.encode([])
        bytes[0] = 9
        #expect(throws: MembershipCodecError.unsupportedVersion(9)) { try MembershipCodec.decode(bytes) }
    }

    /// Fuzz: random bytes, and valid messages truncated, extended and with bytes flipped, must
    /// decode to an error or to messages that encode back to the same bytes; never crash.
    @Test func fuzzedInputNeverCrashesTheDecoder() {
        var random = DeterministicRandom(seed: 0xF022)
        var rejected = 0
        var accepted = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 4 == 0 {
                bytes = (0..<random.below(200)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                if random.below(2) == 0, !bytes.isEmpty { bytes[0] = MembershipCodec.version }
            } else {
                bytes = MembershipCodec.encode((0..<1 + random.below(3)).map { _ in Self.sample(&random) })
                switch random.below(4) {
                case 0: bytes = Array(bytes.prefix(random.below(bytes.count)))
                case 1: bytes += (0..<1 + random.below(8)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                default:
                    for _ in 0..<1 + random.below(4) { bytes[random.below(bytes.count)] = UInt8(truncatingIfNeeded: random.next()) }
                }
            }
            do {
                let decoded = try MembershipCodec.decode(bytes)
                #expect(MembershipCodec.encode(decoded) == bytes)
                accepted += 1
            } catch {
                rejected += 1
            }
        }
        #expect(rejected > 1000 && accepted > 100, "the fuzzer exercised both paths: \(rejected) rejected, \(accepted) accepted")
    }

    @Test func hugeCountsAreRefusedBeforeAllocating() {
        // version 1, then an envelope count of 2^62.
        let bytes: [UInt8] = [1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]
        #expect(throws: MembershipCodecError.self) { try MembershipCodec.decode(bytes) }
    }
}
